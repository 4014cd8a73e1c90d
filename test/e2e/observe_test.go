package e2e

// The deny log and the policy counters, through the real binary: the agents run
// with --deny-log-rate and serve /metrics (framework.Agent).

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

var _ = Describe("nftpolicy deny log and policy counters", func() {
	It("logs every denied probe with both pods and the policy, and counts the drops per policy", func(ctx SpecContext) {
		const name = "deny-ingress-logged"
		logStart := make([]int, len(env.Agents))
		for i, a := range env.Agents {
			log, err := a.Log()
			Expect(err).NotTo(HaveOccurred())
			logStart[i] = len(log)
		}
		create(ctx, "x", policy(name, nil, ingress()))
		want := reach(true)
		want.ExpectPeer(anyone(), ns("x"), false)
		validate(ctx, framework.TCP(want, 80))

		// Every probe to a pod of x from another pod was denied on x's pod's node,
		// and logged there with both pods and the policy.
		var denied []string
		for _, dst := range env.Pods("x") {
			for _, src := range env.Pods() {
				if src != dst {
					denied = append(denied, src.String()+" -> "+dst.String())
				}
			}
		}
		lineRE := regexp.MustCompile(`"msg":"packet denied".*"direction":"ingress","src":"([^"]+)","dst":"([^"]+)",.*"proto":"tcp",.*"dstPort":80,"policies":\["x/` + name + `"\]`)
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
		Eventually(missing, 10*time.Second, 100*time.Millisecond).Should(BeEmpty(), "denied probes without a deny log line")
		By(fmt.Sprintf("%d denied pod pairs, each logged with both pods and x/%s", len(denied), name))

		// The agents' counters saw at least one drop per denied pair, and no allow.
		counterRE := regexp.MustCompile(`(?m)^nftpolicy_policy_packets_total\{direction="ingress",namespace="x",policy="` + name + `",tier="networkpolicy",verdict="(allow|deny)"\} (\d+)$`)
		byVerdict := func(ctx context.Context) map[string]int {
			out := map[string]int{}
			for _, a := range env.Agents {
				text, err := a.Metrics(ctx)
				Expect(err).NotTo(HaveOccurred())
				for _, m := range counterRE.FindAllStringSubmatch(text, -1) {
					n, _ := strconv.Atoi(m[2])
					out[m[1]] += n
				}
			}
			return out
		}
		counts := byVerdict(ctx)
		Expect(counts["deny"]).To(BeNumerically(">=", len(denied)), "drops counted for x/%s", name)
		Expect(counts["allow"]).To(BeZero(), "a policy without rules allows nothing")
		By(fmt.Sprintf("counters: %d drops for %d denied pairs (SYN retransmissions and both families add up)", counts["deny"], len(denied)))
		Expect(strings.Join(missing(), ",")).To(BeEmpty())
	}, specTimeout)
})
