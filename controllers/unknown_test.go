package controllers

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

func TestNodePodCIDRs(t *testing.T) {
	node := func(single string, list ...string) *corev1.Node {
		return &corev1.Node{Spec: corev1.NodeSpec{PodCIDR: single, PodCIDRs: list}}
	}
	for _, c := range []struct {
		name    string
		node    *corev1.Node
		want    string // prefixList
		wantWhy string // a substring of why; "" for none
	}{
		{"no node", nil, "", "does not exist"},
		{"none", node(""), "", "no spec.podCIDRs"},
		{"dual, IPv6 first", node("fd00:10:244:1::/64", "fd00:10:244:1::/64", "10.244.1.0/24"), "10.244.1.0/24,fd00:10:244:1::/64", ""},
		{"only the old field", node("10.244.1.0/24"), "10.244.1.0/24", ""},
		{"podCIDRs win", node("10.1.0.0/24", "10.244.1.0/24"), "10.244.1.0/24", ""},
		{"host bits, duplicates", node("", "10.244.1.7/24", "10.244.1.0/24"), "10.244.1.0/24", ""},
		{"not a CIDR", node("", "10.244.1.0/24", "bogus"), "10.244.1.0/24", `"bogus"`},
	} {
		got, why := NodePodCIDRs(c.node)
		if prefixList(got) != c.want || (c.wantWhy == "") != (why == "") || !strings.Contains(why, c.wantWhy) {
			t.Errorf("%s: %q (%q), want %q (%q)", c.name, prefixList(got), why, c.want, c.wantWhy)
		}
	}
}

var _ = Describe("--unknown-pod-cidrs=node", func() {
	It("drops unknown addresses of the CIDRs its Node has, follows the Node's changes, and says so loudly when it has none", func(ctx SpecContext) {
		f := newFixture()
		name := "unk-" + f.sfx
		f.namespace(ctx, "unk", map[string]string{})
		f.pod(ctx, "unk", "a", podOpts{node: name, ips: []string{"10.78.1.5", "fd00:78:1::5"}})
		createNode := func(cidrs ...string) {
			n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDRs: cidrs}}
			if len(cidrs) > 0 {
				n.Spec.PodCIDR = cidrs[0]
			}
			Expect(k8sClient.Create(ctx, n)).To(Succeed())
		}
		deleteNode := func() {
			Expect(k8sClient.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})).To(Succeed())
		}
		DeferCleanup(func(ctx SpecContext) {
			_ = k8sClient.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}})
		})
		createNode() // registered, its CIDRs not assigned yet

		fake := nfttest.NewFake()
		startUnknownAgent(name, fake)
		// The drops the table carries: "" when none.
		drops := func() string {
			last := fake.Last()
			if last == nil {
				return "no table"
			}
			var out []string
			for _, line := range strings.Split(nft.Render(last), "\n") {
				if strings.Contains(line, "@local-pods-v") && strings.Contains(line, "drop") {
					out = append(out, strings.TrimSpace(line))
				}
			}
			return strings.Join(out, "\n")
		}
		gauge := func() float64 { return testutil.ToFloat64(unknownPodCIDRs.WithLabelValues("node")) }
		events := func(reason string) []string {
			var list eventsv1.EventList
			Expect(k8sClient.List(ctx, &list)).To(Succeed())
			var notes []string
			for _, e := range list.Items {
				if e.Reason == reason && e.Regarding.Kind == "Node" && e.Regarding.Name == name {
					notes = append(notes, e.Type+": "+e.Note)
				}
			}
			return notes
		}

		By("a Node without pod CIDRs: nothing dropped, a Warning Event on the Node, the gauge at 0")
		Eventually(fake.Calls, 30*time.Second, 20*time.Millisecond).Should(HaveField("FullSync", BeNumerically(">=", 1)))
		Expect(drops()).To(BeEmpty())
		Expect(gauge()).To(BeZero())
		Eventually(func() []string { return events("UnknownPodsNotIsolated") }, 10*time.Second, 50*time.Millisecond).Should(
			ConsistOf(And(HavePrefix("Warning: "), ContainSubstring("not isolated"))))
		AddReportEntry("Warning Event", events("UnknownPodsNotIsolated")[0])

		By("the node IPAM controller assigns its CIDRs: the drops follow, the local pod sets hold the known pod")
		var n corev1.Node
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: name}, &n)).To(Succeed())
		n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.78.1.0/24", []string{"10.78.1.0/24", "fd00:78:1::/64"}
		Expect(k8sClient.Update(ctx, &n)).To(Succeed())
		Eventually(drops, 10*time.Second, 20*time.Millisecond).Should(Equal(
			"ip saddr 10.78.1.0/24 ip saddr != @local-pods-v4 counter drop comment \"from a local pod address the agent does not know yet\"\n" +
				"ip6 saddr fd00:78:1::/64 ip6 saddr != @local-pods-v6 counter drop comment \"from a local pod address the agent does not know yet\""))
		Expect(fake.Last().FindSet(nft.SetLocalPodsV4).Elements).To(HaveLen(1))
		Expect(gauge()).To(Equal(2.0))
		Eventually(func() []string { return events("UnknownPodsIsolated") }, 10*time.Second, 50*time.Millisecond).Should(
			ConsistOf(And(HavePrefix("Normal: "), ContainSubstring("10.78.1.0/24,fd00:78:1::/64"))))
		Expect(fake.Calls().FullSync).To(Equal(1), "a Node change is an incremental sync")

		By("a pod of another node has an address inside them (a CNI with its own IPAM): nothing dropped, said loudly")
		f.pod(ctx, "unk", "intruder", podOpts{node: "other-" + f.sfx, ips: []string{"10.78.1.77"}})
		Eventually(drops, 10*time.Second, 20*time.Millisecond).Should(BeEmpty())
		Expect(gauge()).To(BeZero())
		Eventually(func() []string { return events("UnknownPodsNotIsolated") }, 10*time.Second, 50*time.Millisecond).Should(
			ContainElement(ContainSubstring("node other-" + f.sfx + " has 10.78.1.77, inside them")))
		By("it goes: dropped again")
		Expect(k8sClient.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("unk"), Name: "intruder"}}, client.GracePeriodSeconds(0))).To(Succeed())
		Eventually(drops, 10*time.Second, 20*time.Millisecond).Should(ContainSubstring("ip saddr 10.78.1.0/24"))
		Expect(gauge()).To(Equal(2.0))

		By("the Node goes: nothing to drop by")
		deleteNode()
		Eventually(drops, 10*time.Second, 20*time.Millisecond).Should(BeEmpty())
		Expect(gauge()).To(BeZero())

		By("it comes back with other CIDRs (one family), which this node's pod is outside: nothing dropped, said loudly")
		createNode("10.79.3.0/24")
		Consistently(drops, time.Second, 20*time.Millisecond).Should(BeEmpty())
		Expect(gauge()).To(BeZero())
		Eventually(func() []string { return events("UnknownPodsNotIsolated") }, 10*time.Second, 50*time.Millisecond).Should(
			ContainElement(ContainSubstring("of this node has 10.78.1.5, outside them")))

		By("the pod is given an address of them: the drops follow")
		f.setStatus(ctx, "unk", "a", corev1.PodRunning, "10.79.3.5")
		Eventually(drops, 10*time.Second, 20*time.Millisecond).Should(Equal(
			"ip saddr 10.79.3.0/24 ip saddr != @local-pods-v4 counter drop comment \"from a local pod address the agent does not know yet\""))
		Expect(gauge()).To(Equal(1.0))

		By("a new agent finds them at its first (full) sync")
		fresh := nfttest.NewFake()
		startUnknownAgent(name, fresh)
		Eventually(func() string {
			if fresh.Last() == nil {
				return ""
			}
			return nft.Render(fresh.Last())
		}, 30*time.Second, 20*time.Millisecond).Should(ContainSubstring("ip saddr 10.79.3.0/24 ip saddr != @local-pods-v4"))
		Expect(nft.Render(fresh.Last())).To(Equal(nft.Render(fake.Last())), "a fresh agent's table equals the one that followed the changes")
	}, SpecTimeout(3*time.Minute))
})

// startUnknownAgent runs RunAgent for node with --unknown-pod-cidrs=node until the spec ends.
func startUnknownAgent(node string, applier nft.Applier) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, Options{
			Config: cfg, NodeName: node, TableName: nft.DefaultTable,
			MetricsAddr: "0", HealthAddr: "0", FullSyncPeriod: time.Hour,
			Applier: applier, UnknownPodCIDRsFromNode: true,
			UnknownPodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.255.0.0/16")}, // unused with FromNode
		}, zap.New(zap.WriteTo(GinkgoWriter)))
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done, time.Minute).Should(Receive(BeNil()))
	})
}
