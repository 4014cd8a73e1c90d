package controllers

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// The periodic full sync (NodeReconciler.FullSyncPeriod) repairs what
// incremental syncs may have missed: it builds a Compiler from a fresh read of
// the whole cache, and the kernel's table is compared with the last applied one
// and repaired. Building that Compiler takes ~0.25 s at 100k pods, and reading
// the kernel's table ~0.15 s (docs/scale.md); done inside the sync, every event
// arriving meanwhile waited for them. So both are done off the sync path:
//
//  1. The sync that finds the full sync due lists the small kinds (namespaces,
//     policies, Nodes, ClusterNetworkPolicies) under the lock, starts the
//     rebuild, and goes on as an incremental sync.
//  2. The rebuild reads every pod from the pod cache, builds the Compiler and
//     compiles it once, on its own goroutine, then has the Applier read the
//     kernel's table for the full sync (nft.ReadsAhead, when it can);
//     incremental syncs go on meanwhile and record in it what they served
//     (caughtUp).
//  3. It asks for a sync, which adopts it (adoptRebuild): what the incremental
//     syncs served since step 1, and what that sync serves, are read again
//     into the new Compiler, which replaces the old one; that sync is the full
//     one (the Applier repairs what its read ahead found, sending nothing
//     when the kernel holds what was applied).
//
// Every object changed after step 1's lists is read again in step 3 (its note
// is taken by a sync after step 1), and every change before them is in them,
// as the cache holds a change before its event arrives: the adopted Compiler
// holds what the cache holds at step 3, as a load would. A full sync for any
// other reason (start, failure, a ClusterNetworkPolicy version change) loads
// under the lock as before and drops a rebuild under way.

const (
	// rebuildCheck is how long a sync waits before checking again on a
	// rebuild whose request for a sync got lost: a safety net.
	rebuildCheck = 5 * time.Second
	// rebuildPoll is how often a reconciler with no controller to ask checks.
	rebuildPoll = 20 * time.Millisecond
)

// rebuild is a periodic full sync's read of the cache, under way or done.
type rebuild struct {
	started time.Time
	// served is what syncs served since the lists (the reconciler's lock).
	served map[objectRef]struct{}
	// nodePeers is nodePeers as of the lists.
	nodePeers map[string]struct{}
	own       *corev1.Node // this node's Node as of the lists

	done     chan struct{} // closed when the fields below are set
	compiler *compile.Compiler
	err      error
	elapsed  time.Duration
}

// ready reports whether b is done (false for nil).
func (b *rebuild) ready() bool {
	if b == nil {
		return false
	}
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// caughtUp records that a sync served changes (nothing for nil).
func (b *rebuild) caughtUp(changes map[objectRef]struct{}) {
	if b == nil {
		return
	}
	for ref := range changes {
		b.served[ref] = struct{}{}
	}
}

// startRebuild lists the small kinds and starts reading the pods and building
// the Compiler on another goroutine, which asks for a sync when done.
func (r *NodeReconciler) startRebuild(ctx context.Context, log logr.Logger) error {
	in, err := r.readCache(ctx)
	if err != nil {
		return err
	}
	b := &rebuild{started: time.Now(), served: map[objectRef]struct{}{}, nodePeers: in.nodePeers(), own: in.own,
		done: make(chan struct{})}
	opts, epoch, pods, node := r.compileOptions(), r.strict.epoch, r.pods(), r.NodeName
	applier := r.Applier
	r.rebuild = b
	log.V(1).Info("full sync due: reading the cache off the sync path")
	go func() {
		c, err := in.compiler(ctx, node, opts, epoch, pods)
		if err == nil {
			// The first compile of a Compiler is its longest: done here, the
			// adopting sync compiles only what changed since.
			c.Compile()
			// And the full sync's read of the kernel's table (nft.ReadsAhead),
			// last, so that it is as recent as can be. If it fails, the full
			// sync reads as before.
			if ra, ok := applier.(nft.ReadsAhead); ok {
				if rerr := ra.ReadAhead(ctx); rerr != nil {
					log.Info("the full sync will read the kernel's table itself, holding up changes meanwhile", "reason", rerr.Error())
				}
			}
		}
		b.compiler, b.err, b.elapsed = c, err, time.Since(b.started)
		syncDuration.WithLabelValues("rebuild").Observe(b.elapsed.Seconds())
		close(b.done)
		r.askSync()
	}()
	return nil
}

// adoptRebuild makes the done rebuild's Compiler the reconciler's, caught up
// with what syncs served since its lists and with changes (this sync's).
// A failed rebuild is replaced by a load.
func (r *NodeReconciler) adoptRebuild(ctx context.Context, changes map[objectRef]struct{}, log logr.Logger) error {
	b := r.rebuild
	r.rebuild = nil
	if b.err != nil {
		log.Error(b.err, "reading the cache off the sync path failed; reading it in this sync")
		var err error
		r.compiler, err = r.load(ctx, log)
		return err
	}
	b.caughtUp(changes)
	r.compiler = b.compiler
	// As load does, as of the lists; the catching up below does the rest.
	r.remoteNodes, r.nodesLoaded = nil, false
	r.nodePeers = b.nodePeers
	if r.UnknownPodCIDRsFromNode {
		r.ownNode(b.own)
		if err := r.checkPods(ctx); err != nil {
			return err
		}
		r.settleUnknown(log)
		r.compiler.SetUnknownLocalPods(r.unknownCIDRs())
	}
	if r.strict.epoch != 0 {
		r.compiler.SetEpoch(r.strict.epoch)
	}
	if err := r.update(ctx, b.served, log); err != nil {
		return fmt.Errorf("catching up the cache read off the sync path: %w", err)
	}
	log.V(1).Info("read the cache off the sync path", "elapsed", b.elapsed, "caughtUp", len(b.served))
	return nil
}
