package e2e

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// outageDuration is how long the spec keeps the control plane down:
// $NFTPOLICY_E2E_OUTAGE (a duration), 25s by default. The control-plane
// benchmark measures a full minute.
func outageDuration() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("NFTPOLICY_E2E_OUTAGE")); err == nil && d > 0 {
		return d
	}
	return 25 * time.Second
}

var _ = Describe("the apiserver goes away", Label("outage"), func() {
	It("leaves every table in force and the agents alive, and they catch up when it returns", func(ctx SpecContext) {
		outage := outageDuration()
		xa, xb, xc := pod("x", "a"), pod("x", "b"), pod("x", "c")
		create(ctx, "x", policy("x-a-from-x-b", labels("pod", "a"), ingress(from(podPeer(matching("pod", "b"))))))
		r := reach(true)
		r.ExpectAllIngress(xa, false)
		r.Expect(xb, xa, true)
		validate(ctx, framework.TCP(r, 80))

		By(fmt.Sprintf("killing the apiserver and etcd for %v", outage))
		Expect(env.CP.Down()).To(Succeed())
		down := time.Now()
		up := false
		DeferCleanup(func(ctx SpecContext) {
			if !up { // a failure below must not leave the suite without a control plane
				Expect(env.CP.Up(ctx)).To(Succeed())
			}
		}, NodeTimeout(3*time.Minute))

		var rounds int
		readyz := map[string]int{} // "node: status" -> times seen
		for rounds == 0 || time.Since(down) < outage {
			for _, a := range env.Agents {
				Expect(a.Running()).To(BeTrue(), "agent %s exited while the apiserver was away:\n%s", a.Node.Name, a.LogTail(20))
				code, body, err := a.Health(ctx, "/healthz")
				Expect(err).NotTo(HaveOccurred(), "agent %s /healthz", a.Node.Name)
				Expect(code).To(Equal(200), "agent %s /healthz: %s", a.Node.Name, body)
				code, body, err = a.Health(ctx, "/readyz")
				Expect(err).NotTo(HaveOccurred(), "agent %s /readyz", a.Node.Name)
				readyz[fmt.Sprintf("%s /readyz %d %s", a.Node.Name, code, firstLine(body))]++
			}
			// Nothing changed: a confirmation of the whole matrix, allowed and denied.
			res, err := env.WaitForMatrixWithin(ctx, 15*time.Second, framework.TCP(r, 80))
			Expect(err).NotTo(HaveOccurred(), "during the outage, %v after it began", time.Since(down).Round(time.Second))
			rounds++
			GinkgoWriter.Printf("%v into the outage: %s\n", time.Since(down).Round(time.Millisecond), res)
			time.Sleep(2 * time.Second)
		}
		By(fmt.Sprintf("%d probe rounds over %v of outage held the matrix; agents' /readyz: %v",
			rounds, time.Since(down).Round(time.Second), slices.Sorted(maps.Keys(readyz))))

		By("starting etcd and the apiserver again, and changing a policy at once")
		start := time.Now()
		Expect(env.CP.Up(ctx)).To(Succeed())
		up = true
		back := time.Now()
		By(fmt.Sprintf("apiserver ready %v after the start, %v after the outage began", back.Sub(start).Round(time.Millisecond), back.Sub(down).Round(time.Second)))
		create(ctx, "x", policy("x-a-from-x-c", labels("pod", "a"), ingress(from(podPeer(matching("pod", "c"))))))
		written := time.Now()
		r.Expect(xc, xa, true)
		res, err := env.WaitForMatrixWithin(ctx, 2*time.Minute, framework.TCP(r, 80))
		Expect(err).NotTo(HaveOccurred())
		Expect(res.Latency).NotTo(BeNil())
		// From the apiserver's return to the new policy in force on the node.
		catchUp := written.Sub(back) + res.Latency.Enforced
		By(fmt.Sprintf("the change made after the return: %s; enforced %v after the apiserver was ready", res, catchUp.Round(time.Millisecond)))
		AddReportEntry("outage", fmt.Sprintf("%v down; a change written %v after the return enforced %v after it (±%v)",
			outage, written.Sub(back).Round(time.Millisecond), catchUp.Round(time.Millisecond), res.Latency.Resolution.Round(time.Millisecond)))

		m, err := env.CP.Metrics(ctx)
		Expect(err).NotTo(HaveOccurred())
		var lines []string
		for _, res := range []string{"pods", "namespaces", "networkpolicies"} {
			for _, verb := range []string{"LIST", "WATCH"} {
				lines = append(lines, fmt.Sprintf("%s %s %.0f", verb, res,
					framework.SumMetrics(m, "apiserver_request_total", `resource="`+res+`"`, `verb="`+verb+`"`)))
			}
		}
		for k, v := range m {
			ours := strings.Contains(k, `resource="pods"`) || strings.Contains(k, `resource="namespaces"`) ||
				strings.Contains(k, `resource="networkpolicies"`)
			for _, p := range []string{"apiserver_watch_events_total", "apiserver_watch_list", "apiserver_cache_list_total",
				"apiserver_init_events_total", "apiserver_longrunning_requests", "apiserver_registered_watchers"} {
				if ours && strings.HasPrefix(k, p) {
					lines = append(lines, fmt.Sprintf("%s %.0f", k, v))
				}
			}
		}
		slices.Sort(lines)
		GinkgoWriter.Printf("apiserver requests since its return:\n%s\n", strings.Join(lines, "\n"))
		AddReportEntry("apiserver requests since its return", strings.Join(lines, "\n"))

		// Readiness comes back once every kind's watch is answered again; a
		// CRD-served kind (ClusterNetworkPolicy) can take a few seconds longer,
		// while the new apiserver installs its handlers.
		for _, a := range env.Agents {
			t0 := time.Now()
			Eventually(func(g Gomega) {
				code, body, err := a.Health(ctx, "/readyz?verbose")
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(code).To(Equal(200), "agent %s /readyz after the return: %s", a.Node.Name, body)
			}).WithTimeout(30 * time.Second).WithPolling(250 * time.Millisecond).Should(Succeed())
			By(fmt.Sprintf("agent %s ready again %v after the check began", a.Node.Name, time.Since(t0).Round(time.Millisecond)))
		}
	}, NodeTimeout(6*time.Minute))
})

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
