package netlink

import (
	"context"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestApplyPlanned: PlanFrom plans only from the very table last applied (with
// ShareDesired, the caller's own Ruleset); ApplyPlanned sends that plan, and
// plans again when a transaction since changed the table it starts from; the
// kernel ends with the desired table either way.
func TestApplyPlanned(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns, fresh := nfttest.NewNetNS(t, "np3-planned"), nfttest.NewNetNS(t, "np3-planned-b")
	a, err := New(Options{Table: "np", NetNSPath: ns.Path(), ShareDesired: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })

	r0 := richModel("np")
	if _, ok := a.PlanFrom(r0, r0); ok {
		t.Fatal("planned from a table before anything was applied")
	}
	mustApply(t, a, r0)
	r1 := withPodAddr(r0, "10.244.2.1")
	if _, ok := a.PlanFrom(r0.Clone(), r1); ok {
		t.Error("planned from a copy of the table last applied: only the very one is known to be in force")
	}
	p, ok := a.PlanFrom(r0, r1)
	if !ok || p.From != r0 || p.Desired != r1 || len(p.Tx.Ops) != 1 {
		t.Fatalf("PlanFrom(last, one pod more) = %v, %v: want one operation from r0", p, ok)
	}
	st, err := a.ApplyPlanned(ctx, p)
	if err != nil || st.Elements != 1 || st.Full {
		t.Fatalf("ApplyPlanned: %+v, %v", st, err)
	}
	if _, ok := a.PlanFrom(r1, r0); !ok {
		t.Error("no plan from the table just applied by ApplyPlanned")
	}
	// A plan made stale by an Apply after it: planned again, from r2.
	r2, r3 := withPodAddr(r1, "10.244.2.2"), withPodAddr(r1, "10.244.2.3")
	stale, ok := a.PlanFrom(r1, r3)
	if !ok {
		t.Fatal("no plan from r1")
	}
	mustApply(t, a, r2)
	if st, err := a.ApplyPlanned(ctx, stale); err != nil || st.Elements != 2 {
		t.Errorf("a stale plan: %+v, %v; want the plan from r2 (one element out, one in)", st, err)
	}
	nftRun(t, fresh, nft.Render(r3), "-f", "-")
	if got, want := listing(t, ns, "np"), listing(t, fresh, "np"); got != want {
		t.Errorf("after the stale plan the table differs from r3 (- fresh, + applied):\n%s", diffText(want, got))
	}
	// Nothing to send keeps the newer Ruleset as the one in force.
	same := r3.Clone()
	if st := mustApply(t, a, same); st.Operations != 0 {
		t.Fatalf("the same table again sent %d messages", st.Operations)
	}
	if _, ok := a.PlanFrom(same, r0); !ok {
		t.Error("after an Apply with nothing to send, no plan from the Ruleset it was given")
	}
}

// withPod is r with address a added to its first IPv4 verdict map, a Clone.
func withPodAddr(r *nft.Ruleset, a string) *nft.Ruleset {
	r = r.Clone()
	m := r.FindSet("vm4")
	m.Elements = append(m.Elements, nft.Element{Key: []nft.Value{ad(a)}, Verdict: to(nft.Goto, "c1"), Comment: "x/" + a})
	return r
}
