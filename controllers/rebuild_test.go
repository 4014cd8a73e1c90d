package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// gatedPods is a pod source whose each, once armed, waits for the test to open
// the gate (and then fails with fail, if set): it holds a rebuild between its
// lists and its read of the pods.
type gatedPods struct {
	storePods
	armed   atomic.Bool
	reached chan struct{}
	gate    chan struct{}
	fail    error
}

func (g *gatedPods) each(ctx context.Context, fn func(*compile.Pod)) error {
	if g.armed.CompareAndSwap(true, false) {
		close(g.reached)
		<-g.gate
		if g.fail != nil {
			return g.fail
		}
	}
	return g.storePods.each(ctx, fn)
}

// rebuildFixture is a node-0 reconciler over an in-memory cache: one namespace,
// a policy isolating a local pod, peers on other nodes.
type rebuildFixture struct {
	t       *testing.T
	ctx     context.Context
	reader  *memReader
	store   toolscache.Store
	pods    *gatedPods
	applier *nfttest.Fake
	r       *NodeReconciler
	kicks   atomic.Int32
}

func newRebuildFixture(t *testing.T) *rebuildFixture {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "rb", Labels: map[string]string{"kubernetes.io/metadata.name": "rb"}}}
	f := &rebuildFixture{t: t, ctx: context.Background(), reader: &memReader{nss: []*corev1.Namespace{ns}},
		store: toolscache.NewStore(toolscache.MetaNamespaceKeyFunc), applier: nfttest.NewFake()}
	f.reader.nps = []*networkingv1.NetworkPolicy{f.policy("from-peers", "peer")}
	f.pods = &gatedPods{storePods: storePods{f.store}}
	f.pod("target", "node-0", "10.60.0.2", "target", false)
	f.pod("peer-1", "node-1", "10.60.1.2", "peer", false)
	f.r = &NodeReconciler{Reader: f.reader, Pods: f.pods, NodeName: "node-0", Table: nft.DefaultTable, Applier: f.applier,
		Log: logr.Discard(), cnp: &clusterPolicyAPI{}, FullSyncPeriod: time.Hour}
	f.r.setKick(func() { f.kicks.Add(1) })
	f.sync()
	return f
}

// policy admits pods labelled role=peerRole to pods labelled app=target.
func (f *rebuildFixture) policy(name, peerRole string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "rb", Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": peerRole}}}}}},
		},
	}
}

// pod puts a pod in the cache, and notes it as changed unless missed (an event
// the reconciler never got).
func (f *rebuildFixture) pod(name, node, ip, role string, missed bool) {
	p := testPod("rb", name, ip, false)
	p.Spec.NodeName, p.Status.Phase = node, corev1.PodRunning
	p.Labels = map[string]string{"role": role}
	if role == "target" {
		p.Labels = map[string]string{"app": "target"}
	}
	rec := (&podInterner{}).record(p)
	if err := f.store.Update(rec); err != nil {
		f.t.Fatal(err)
	}
	if !missed && f.r != nil {
		f.r.noteDirty(rec)
	}
}

func (f *rebuildFixture) sync() {
	f.t.Helper()
	if _, err := f.r.Reconcile(f.ctx, f.r.request()); err != nil {
		f.t.Fatal(err)
	}
}

// due makes the periodic full sync due.
func (f *rebuildFixture) due() { f.r.lastFull = time.Now().Add(-2 * f.r.FullSyncPeriod) }

// startRebuild makes the full sync due and runs the sync that starts its
// rebuild, which then waits at its read of the pods.
func (f *rebuildFixture) startRebuild() {
	f.t.Helper()
	f.pods.reached, f.pods.gate = make(chan struct{}), make(chan struct{})
	f.pods.armed.Store(true)
	f.due()
	before := f.applier.Calls()
	f.sync()
	if f.r.rebuild == nil {
		f.t.Fatal("the due full sync started no rebuild")
	}
	if c := f.applier.Calls(); c.FullSync != before.FullSync {
		f.t.Fatalf("the sync that started the rebuild was a full one: calls %+v, before %+v", c, before)
	}
	<-f.pods.reached
}

// finish lets the rebuild read the pods and waits until it asked for a sync.
func (f *rebuildFixture) finish() {
	f.t.Helper()
	kicks := f.kicks.Load()
	b := f.r.rebuild
	close(f.pods.gate)
	if b == nil {
		return
	}
	<-b.done
	for f.kicks.Load() == kicks {
		time.Sleep(time.Millisecond)
	}
}

// fromScratch is the table a new reconciler's first sync makes of the cache.
func (f *rebuildFixture) fromScratch() string {
	applier := nfttest.NewFake()
	r := &NodeReconciler{Reader: f.reader, Pods: storePods{f.store}, NodeName: "node-0", Table: nft.DefaultTable,
		Applier: applier, Log: logr.Discard(), cnp: &clusterPolicyAPI{}}
	if _, err := r.Reconcile(f.ctx, r.request()); err != nil {
		f.t.Fatal(err)
	}
	return nft.Render(applier.Last())
}

func holds(table string, words ...string) error {
	for _, w := range words {
		if !strings.Contains(table, w) {
			return fmt.Errorf("the table does not hold %q", w)
		}
	}
	return nil
}

// TestPeriodicFullSyncReadsOffTheSyncPath: the periodic full sync's read of
// the cache runs while incremental syncs go on; the sync after it is the full
// one, and its table is what a first sync of the cache makes then: the changes
// served meanwhile (a policy listed too early for the rebuild), the one it
// serves itself, and a change whose event never came (the repair the full sync
// is for).
func TestPeriodicFullSyncReadsOffTheSyncPath(t *testing.T) {
	f := newRebuildFixture(t)
	f.startRebuild()

	// Meanwhile: a new policy (after the rebuild's lists), served incrementally.
	f.reader.nps = append(f.reader.nps, f.policy("from-friends", "friend"))
	f.r.noteDirty(f.reader.nps[1])
	f.pod("friend-1", "node-2", "10.60.2.2", "friend", false)
	before := f.applier.Calls()
	f.sync()
	if c := f.applier.Calls(); c.Apply != before.Apply+1 || c.FullSync != before.FullSync {
		t.Fatalf("a change during the rebuild: calls %+v, before %+v; want one incremental apply", c, before)
	}
	if err := holds(nft.Render(f.applier.Last()), "from-friends", "10.60.2.2"); err != nil {
		t.Fatal("during the rebuild:", err)
	}
	// A pod whose event was missed, before the rebuild reads the pods.
	f.pod("peer-missed", "node-1", "10.60.1.9", "peer", true)
	f.finish()
	// After the rebuild read the pods: the adopting sync serves this one.
	f.pod("peer-late", "node-3", "10.60.3.3", "peer", false)

	before = f.applier.Calls()
	f.sync()
	if c := f.applier.Calls(); c.FullSync != before.FullSync+1 {
		t.Fatalf("the sync after the rebuild: calls %+v, before %+v; want a full sync", c, before)
	}
	if f.r.rebuild != nil || time.Since(f.r.lastFull) > time.Minute {
		t.Fatalf("the rebuild was not adopted (rebuild %v, last full %v)", f.r.rebuild, f.r.lastFull)
	}
	got := nft.Render(f.applier.Last())
	if err := holds(got, "from-friends", "10.60.2.2", "10.60.1.9", "10.60.3.3"); err != nil {
		t.Fatal("after the rebuild:", err)
	}
	if want := f.fromScratch(); got != want {
		t.Fatalf("after the rebuild the table is not what a first sync makes of the cache:\n%s\nwant:\n%s", got, want)
	}

	// The next changes are served incrementally by the adopted compiler.
	f.pod("peer-after", "node-1", "10.60.1.20", "peer", false)
	before = f.applier.Calls()
	f.sync()
	if c := f.applier.Calls(); c.Apply != before.Apply+1 || c.FullSync != before.FullSync {
		t.Fatalf("after the adoption: calls %+v, before %+v; want one incremental apply", c, before)
	}
	if got, want := nft.Render(f.applier.Last()), f.fromScratch(); got != want {
		t.Fatalf("after the adoption the table is not what a first sync makes of the cache:\n%s\nwant:\n%s", got, want)
	}
}

// TestPeriodicFullSyncRebuildDropped: a full sync for another reason (here a
// failed apply) while the rebuild is under way reads the cache itself, and the
// rebuild, older, is never adopted.
func TestPeriodicFullSyncRebuildDropped(t *testing.T) {
	f := newRebuildFixture(t)
	f.startRebuild()
	b := f.r.rebuild
	f.r.needFull = true
	before := f.applier.Calls()
	f.sync()
	if c := f.applier.Calls(); c.FullSync != before.FullSync+1 || f.r.rebuild != nil {
		t.Fatalf("the needed full sync: calls %+v, before %+v, rebuild %v", c, before, f.r.rebuild)
	}
	compiler := f.r.compiler
	close(f.pods.gate)
	<-b.done
	f.pod("peer-late", "node-3", "10.60.3.3", "peer", false)
	f.sync()
	if f.r.compiler != compiler {
		t.Fatal("a dropped rebuild's compiler was adopted")
	}
	if got, want := nft.Render(f.applier.Last()), f.fromScratch(); got != want {
		t.Fatalf("the table is not what a first sync makes of the cache:\n%s\nwant:\n%s", got, want)
	}
}

// TestPeriodicFullSyncRebuildFailed: a rebuild that could not read the pods is
// replaced by a read in the sync that would have adopted it, which is the full one.
func TestPeriodicFullSyncRebuildFailed(t *testing.T) {
	f := newRebuildFixture(t)
	unreadable := errors.New("pods unreadable")
	f.pods.fail = unreadable
	f.startRebuild()
	f.finish()
	if !errors.Is(f.r.rebuild.err, unreadable) {
		t.Fatalf("rebuild error %v, want %v", f.r.rebuild.err, unreadable)
	}
	f.pods.fail = nil
	f.pod("peer-missed", "node-1", "10.60.1.9", "peer", true)
	before := f.applier.Calls()
	f.sync()
	if c := f.applier.Calls(); c.FullSync != before.FullSync+1 || f.r.rebuild != nil {
		t.Fatalf("after the failed rebuild: calls %+v, before %+v, rebuild %v", c, before, f.r.rebuild)
	}
	if got, want := nft.Render(f.applier.Last()), f.fromScratch(); got != want || !strings.Contains(got, "10.60.1.9") {
		t.Fatalf("the table is not what a first sync makes of the cache:\n%s\nwant:\n%s", got, want)
	}
}

// TestPeriodicFullSyncRebuildKeepsTheEpoch: in strict mode a change during the
// rebuild that narrows what is allowed moves the table to the next epoch; the
// rebuild, started at the epoch before, is adopted at the epoch in force, and
// a full sync that narrows nothing stays at it.
func TestPeriodicFullSyncRebuildKeepsTheEpoch(t *testing.T) {
	f := newRebuildFixture(t)
	f.r.Established = compile.EstablishedRecheck
	f.r.needFull = true
	f.sync()
	first := f.r.strict.epoch
	f.startRebuild()
	// peer-1 stops being a peer: open connections from it must be judged again.
	f.pod("peer-1", "node-1", "10.60.1.2", "stranger", false)
	f.sync()
	moved := f.r.strict.epoch
	if moved == first {
		t.Fatalf("epoch %d after a narrowing change, still the one before", moved)
	}
	f.finish()
	f.sync()
	if f.r.rebuild != nil {
		t.Fatal("the rebuild was not adopted")
	}
	got := nft.Render(f.applier.Last())
	if f.r.strict.epoch != moved || f.r.compiler.Epoch() != moved {
		t.Fatalf("after the adoption: epoch %d, the compiler's %d, want %d", f.r.strict.epoch, f.r.compiler.Epoch(), moved)
	}
	want := fmt.Sprintf(`"epoch %d: judged under the policies in force"`, moved)
	if err := holds(got, want); err != nil {
		t.Fatalf("after the adoption: %v\n%s", err, got)
	}
}

// kernelApplier is the netlink Applier in a new network namespace, keeping the
// last FullSync's stats and counting the Applies (planned or not) that changed
// something.
type kernelApplier struct {
	*netlink.Applier
	ns      *nfttest.NetNS
	full    nft.Stats
	changed int
}

func newKernelApplier(t *testing.T, netns string) *kernelApplier {
	t.Helper()
	ns := nfttest.NewNetNS(t, netns)
	nl, err := netlink.New(netlink.Options{Table: nft.DefaultTable, NetNSPath: ns.Path(), ShareDesired: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nl.Close() })
	return &kernelApplier{Applier: nl, ns: ns}
}

// newKernelFixture is the rebuild fixture with the netlink Applier in a new
// network namespace, after the first (full) sync.
func newKernelFixture(t *testing.T, netns string) (*rebuildFixture, *kernelApplier) {
	t.Helper()
	nfttest.RequireRoot(t)
	applier := newKernelApplier(t, netns)
	f := newRebuildFixture(t)
	f.r.Applier = applier
	f.r.needFull = true
	f.sync()
	return f, applier
}

func (a *kernelApplier) Apply(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	st, err := a.Applier.Apply(ctx, desired)
	if st.Operations > 0 {
		a.changed++
	}
	return st, err
}

func (a *kernelApplier) ApplyPlanned(ctx context.Context, p nft.Planned) (nft.Stats, error) {
	st, err := a.Applier.ApplyPlanned(ctx, p)
	if st.Operations > 0 {
		a.changed++
	}
	return st, err
}

func (a *kernelApplier) FullSync(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	st, err := a.Applier.FullSync(ctx, desired)
	a.full = st
	return st, err
}

// TestPeriodicFullSyncReadsTheKernelAhead: with the netlink Applier, the
// rebuild also reads the kernel's table, so the full sync that adopts it reads
// nothing; drift made before that read is found by it, and when it is drift in
// elements (which the full sync mends by patching the sets, from the kernel's
// table) the full sync reads the table itself and repairs it.
func TestPeriodicFullSyncReadsTheKernelAhead(t *testing.T) {
	f, applier := newKernelFixture(t, "np-rebuild")
	if applier.full.ReadAhead {
		t.Fatal("a full sync without a rebuild read ahead")
	}
	// Drift: someone deletes the target's map element.
	if _, err := applier.ns.NFT("", "delete", "element", "inet", nft.DefaultTable, nft.MapIngressV4, "{ 10.60.0.2 }"); err != nil {
		t.Fatal(err)
	}
	f.startRebuild()
	f.finish()
	ahead := testutil.ToFloat64(fullSyncReads.WithLabelValues("ahead"))
	inSync := testutil.ToFloat64(fullSyncReads.WithLabelValues("sync"))
	f.sync()
	if want := []string{"set " + nft.MapIngressV4 + ": 1 elements missing"}; applier.full.ReadAhead || applier.full.Full || !slices.Equal(applier.full.Drift, want) {
		t.Fatalf("the full sync: %+v, want its own read (elements drifted), drift %q, repaired in place", applier.full, want)
	}
	if a, s := testutil.ToFloat64(fullSyncReads.WithLabelValues("ahead"))-ahead, testutil.ToFloat64(fullSyncReads.WithLabelValues("sync"))-inSync; a != 0 || s != 1 {
		t.Errorf("nftpolicy_full_sync_kernel_reads_total grew by %v ahead, %v in the sync; want 0 and 1", a, s)
	}

	// Without drift, the next periodic full sync uses what the rebuild read.
	f.startRebuild()
	f.finish()
	ahead = testutil.ToFloat64(fullSyncReads.WithLabelValues("ahead"))
	f.sync()
	if !applier.full.ReadAhead || len(applier.full.Drift) != 0 {
		t.Fatalf("the full sync after: %+v, want it read ahead, no drift", applier.full)
	}
	if n := testutil.ToFloat64(fullSyncReads.WithLabelValues("ahead")) - ahead; n != 1 {
		t.Errorf("nftpolicy_full_sync_kernel_reads_total{read=\"ahead\"} grew by %v, want 1", n)
	}
	out, err := applier.ns.NFT("", "list", "map", "inet", nft.DefaultTable, nft.MapIngressV4)
	if err != nil || !strings.Contains(out, "10.60.0.2") {
		t.Fatalf("the drift was not repaired: %v\n%s", err, out)
	}
}
