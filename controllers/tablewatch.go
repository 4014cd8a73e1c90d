package controllers

import (
	"context"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftpolicy/nftpolicy/nft"
)

// tableWatch repairs, at once, what other processes change in the node's table.
// Without it, an `nft delete element`, or a firewall service's start that runs
// `flush ruleset` (Debian's nftables.service does), would stand until the next
// periodic full sync (--full-sync-period, minutes): a deleted table enforces
// nothing. The Applier tells each such transaction as the kernel commits it
// (nft.WatchesTable); the reconciler then reads the kernel's table and repairs
// it with the table it last compiled (a "repair" sync).
//
// The watch starts after the first sync. The Applier's own transactions are
// filtered out in the kernel, but while anyone listens the kernel builds a
// notification for each change it commits: +20-40% on a replacement of the
// whole table (30,000 pods' elements: 210-320 ms without a listener, 290-420
// with), which is the first sync's. A change made in the moment between that
// sync and the watch's start is the periodic full sync's, as before. The
// notifications are built for every table of the namespace, kube-proxy's too:
// its transactions pay the same, on their size.
type tableWatch struct {
	w     nft.WatchesTable
	r     *NodeReconciler
	ready *readiness
	log   logr.Logger
	retry time.Duration // after the watch fails

	mu      sync.Mutex
	last    time.Time // the last repair asked for
	pending bool      // a repair is scheduled
}

// repairInterval is the least time between two repairs asked for. Another
// process that keeps changing the table (a second agent with other flags, run
// by hand beside the DaemonSet's) would otherwise have the two repair each
// other's changes as fast as they can commit.
const repairInterval = time.Second

// Start implements manager.Runnable.
func (t *tableWatch) Start(ctx context.Context) error {
	// Both series from 0, so that an alert on their increase sees the first.
	foreignChanges.WithLabelValues("change")
	foreignChanges.WithLabelValues("lost")
	for !t.ready.synced.Load() {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
	for {
		err := t.w.WatchTable(ctx, t.changed)
		if ctx.Err() != nil {
			return nil
		}
		// Until it is back, the periodic full sync repairs, as without it; a
		// change meanwhile is looked for at once when it is.
		t.log.Error(err, "watching the table for other processes' changes failed; retrying", "in", t.retry)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(t.retry):
		}
		t.r.repairSoon()
	}
}

// changed is called by the watch for each foreign transaction.
func (t *tableWatch) changed(fc nft.ForeignChange) {
	kind := "change"
	if fc.Lost {
		kind = "lost"
	}
	foreignChanges.WithLabelValues(kind).Inc()
	t.mu.Lock()
	defer t.mu.Unlock()
	wait := time.Until(t.last.Add(repairInterval))
	log := t.log
	if wait > 0 {
		log = log.V(1) // the first of a burst is logged; the counter has them all
	}
	log.Info("another process changed the node's table: repairing it", "process", fc.Process,
		"changes", fc.Count, "first", fc.Changes, "lost", fc.Lost)
	switch {
	case wait <= 0:
		t.last = time.Now()
		t.r.repairSoon()
	case !t.pending:
		t.pending = true
		time.AfterFunc(wait, func() {
			t.mu.Lock()
			t.pending, t.last = false, time.Now()
			t.mu.Unlock()
			t.r.repairSoon()
		})
	}
}
