package controllers

import (
	"context"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestForeignChangeRepairedAtOnce: with the netlink Applier, another process's
// change to the table (an element deleted, then the whole ruleset flushed)
// asks for a sync at once, which reads the kernel's table and repairs it with
// the compiler as it is, long before the periodic full sync (an hour here).
// The repair is the agent's own change: it asks for nothing more.
func TestForeignChangeRepairedAtOnce(t *testing.T) {
	f, applier := newKernelFixture(t, "np-foreign")
	lastFull := f.r.lastFull

	ready := &readiness{}
	ready.MarkSynced()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&tableWatch{w: applier.Applier, r: f.r, ready: ready, log: logr.Discard(), retry: time.Second}).Start(ctx)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("the watch: %v", err)
		}
	}()
	time.Sleep(200 * time.Millisecond) // listening

	kicked := func(after string, from int32) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second) // a second change waits out repairInterval
		for f.kicks.Load() == from {
			if time.Now().After(deadline) {
				t.Fatalf("after %s: no sync asked for within 3 s", after)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if !f.r.repairDue.Load() {
			t.Fatalf("after %s: a sync was asked for, but no repair", after)
		}
	}
	changes := testutil.ToFloat64(foreignChanges.WithLabelValues("change"))
	repairs := testutil.ToFloat64(syncsTotal.WithLabelValues("repair", "ok"))

	kicks := f.kicks.Load()
	if _, err := applier.ns.NFT("", "delete", "element", "inet", nft.DefaultTable, nft.MapIngressV4, "{ 10.60.0.2 }"); err != nil {
		t.Fatal(err)
	}
	kicked("nft delete element", kicks)
	f.sync()
	if want := []string{"set " + nft.MapIngressV4 + ": 1 elements missing"}; applier.full.ReadAhead || !slices.Equal(applier.full.Drift, want) {
		t.Fatalf("the repair: %+v, want the kernel read, drift %q", applier.full, want)
	}
	if out, err := applier.ns.NFT("", "list", "map", "inet", nft.DefaultTable, nft.MapIngressV4); err != nil || !strings.Contains(out, "10.60.0.2") {
		t.Fatalf("the element was not restored: %v\n%s", err, out)
	}
	if f.r.repairDue.Load() || !f.r.lastFull.Equal(lastFull) {
		t.Errorf("after the repair: repair still due %v, last full sync moved %v", f.r.repairDue.Load(), !f.r.lastFull.Equal(lastFull))
	}

	kicks = f.kicks.Load()
	if _, err := applier.ns.NFT("", "flush", "ruleset"); err != nil {
		t.Fatal(err)
	}
	kicked("nft flush ruleset", kicks)
	f.sync()
	if out, err := applier.ns.NFT("", "list", "map", "inet", nft.DefaultTable, nft.MapIngressV4); err != nil || !strings.Contains(out, "10.60.0.2") {
		t.Fatalf("the table was not restored after flush ruleset: %v\n%s", err, out)
	}
	if n := testutil.ToFloat64(foreignChanges.WithLabelValues("change")) - changes; n != 2 {
		t.Errorf("nftpolicy_table_foreign_changes_total{kind=\"change\"} grew by %v, want 2", n)
	}
	if n := testutil.ToFloat64(syncsTotal.WithLabelValues("repair", "ok")) - repairs; n != 2 {
		t.Errorf("repair syncs: %v, want 2", n)
	}

	// The repairs were the agent's own transactions.
	kicks = f.kicks.Load()
	time.Sleep(300 * time.Millisecond)
	if f.kicks.Load() != kicks || f.r.repairDue.Load() {
		t.Errorf("the agent's own repair asked for another")
	}
}

// TestForeignChangesRepairedAtMostOnceASecond: a burst of foreign changes (a
// second agent fighting this one) asks for one repair at once and one more a
// second later, not one per change.
func TestForeignChangesRepairedAtMostOnceASecond(t *testing.T) {
	f := newRebuildFixture(t)
	tw := &tableWatch{r: f.r, log: logr.Discard()}
	kicks := f.kicks.Load()
	for range 20 {
		tw.changed(nft.ForeignChange{Count: 1, Changes: []string{"add element to set ingress-v4"}})
	}
	if n := f.kicks.Load() - kicks; n != 1 {
		t.Fatalf("20 foreign changes at once asked for %d repairs, want 1", n)
	}
	time.Sleep(repairInterval + 300*time.Millisecond)
	if n := f.kicks.Load() - kicks; n != 2 {
		t.Fatalf("a second later: %d repairs, want 2 (the burst's rest in one)", n)
	}
	time.Sleep(repairInterval + 300*time.Millisecond)
	if n := f.kicks.Load() - kicks; n != 2 {
		t.Fatalf("with no change since: %d repairs, want still 2", n)
	}
	tw.changed(nft.ForeignChange{Count: 1})
	if n := f.kicks.Load() - kicks; n != 3 {
		t.Fatalf("a change after a quiet second: %d repairs, want 3 (at once)", n)
	}
}

// failingPolicyRead fails the next read of a NetworkPolicy once.
type failingPolicyRead struct {
	client.Reader
	fail bool
}

func (f *failingPolicyRead) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*networkingv1.NetworkPolicy); ok && f.fail {
		f.fail = false
		return errors.New("injected cache read failure")
	}
	return f.Reader.Get(ctx, key, obj, opts...)
}

// TestRepairOutlivesAFailedSync: a sync that had a repair to do but failed
// before its FullSync (here, reading the cache) leaves the repair to the
// retry; the retry was an incremental Apply, and the foreign change stood
// until the periodic full sync (found by the review).
func TestRepairOutlivesAFailedSync(t *testing.T) {
	f := newRebuildFixture(t)
	f.r.Reader = &failingPolicyRead{Reader: f.reader, fail: true}
	before := f.applier.Calls()
	f.r.noteDirty(f.policy("from-peers", "peer")) // an event, then another process's change
	f.r.repairSoon()
	if _, err := f.r.Reconcile(f.ctx, f.r.request()); err == nil {
		t.Fatal("the sync did not fail")
	}
	if !f.r.repairDue.Load() {
		t.Error("the failed sync dropped the repair")
	}
	f.sync() // controller-runtime's retry
	if c := f.applier.Calls(); c.FullSync == before.FullSync {
		t.Errorf("the retry did no FullSync (Apply +%d): the repair was dropped", c.Apply-before.Apply)
	}
	if f.r.repairDue.Load() {
		t.Error("a repair is still due after the retry repaired")
	}
}

// TestDriftMovesTheEpoch: in strict mode, connections that a drifted table let
// through carry the epoch in force, as if the agent's table had allowed them.
// A repair that finds drift is followed at once by a sync that moves to the
// next epoch, so each is judged again by the repaired table; a repair that
// finds none moves nothing (found by the review).
func TestDriftMovesTheEpoch(t *testing.T) {
	nfttest.RequireRoot(t)
	applier := newKernelApplier(t, "np-drift-epoch")
	f := newRebuildFixture(t)
	f.r.Applier, f.r.Established, f.r.needFull = applier, compile.EstablishedRecheck, true
	f.sync()
	f.sync()
	e0 := f.r.strict.epoch
	listing, err := applier.ns.NFT("", "list", "table", "inet", nft.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	set := regexp.MustCompile(`set (ing-\S+-any-v4) `).FindStringSubmatch(listing)
	if set == nil {
		t.Fatalf("no ingress any-v4 set in:\n%s", listing)
	}

	// A repair that finds nothing: the epoch stays.
	f.r.repairSoon()
	f.sync()
	if len(applier.full.Drift) != 0 || f.r.strict.drifted || f.r.strict.epoch != e0 {
		t.Fatalf("a repair without drift: %+v, drifted %v, epoch %d (was %d)", applier.full, f.r.strict.drifted, f.r.strict.epoch, e0)
	}

	// Someone opens the target to 10.60.9.9: the repair closes it, and asks
	// for the sync that moves the epoch.
	if _, err := applier.ns.NFT("", "add", "element", "inet", nft.DefaultTable, set[1], "{ 10.60.9.9 }"); err != nil {
		t.Fatal(err)
	}
	kicks := f.kicks.Load()
	f.r.repairSoon()
	f.sync()
	if len(applier.full.Drift) == 0 || !f.r.strict.drifted || f.kicks.Load() == kicks {
		t.Fatalf("the repair of an added element: %+v, drifted %v, sync asked for %v", applier.full, f.r.strict.drifted, f.kicks.Load() != kicks)
	}
	f.sync()
	if f.r.strict.epoch == e0 || f.r.strict.drifted {
		t.Fatalf("the sync after the repair: epoch %d (was %d), drifted %v; want the next epoch", f.r.strict.epoch, e0, f.r.strict.drifted)
	}
	if v, found, err := applier.TableCtMark(nft.ChainForward, f.r.ctMarkMask()); err != nil || !found || v>>trailingZeros(f.r.ctMarkMask()) != f.r.strict.epoch {
		t.Fatalf("the kernel's epoch: %#x %v %v, want %d", v, found, err, f.r.strict.epoch)
	}
}
