package compile

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/nft"
)

// TestPodChurnIsElementsOnly: a pod that comes or goes (elsewhere, or here in an
// existing group) changes set and map elements only, and only elements of its own
// addresses: no chain, rule or set is added, removed or rewritten, and no other pod's
// or range's element moves.
func TestPodChurnIsElementsOnly(t *testing.T) {
	checked, elems := 0, 0
	for i := range 500 {
		rng := rand.New(rand.NewPCG(11, uint64(i)))
		w := randomWorld(rng)
		// The pod that comes and goes: a copy of a random pod (same labels and ports),
		// with fresh addresses, here or on the other node.
		model := w.pods[rng.IntN(9)]
		churn := model.DeepCopy()
		churn.Name = "churn"
		churn.Spec.NodeName = []string{"node-1", "node-2"}[rng.IntN(2)]
		churn.Status.PodIPs = []corev1.PodIP{{IP: "10.244.3.33"}, {IP: "fd00:10:244:3::33"}}
		without := Snapshot{NodeName: "node-1", Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}
		with := without
		with.Pods = append(slices.Clone(w.pods), churn)

		before, _ := Compile(without, Options{})
		after, _ := Compile(with, Options{})
		if churn.Spec.NodeName == "node-1" && chainNames(before) != chainNames(after) {
			continue // the pod made a group of its own: chains may come, that is expected
		}
		checked++
		for _, tr := range []nft.Transaction{nft.Plan(before, after), nft.Plan(after, before)} {
			elems += tr.Elements()
			for _, op := range tr.Ops {
				if op.Kind != nft.OpAddElements && op.Kind != nft.OpDelElements {
					t.Fatalf("case %d: pod churn planned %v", i, op)
				}
				for _, e := range op.Elements {
					a := e.Key[0]
					if a.Range || !slices.Contains([]netip.Addr{netip.MustParseAddr("10.244.3.33"), netip.MustParseAddr("fd00:10:244:3::33")}, a.Addr) {
						t.Fatalf("case %d: pod churn moved element %s of %s", i, nft.RenderElement(op.Set.Type, e, op.Set.Verdicts), op.Name)
					}
				}
			}
		}
	}
	t.Logf("%d of 500 cases kept their chains; %d element changes checked", checked, elems)
}

func chainNames(rs *nft.Ruleset) string {
	var names []string
	for _, c := range rs.Chains {
		names = append(names, c.Name)
	}
	slices.Sort(names)
	return fmt.Sprint(names)
}
