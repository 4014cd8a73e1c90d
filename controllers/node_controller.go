package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"
	cnpv1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// NodeReconciler keeps this node's table equal to the compiled policy of the cluster.
//
// Every relevant event maps to the same request (the node's name), so the workqueue
// coalesces bursts into one sync; a sync is compile -> one kernel transaction.
// Events that cannot change the result are filtered before they reach the queue, so
// an idle cluster costs nothing.
//
// The reconciler keeps a compile.Compiler across syncs: each event also records
// which object changed, and an incremental sync reads only those objects from the
// cache and recompiles only what they can affect, or nothing at all when they
// cannot change the table (compile.Compiler.Unchanged). A full sync (at start, after a
// failure, every FullSyncPeriod) lists the cache and builds a new Compiler, so any
// missed event is repaired there; the periodic one builds it off the sync path while
// incremental syncs go on (rebuild.go).
type NodeReconciler struct {
	Reader client.Reader // the manager's cache
	// Pods, when set, reads pods (the agent's pod cache of compact records,
	// podcache.go); nil reads corev1.Pods through Reader.
	Pods podSource
	// PodEvents, when set, is the pod informer whose events the controller
	// takes directly (SetupWithManager), without waiting for its replay of the
	// cache at start; nil watches pods through the manager's cache.
	PodEvents      toolscache.SharedIndexInformer
	NodeName       string
	Table          string
	DenyLog        compile.DenyLog // compile options: nft/doc.go, "Deny log"
	PolicyCounters bool            // and "Policy counters"
	Applier        nft.Applier
	Recorder       recorder.EventRecorder // may be nil
	Log            logr.Logger
	FullSyncPeriod time.Duration // drift repair; 0 = only at start and after failures
	// MinSyncInterval spaces syncs during bursts: events arriving meanwhile coalesce
	// into the next sync. Zero means back-to-back.
	MinSyncInterval time.Duration
	// OnSynced is called after every successful sync (readiness).
	OnSynced func()
	// OnApplying, when set, is given the Attribution of every table before it is
	// applied, and OnApplied then says whether it went in force (before
	// OnSynced). The deny log reader and the counters collector read it; the
	// kernel may log the new table's packets before Apply returns.
	OnApplying func(*compile.Attribution)
	OnApplied  func(ok bool)
	// AfterFullSync, when set, is called after every successful full sync, on the
	// reconciler's goroutine (RunAgent returns memory to the OS there).
	AfterFullSync func()
	// Established is what a policy change does to open connections; with
	// EstablishedRecheck, CtMarkMask is the connection mark bits of the epoch
	// (compile.DefaultCtMarkMask when 0). See strict.go.
	Established compile.Established
	CtMarkMask  uint32
	// UnknownPodCIDRs and UnknownPodCIDRsFromNode: see Options and unknown.go.
	UnknownPodCIDRs         []netip.Prefix
	UnknownPodCIDRsFromNode bool
	// SyncedBoot: compile.Options.SyncedBoot (the CNI gate's mark).
	SyncedBoot string
	// Nodes, when set, is the watch of every Node, run while a
	// ClusterNetworkPolicy has a nodes peer (nodewatch.go); Reader then holds
	// only this node's Node. nil: Reader holds every Node.
	Nodes *allNodes

	pending atomic.Int64 // unix nanos of the earliest event not yet served; 0 = none
	// noting is false until the first sync starts: that sync reads the whole
	// cache, so the events before it (at start, every object of the cache,
	// replayed to the controller's handlers: 100,000 at 100k pods) need no note.
	noting    atomic.Bool
	dirtyMu   sync.Mutex
	dirty     map[objectRef]struct{} // objects changed since the last sync took them
	mu        sync.Mutex             // serialises syncs and guards the fields below
	lastFull  time.Time
	lastStart time.Time
	needFull  bool
	compiler  *compile.Compiler // what the cache held at the last sync; nil before the first
	rebuild   *rebuild          // the periodic full sync's read of the cache, while under way (rebuild.go)
	// kick asks for a sync (nil without a controller); read it with askSync,
	// which any goroutine may call.
	kick atomic.Pointer[func()]
	// repairDue: another process changed the table (tablewatch.go); the next
	// sync reads the kernel's table and repairs it, with the compiler as it is.
	repairDue atomic.Bool
	problems  map[types.NamespacedName]string // last reported problems, per policy (a ClusterNetworkPolicy: no namespace)
	strict    epochState
	unknown   unknownState
	// The node scope (nodewatch.go): the ClusterNetworkPolicies with a nodes
	// peer, the other nodes the compiler holds (from Nodes), whether it holds
	// every one of them, and whether the compiler is a full read not yet applied
	// (a full sync that waited for them).
	nodePeers   map[string]struct{}
	remoteNodes map[string]struct{}
	nodesLoaded bool
	unapplied   bool

	// ClusterNetworkPolicy (cnp.go, crdwatch.go): the version read, if any, and what its
	// watch needs once the API serves it.
	cnp    *clusterPolicyAPI
	ctrl   controller.Controller
	mapAll handler.EventHandler
}

// objectKind is a kind the reconciler watches.
type objectKind uint8

const (
	kindPod objectKind = iota + 1
	kindNamespace
	kindPolicy
	kindNode
	kindClusterPolicy
)

// objectRef names one watched object.
type objectRef struct {
	kind objectKind
	key  types.NamespacedName
}

// request is the one key every event maps to.
func (r *NodeReconciler) request() reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Name: r.NodeName}}
}

// SetupWithManager registers the controller and its watches.
func (r *NodeReconciler) SetupWithManager(mgr manager.Manager) error {
	mapAll := r.enqueue()
	r.mapAll = mapAll
	// controller-runtime builds a logger with the request's values for every
	// reconcile (zap encodes them at once): an eighth of the agent's CPU in a
	// churn of events that change nothing (the control-plane bench's profile).
	// Nothing reads it but its own error lines, which this one serves as well.
	// It still adds a reconcileID to it, and the sync its kind: both deferred
	// to a line actually written (logsink.go).
	ctrlLog := deferValues(mgr.GetLogger().WithValues("controller", "node"))
	r.Log = deferValues(r.Log)
	b := builder.ControllerManagedBy(mgr).
		Named("node").
		// One reconciler per agent; tests run several agents in one process.
		WithOptions(controller.Options{MaxConcurrentReconciles: 1, SkipNameValidation: ptr.To(true),
			LogConstructor: func(*reconcile.Request) logr.Logger { return ctrlLog }}).
		Watches(&networkingv1.NetworkPolicy{}, mapAll, builder.WithPredicates(predicate.Or(predicate.GenerationChangedPredicate{}, createDelete()))).
		Watches(&corev1.Namespace{}, mapAll, builder.WithPredicates(predicate.Or(predicate.LabelChangedPredicate{}, createDelete()))).
		Watches(&corev1.Node{}, mapAll, builder.WithPredicates(nodeChanged()))
	// The periodic full sync's rebuild asks for the sync that completes it
	// through this source (rebuild.go).
	b = b.WatchesRawSource(source.Func(func(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.setKick(func() { q.Add(r.request()) })
		return nil
	}))
	if r.PodEvents != nil {
		b = b.WatchesRawSource(source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			// The informer replays every cached pod to a new handler as an
			// add: 100,000 events at 100k pods that the reconciler notes none
			// of (the first sync reads the whole cache). They are dropped here,
			// and source.Func is no SyncingSource, so the controller's first
			// sync does not wait for that replay to end either (it took
			// 0.6-1.3 s at 100k: docs/scale.md). The pods are in the store
			// before the manager starts the controller, so the first sync
			// reads them all; a change after that is an update or a delete.
			_, err := r.PodEvents.AddEventHandler(informerEvents{pred: podChanged(), to: r.queue(ctx, q), skipInitial: true})
			q.Add(r.request()) // the first sync, which the pods' replay no longer asks for
			return err
		}))
	} else {
		b = b.Watches(&corev1.Pod{}, mapAll, builder.WithPredicates(podChanged()))
	}
	if r.Nodes != nil {
		// The all-node watch comes and goes (nodewatch.go): its events, already
		// filtered by nodeChanged, and the news that it has synced reach the
		// queue through this source, which outlives every watch.
		b = b.WatchesRawSource(source.Func(func(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
			r.Nodes.setSink(r.queue(ctx, q))
			return nil
		}))
	}
	ctrl, err := b.Build(r)
	// ClusterNetworkPolicy is watched once the API serves it (clusterPolicyWatch).
	r.ctrl = ctrl
	return err
}

// enqueue is the handler of every watched kind: it notes the object as changed
// and asks for a sync.
func (r *NodeReconciler) enqueue() handler.EventHandler {
	return handler.EnqueueRequestsFromMapFunc(func(_ context.Context, obj client.Object) []reconcile.Request {
		r.notePending(time.Now())
		r.noteDirty(obj)
		return []reconcile.Request{r.request()}
	})
}

// queue is how a source outside the controller's builder reaches its queue q:
// obj is noted as changed and a sync asked for; nil asks for a sync alone.
func (r *NodeReconciler) queue(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) func(client.Object) {
	return func(obj client.Object) {
		if obj == nil {
			q.Add(r.request())
			return
		}
		r.mapAll.Generic(ctx, event.GenericEvent{Object: obj}, q)
	}
}

// informerEvents is an event handler on an informer the controller does not
// own (the pods', the all-node watch, ClusterNetworkPolicy's): the objects of
// the events pred lets through go to to, a delete the watch missed with the
// informer's last copy. With skipInitial the adds of the informer's replay of
// its cache to the new handler are dropped.
type informerEvents struct {
	pred        predicate.Predicate
	to          func(client.Object)
	skipInitial bool
}

func (h informerEvents) OnAdd(obj any, isInInitialList bool) {
	if o, ok := obj.(client.Object); ok && (!isInInitialList || !h.skipInitial) && h.pred.Create(event.CreateEvent{Object: o}) {
		h.to(o)
	}
}

func (h informerEvents) OnUpdate(oldObj, newObj any) {
	o, ok1 := oldObj.(client.Object)
	n, ok2 := newObj.(client.Object)
	if ok1 && ok2 && h.pred.Update(event.UpdateEvent{ObjectOld: o, ObjectNew: n}) {
		h.to(n)
	}
}

func (h informerEvents) OnDelete(obj any) {
	e := event.DeleteEvent{}
	if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
		obj, e.DeleteStateUnknown = tomb.Obj, true
	}
	if o, ok := obj.(client.Object); ok {
		if e.Object = o; h.pred.Delete(e) {
			h.to(o)
		}
	}
}

// notePending records t as the time of the earliest unserved event, unless an
// earlier one is already waiting.
func (r *NodeReconciler) notePending(t time.Time) {
	r.pending.CompareAndSwap(0, t.UnixNano())
}

// noteDirty records that obj changed (or went away).
func (r *NodeReconciler) noteDirty(obj client.Object) {
	if !r.noting.Load() {
		// The first sync has not read the cache yet: it will read obj as
		// changed, since the cache holds a change before its event arrives.
		return
	}
	var kind objectKind
	switch obj.(type) {
	case *cachedPod, *corev1.Pod:
		kind = kindPod
	case *corev1.Namespace:
		kind = kindNamespace
	case *networkingv1.NetworkPolicy:
		kind = kindPolicy
	case *corev1.Node:
		kind = kindNode
	case *cnpv1beta1.ClusterNetworkPolicy, *cnpv1alpha2.ClusterNetworkPolicy:
		kind = kindClusterPolicy
	default:
		return
	}
	r.dirtyMu.Lock()
	defer r.dirtyMu.Unlock()
	if r.dirty == nil {
		r.dirty = map[objectRef]struct{}{}
	}
	r.dirty[objectRef{kind, client.ObjectKeyFromObject(obj)}] = struct{}{}
}

// takeDirty returns the objects changed since the last call and forgets them.
func (r *NodeReconciler) takeDirty() map[objectRef]struct{} {
	r.dirtyMu.Lock()
	defer r.dirtyMu.Unlock()
	d := r.dirty
	r.dirty = nil
	return d
}

// restoreDirty puts back changes a failed sync did not serve.
func (r *NodeReconciler) restoreDirty(d map[objectRef]struct{}) {
	r.dirtyMu.Lock()
	defer r.dirtyMu.Unlock()
	if r.dirty == nil {
		r.dirty = map[objectRef]struct{}{}
	}
	for ref := range d {
		r.dirty[ref] = struct{}{}
	}
}

// Reconcile performs one sync of the node's table.
func (r *NodeReconciler) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()

	now := time.Now()
	if wait := r.MinSyncInterval - now.Sub(r.lastStart); r.MinSyncInterval > 0 && wait > 0 {
		return reconcile.Result{RequeueAfter: wait}, nil
	}
	r.lastStart = now
	since := r.pending.Swap(0)

	// A full sync reads the whole cache: at start, after a failure, and when
	// one waited for every Node (below). The periodic one (drift repair) reads
	// it off the sync path first (rebuild.go) and is done by the sync after
	// that read.
	full := r.needFull || r.lastFull.IsZero() || r.unapplied
	due := !full && r.FullSyncPeriod > 0 && now.Sub(r.lastFull) >= r.FullSyncPeriod
	rebuilt := due && r.rebuild.ready()
	full = full || rebuilt
	// A repair: another process changed the table. A full sync repairs it too.
	// A sync that returns before its FullSync (a failed read of the cache,
	// the wait for every Node) leaves the repair due for the next.
	repair := r.repairDue.Swap(false) && !full
	repairing := false
	defer func() {
		if repair && !repairing {
			r.repairDue.Store(true)
		}
	}()
	kind := "incremental"
	switch {
	case full:
		kind = "full"
	case repair:
		kind = "repair"
	}
	log := r.Log.WithValues("kind", kind) // RunAgent's logger already carries "node"

	// Changes noted from here on are served by the next sync (the cache already
	// holds them when their event arrives, so reading them twice is harmless).
	r.noting.Store(true)
	changes := r.takeDirty()
	var err error
	switch {
	case r.compiler == nil || (full && !rebuilt && !r.unapplied):
		r.compiler, err = r.load(ctx, log)
	case rebuilt:
		err = r.adoptRebuild(ctx, changes, log)
	default:
		// A full sync that waited for every Node has read everything
		// already: the retry updates that read rather than listing again.
		if due && r.rebuild == nil {
			err = r.startRebuild(ctx, log)
		}
		if err == nil {
			r.rebuild.caughtUp(changes)
			err = r.update(ctx, changes, log)
		}
	}
	if err != nil {
		r.compiler = nil // partly updated: the next sync rebuilds it from a list
		r.unapplied = false
		r.restoreDirty(changes)
		r.restorePending(since)
		return reconcile.Result{}, fmt.Errorf("reading the cache: %w", err)
	}
	if r.nodeScope(log) {
		// A nodes peer, and not every Node known yet: compiling now would
		// enforce it against a partial list. The table in force stays; the
		// watch's sync queues the retry, and a slow one is asked again.
		r.unapplied = r.unapplied || full
		r.restorePending(since)
		nodeWaits.Inc()
		log.V(1).Info("waiting for the list of every Node before applying; the table in force stays", "policies", len(r.nodePeers))
		return reconcile.Result{RequeueAfter: nodeWaitRetry}, nil
	}
	r.unapplied = false
	if !full && !repair && !r.strict.drifted && r.compiler.Unchanged() {
		// The events read could not change the table (another node's pod that
		// no set holds and no peer selects, before or after): the table in
		// force is the one Compile would return. Nothing to compile, plan or
		// send; the event is served.
		syncDuration.WithLabelValues("unchanged").Observe(time.Since(now).Seconds())
		syncsTotal.WithLabelValues("unchanged", "ok").Inc()
		log.V(2).Info("synced: nothing to change", "changes", len(changes))
		if r.OnSynced != nil {
			r.OnSynced()
		}
		return r.requeue(), nil
	}
	desired, problems := r.compiler.Compile()
	r.reportProblems(ctx, log, problems)
	planned, moved, err := r.stampEpoch(desired, full || repair, log)
	if err != nil {
		r.needFull = true
		r.restoreDirty(changes)
		r.restorePending(since)
		return reconcile.Result{}, err
	}

	if r.OnApplying != nil {
		r.OnApplying(r.compiler.Attribution())
	}
	var stats nft.Stats
	hadInForce := false // a table of this agent's was in force (strict mode)
	switch {
	case full || repair:
		repairing = true // a failure makes the next sync a full one
		hadInForce = r.strict.inForce != nil
		stats, err = r.Applier.FullSync(ctx, desired)
	case planned != nil:
		stats, err = r.Applier.(nft.PlansAhead).ApplyPlanned(ctx, *planned)
	default:
		stats, err = r.Applier.Apply(ctx, desired)
	}
	inForce := err == nil // the change's table is in force (its attribution with it)
	if err == nil && moved != nil {
		// Strict mode: the epoch moves in a transaction of its own, after
		// the change (stampEpoch). Should it fail, the change stays in force
		// and the full sync that follows a failure moves the epoch (nothing
		// is in force for it): until then the connections the change denies
		// live on.
		var st nft.Stats
		st, err = r.Applier.Apply(ctx, moved)
		stats.Operations += st.Operations
		stats.Bytes += st.Bytes
		desired = moved
	}
	if r.OnApplied != nil {
		r.OnApplied(inForce)
	}
	elapsed := time.Since(now)
	syncDuration.WithLabelValues(kind).Observe(elapsed.Seconds())
	netlinkBytes.Add(float64(stats.Bytes))
	if err != nil {
		applyFailures.Inc()
		syncsTotal.WithLabelValues(kind, "error").Inc()
		r.strict.inForce = nil
		r.needFull = true
		r.restorePending(since)
		log.Error(err, "apply failed; the previous table stays in force, retrying with a full sync")
		return reconcile.Result{}, err
	}
	syncsTotal.WithLabelValues(kind, "ok").Inc()
	r.epochApplied(desired)
	if full || repair {
		read := "sync"
		if stats.ReadAhead {
			read = "ahead"
		}
		fullSyncReads.WithLabelValues(read).Inc()
		if len(stats.Drift) > 0 {
			driftTotal.Add(float64(len(stats.Drift)))
			log.Info("repaired drift in the kernel's table", "differences", len(stats.Drift), "first", stats.Drift[0], "readAhead", stats.ReadAhead)
			if r.Established == compile.EstablishedRecheck && hadInForce {
				// What the drifted table let through carries the epoch in
				// force: the sync asked for here moves to the next epoch.
				// (Without a table in force, this sync's epoch moved already.)
				r.strict.drifted = true
				r.askSync()
			}
		}
	}
	if full {
		r.lastFull = now
		r.needFull = false
		if r.AfterFullSync != nil {
			r.AfterFullSync()
		}
	}
	if since != 0 {
		programmingLatency.Observe(time.Since(time.Unix(0, since)).Seconds())
	}
	c := desired.Counts()
	rulesetSize.WithLabelValues("chains").Set(float64(c.Chains))
	rulesetSize.WithLabelValues("rules").Set(float64(c.Rules))
	rulesetSize.WithLabelValues("sets").Set(float64(c.Sets))
	rulesetSize.WithLabelValues("elements").Set(float64(c.Elements))
	log.V(2).Info("synced", "elapsed", elapsed, "operations", stats.Operations, "elements", stats.Elements,
		"chainsRewritten", stats.ChainsRewritten, "bytes", stats.Bytes, "readAhead", stats.ReadAhead,
		"changes", len(changes), "chains", c.Chains, "rules", c.Rules, "setElements", c.Elements, "epoch", r.strict.epoch)
	if log.V(5).Enabled() {
		log.V(5).Info("ruleset", "nft", nft.Render(desired))
	}
	if r.OnSynced != nil {
		r.OnSynced()
	}
	return r.requeue(), nil
}

// requeue is a successful sync's result: the next periodic full sync, if any.
// While its rebuild is under way, the rebuild asks for the sync that completes
// it (kick); the requeue only stands in for that when nothing can be asked (no
// controller), or a request was lost.
func (r *NodeReconciler) requeue() reconcile.Result {
	var res reconcile.Result
	switch {
	case r.rebuild != nil && r.kick.Load() == nil:
		res.RequeueAfter = rebuildPoll
	case r.rebuild != nil:
		res.RequeueAfter = rebuildCheck
	case r.FullSyncPeriod > 0:
		res.RequeueAfter = r.FullSyncPeriod - time.Since(r.lastFull)
	}
	return res
}

// restorePending puts back the event time a failed sync did not serve.
func (r *NodeReconciler) restorePending(since int64) {
	if since != 0 {
		r.pending.CompareAndSwap(0, since)
	}
}

// pods is where the reconciler reads pods.
func (r *NodeReconciler) pods() podSource {
	if r.Pods != nil {
		return r.Pods
	}
	return readerPods{r.Reader}
}

// load lists the cache and returns a Compiler holding all of it. The lists are
// not deep copies (the compiler only reads, and keeps only the objects' strings,
// label maps and slices, never the listed structs); pods are not copied but read
// in place from the pod cache, and given to the compiler at once
// (SetPodRecords, which orders them for its index).
func (r *NodeReconciler) load(ctx context.Context, log logr.Logger) (*compile.Compiler, error) {
	r.rebuild = nil // a rebuild under way read the cache earlier than this
	in, err := r.readCache(ctx)
	if err != nil {
		return nil, err
	}
	if r.UnknownPodCIDRsFromNode {
		r.ownNode(in.own)
		if err := r.checkPods(ctx); err != nil {
			return nil, err
		}
		r.settleUnknown(log)
	}
	c, err := in.compiler(ctx, r.NodeName, r.compileOptions(), r.strict.epoch, r.pods())
	if err != nil {
		return nil, err
	}
	// The other nodes, when they are needed, are added by nodeScope.
	r.remoteNodes, r.nodesLoaded = nil, false
	r.nodePeers = in.nodePeers()
	return c, nil
}

// cacheRead is what a full read lists of the cache but the pods, which the
// compiler reads in place from the pod cache (cacheRead.compiler).
type cacheRead struct {
	nss   corev1.NamespaceList
	nps   networkingv1.NetworkPolicyList
	nodes []*corev1.Node
	own   *corev1.Node // this node's, nil when it does not exist
	cnps  []*cnpv1beta1.ClusterNetworkPolicy
}

// readCache lists the namespaces, policies, Nodes and ClusterNetworkPolicies
// of the cache (not deep copies: see load). Under the reconciler's lock: the
// ClusterNetworkPolicy informer read must not be going away (useClusterPolicies).
func (r *NodeReconciler) readCache(ctx context.Context) (*cacheRead, error) {
	in := &cacheRead{}
	if err := r.Reader.List(ctx, &in.nss, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	if err := r.Reader.List(ctx, &in.nps, client.UnsafeDisableDeepCopy); err != nil {
		return nil, err
	}
	var err error
	if in.nodes, in.own, err = r.listNodes(ctx); err != nil {
		return nil, err
	}
	if in.cnps, err = r.cnp.list(ctx, r.Reader); err != nil {
		return nil, err
	}
	return in, nil
}

// compiler returns a Compiler for node holding in and every pod of pods. It
// touches nothing of the reconciler's: a rebuild calls it off the sync path.
func (in *cacheRead) compiler(ctx context.Context, node string, opts compile.Options, epoch uint32, pods podSource) (*compile.Compiler, error) {
	c := compile.NewCompiler(node, opts)
	if epoch != 0 {
		c.SetEpoch(epoch)
	}
	for _, n := range in.nodes {
		c.SetNode(n)
	}
	for _, cnp := range in.cnps {
		c.SetClusterNetworkPolicy(cnp)
	}
	for i := range in.nss.Items {
		c.SetNamespace(&in.nss.Items[i])
	}
	var all []*compile.Pod
	if err := pods.each(ctx, func(p *compile.Pod) { all = append(all, p) }); err != nil {
		return nil, err
	}
	c.SetPodRecords(all)
	for i := range in.nps.Items {
		c.SetPolicy(&in.nps.Items[i])
	}
	return c, nil
}

// nodePeers returns the names of the ClusterNetworkPolicies with a nodes peer.
func (in *cacheRead) nodePeers() map[string]struct{} {
	peers := map[string]struct{}{}
	for _, cnp := range in.cnps {
		if hasNodesPeer(cnp) {
			peers[cnp.Name] = struct{}{}
		}
	}
	return peers
}

// update reads the changed objects from the cache and records them in the compiler.
func (r *NodeReconciler) update(ctx context.Context, changes map[objectRef]struct{}, log logr.Logger) error {
	c := r.compiler
	recheck := false // this node's pod CIDRs changed: check every pod against them
	for ref := range changes {
		var err error
		switch ref.kind {
		case kindPod:
			var p *compile.Pod
			var ok bool
			if p, ok, err = r.pods().get(ctx, ref.key); err == nil {
				if ok {
					c.SetPodRecord(p)
					r.notePod(ref.key, p)
				} else {
					c.DeletePod(ref.key.Namespace, ref.key.Name)
					r.notePod(ref.key, nil)
				}
			}
		case kindNamespace:
			err = record(ctx, r.Reader, ref.key, &corev1.Namespace{}, c.SetNamespace,
				func() { c.DeleteNamespace(ref.key.Name) })
		case kindPolicy:
			err = record(ctx, r.Reader, ref.key, &networkingv1.NetworkPolicy{}, c.SetPolicy,
				func() { c.DeletePolicy(ref.key.Namespace, ref.key.Name) })
		case kindNode:
			if r.Nodes != nil && ref.key.Name != r.NodeName {
				r.remoteNode(ref.key.Name)
				continue
			}
			own := func(n *corev1.Node) {
				if r.UnknownPodCIDRsFromNode && ref.key.Name == r.NodeName && r.ownNode(n) {
					recheck = true
				}
			}
			err = record(ctx, r.Reader, ref.key, &corev1.Node{}, func(n *corev1.Node) { c.SetNode(n); own(n) },
				func() { c.DeleteNode(ref.key.Name); own(nil) })
		case kindClusterPolicy:
			obj := r.cnp.object()
			if obj == nil {
				continue
			}
			var convErr error
			err = record(ctx, r.Reader, ref.key, obj, func(o client.Object) {
				cnp, cerr := toV1beta1(o)
				if cerr != nil {
					convErr = cerr
					return
				}
				c.SetClusterNetworkPolicy(cnp)
				r.noteNodePeers(cnp)
			}, func() {
				c.DeleteClusterNetworkPolicy(ref.key.Name)
				delete(r.nodePeers, ref.key.Name)
			})
			err = errors.Join(err, convErr)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", ref.key, err)
		}
	}
	if !r.UnknownPodCIDRsFromNode {
		return nil
	}
	if recheck {
		if err := r.checkPods(ctx); err != nil {
			return err
		}
	}
	if r.settleUnknown(log) {
		c.SetUnknownLocalPods(r.unknownCIDRs())
	}
	return nil
}

// record reads the object at key from the cache into obj (no deep copy: the
// compiler only reads) and passes it to set, or calls del when it is gone.
func record[T client.Object](ctx context.Context, rd client.Reader, key types.NamespacedName, obj T, set func(T), del func()) error {
	err := rd.Get(ctx, key, obj, client.UnsafeDisableDeepCopy)
	switch {
	case err == nil:
		set(obj)
	case apierrors.IsNotFound(err):
		del()
		return nil
	}
	return err
}

// createDelete passes creates and deletes and drops updates and generic events.
func createDelete() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc:  func(event.UpdateEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}

// podChanged passes pod events that can change some node's table: creates and
// deletes of pods that have (had) addresses, and updates that change addresses,
// labels, node, hostNetwork, named container ports or whether the pod has
// finished. Status-only updates (conditions, container states) and resyncs are
// dropped.
func podChanged() predicate.Predicate {
	hasIPs := func(o client.Object) bool {
		p, ok := podOf(o)
		return ok && len(p.Addrs()) > 0
	}
	return predicate.Funcs{
		CreateFunc:  func(e event.CreateEvent) bool { return hasIPs(e.Object) },
		DeleteFunc:  func(e event.DeleteEvent) bool { return hasIPs(e.Object) },
		GenericFunc: func(event.GenericEvent) bool { return false },
		UpdateFunc: func(e event.UpdateEvent) bool {
			a, ok1 := podOf(e.ObjectOld)
			b, ok2 := podOf(e.ObjectNew)
			if !ok1 || !ok2 {
				return true
			}
			return podRelevantChange(a, b)
		},
	}
}

// podOf is what the compiler reads of a pod object: the pod cache's record, or
// made from a corev1.Pod.
func podOf(o client.Object) (*compile.Pod, bool) {
	switch p := o.(type) {
	case *cachedPod:
		return &p.Pod, true
	case *corev1.Pod:
		pod := compile.PodOf(p)
		return &pod, true
	}
	return nil, false
}

func podRelevantChange(a, b *compile.Pod) bool {
	return a.Node() != b.Node() || a.HostNetwork() != b.HostNetwork() || a.Finished() != b.Finished() ||
		!slices.Equal(a.Addrs(), b.Addrs()) || !slices.Equal(a.Ports(), b.Ports()) || !maps.Equal(a.Labels(), b.Labels())
}

// repairSoon asks for a sync that reads the kernel's table and repairs what
// another process changed in it (tablewatch.go).
func (r *NodeReconciler) repairSoon() {
	r.repairDue.Store(true)
	r.askSync()
}

// setKick sets how a sync is asked for.
func (r *NodeReconciler) setKick(kick func()) { r.kick.Store(&kick) }

// askSync asks for a sync, if there is a way to (a controller).
func (r *NodeReconciler) askSync() {
	if k := r.kick.Load(); k != nil {
		(*k)()
	}
}
