package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// TestPeriodicFullSyncUnderChurn (make bench; NFTPOLICY_BENCH=1, root) measures
// what periodic full syncs cost the changes arriving meanwhile, at the
// control-plane benchmark's 100k point: node-0's reconciler (policy counters,
// strict mode) with the netlink Applier in a network namespace, 100 remote
// pods' tier labels changed every 5 ms (each change changes node-0's table),
// and a full sync due every 2 s, for 12 s. Once with the full syncs read
// inside the sync (what a needed one does: at start, after a failure) and
// once as the periodic one now does, read off the sync path (rebuild.go,
// nft/netlink ahead.go); each change's wait is from its write to the cache to
// the end of the sync that served it.
func TestPeriodicFullSyncUnderChurn(t *testing.T) {
	if os.Getenv("NFTPOLICY_BENCH") != "1" {
		t.Skip("a benchmark: set NFTPOLICY_BENCH=1 (make bench)")
	}
	nfttest.RequireRoot(t)
	nss, store, pods, nps := benchCluster(benchcluster.Shape100k)
	report := func(name, format string, args ...any) {
		line := fmt.Sprintf("%s: %s", name, fmt.Sprintf(format, args...))
		t.Log(line)
		if out := os.Getenv("NFTPOLICY_BENCH_OUT"); out != "" {
			if f, err := os.OpenFile(filepath.Join(out, "fullsync.txt"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				fmt.Fprintln(f, line)
				f.Close()
			}
		}
	}
	p99 := map[string]time.Duration{}
	for _, read := range []string{"sync", "ahead"} {
		waits, fulls, ahead, changed := churnWithFullSyncs(t, nss, store, pods, nps, read == "ahead")
		q := func(p float64) time.Duration { return waits[int(p*float64(len(waits)-1))] }
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		p99[read] = q(.99)
		report("full_sync_churn_wait_p50_ms_"+read, "%.2f", ms(q(.5)))
		report("full_sync_churn_wait_p99_ms_"+read, "%.2f", ms(q(.99)))
		report("full_sync_churn_wait_max_ms_"+read, "%.2f", ms(waits[len(waits)-1]))
		report("full_sync_churn_changes_"+read, "%d changes, %d table changes, %d full syncs, %d read ahead", len(waits), changed, fulls, ahead)
		if read == "ahead" && ahead != fulls {
			t.Errorf("%d of %d full syncs read ahead", ahead, fulls)
		}
	}
	report("full_sync_churn_wait_p99_ratio", "%.1f", float64(p99["sync"])/float64(p99["ahead"]))
}

// churnWithFullSyncs runs the churn of TestPeriodicFullSyncUnderChurn and
// returns the changes' waits, sorted, the full syncs done, how many of them
// read ahead, and the syncs that changed the table.
func churnWithFullSyncs(t *testing.T, nss []*corev1.Namespace, store toolscache.Store, pods []*corev1.Pod, nps []*networkingv1.NetworkPolicy, ahead bool) ([]time.Duration, int, int, int) {
	applier := newKernelApplier(t, "np-churn")
	r := &NodeReconciler{Reader: &memReader{nss: nss, nps: nps}, Pods: storePods{store}, NodeName: "node-0", Table: nft.DefaultTable,
		Applier: applier, FullSyncPeriod: time.Hour, PolicyCounters: true, Established: compile.EstablishedRecheck}
	kicked := make(chan struct{}, 1)
	r.setKick(func() {
		select {
		case kicked <- struct{}{}:
		default:
		}
	})
	ctx := context.Background()
	sync := func() {
		if _, err := r.Reconcile(ctx, r.request()); err != nil {
			t.Fatal(err)
		}
	}
	sync()
	// Remote pods whose tier change, and change back, each change the table.
	in := &podInterner{}
	var recs [][2]*cachedPod
	for _, orig := range pods {
		if orig.Spec.NodeName == "node-0" || len(recs) == 100 {
			continue
		}
		changed := orig.DeepCopy()
		changed.Labels = map[string]string{"app": orig.Labels["app"], "tier": "tier-x"}
		pair := [2]*cachedPod{in.record(changed), in.record(orig)}
		before := applier.changed
		for _, rec := range pair {
			if err := store.Update(rec); err != nil {
				t.Fatal(err)
			}
			r.noteDirty(rec)
			sync()
		}
		if applier.changed == before+2 {
			recs = append(recs, pair)
		}
	}
	if len(recs) == 0 {
		t.Fatal("no remote pod whose tier change changes node-0's table")
	}
	applier.changed = 0
	ahead0 := testutil.ToFloat64(fullSyncReads.WithLabelValues("ahead"))

	events, stop := make(chan time.Time, 100000), make(chan struct{})
	go func() { // the churn: the cache, then the note, as the informer does
		defer close(events)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			rec := recs[(i/2)%len(recs)][i%2]
			if err := store.Update(rec); err != nil {
				t.Error(err)
			}
			r.noteDirty(rec)
			events <- time.Now()
		}
	}()
	// The controller: a sync whenever something waits, a full sync due every 2 s.
	var waits []time.Duration
	var pending []time.Time
	fulls := 0
	end, nextFull := time.Now().Add(12*time.Second), time.Now().Add(2*time.Second)
	for time.Now().Before(end) {
		select {
		case e := <-events:
			pending = append(pending, e)
		case <-kicked:
		case <-time.After(20 * time.Millisecond):
		}
		for len(events) > 0 {
			pending = append(pending, <-events)
		}
		if time.Now().After(nextFull) {
			nextFull = time.Now().Add(2 * time.Second)
			fulls++
			if ahead {
				r.lastFull = time.Now().Add(-2 * r.FullSyncPeriod)
			} else {
				r.needFull = true
			}
		}
		served := pending
		pending = nil
		sync()
		done := time.Now()
		for _, e := range served {
			waits = append(waits, done.Sub(e))
		}
	}
	close(stop)
	for range events {
	}
	if r.rebuild != nil { // the last one, still under way
		<-r.rebuild.done
		fulls--
	}
	slices.Sort(waits)
	return waits, fulls, int(testutil.ToFloat64(fullSyncReads.WithLabelValues("ahead")) - ahead0), applier.changed
}
