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

// TestRead: what Read describes of an applied table renders exactly as the table
// applied (rules, comments, sets, intervals, concatenations, map verdicts), for the
// rich model and random compiled tables; a tampered element and rule show.
func TestRead(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np-read")
	a := newApplier(t, ns, "np")
	check := func(name string, want *nft.Ruleset) {
		t.Helper()
		mustApply(t, a, want)
		got, err := a.Read(context.Background(), want)
		if err != nil {
			t.Fatalf("%s: Read: %v", name, err)
		}
		if w, g := nft.Render(want), nft.Render(got); w != g {
			t.Fatalf("%s: read back differs:\n%s", name, diffText(w, g))
		}
	}
	check("rich", richModel("np"))
	observed := compile.Options{Table: "np", DenyLog: compile.DenyLog{Group: 7600, Rate: 10, Burst: 20}, PolicyCounters: true}
	for i := range 8 {
		w := netpolref.RandomWorld(rand.New(rand.NewPCG(11, uint64(i))))
		snap := compile.Snapshot{NodeName: "node-1", Pods: w.Pods, Namespaces: w.Namespaces, Policies: w.Policies}
		rs, _ := compile.Compile(snap, compile.Options{Table: "np"})
		check(fmt.Sprintf("random-%d", i), rs)
		// The agent's table with the deny log and policy counters on.
		rs, _ = compile.Compile(snap, observed)
		check(fmt.Sprintf("random-%d-observed", i), rs)
		// Without a hint, the deny log rules (statements only) and the objects
		// still read back as they are.
		got, err := a.Read(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range rs.Chains {
			for j, r := range c.Rules {
				if r.Log != nil && nft.RenderRule(got.Chain(c.Name).Rules[j]) != nft.RenderRule(r) {
					t.Errorf("random-%d: deny log rule read without hint as %s", i, nft.RenderRule(got.Chain(c.Name).Rules[j]))
				}
			}
		}
		if len(got.Objects) != len(rs.Objects) {
			t.Errorf("random-%d: %d objects read, %d applied", i, len(got.Objects), len(rs.Objects))
		}
		// Recheck mode (the agent's default): ct marks, ct direction, reply chains.
		recheck := observed
		recheck.Established = compile.EstablishedRecheck
		rr, _ := compile.Compile(snap, recheck)
		check(fmt.Sprintf("random-%d-recheck", i), rr)
		// Without a hint, the ct-stamp chain (ct mark set, accept) reads back.
		got, err = a.Read(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		if st, want := got.Chain(nft.ChainStamp), rr.Chain(nft.ChainStamp); st == nil || want == nil || nft.RenderRule(st.Rules[0]) != nft.RenderRule(want.Rules[0]) {
			t.Errorf("random-%d: ct-stamp read without hint: %v", i, st)
		}
	}

	// Tampering: an element gone, a rule added by hand.
	w := netpolref.RandomWorld(rand.New(rand.NewPCG(11, 3)))
	rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-1", Pods: w.Pods, Namespaces: w.Namespaces, Policies: w.Policies}, compile.Options{Table: "np"})
	mustApply(t, a, rs)
	if out, err := ns.NFT("", "insert", "rule", "inet", "np", "forward", "ip", "saddr", "192.0.2.1", "drop"); err != nil {
		t.Fatalf("nft insert: %v: %s", err, out)
	}
	got, err := a.Read(context.Background(), rs)
	if err != nil {
		t.Fatal(err)
	}
	if r := got.Chain("forward").Rules[0]; r.Comment != UnreadableRule {
		t.Errorf("hand-written rule read as %s", nft.RenderRule(r))
	}
	if n := len(got.Chain("forward").Rules); n != len(rs.Chain("forward").Rules)+1 {
		t.Errorf("forward has %d rules", n)
	}
	if !strings.Contains(nft.Render(got), UnreadableRule) {
		t.Error("no unreadable rule rendered")
	}
}
