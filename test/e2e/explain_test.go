package e2e

// `nftpolicy explain` against the real thing: its answers for every pair of a
// matrix the probes have just confirmed with real traffic, and --live against a
// running agent's table, untouched and tampered with.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft/explain"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// runExplain runs `nftpolicy explain` against the envtest API server with the
// caller's (here: the test's) kubeconfig and decodes its JSON answer.
func runExplain(ctx context.Context, args ...string) (*explain.Answer, string, error) {
	args = append([]string{"explain", "--kubeconfig", env.CP.Kubeconfig, "-o", "json"}, args...)
	cmd := exec.CommandContext(ctx, agentBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var a explain.Answer
	if stdout.Len() > 0 {
		if jerr := json.Unmarshal(stdout.Bytes(), &a); jerr != nil {
			return nil, stderr.String(), fmt.Errorf("nftpolicy %s: %w: %s", strings.Join(args, " "), jerr, stdout.String())
		}
	}
	if err != nil {
		return &a, stderr.String(), fmt.Errorf("nftpolicy %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return &a, stderr.String(), nil
}

// portVerdict is the verdict of the answer's port range holding proto/port.
func portVerdict(a *explain.Answer, proto string, port int) string {
	for _, r := range a.Ports {
		if r.Protocol == proto && r.First <= port && port <= r.Last {
			return r.Verdict
		}
	}
	return "missing"
}

var _ = Describe("explain", func() {
	It("answers every pair of a probed matrix as the kernel did, both families", func(ctx SpecContext) {
		xa, xb, yc := pod("x", "a"), pod("x", "b"), pod("y", "c")
		create(ctx, "x", policy("x-a-tcp-75-80", labels("pod", "a"), ingress(fromOn(ports(portRange(75, 80, &tcp))))))
		create(ctx, "x", policy("x-b-udp-81-90", labels("pod", "b"), ingress(fromOn(ports(portRange(81, 90, &udp))))))
		create(ctx, "y", policy("y-c-egress-79-80", labels("pod", "c"), egress(toOn(ports(portRange(79, 80, nil))))))
		tcp80 := reach(true)
		tcp80.ExpectAllIngress(xb, false)
		tcp81 := reach(true)
		tcp81.ExpectAllIngress(xa, false)
		tcp81.ExpectAllIngress(xb, false)
		tcp81.ExpectAllEgress(yc, false)
		udp80 := reach(true)
		udp80.ExpectAllIngress(xa, false)
		udp80.ExpectAllIngress(xb, false)
		udp80.ExpectAllEgress(yc, false)
		udp81 := reach(true)
		udp81.ExpectAllIngress(xa, false)
		udp81.ExpectAllEgress(yc, false)
		checks := []framework.Check{framework.TCP(tcp80, 80), framework.TCP(tcp81, 81), framework.UDP(udp80, 80), framework.UDP(udp81, 81)}
		validate(ctx, checks...)

		By("asking explain, over every port at once, about every pair and family")
		type job struct {
			from, to cluster.Endpoint
			fam      cluster.Family
		}
		var jobs []job
		for _, from := range env.Peers() {
			for _, to := range env.Peers() {
				for _, fam := range []cluster.Family{cluster.V4, cluster.V6} {
					jobs = append(jobs, job{from, to, fam})
				}
			}
		}
		var (
			mu       sync.Mutex
			failures []string
			wg       sync.WaitGroup
			sem      = make(chan struct{}, 3)
		)
		for _, j := range jobs {
			wg.Add(1)
			go func() {
				defer GinkgoRecover()
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				a, _, err := runExplain(ctx, "--from", j.from.String(), "--to", j.to.String(), "--family", fmt.Sprint(int(j.fam)))
				var bad []string
				if err != nil {
					bad = append(bad, err.Error())
				} else {
					if len(a.Mismatch) > 0 {
						bad = append(bad, fmt.Sprintf("%s -> %s: mismatch %v", j.from, j.to, a.Mismatch))
					}
					for _, c := range checks {
						proto := strings.ToLower(string(c.Protocols[0]))
						want := explain.Deny
						if c.Want.Connected(j.from, j.to) || j.from == j.to {
							want = explain.Allow
						}
						if got := portVerdict(a, proto, c.Ports[0]); got != want {
							bad = append(bad, fmt.Sprintf("%s -> %s IPv%d %s/%d: explain %s, probes %s", j.from, j.to, j.fam, proto, c.Ports[0], got, want))
						}
					}
				}
				mu.Lock()
				failures = append(failures, bad...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		Expect(failures).To(BeEmpty())
		By(fmt.Sprintf("%d answers, %d cells each, all as probed", len(jobs), len(checks)))
	}, specTimeout)

	It("answers a tiered matrix as probed, naming the tier, the ClusterNetworkPolicy and the rule, which the deny log names too", func(ctx SpecContext) {
		logStart := make([]int, len(env.Agents))
		for i, a := range env.Agents {
			log, err := a.Log()
			Expect(err).NotTo(HaveOccurred())
			logStart[i] = len(log)
		}
		// x allows every ingress by NetworkPolicy; the Admin tier denies y -> x
		// over it; the Baseline tier denies x -> z (no NetworkPolicy isolates z).
		create(ctx, "x", policy("allow-all", nil, ingress(from())))
		admin := cnp("deny-y-to-x", cnpv1.AdminTier, 10, subjectNS("x"))
		admin.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(deny, []string{"y"})}
		admin.Spec.Ingress[0].Name = "no-y"
		createCNP(ctx, admin)
		base := cnp("z-not-from-x", cnpv1.BaselineTier, 5, subjectNS("z"))
		base.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(deny, []string{"x"})}
		createCNP(ctx, base)
		r := reach(true)
		r.ExpectPeer(ns("y"), ns("x"), false)
		r.ExpectPeer(ns("x"), ns("z"), false)
		validate(ctx, framework.TCP(r, 80))

		By("asking explain about every pair on tcp/80")
		var (
			mu       sync.Mutex
			failures []string
			wg       sync.WaitGroup
			sem      = make(chan struct{}, 3)
			answers  int
		)
		for _, from := range env.Peers() {
			for _, to := range env.Peers() {
				if from == to {
					continue
				}
				wg.Add(1)
				go func() {
					defer GinkgoRecover()
					defer wg.Done()
					sem <- struct{}{}
					defer func() { <-sem }()
					a, _, err := runExplain(ctx, "--from", from.String(), "--to", to.String(), "--port", "tcp/80", "--family", "4")
					var bad []string
					want, decided := explain.Allow, ""
					if !r.Connected(from, to) {
						want = explain.Deny
					}
					fromNS, toNS := strings.Split(from.String(), "/")[0], strings.Split(to.String(), "/")[0]
					switch {
					case fromNS == "y" && toNS == "x":
						decided = "Admin cnp/deny-y-to-x 0 no-y Deny"
					case fromNS == "x" && toNS == "z":
						decided = "Baseline cnp/z-not-from-x 0  Deny"
					}
					switch {
					case err != nil:
						bad = append(bad, err.Error())
					case len(a.Mismatch) > 0:
						bad = append(bad, fmt.Sprintf("%s -> %s: mismatch %v", from, to, a.Mismatch))
					case a.Verdict != want:
						bad = append(bad, fmt.Sprintf("%s -> %s: explain %s, probes %s", from, to, a.Verdict, want))
					case decided != "":
						got := a.Ingress.DecidedBy
						for _, st := range a.Ingress.Tiers {
							if st.Tier == a.Ingress.DecidedBy {
								got = fmt.Sprintf("%s %s %d %s %s", st.Tier, st.Policy, st.Rule, st.RuleName, st.Action)
							}
						}
						if got != decided {
							bad = append(bad, fmt.Sprintf("%s -> %s: decided by %q, want %q", from, to, got, decided))
						}
					}
					mu.Lock()
					answers++
					failures = append(failures, bad...)
					mu.Unlock()
				}()
			}
		}
		wg.Wait()
		Expect(failures).To(BeEmpty())
		By(fmt.Sprintf("%d answers as probed, the Admin and Baseline denials named by policy and rule", answers))

		By("the deny log names the ClusterNetworkPolicy rule for every denied y -> x pair")
		lineRE := regexp.MustCompile(`"msg":"packet denied".*"direction":"ingress","src":"([^"]+)","dst":"([^"]+)",.*"dstPort":80,"policies":\["cnp/deny-y-to-x"\],"tier":"Admin","priority":10,"rule":0,"ruleName":"no-y"`)
		var denied []string
		for _, from := range env.Peers("y") {
			for _, to := range env.Peers("x") {
				denied = append(denied, from.String()+" -> "+to.String())
			}
		}
		missing := func() []string {
			seen := map[string]bool{}
			for i, a := range env.Agents {
				log, err := a.Log()
				if err != nil || len(log) < logStart[i] {
					continue
				}
				for _, m := range lineRE.FindAllStringSubmatch(log[logStart[i]:], -1) {
					seen[m[1]+" -> "+m[2]] = true
				}
			}
			return slices.DeleteFunc(slices.Clone(denied), func(p string) bool { return seen[p] })
		}
		Eventually(missing, 10*time.Second, 100*time.Millisecond).Should(BeEmpty(), "denied probes without a deny log line naming cnp/deny-y-to-x rule 0")
	}, specTimeout)

	It("overlays -f on the listed cluster: a proposed policy against the real pods", func(ctx SpecContext) {
		xa, xc := pod("x", "a"), pod("x", "c")
		create(ctx, "x", policy("x-a-tcp-75-80", labels("pod", "a"), ingress(fromOn(ports(portRange(75, 80, &tcp))))))
		r := reach(true)
		r.ExpectAllIngress(xa, false)
		validate(ctx, framework.TCP(r, 81))
		a, _, err := runExplain(ctx, "--from", xc.String(), "--to", xa.String(), "--port", "tcp/81")
		Expect(err).NotTo(HaveOccurred())
		Expect(a.Verdict).To(Equal(explain.Deny), "as probed")

		By("proposing 75-81 in a file: the answer is for the cluster with the file's policy in place of the live one")
		proposed := filepath.Join(GinkgoT().TempDir(), "proposed.yaml")
		Expect(os.WriteFile(proposed, []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: x, name: x-a-tcp-75-80}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: 75, endPort: 81}]}]
`), 0o600)).To(Succeed())
		a, _, err = runExplain(ctx, "-f", proposed, "--from", xc.String(), "--to", xa.String(), "--port", "tcp/81")
		Expect(err).NotTo(HaveOccurred())
		Expect(a.Verdict).To(Equal(explain.Allow))
		Expect(a.Ingress.AllowedBy).To(HaveLen(1))
		Expect(a.Ingress.AllowedBy[0].Policy).To(Equal("x/x-a-tcp-75-80"))
		Expect(a.Ingress.AllowedBy[0].Port).To(Equal("port 0: TCP/75-81"))
	}, specTimeout)

	It("--live walks the agent's table as the kernel holds it, and shows a tampered one", func(ctx SpecContext) {
		xa, yc := pod("x", "a"), pod("y", "c")
		node := env.Cluster.Node(xa.Node)
		create(ctx, "x", policy("x-a-tcp-75-80", labels("pod", "a"), ingress(fromOn(ports(portRange(75, 80, &tcp))))))
		only := func(connected bool) framework.Check {
			return framework.Check{Protocols: []cluster.Protocol{cluster.TCP}, Ports: []int{81}, Families: []cluster.Family{cluster.V4},
				Want: framework.NewExpectationFromTo([]cluster.Endpoint{yc}, []cluster.Endpoint{xa}, connected)}
		}
		validate(ctx, only(false))
		live := func() *explain.Answer {
			GinkgoHelper()
			a, _, err := runExplain(ctx, "--live", "--netns", node.NetNSPath(), "--node-name", node.Name,
				"--from", "y/c", "--to", "x/a", "--port", "tcp/81", "--family", "4")
			Expect(err).NotTo(HaveOccurred())
			return a
		}

		By("the untouched table: exactly the compile, denied as probed")
		a := live()
		Expect(a.Live).NotTo(BeNil())
		Expect(a.Live.Node).To(Equal(node.Name))
		Expect(a.Live.Differences).To(BeEmpty())
		Expect(a.Verdict).To(Equal(explain.Deny))
		Expect(a.Ingress.Trace.Table).To(Equal("kernel"))
		Expect(a.Ingress.IsolatedBy).To(Equal([]string{"x/x-a-tcp-75-80"}))

		By("stopping x/a's node's agent, which would repair what follows at once")
		Expect(env.Agents[xa.Node].Stop()).To(Succeed())
		DeferCleanup(func(ctx SpecContext) error { return env.StartAgents(ctx) })

		By("deleting x/a's element from the ingress map behind the agent's back")
		elem := xa.IPv4.String()
		_, err := node.NetNS.NFT("", "delete", "element", "inet", "nftpolicy", "ingress-v4", "{ "+elem+" }")
		Expect(err).NotTo(HaveOccurred())
		a = live()
		Expect(a.Verdict).To(Equal(explain.Allow), "the tampered table lets it through")
		Expect(a.Live.Differences).To(ContainElement(HavePrefix("set ingress-v4: element " + elem + " : goto ing-")))
		Expect(a.Live.Disagreements).To(ContainElement(ContainSubstring("the kernel's table on " + node.Name + " says allow, the policies say deny")))

		By("the kernel agrees: y/c now reaches x/a on 81")
		validate(ctx, only(true))

		By("restoring the element from the difference explain reported")
		restored := false
		for _, d := range a.Live.Differences {
			if text, ok := strings.CutPrefix(d, "set ingress-v4: element "); ok {
				text, _ = strings.CutSuffix(text, " missing from the kernel")
				_, err := node.NetNS.NFT("", "add", "element", "inet", "nftpolicy", "ingress-v4", "{ "+text+" }")
				Expect(err).NotTo(HaveOccurred())
				restored = true
			}
		}
		Expect(restored).To(BeTrue())
		validate(ctx, only(false))
		Expect(live().Live.Differences).To(BeEmpty())
	}, specTimeout)
})
