package e2e

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// A pod's first packets (--unknown-pod-cidrs): a pod can send before the agent
// knows its address. Pods made with env.Cluster.AddPods exist in the network only,
// as a pod whose sandbox is up but whose Pod object does not carry its address
// yet; env.CreatePodObject is the kubelet's late status write.

const unknownFromNode = "--unknown-pod-cidrs=node"

var _ = Describe("unknown local pods", func() {
	It("with --unknown-pod-cidrs=node, lets a pod the agent does not know yet send nothing, follows the Node's pod CIDRs, and lets the pod talk once it is known", func(ctx SpecContext) {
		target := pod("x", "a")
		probe := func(from *cluster.Pod) bool {
			GinkgoHelper()
			res, err := env.Cluster.Probe(ctx, from, target, cluster.TCP, cluster.V4, 80, 300*time.Millisecond)
			Expect(err).NotTo(HaveOccurred())
			return res.OK
		}
		node := env.Cluster.Node(target.Node)
		agent := env.Agents[target.Node]

		By("without the option: a pod whose object the agent has not seen talks freely (the window)")
		early := newNetworkOnlyPod(ctx, "early", target.Node)
		Expect(probe(early)).To(BeTrue())

		By("with " + unknownFromNode + ": it sends nothing until the agent knows it")
		restartAgents(ctx, unknownFromNode)
		DeferCleanup(func(ctx SpecContext) {
			if env.Agents[0].Args != nil {
				restartAgents(ctx)
			}
		}, NodeTimeout(3*time.Minute))
		Expect(probe(early)).To(BeFalse(), "an unknown local address got through")
		late := newNetworkOnlyPod(ctx, "late", target.Node)
		Expect(probe(late)).To(BeFalse(), "an unknown local address got through")
		Expect(probe(pod("x", "b"))).To(BeTrue(), "known pods are unaffected")
		Expect(unknownGauge(ctx, agent)).To(Equal(2.0), "the Node's two pod CIDRs")

		By("the Node is registered again without pod CIDRs (a CNI with its own IPAM): said loudly, and not isolated")
		var saved corev1.Node
		Expect(env.CP.Client.Get(ctx, client.ObjectKey{Name: node.Name}, &saved)).To(Succeed())
		recreateNode(ctx, &saved, nil)
		DeferCleanup(func(ctx SpecContext) {
			var n corev1.Node
			if err := env.CP.Client.Get(ctx, client.ObjectKey{Name: node.Name}, &n); err != nil || len(n.Spec.PodCIDRs) == 0 {
				recreateNode(ctx, &saved, saved.Spec.PodCIDRs)
			}
		})
		Eventually(func() bool { return probe(early) }).WithTimeout(10*time.Second).WithPolling(50*time.Millisecond).Should(BeTrue(),
			"a Node without pod CIDRs leaves nothing to drop by")
		Expect(unknownGauge(ctx, agent)).To(BeZero())
		log, err := agent.Log()
		Expect(err).NotTo(HaveOccurred())
		Expect(log).To(ContainSubstring("no pod CIDRs for --unknown-pod-cidrs=node"))

		By("the node IPAM controller assigns them: unknown means isolated again")
		var n corev1.Node
		Expect(env.CP.Client.Get(ctx, client.ObjectKey{Name: node.Name}, &n)).To(Succeed())
		n.Spec.PodCIDR, n.Spec.PodCIDRs = saved.Spec.PodCIDR, saved.Spec.PodCIDRs
		Expect(env.CP.Client.Update(ctx, &n)).To(Succeed())
		Eventually(func() bool { return probe(early) }).WithTimeout(10*time.Second).WithPolling(50*time.Millisecond).Should(BeFalse(),
			"the Node's new pod CIDRs are followed")
		Expect(probe(late)).To(BeFalse(), "an unknown local address got through")
		Expect(probe(pod("x", "b"))).To(BeTrue(), "known pods are unaffected")
		Expect(unknownGauge(ctx, agent)).To(Equal(2.0))

		By("its Pod object appears: what it costs a pod no policy selects is the wait for the agent")
		t0 := time.Now()
		Expect(env.CreatePodObject(ctx, late)).To(Succeed())
		Eventually(func() bool { return probe(late) }).WithTimeout(10 * time.Second).WithPolling(20 * time.Millisecond).Should(BeTrue())
		By(fmt.Sprintf("z/late reached x/a %v after its Pod object was written", time.Since(t0).Round(time.Millisecond)))

		// Leave the environment as the suite expects it before AfterEach checks it.
		Expect(env.RemovePod(ctx, "z", "early")).To(Succeed())
		Expect(env.RemovePod(ctx, "z", "late")).To(Succeed())
		restartAgents(ctx)
	}, SpecTimeout(4*time.Minute))

	It("costs a new pod that no policy selects the wait for the agent: measured, with the option off and on", func(ctx SpecContext) {
		reps := 20
		if v, err := strconv.Atoi(os.Getenv("NFTPOLICY_E2E_FIRST_PACKET_REPS")); err == nil && v > 0 {
			reps = v
		}
		off := measureFirstPackets(ctx, "off", reps)
		restartAgents(ctx, unknownFromNode)
		DeferCleanup(func(ctx SpecContext) {
			if env.Agents[0].Args != nil {
				restartAgents(ctx)
			}
		}, NodeTimeout(3*time.Minute))
		on := measureFirstPackets(ctx, "on", reps)
		for _, m := range []firstPackets{off, on} {
			line := m.String()
			GinkgoWriter.Println(line)
			AddReportEntry("first packets, option "+m.mode, line)
			fmt.Println("e2e first packets: " + line) // the summary the CI log shows
		}
		// Off: nothing waits. On: every first SYN is dropped (the pod sends at
		// once, before its Pod object carries its address) and TCP sends it again
		// a second later; the drops are counted, nothing is held.
		Expect(framework.Percentile(off.connect, 50)).To(BeNumerically("<", 500*time.Millisecond))
		Expect(off.dropped).To(BeZero())
		Expect(framework.Percentile(on.connect, 50)).To(BeNumerically(">=", 900*time.Millisecond), "the first SYN was dropped and retransmitted")
		Expect(on.dropped).To(BeNumerically(">=", reps), "at least each pod's first SYN")
		Expect(framework.Percentile(on.wait, 50)).To(BeNumerically("<", 2*time.Second), "the agent's wait, generous under load")
		restartAgents(ctx)
	}, SpecTimeout(10*time.Minute))
})

// firstPackets is what new pods no policy selects saw of their first packets.
type firstPackets struct {
	mode string
	// connect: a TCP connection (connect and one echo) the pod opens at once,
	// as its Pod object is written. wait: from then to the first of a stream of
	// UDP datagrams (one every 20 ms, each on a new flow) to get an answer.
	connect, wait []time.Duration
	// dropped: packets the unknown-source drops counted meanwhile.
	dropped int
}

func (m firstPackets) String() string {
	p := func(d []time.Duration, q float64) string {
		return framework.Percentile(d, q).Round(time.Millisecond).String()
	}
	return fmt.Sprintf("option %s, %d new pods: TCP connect+echo p50 %s p99 %s max %s; first UDP answer after p50 %s p99 %s max %s; %d packets dropped as unknown",
		m.mode, len(m.connect), p(m.connect, 50), p(m.connect, 99), p(m.connect, 100), p(m.wait, 50), p(m.wait, 99), p(m.wait, 100), m.dropped)
}

// measureFirstPackets makes reps new pods, one at a time on alternate nodes,
// none selected by any policy, each sending to x/a from the moment its Pod
// object is written.
func measureFirstPackets(ctx context.Context, mode string, reps int) firstPackets {
	GinkgoHelper()
	target := pod("x", "a")
	m := firstPackets{mode: mode}
	for i := range reps {
		name := fmt.Sprintf("fp-%s-%d", mode, i)
		p := newNetworkOnlyPod(ctx, name, i%len(env.Agents))
		var wg sync.WaitGroup
		var connect, wait time.Duration
		before := unknownDrops(p.Node)
		t0 := time.Now()
		wg.Go(func() {
			defer GinkgoRecover()
			res, err := env.Cluster.Probe(ctx, p, target, cluster.TCP, cluster.V4, 80, 8*time.Second)
			Expect(err).NotTo(HaveOccurred())
			Expect(res.OK).To(BeTrue(), "%s: %s", name, res)
			connect = res.Elapsed
		})
		wg.Go(func() {
			defer GinkgoRecover()
			for time.Since(t0) < 8*time.Second {
				sent := time.Since(t0)
				res, err := env.Cluster.Probe(ctx, p, target, cluster.UDP, cluster.V4, 80, 20*time.Millisecond)
				Expect(err).NotTo(HaveOccurred())
				if res.OK {
					wait = sent
					return
				}
			}
			Fail(name + ": no UDP answer within 8 s")
		})
		Expect(env.CreatePodObject(ctx, p)).To(Succeed())
		wg.Wait()
		// A rewrite of the forward chain (an epoch change) starts its counters
		// again; adding the pod rewrites nothing.
		if after := unknownDrops(p.Node); after >= before {
			m.dropped += after - before
		} else {
			m.dropped += after
		}
		m.connect = append(m.connect, connect)
		m.wait = append(m.wait, wait)
		Expect(env.RemovePod(ctx, "z", name)).To(Succeed())
	}
	return m
}

// newNetworkOnlyPod adds z/name on node to the network only (no Pod object) and
// removes it when the spec ends if it is still there.
func newNetworkOnlyPod(ctx context.Context, name string, node int) *cluster.Pod {
	GinkgoHelper()
	created, err := env.Cluster.AddPods(ctx, cluster.PodSpec{Namespace: "z", Name: name, Node: node, Labels: labels("pod", name)})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func(ctx SpecContext) {
		if env.Pod("z", name) != nil {
			Expect(env.RemovePod(ctx, "z", name)).To(Succeed())
		}
	})
	return created[0]
}

// recreateNode deletes the Node and creates it again as saved, with podCIDRs:
// a node registered anew, whose pod CIDRs are not assigned yet when nil.
func recreateNode(ctx context.Context, saved *corev1.Node, podCIDRs []string) {
	GinkgoHelper()
	Expect(client.IgnoreNotFound(env.CP.Client.Delete(ctx, saved.DeepCopy()))).To(Succeed())
	n := &corev1.Node{}
	n.Name, n.Labels = saved.Name, saved.Labels
	n.Spec.PodCIDRs = podCIDRs
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
	}
	Eventually(func() error { return env.CP.Client.Create(ctx, n) }).WithTimeout(10 * time.Second).Should(Succeed())
	n.Status = saved.Status
	Expect(env.CP.Client.Status().Update(ctx, n)).To(Succeed())
}

// unknownGauge reads nftpolicy_unknown_pod_cidrs{source="node"} from an agent.
func unknownGauge(ctx context.Context, a *framework.Agent) float64 {
	GinkgoHelper()
	text, err := a.Metrics(ctx)
	Expect(err).NotTo(HaveOccurred())
	m, err := framework.ParseMetrics([]byte(text))
	Expect(err).NotTo(HaveOccurred())
	v, ok := m[`nftpolicy_unknown_pod_cidrs{source="node"}`]
	Expect(ok).To(BeTrue(), "no nftpolicy_unknown_pod_cidrs{source=\"node\"} in the agent's metrics")
	return v
}

var unknownCounterRE = regexp.MustCompile(`saddr != @local-pods-v[46] counter packets (\d+)`)

// unknownDrops sums the unknown-source drop counters of a node's table.
func unknownDrops(node int) int {
	GinkgoHelper()
	out, err := env.Cluster.Node(node).NetNS.NFT("", "list", "chain", "inet", "nftpolicy", "forward")
	Expect(err).NotTo(HaveOccurred())
	total := 0
	for _, m := range unknownCounterRE.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.Atoi(m[1])
		total += v
	}
	return total
}
