package netlink

import (
	"context"
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
// ClusterNetworkPolicy tiers (the input hook, goto, exact port, port range and
// named port sets; in strict mode the reply twins), from random tiered clusters: the nft CLI and netlink must load the same
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
		for _, shape := range []string{"hook input", "goto ingress-tiers", "-ports ", "-ranges ", "-named-v4 ", "goto ingress-tiers-reply"} {
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
	if len(seen) != 6 {
		t.Errorf("the worlds did not cover every tier shape: %v", seen)
	}
	t.Logf("12 tiered tables, shapes covered: %v", seen)
}

// TestTierPortSetsUpgrade: an agent upgraded over the table an older one left,
// with the ClusterNetworkPolicy port sets of before the split (one interval
// -ports set per rule, interval named port sets: nfttest.ClusterPortsAsIntervals),
// adopts it: its first FullSync re-creates the reshaped sets and rewrites the
// rules that look them up in one batch, the table then equals a fresh load of the
// new one, and applying again sends nothing. Random tiered clusters, with the
// counters (kept across the upgrade) and, every other one, strict mode and the
// deny log.
func TestTierPortSetsUpgrade(t *testing.T) {
	upgradeTiers(t, 13, "np3-upg", nfttest.ClusterPortsAsIntervals, func(listing string) bool {
		return strings.Contains(listing, "type inet_proto . inet_service\n\t\tflags interval")
	}, "no ClusterNetworkPolicy rule with ports")
}

// TestTierFamilyUpgrade: an agent upgraded over the table an older one left, with
// the tier group chains of before the family split (one chain per group holding
// both families' rules, reached by jump, every peer set an interval set:
// nfttest.ClusterTiersMixedFamily), adopts it in its first FullSync, one batch:
// the maps' elements go to the new chains, the old chains go, peer sets of pods
// and nodes only are made again as hashes (same names), and the table then
// equals a fresh load of the new one;
// applying again sends nothing. Random tiered clusters, with the counters (kept
// across the upgrade) and, every other one, strict mode and the deny log.
func TestTierFamilyUpgrade(t *testing.T) {
	upgradeTiers(t, 17, "np3-fam", nfttest.ClusterTiersMixedFamily, func(listing string) bool {
		return strings.Contains(listing, ": jump adm-") || strings.Contains(listing, ": jump bl-")
	}, "no tier group on the node")
}

// upgradeTiers is an upgrade test over random tiered clusters (seed): a table
// made by the older agent (older, applied to the new table; isOlder checks its
// listing) is taken over by the new one's first FullSync, in one batch, and
// then equals a fresh load of the new table; applying again sends nothing.
// Every cluster has the counters, every other one strict mode and the deny
// log. It fails when no cluster had anything to upgrade (none says what).
func upgradeTiers(t *testing.T, seed uint64, netns string, older func(*nft.Ruleset) *nft.Ruleset, isOlder func(listing string) bool, none string) {
	requireKernel(t)
	ctx := context.Background()
	upgraded := 0
	for i := range 6 {
		w := netpolref.RandomTieredWorld(rand.New(rand.NewPCG(seed, uint64(i))))
		opts := compile.Options{Table: "np", PolicyCounters: true}
		if i%2 == 1 {
			opts.Established = compile.EstablishedRecheck
			opts.DenyLog = compile.DenyLog{Group: 100, Rate: 100, Burst: 20}
		}
		rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-1", Pods: w.Pods, Namespaces: w.Namespaces, Policies: w.Policies,
			ClusterNetworkPolicies: w.ClusterPolicies, Nodes: w.Nodes}, opts)
		old := older(rs.Clone())
		if nft.Render(old) == nft.Render(rs) {
			continue // nothing the older agent did differently on this node
		}
		upgraded++
		ns, fresh := nfttest.NewNetNS(t, fmt.Sprintf("%s-%d", netns, i)), nfttest.NewNetNS(t, fmt.Sprintf("%s-f%d", netns, i))
		mustApply(t, newApplier(t, ns, "np"), old)
		if text := listing(t, ns, "np"); !isOlder(text) {
			t.Fatalf("world %d: the older table is not in the older shape:\n%s", i, text)
		}
		a := newApplier(t, ns, "np")
		st, err := a.FullSync(ctx, rs)
		if err != nil {
			t.Fatalf("world %d: the upgraded agent's first sync: %v", i, err)
		}
		mustApply(t, newApplier(t, fresh, "np"), rs)
		if got, want := listing(t, ns, "np"), listing(t, fresh, "np"); got != want {
			t.Fatalf("world %d: the upgraded table differs from a fresh load:\n%s", i, diffText(want, got))
		}
		if st2, err := a.Apply(ctx, rs); err != nil || st2.Operations != 0 {
			t.Errorf("world %d: apply after the upgrade: %+v %v", i, st2, err)
		}
		// Every rule compares equal to its encoding (tiers, deny log, strict mode).
		if st3, err := a.FullSync(ctx, rs); err != nil || len(st3.Drift) != 0 || st3.Operations != 0 {
			t.Errorf("world %d: a full sync after the upgrade: %+v %v; want no drift and nothing sent", i, st3, err)
		}
		t.Logf("world %d (%s): upgraded: %v", i, opts.Established, st.Drift)
	}
	if upgraded == 0 {
		t.Fatalf("%s in any random cluster: the test proves nothing", none)
	}
}
