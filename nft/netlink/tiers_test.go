package netlink

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestDifferentialTiers is TestDifferential on compiled tables with
// ClusterNetworkPolicy tiers (the input hook, goto, protocol/port and named port
// sets; in strict mode the reply twins), from random tiered clusters: the nft CLI and netlink must load the same
// bytecode. Each table is loaded fresh on both sides (a set's listing shows its
// elements in insertion order, which an incremental apply changes).
func TestDifferentialTiers(t *testing.T) {
	requireKernel(t)
	seen := map[string]bool{}
	for i := range 12 {
		nsA, nsB := nfttest.NewNetNS(t, fmt.Sprintf("np3-tiers-a%d", i)), nfttest.NewNetNS(t, fmt.Sprintf("np3-tiers-b%d", i))
		a := newApplier(t, nsB, "np")
		opts := compile.Options{Table: "np"}
		if i%2 == 1 { // strict mode: reply twins, ct direction, ct-stamp
			opts.Established = compile.EstablishedRecheck
		}
		w := netpolref.RandomTieredWorld(rand.New(rand.NewPCG(11, uint64(i))))
		rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-1", Pods: w.Pods, Namespaces: w.Namespaces, Policies: w.Policies,
			ClusterNetworkPolicies: w.ClusterPolicies, Nodes: w.Nodes}, opts)
		text := nft.Render(rs)
		for _, shape := range []string{"hook input", "goto ingress-tiers", "-ports ", "-named-v4 ", "goto ingress-tiers-reply"} {
			if strings.Contains(text, shape) {
				seen[shape] = true
			}
		}
		nftRun(t, nsA, text, "-f", "-")
		mustApply(t, a, rs)
		want, got := listing(t, nsA, "np"), listing(t, nsB, "np")
		if got != want {
			t.Fatalf("world %d: nft list differs (- nft -f, + netlink):\n%s", i, diffText(want, got))
		}
		wantNL, gotNL := netlinkListing(t, nsA, "np"), netlinkListing(t, nsB, "np")
		if gotNL != wantNL {
			t.Fatalf("world %d: nft --debug=netlink list differs (- nft -f, + netlink):\n%s", i, diffText(wantNL, gotNL))
		}
	}
	if len(seen) != 5 {
		t.Errorf("the worlds did not cover every tier shape: %v", seen)
	}
	t.Logf("12 tiered tables, shapes covered: %v", seen)
}
