package controllers

import (
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// Strict mode (--established=recheck): the reconciler keeps the epoch of the table in
// force and moves to the next one, in a transaction of its own right after any change
// that may deny an open connection (compile.Narrows). nft/doc.go, "Established
// connections", has the why.

var (
	epochChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_epoch_changes_total",
		Help: "Policy changes that made every open connection through this node be judged again (strict mode).",
	})
	epochCleared = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_epoch_cleared_connections_total",
		Help: "Connections idle since an epoch was last used, whose mark was cleared before the epoch was used again (strict mode).",
	})
)

func init() { metrics.Registry.MustRegister(epochChanges, epochCleared) }

// epochState is the reconciler's strict mode state; guarded by the reconciler's mu.
type epochState struct {
	epoch   uint32       // of the table in force; 0 before the first sync
	inForce *nft.Ruleset // the last table applied, stamped with epoch; nil when unknown
	// drifted: a full sync or a repair found the kernel's table other than
	// inForce. Connections it let through carry the epoch in force, as if
	// inForce had allowed them: the next sync moves to a new epoch, so that
	// each is judged again.
	drifted bool
	// guard is the first epoch that connections may still carry from before the
	// last sweep (ConnMarks.ClearCtMark, which leaves only the epoch then current):
	// moving to it again needs a sweep first. 0 before the first sweep.
	guard uint32
}

// advance moves to the epoch after e.epoch (next) and returns the epoch that the
// change's own transaction stamps (prior: e.epoch, or with none in force the
// epoch before next), which the move retires (stampEpoch says why). It reports
// whether connections must be swept first (keeping only e.epoch) because next
// may still be on connections idle since its last use: at the first change of
// this process (an earlier agent's connections may carry any epoch), and once
// per cycle of epochs.
func (e *epochState) advance(mask uint32) (prior, next uint32, sweep bool) {
	next = compile.NextEpoch(e.epoch, mask)
	prior = e.epoch
	if prior == 0 {
		prior = compile.MaxEpoch(mask) // the one before 1: the last to come round
	}
	if e.guard == 0 || next == e.guard {
		sweep = true
		// After the sweep, only e.epoch (if any) is on connections, and then
		// prior: the first of them to come round again.
		e.guard = prior
	}
	e.epoch = next
	return prior, next, sweep
}

// compileOptions are the reconciler's compile options.
func (r *NodeReconciler) compileOptions() compile.Options {
	return compile.Options{Table: r.Table, DenyLog: r.DenyLog, PolicyCounters: r.PolicyCounters,
		Established: r.Established, CtMarkMask: r.ctMarkMask(), UnknownLocalPods: r.unknownCIDRs(), SyncedBoot: r.SyncedBoot}
}

func (r *NodeReconciler) ctMarkMask() uint32 {
	if r.CtMarkMask == 0 {
		return compile.DefaultCtMarkMask
	}
	return r.CtMarkMask
}

// stampEpoch gives desired (just compiled, at the compiler's epoch) the epoch it
// must carry: the one in force when desired cannot deny what the table in force
// allows. Else the epoch moves, in a transaction of its own after the change
// (moved): desired is stamped with the epoch in force (prior), and moved is
// desired stamped with the next one, which the compiler then keeps. The kernel
// makes a transaction's rules visible to packets before it has committed the
// new contents of its interval sets: a packet in between walks the new rules
// with the old elements, say an address the change removes from an allow set,
// and ct-stamp would give its connection the new epoch for good (test/e2e's
// strict restart spec, 2 runs in 111; TestEpochMovesAlone). Stamped with prior,
// such a connection is judged again at the move, whose transaction changes no
// set. At the first sync of this process the epoch in force is read from the
// kernel (a previous agent's), and the next one is taken whatever it was: the
// table may have changed while no agent ran. Before an epoch can come round
// again to connections idle since its last use, every connection's epoch but
// the current one is cleared (advance says when), so that those connections
// are judged again.
//
// For an incremental sync whose epoch stays, it returns the Applier's plan of
// desired when that plan answered whether desired narrows (narrows): the
// Apply sends it rather than planning again.
func (r *NodeReconciler) stampEpoch(desired *nft.Ruleset, full bool, log logr.Logger) (planned *nft.Planned, moved *nft.Ruleset, err error) {
	if r.Established != compile.EstablishedRecheck {
		return nil, nil, nil
	}
	mask := r.ctMarkMask()
	cm, _ := r.Applier.(nft.ConnMarks)
	if r.strict.epoch == 0 && cm != nil {
		v, found, err := cm.TableCtMark(nft.ChainForward, mask)
		if err != nil {
			return nil, nil, fmt.Errorf("reading the epoch in force: %w", err)
		}
		if found {
			r.strict.epoch = v >> trailingZeros(mask)
			log.V(1).Info("epoch in force", "epoch", r.strict.epoch)
		}
	}
	if r.strict.epoch != 0 && !r.strict.drifted {
		narrows, planned := r.narrows(desired, full)
		if !narrows {
			compile.StampEpoch(desired, mask, r.strict.epoch)
			return planned, nil, nil
		}
	}
	cur := r.strict.epoch
	prior, next, sweep := r.strict.advance(mask)
	if sweep && cm != nil {
		start := time.Now()
		n, err := cm.ClearCtMark(mask, compile.EpochMark(cur, mask))
		if err != nil {
			r.strict.epoch, r.strict.guard = cur, 0 // sweep again next time
			return nil, nil, fmt.Errorf("clearing old epochs before epoch %d: %w", next, err)
		}
		epochCleared.Add(float64(n))
		log.V(1).Info("cleared old epochs from idle connections", "kept", cur, "next", next, "connections", n, "elapsed", time.Since(start))
	}
	r.strict.inForce = nil // until the apply succeeds
	r.compiler.SetEpoch(next)
	compile.StampEpoch(desired, mask, prior)
	epochChanges.Inc()
	return nil, compile.WithEpoch(desired, mask, next), nil
}

// narrows reports whether desired may deny what the table in force allows
// (compile.Narrows). For an incremental sync, when the Applier plans ahead
// from the table in force and desired was compiled with the epoch in force
// (so that stamping it changes nothing), the Applier's plan answers, and is
// returned for the Apply to send: one plan per change instead of two.
func (r *NodeReconciler) narrows(desired *nft.Ruleset, full bool) (bool, *nft.Planned) {
	if pa, ok := r.Applier.(nft.PlansAhead); ok && !full && r.compiler.Epoch() == r.strict.epoch {
		if p, ok := pa.PlanFrom(r.strict.inForce, desired); ok { // false with nothing in force
			return compile.NarrowsPlan(p.Tx, desired), &p
		}
	}
	return compile.Narrows(r.strict.inForce, desired), nil
}

// epochApplied records that desired is in force.
func (r *NodeReconciler) epochApplied(desired *nft.Ruleset) {
	if r.Established == compile.EstablishedRecheck {
		r.strict.inForce = desired
		r.strict.drifted = false
	}
}

func trailingZeros(m uint32) uint32 {
	n := uint32(0)
	for m != 0 && m&1 == 0 {
		m >>= 1
		n++
	}
	return n
}
