package explain

import (
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
)

// TestTierDenyGrowsRecheckInKernel: in strict mode (recheck) a connection that
// a change now denies is cut, also when the change only adds elements to a set,
// if that set is a Deny rule's. y/a holds a TCP connection to x/a:8700. An Admin
// policy denies x's ingress from namespaces labelled blocked=yes, none at first.
// Then y is labelled: the Deny rule's peer set gains y's pods and nothing else
// changes. The agent moves a node's epoch when compile.Narrows says the new table
// narrows the old one, so this is what decides whether the open connection is
// judged again; here each node's epoch moves exactly when Narrows says so, as
// the agent's does (controllers/strict.go), and the connection must be cut at
// its next packet.
func TestTierDenyGrowsRecheckInKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	lab := newKernelLab(t, []int{80})
	nss, pods := netpolref.UpstreamModel()
	block := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "block-marked"}}
	block.Spec.Tier, block.Spec.Priority = cnpv1.AdminTier, 5
	block.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{"ns": "x"}}
	block.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "marked", Action: "Deny",
		From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"blocked": "yes"}}}}}}
	cnps := []*cnpv1.ClusterNetworkPolicy{block}
	compileAll := func(nss []*corev1.Namespace) map[string]*nft.Ruleset {
		out := map[string]*nft.Ruleset{}
		for _, n := range []string{"node-1", "node-2"} {
			rs, problems := compile.Compile(compile.Snapshot{NodeName: n, Pods: pods, Namespaces: nss, ClusterNetworkPolicies: cnps,
				Nodes: netpolref.ModelNodes()}, compile.Options{Established: compile.EstablishedRecheck})
			if len(problems) > 0 {
				t.Fatal(problems)
			}
			out[n] = rs
		}
		return out
	}
	epochs := map[string]uint32{"node-1": 1, "node-2": 1}
	var last map[string]*nft.Ruleset
	// apply moves a node's epoch when its new table narrows its last one.
	apply := func(next map[string]*nft.Ruleset) map[string]bool {
		moved := map[string]bool{}
		for n, rs := range next {
			if last != nil && compile.Narrows(last[n], rs) {
				epochs[n]++
				moved[n] = true
			}
			stamped := rs.Clone()
			compile.StampEpoch(stamped, compile.DefaultCtMarkMask, epochs[n])
			if n == "node-2" {
				lab.load(lab.a, stamped) // y/a's node
			} else {
				lab.load(lab.b, stamped) // x/a's node
			}
		}
		last = next
		return moved
	}

	src, dst := firstIP(t, pods, "y/a"), firstIP(t, pods, "x/a")
	off := lab.place([]netip.Addr{src}, []netip.Addr{dst})
	defer off()
	apply(compileAll(nss))
	cl, srv := lab.tcpConn(src, dst, 8700)
	if err := exchange(cl, srv); err != nil {
		t.Fatalf("no namespace blocked: %v", err)
	}

	// y is labelled blocked=yes: only elements are added, to the Deny rule's set.
	relabelled := make([]*corev1.Namespace, len(nss))
	for i, ns := range nss {
		relabelled[i] = ns.DeepCopy()
		if ns.Name == "y" {
			relabelled[i].Labels["blocked"] = "yes"
		}
	}
	next := compileAll(relabelled)
	for _, op := range nft.Plan(last["node-1"], next["node-1"]).Ops {
		if op.Kind != nft.OpAddElements {
			t.Fatalf("relabelling y changed more than elements on node-1 (%v): the test no longer isolates the case", op.Kind)
		}
	}
	if moved := apply(next); !moved["node-1"] {
		t.Fatal("y's pods joined an Admin Deny rule's peers on node-1, and Narrows said the table did not narrow: strict mode would keep the open connection")
	}
	if err := exchange(cl, srv); err == nil {
		t.Fatalf("y blocked by an Admin Deny at epoch %d on node-1: the open connection from y/a lives on", epochs["node-1"])
	}
	t.Logf("y/a -> x/a:8700: cut once y's pods joined the Deny rule's set (node-1 epoch %d, node-2 epoch %d)", epochs["node-1"], epochs["node-2"])
}
