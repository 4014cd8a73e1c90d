package compile

import (
	"fmt"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/trace"
)

// TestTierCostIgnoresOtherSubjects: a packet walks the same path, rule for rule,
// whether or not 300 ClusterNetworkPolicies select other pods; only the table grows.
func TestTierCostIgnoresOtherSubjects(t *testing.T) {
	nss, pods := upstreamModel()
	nsSel := func(name string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": name}}
	}
	mk := func(name string, tier cnpv1.Tier, prio int32, subject string) *cnpv1.ClusterNetworkPolicy {
		c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
		c.Spec.Tier, c.Spec.Priority = tier, prio
		c.Spec.Subject.Namespaces = nsSel(subject)
		c.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: "Deny", From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSel("y")}}}}
		c.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: "Accept",
			To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"192.168.0.0/16"}}}}}
		return c
	}
	few := []*cnpv1.ClusterNetworkPolicy{mk("x-admin", cnpv1.AdminTier, 10, "x"), mk("x-baseline", cnpv1.BaselineTier, 10, "x")}
	many := append([]*cnpv1.ClusterNetworkPolicy{}, few...)
	for i := range 300 {
		tier := cnpv1.AdminTier
		if i%2 == 1 {
			tier = cnpv1.BaselineTier
		}
		many = append(many, mk(fmt.Sprintf("z-%03d", i), tier, int32(i%7), "z"))
	}
	compileWith := func(cnps []*cnpv1.ClusterNetworkPolicy) (*nft.Ruleset, *trace.Tracer) {
		rs, _ := Compile(Snapshot{NodeName: "node-1", Pods: pods, Namespaces: nss, ClusterNetworkPolicies: cnps}, Options{})
		return rs, trace.New(rs)
	}
	rsFew, trFew := compileWith(few)
	rsMany, trMany := compileWith(many)
	addr := func(ns, name string) netip.Addr {
		for _, p := range pods {
			if p.Namespace == ns && p.Name == name {
				return refPodIPs(p)[0]
			}
		}
		t.Fatalf("no pod %s/%s", ns, name)
		return netip.Addr{}
	}
	// x/a is on node-1, subject of the x policies; y/b on node-1 too; z/c is on
	// node-1 and the 300 select it.
	cases := []struct{ from, to [2]string }{
		{[2]string{"y", "b"}, [2]string{"x", "a"}}, // x/a's ingress: denied by x-admin
		{[2]string{"x", "a"}, [2]string{"y", "b"}}, // x/a's egress, y/b unselected
	}
	for _, c := range cases {
		pkt := trace.Packet{Saddr: addr(c.from[0], c.from[1]), Daddr: addr(c.to[0], c.to[1]), L4Proto: nft.ProtoTCP, DPort: 80, CtState: nft.CtNew}
		a, err := trFew.Forward(pkt)
		if err != nil {
			t.Fatal(err)
		}
		b, err := trMany.Forward(pkt)
		if err != nil {
			t.Fatal(err)
		}
		if a.String() != b.String() {
			t.Errorf("%v -> %v: the path changed with 300 policies selecting other pods:\n%s\nvs\n%s", c.from, c.to, a, b)
		}
		// Every chain the packet entered holds the same rules: it was evaluated
		// alike, not only matched alike.
		var entered []string
		for _, st := range b.Steps {
			entered = append(entered, st.Chain)
			if st.Verdict.Chain != "" {
				entered = append(entered, st.Verdict.Chain)
			}
		}
		for _, name := range entered {
			cf, cm := rsFew.Chain(name), rsMany.Chain(name)
			if cf == nil || cm == nil || len(cf.Rules) != len(cm.Rules) {
				t.Errorf("%v -> %v: chain %s differs", c.from, c.to, name)
				continue
			}
			for i := range cf.Rules {
				if nft.RenderRule(cf.Rules[i]) != nft.RenderRule(cm.Rules[i]) {
					t.Errorf("%v -> %v: chain %s rule %d differs", c.from, c.to, name, i)
				}
			}
		}
	}
	cf, cm := rsFew.Counts(), rsMany.Counts()
	if cm.Rules <= cf.Rules {
		t.Fatalf("the 300 policies added no rules (%d vs %d): the test proves nothing", cm.Rules, cf.Rules)
	}
	t.Logf("table: %d rules with 2 policies, %d with 302; the packets' paths are identical", cf.Rules, cm.Rules)
}
