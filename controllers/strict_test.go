package controllers

import (
	"context"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestEpochAdvance: no epoch comes round again without a sweep in between that
// left only the epoch then current, over several wraps, from a fresh start and
// from a restart that found an epoch in force.
func TestEpochAdvance(t *testing.T) {
	const mask = 0x00000700 // epochs 1-7: wraps come quickly
	for _, start := range []uint32{0, 1, 5, 7} {
		e := epochState{epoch: start}
		// onConns: the epochs connections may carry (idle ones keep theirs).
		onConns := map[uint32]bool{}
		for v := uint32(1); v <= compile.MaxEpoch(mask); v++ {
			onConns[v] = true // a previous agent's connections: anything
		}
		sweeps := 0
		for i := range 100 {
			cur := e.epoch
			next, sweep := e.advance(mask)
			if sweep {
				sweeps++
				for v := range onConns {
					if v != cur {
						delete(onConns, v)
					}
				}
			}
			if onConns[next] {
				t.Fatalf("start %d, change %d: epoch %d comes round while connections may carry it", start, i, next)
			}
			onConns[next] = true
		}
		// One sweep at the start, then one per cycle of 7 epochs (6 changes after it).
		if sweeps < 100/7 || sweeps > 100/6+1 {
			t.Errorf("start %d: %d sweeps in 100 changes", start, sweeps)
		}
	}
}

// TestStrictModePlansEachChangeOnce: in strict mode, a change that keeps the
// epoch is applied with the plan that weighed it (the Applier plans ahead from
// the table in force); one that moves the epoch is planned again after the
// stamp. Either way the kernel then holds exactly the table in force.
func TestStrictModePlansEachChangeOnce(t *testing.T) {
	nfttest.RequireRoot(t)
	f := newRebuildFixture(t)
	applier := &planCounter{kernelApplier: newKernelApplier(t, "np-plan-once")}
	f.r.Applier, f.r.Established, f.r.needFull = applier, compile.EstablishedRecheck, true
	f.sync()
	fresh := nfttest.NewNetNS(t, "np-plan-once-b")
	for _, step := range []struct {
		name          string
		change        func()
		narrows       bool // moves the epoch
		planned, sent int  // ApplyPlanned calls; those that sent the plan given
	}{
		{"a new peer", func() { f.pod("peer-2", "node-1", "10.60.1.3", "peer", false) }, false, 1, 1},
		{"a peer leaves", func() { f.pod("peer-1", "node-1", "10.60.1.2", "stranger", false) }, true, 0, 0},
		{"another new peer", func() { f.pod("peer-3", "node-1", "10.60.1.4", "peer", false) }, false, 1, 1},
		{"a new local pod", func() { f.pod("target-2", "node-0", "10.60.0.3", "target", false) }, true, 0, 0},
		{"a stale plan", func() {
			f.pod("peer-4", "node-1", "10.60.1.5", "peer", false)
			applier.before = func() { // another transaction between plan and apply
				other := f.r.strict.inForce.Clone()
				other.FindSet(nft.MapIngressV4).Elements = nil
				if _, err := applier.Applier.Apply(context.Background(), other); err != nil {
					t.Fatal(err)
				}
			}
		}, false, 1, 0},
	} {
		epoch := f.r.strict.epoch
		applier.planned, applier.sent = 0, 0
		step.change()
		f.sync()
		if moved := f.r.strict.epoch != epoch; moved != step.narrows {
			t.Errorf("%s: epoch %d -> %d, want it moved: %v", step.name, epoch, f.r.strict.epoch, step.narrows)
		}
		if applier.planned != step.planned || applier.sent != step.sent {
			t.Errorf("%s: %d applies of a weighed plan, %d sent as planned; want %d, %d", step.name, applier.planned, applier.sent, step.planned, step.sent)
		}
		if _, err := fresh.NFT("", "flush", "ruleset"); err != nil {
			t.Fatal(err)
		}
		if _, err := fresh.NFT(nft.Render(f.r.strict.inForce), "-f", "-"); err != nil {
			t.Fatal(err)
		}
		if got, want := kernelListing(t, applier.ns), kernelListing(t, fresh); got != want {
			t.Fatalf("%s: the kernel's table is not the table in force:\n%s\nwant:\n%s", step.name, got, want)
		}
	}
}

// planCounter counts the Applies that were handed a plan, and those of them
// that sent it (nothing applied since it was made); before, when set, runs once
// before the next of them.
type planCounter struct {
	*kernelApplier
	planned, sent int
	before        func()
}

func (a *planCounter) ApplyPlanned(ctx context.Context, p nft.Planned) (nft.Stats, error) {
	a.planned++
	if a.before != nil {
		a.before()
		a.before = nil
	}
	if _, current := a.PlanFrom(p.From, p.Desired); current {
		a.sent++
	}
	return a.kernelApplier.ApplyPlanned(ctx, p)
}

func kernelListing(t *testing.T, ns *nfttest.NetNS) string {
	t.Helper()
	out, err := ns.NFT("", "list", "table", "inet", nft.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	return nfttest.SortBlocks(out)
}
