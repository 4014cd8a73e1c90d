package compile

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/nft"
)

// TestPodChangePatchesGroups: a peer's change keeps, with the peer's addresses
// to patch, a group of pod peers, one of pod peers and ipBlocks (one of them
// the peer's old address alone), and one with a named port on an egress rule
// (resolved on the peer); the next Compile is a fresh compilation's table,
// and the patched groups' sets are new slices (the table handed out before is
// not modified).
func TestPodChangePatchesGroups(t *testing.T) {
	target := modelPod("a", "target", "node-1", "10.0.0.1", "fd00::1", upstreamPorts())
	named := modelPod("a", "named", "node-1", "10.0.0.9", "fd00::9", upstreamPorts())
	named.Labels["pod"] = "named"
	peer := modelPod("a", "peer", "node-2", "10.0.0.2", "fd00::2", upstreamPorts())
	peer.Labels["role"] = "peer"
	tcp := corev1.ProtocolTCP
	port := func(p intstr.IntOrString) []networkingv1.NetworkPolicyPort {
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}}
	}
	peers := []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "peer"}}}}
	on := func(pod string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{"pod": pod}}
	}
	egress := []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	block := func(cidr string) networkingv1.NetworkPolicyPeer {
		return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr}}
	}
	pols := []*networkingv1.NetworkPolicy{
		{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "pods"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: on("target"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: port(intstr.FromInt32(80))}}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "blocks"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: on("target"),
			PolicyTypes: egress,
			Egress: []networkingv1.NetworkPolicyEgressRule{
				{To: append(slices.Clone(peers), block("10.1.0.0/16")), Ports: port(intstr.FromInt32(53))},
				{To: []networkingv1.NetworkPolicyPeer{block("10.0.0.2/32")}, Ports: port(intstr.FromInt32(443))},
			}}},
		{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "named"}, Spec: networkingv1.NetworkPolicySpec{PodSelector: on("named"),
			PolicyTypes: egress,
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: port(intstr.FromString("serve-80-tcp"))}}}},
	}
	c := NewCompiler("node-1", Options{})
	for _, p := range []*corev1.Pod{target, named, peer} {
		c.SetPod(p)
	}
	for _, np := range pols {
		c.SetPolicy(np)
	}
	before, _ := c.Compile()
	kept := nft.Render(before)
	if !strings.Contains(kept, "10.0.0.2 . tcp . 443") {
		t.Fatalf("the /32 block is not the peer's address on 443:\n%s", kept)
	}

	moved := peer.DeepCopy()
	moved.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.3"}, {IP: "fd00::3"}}
	c.SetPod(moved)
	byPolicy := map[string]*cachedGroup{}
	for _, f := range c.cached {
		byPolicy[f.policies[0].ref] = f
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2"), netip.MustParseAddr("10.0.0.3"), netip.MustParseAddr("fd00::3")}
	for _, ref := range []string{"a/pods", "a/blocks", "a/named"} {
		if f := byPolicy[ref]; f == nil || !slices.Equal(f.pending, want) {
			t.Fatalf("the group of %s after the peer moved: %+v; want it kept, to patch %v", ref, f, want)
		}
	}
	got, _ := c.Compile()
	fresh, _ := Compile(Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{target, named, moved}, Policies: pols}, Options{})
	if g, w := nft.Render(got), nft.Render(fresh); g != w {
		t.Fatalf("patched:\n%s\nfresh:\n%s", g, w)
	}
	if nft.Render(before) != kept {
		t.Fatal("the patch modified the table handed out before it")
	}
	for _, f := range c.cached {
		if len(f.pending) > 0 {
			t.Errorf("pending addresses after Compile: %v", f.pending)
		}
	}
}

// TestRelabelKeepsSharedAddress: two pods hold one address (a stale status);
// when one of them leaves a peer's selection by a label change, the address
// stays in the selection and in the group's sets, as a fresh compilation has it.
func TestRelabelKeepsSharedAddress(t *testing.T) {
	target := modelPod("a", "target", "node-1", "10.0.0.1", "", upstreamPorts())
	p1 := modelPod("a", "p1", "node-2", "10.0.0.5", "", upstreamPorts())
	p2 := modelPod("a", "p2", "node-2", "10.0.0.5", "", upstreamPorts())
	p1.Labels["role"], p2.Labels["role"] = "peer", "peer"
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "peers"}, Spec: networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "target"}},
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
			{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "peer"}}}}}},
	}}
	c := NewCompiler("node-1", Options{})
	for _, p := range []*corev1.Pod{target, p1, p2} {
		c.SetPod(p)
	}
	c.SetPolicy(np)
	c.Compile()
	left := p1.DeepCopy()
	left.Labels["role"] = "other"
	c.SetPod(left)
	got, _ := c.Compile()
	fresh, _ := Compile(Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{target, left, p2}, Policies: []*networkingv1.NetworkPolicy{np}}, Options{})
	if g, w := nft.Render(got), nft.Render(fresh); g != w {
		t.Fatalf("after one of two pods of 10.0.0.5 left:\n%s\nfresh:\n%s", g, w)
	}
	if !strings.Contains(nft.Render(got), "10.0.0.5") {
		t.Fatal("10.0.0.5 left the table though p2 still holds it")
	}
}
