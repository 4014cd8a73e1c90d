package compile

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/trace"
)

// TestSharedAddressFailsClosed: local pods that claim one address (an old pod
// whose sandbox the CNI tore down while its status still says Running, and the
// new pod that got its address; or a broken IPAM). The kernel cannot tell
// their packets apart, so no claimant's policies may judge the others' traffic
// where that would allow what theirs deny. The first pod by name whose
// policies allowed a client judged the address: a pod whose policy allows
// nothing was reachable. Now: one claimant isolated, the other not: the
// isolated one's policies (narrower than none); both isolated by different
// policies: dropped; an Admin ClusterNetworkPolicy selecting one of them: the
// Admin tier drops. The same table whatever the order the pods came in, and
// incrementally as from scratch.
func TestSharedAddressFailsClosed(t *testing.T) {
	pod := func(ns, name, node, ip string, app string) *corev1.Pod {
		p := modelPod(ns, name, node, ip, "", upstreamPorts())
		p.Labels["app"] = app
		return p
	}
	ingressFrom := func(ns, name, app, from string) *networkingv1.NetworkPolicy {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
		np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if from != "" {
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{}, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": from}}}}}}
		}
		return np
	}
	admitAll := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "open-old"}}
	admitAll.Spec.Tier, admitAll.Spec.Priority = cnpv1.AdminTier, 10
	admitAll.Spec.Subject.Pods = &cnpv1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "old"}}}
	admitAll.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: "Accept",
		From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}

	baselineDenyNew := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-new"}}
	baselineDenyNew.Spec.Tier, baselineDenyNew.Spec.Priority = cnpv1.BaselineTier, 10
	baselineDenyNew.Spec.Subject.Pods = &cnpv1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "new"}}}
	baselineDenyNew.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: "Deny",
		From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}

	client := pod("c", "client", "node-2", "10.0.2.2", "client")
	old := pod("a-team", "old", "node-1", "10.0.1.9", "old")
	fresh := pod("z-team", "new", "node-1", "10.0.1.9", "new")
	oldOpen := ingressFrom("a-team", "open", "old", "client") // old allows the client
	newNone := ingressFrom("z-team", "none", "new", "")       // new allows nothing
	newClient := ingressFrom("z-team", "client", "new", "client")
	twin := pod("a-team", "twin", "node-1", "10.0.1.9", "old") // old's policies select it too

	cases := []struct {
		name     string
		second   *corev1.Pod // the pod that shares old's address
		policies []*networkingv1.NetworkPolicy
		cnps     []*cnpv1.ClusterNetworkPolicy
		allowed  bool
	}{
		{"both isolated, old allows the client, new nothing", fresh, []*networkingv1.NetworkPolicy{oldOpen, newNone}, nil, false},
		{"only new isolated, allowing nothing", fresh, []*networkingv1.NetworkPolicy{newNone}, nil, false},
		{"only old isolated, allowing the client", fresh, []*networkingv1.NetworkPolicy{oldOpen}, nil, true},
		// Different policies that allow alike still differ: dropped (the
		// table does not compare what policies allow).
		{"both isolated by policies allowing the client", fresh, []*networkingv1.NetworkPolicy{oldOpen, newClient}, nil, false},
		{"both isolated by one policy (one group)", twin, []*networkingv1.NetworkPolicy{oldOpen}, nil, true},
		{"an Admin Accept of old, new isolated", fresh, []*networkingv1.NetworkPolicy{newNone}, []*cnpv1.ClusterNetworkPolicy{admitAll}, false},
		{"an Admin Accept of both (one group)", twin, []*networkingv1.NetworkPolicy{newNone}, []*cnpv1.ClusterNetworkPolicy{admitAll}, true},
		// NetworkPolicy's chain for old would decide before new's Baseline Deny.
		{"old isolated allowing the client, a Baseline Deny of new", fresh, []*networkingv1.NetworkPolicy{oldOpen}, []*cnpv1.ClusterNetworkPolicy{baselineDenyNew}, false},
	}
	for _, mode := range []Established{EstablishedKeep, EstablishedRecheck} {
		for _, c := range cases {
			what := fmt.Sprintf("%s (%v)", c.name, mode)
			opts := Options{Established: mode}
			snap := Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{client, old, c.second}, Policies: c.policies, ClusterNetworkPolicies: c.cnps}
			rs, problems := Compile(snap, opts)
			if len(problems) != 1 {
				t.Errorf("%s: problems %v, want the shared address", what, problems)
			}
			if err := rs.Validate(); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			// Another order, and incrementally: the same table.
			snap.Pods = []*corev1.Pod{c.second, client, old}
			other, _ := Compile(snap, opts)
			inc := NewCompiler("node-1", opts)
			inc.SetPod(old)
			inc.SetPod(client)
			for _, p := range c.policies {
				inc.SetPolicy(p)
			}
			for _, p := range c.cnps {
				inc.SetClusterNetworkPolicy(p)
			}
			inc.Compile()
			inc.SetPod(c.second)
			incremental, _ := inc.Compile()
			for _, o := range []*nft.Ruleset{other, incremental} {
				if a, b := nft.Render(rs), nft.Render(o); a != b {
					t.Errorf("%s: the table depends on the order the pods came in:\n%s", what, lineDiff(a, b))
				}
			}
			tr, err := trace.New(rs).Hook("forward", trace.Packet{Saddr: netip.MustParseAddr("10.0.2.2"), Daddr: netip.MustParseAddr("10.0.1.9"),
				L4Proto: 6, DPort: 80, CtState: nft.CtNew})
			if err != nil {
				t.Fatal(err)
			}
			if got := tr.Verdict != nft.Drop; got != c.allowed {
				t.Errorf("%s: client -> 10.0.1.9 tcp/80: allowed %v, want %v\n%s", what, got, c.allowed, linesOf(rs, "10.0.1.9"))
			}
		}
	}
}

// linesOf is the rendered table's lines that mention s.
func linesOf(rs *nft.Ruleset, s string) string {
	var out []string
	for _, l := range strings.Split(nft.Render(rs), "\n") {
		if strings.Contains(l, s) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n")
}
