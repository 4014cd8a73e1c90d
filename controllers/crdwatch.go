package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset/typed/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	cnpv1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// When the ClusterNetworkPolicy CRD comes and goes.
//
// An agent may start before the CRD is installed, and the CRD may be removed
// and installed again while it runs. The agent learns of it by watching the
// one CustomResourceDefinition object, clusternetworkpolicies.policy.networking.k8s.io
// (a metadata.name field selector: the apiserver sends no other CRD), through
// apiLink like every other watch (kind "customresourcedefinition": retried,
// counted in nftpolicy_apiserver_*, reported by /readyz when lost). An absent
// CRD costs one idle watch per agent and no request at all; asking discovery
// every 30 s instead cost 5,000 agents ~330 discovery GETs a second forever
// (two group versions each), and started enforcement up to 30 s late. The
// price is paid when the CRD changes, rarely: each of its events sends every
// agent the whole CRD (~287 KB per agent for an install, docs/scale.md). At
// start the agent asks discovery once (watchIfServed), so that its first
// table holds the ClusterNetworkPolicies a restarted agent's last one did.
//
// What the CRD object says, at each of its events:
//   - gone (deleted: the apiserver deletes every ClusterNetworkPolicy before it
//     removes the CRD): the informer is stopped and removed, and the next sync,
//     a full one, compiles no ClusterNetworkPolicy: there are none. NetworkPolicy
//     enforcement goes on.
//   - established and serving v1beta1 (else v1alpha2): that version's informer
//     is started in the manager's cache, and once it has listed every policy the
//     reconciler reads it, from a full sync. A CRD that changes the version it
//     serves gets the new version's informer first, then the old one stops.
//   - being deleted, not established yet, or serving no version the agent
//     reads: nothing changes. Whatever runs keeps running, so a failure (or a
//     CRD too new for this agent, which is said loudly) keeps the table in force.
//
// The CRD object decides; discovery, asked only then, confirms that the
// apiserver serves (or has stopped serving) that version before the agent
// acts, since discovery follows the CRD's conditions a moment later and the
// cache's RESTMapper reads discovery. While they disagree the agent asks again
// after 0.1 s, doubling to 10 s, until they agree or the CRD changes.
//
// An agent whose ClusterRole predates this watch (an upgrade that kept the old
// RBAC) is refused it: it says so (an error in its log, a Warning Event on its
// Node, nftpolicy_clusterpolicy_crd{mode="poll"} at 1) and asks discovery every
// Options.CNPDiscoveryInterval instead, as agents did before. Its CRD informer
// keeps trying (client-go's backoff, every 30-60 s), so an updated ClusterRole
// ends the polling without a restart.
//
// The agent only lists and watches the one CRD (the informer; the apiserver
// authorizes a list or watch with a metadata.name field selector as one of
// that name), and never gets it.
// +kubebuilder:rbac:groups=apiextensions.k8s.io,resources=customresourcedefinitions,resourceNames=clusternetworkpolicies.policy.networking.k8s.io,verbs=list;watch

// cnpCRDName is the ClusterNetworkPolicy CRD's object name; crdKind its
// informer's kind in apiLink's metrics and /readyz.
const (
	cnpCRDName = cnpResource + "." + cnpGroup
	crdKind    = "customresourcedefinition"
)

// crdRetryMin and crdRetryMax bound the wait before asking discovery again
// while it disagrees with the CRD object.
const (
	crdRetryMin = 100 * time.Millisecond
	crdRetryMax = 10 * time.Second
)

var clusterPolicyCRDMode = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "nftpolicy_clusterpolicy_crd",
	Help: "How the agent learns that the ClusterNetworkPolicy CRD is installed or removed: mode watch is 1 while it " +
		"watches the CRD object; mode poll is 1 while its ClusterRole does not let it (list and watch of " +
		"customresourcedefinitions) and it asks discovery every 30 s instead.",
}, []string{"mode"})

func init() { metrics.Registry.MustRegister(clusterPolicyCRDMode) }

// cnpListWarn is how long the first list of ClusterNetworkPolicy may take
// before the agent says so (a variable for the tests).
var cnpListWarn = 30 * time.Second

// errCNPListSlow is what the agent logs when that list takes longer.
var errCNPListSlow = errors.New("the first list of ClusterNetworkPolicy has not completed")

// errCRDWatchDenied is what the agent logs when its CRD watch is refused.
var errCRDWatchDenied = errors.New("the agent may not list and watch customresourcedefinitions (apiextensions.k8s.io)")

// The CRD watch's access, as the apiserver last answered it.
const (
	accessUnknown int32 = iota
	accessAllowed
	accessDenied
)

// clusterPolicyWatch is the runnable that watches the CRD and starts, switches
// and stops the ClusterNetworkPolicy informer to follow it.
type clusterPolicyWatch struct {
	cache    cache.Cache
	r        *NodeReconciler
	dc       discovery.DiscoveryInterface
	link     *apiLink
	lw       toolscache.ListerWatcherWithContext // the CRD object, by name
	interval time.Duration                       // the discovery poll while the CRD watch is denied
	log      logr.Logger

	// wake is poked by a CRD event, a change of access, and a new informer's sync.
	wake   chan struct{}
	access atomic.Int32

	mu   sync.Mutex
	sink              // the reconciler's queue
	cur  *cnpInformer // the informer the reconciler reads; nil while none

	// The loop's own (Start, and watchIfServed before it).
	crd      toolscache.SharedIndexInformer
	pending  *cnpInformer // started, not synced yet
	reported int32        // the access last reported
	warned   bool         // a Warning Event about access is on record
	said     string       // what the CRD object was last said to say
	disagree int          // discovery disagreed with the CRD object this many times in a row
}

// cnpInformer is one version's informer in the manager's cache.
type cnpInformer struct {
	version string
	obj     client.Object
	inf     cache.Informer
	reg     toolscache.ResourceEventHandlerRegistration // nil until the reconciler reads it
	cancel  context.CancelFunc                          // ends the wait for its sync
}

func newClusterPolicyWatch(c cache.Cache, cfg *rest.Config, r *NodeReconciler, link *apiLink,
	interval time.Duration, log logr.Logger) (*clusterPolicyWatch, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("discovery client: %w", err)
	}
	ext, err := apiextensionsclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("CRD client: %w", err)
	}
	if interval <= 0 {
		interval = 30 * time.Second
	}
	lw := toolscache.NewListWatchFromClient(ext.RESTClient(), "customresourcedefinitions", "",
		fields.OneTermEqualSelector("metadata.name", cnpCRDName))
	return &clusterPolicyWatch{cache: c, r: r, dc: dc, link: link, lw: toolscache.ToListerWatcherWithContext(lw),
		interval: interval, log: log, wake: make(chan struct{}, 1)}, nil
}

// NeedLeaderElection: every agent watches (there is no leader election anyway).
func (w *clusterPolicyWatch) NeedLeaderElection() bool { return false }

func (w *clusterPolicyWatch) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// watchIfServed asks discovery once, before the manager starts: when the API
// serves ClusterNetworkPolicy, its informer is registered with the others, so
// the caches sync, and the first full sync (readiness) happens, with it: a
// restarted agent's first table holds the ClusterNetworkPolicies its last one did.
func (w *clusterPolicyWatch) watchIfServed(ctx context.Context) error {
	v, err := discoverClusterPolicies(w.dc)
	if err != nil || v == "" {
		return nil // the CRD watch decides
	}
	c, err := w.open(ctx, v)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	w.r.cnp.version.Store(v)
	if c.reg, err = c.inf.AddEventHandler(w.handler()); err != nil {
		return fmt.Errorf("ClusterNetworkPolicy %s informer: %w", v, err)
	}
	w.mu.Lock()
	w.cur = c
	w.mu.Unlock()
	w.log.Info("enforcing ClusterNetworkPolicy", "version", cnpGroup+"/"+v)
	return nil
}

// open gets version's informer from the manager's cache, without waiting for
// it to sync (before the manager starts, it starts with the cache).
func (w *clusterPolicyWatch) open(ctx context.Context, version string) (*cnpInformer, error) {
	var obj client.Object = &cnpv1beta1.ClusterNetworkPolicy{}
	if version == "v1alpha2" {
		obj = &cnpv1alpha2.ClusterNetworkPolicy{}
	}
	// The cache's RESTMapper may predate the CRD: it reloads the group on a miss.
	inf, err := w.cache.GetInformer(ctx, obj, cache.BlockUntilSynced(false))
	if err != nil {
		return nil, fmt.Errorf("informer for ClusterNetworkPolicy %s: %w", version, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	c := &cnpInformer{version: version, obj: obj, inf: inf, cancel: cancel}
	go func() {
		// A list that never completes (a ClusterRole without clusternetworkpolicies)
		// would otherwise only show as client-go's retries in the log.
		slow := time.AfterFunc(cnpListWarn, func() {
			if wctx.Err() == nil && !inf.HasSynced() {
				w.log.Error(errCNPListSlow, "ClusterNetworkPolicy is served but not enforced: is list and watch of "+
					"clusternetworkpolicies in the agent's ClusterRole? NetworkPolicy enforcement goes on", "version", cnpGroup+"/"+version, "after", cnpListWarn)
			}
		})
		defer slow.Stop()
		if toolscache.WaitForCacheSync(wctx.Done(), inf.HasSynced) {
			w.poke()
		}
	}()
	return c, nil
}

// drop stops c and removes it from the cache.
func (w *clusterPolicyWatch) drop(ctx context.Context, c *cnpInformer) {
	c.cancel()
	if c.reg != nil {
		_ = c.inf.RemoveEventHandler(c.reg)
	}
	if err := w.cache.RemoveInformer(ctx, c.obj); err != nil {
		w.log.Error(err, "removing the ClusterNetworkPolicy informer", "version", c.version)
	}
	// A watch the agent no longer needs is not one it lost (/readyz).
	w.link.forget(informerKind(c.obj))
}

// Start watches the CRD and follows it until ctx is done.
func (w *clusterPolicyWatch) Start(ctx context.Context) error {
	w.crd = w.link.newInformerAs(crdKind, &accessLW{w: w, lw: w.lw}, &apiextensionsv1.CustomResourceDefinition{}, 0, toolscache.Indexers{})
	// Neither fails on an informer that has not started.
	_ = w.crd.SetTransform(trimCRD)
	_ = w.crd.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *toolscache.Reflector, err error) {
		if apierrors.IsForbidden(err) {
			return // said once, loudly, by reportAccess
		}
		toolscache.DefaultWatchErrorHandler(ctx, r, err)
	})
	poke := func(any) { w.poke() }
	_, _ = w.crd.AddEventHandler(toolscache.ResourceEventHandlerFuncs{AddFunc: poke, DeleteFunc: poke,
		UpdateFunc: func(any, any) { w.poke() }})
	go w.crd.RunWithContext(ctx)
	go func() {
		// An absent CRD sends no event: its first (empty) list is news too.
		if toolscache.WaitForCacheSync(ctx.Done(), w.crd.HasSynced) {
			w.poke()
		}
	}()

	var poll *time.Ticker
	var pollC <-chan time.Time
	var retry *time.Timer
	var retryC <-chan time.Time
	backoff := crdRetryMin
	defer func() {
		if poll != nil {
			poll.Stop()
		}
		if retry != nil {
			retry.Stop()
		}
	}()
	ask := false // the poll is due
	for {
		denied := w.reportAccess(ctx)
		switch {
		case denied && poll == nil:
			poll, ask = time.NewTicker(w.interval), true
			pollC = poll.C
		case !denied && poll != nil:
			poll.Stop()
			poll, pollC = nil, nil
		}
		if w.step(ctx, denied, ask) {
			if retry != nil {
				retry.Stop()
			}
			retry = time.NewTimer(backoff)
			retryC = retry.C
			backoff = min(2*backoff, crdRetryMax)
		} else {
			backoff = crdRetryMin
		}
		ask = false
		select {
		case <-ctx.Done():
			if w.pending != nil {
				w.pending.cancel()
			}
			return nil
		case <-w.wake:
		case <-pollC:
			ask = true
		case <-retryC:
			retryC = nil
			ask = true
		}
	}
}

// target is the version the agent reads, or will once the informer started
// for it has synced.
func (w *clusterPolicyWatch) target() string {
	if w.pending != nil {
		return w.pending.version
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cur != nil {
		return w.cur.version
	}
	return ""
}

// step moves one step toward what the CRD (or, while its watch is denied and
// ask is set, discovery) says, and reports whether to try again soon.
func (w *clusterPolicyWatch) step(ctx context.Context, denied, ask bool) bool {
	if p := w.pending; p != nil && p.inf.HasSynced() {
		w.pending = nil
		w.promote(ctx, p)
	}
	var want string
	if denied {
		if !ask {
			return false
		}
		v, err := discoverClusterPolicies(w.dc)
		if err != nil {
			w.log.Error(err, "cannot tell whether ClusterNetworkPolicy is served; asking again", "in", w.interval)
			return false
		}
		w.tell("discovery says ClusterNetworkPolicy is "+served(v), false)
		want = v
	} else {
		if !w.crd.HasSynced() {
			return false
		}
		v, decided, why := crdWants(w.crdObject())
		w.tell(why, strings.HasPrefix(why, crdTooNew))
		if !decided || v == w.target() {
			w.disagree = 0
			return false
		}
		// Discovery has the final word: the cache's RESTMapper reads it.
		d, err := discoverClusterPolicies(w.dc)
		if err != nil || d != v {
			w.disagree++
			if w.disagree == 10 { // ~40 s: more than a lag
				w.log.Error(err, "the ClusterNetworkPolicy CRD and discovery disagree; asking discovery again",
					"crd", served(v), "discovery", served(d))
			}
			return true
		}
		w.disagree = 0
		want = v
	}
	if want == w.target() {
		return false
	}
	if w.pending != nil {
		w.drop(ctx, w.pending)
		w.pending = nil
	}
	w.mu.Lock()
	cur := w.cur
	w.mu.Unlock()
	switch {
	case want == "":
		w.stop(ctx)
		return false
	case cur != nil && cur.version == want:
		return false
	}
	c, err := w.open(ctx, want)
	if err != nil {
		if ctx.Err() == nil {
			w.log.Error(err, "cannot start watching ClusterNetworkPolicy; trying again")
		}
		return true
	}
	w.pending = c
	w.log.Info("ClusterNetworkPolicy is served: listing it", "version", cnpGroup+"/"+want)
	return false
}

// promote makes the reconciler read c, whose informer has synced, from a
// full sync on, and stops the one it read before.
func (w *clusterPolicyWatch) promote(ctx context.Context, c *cnpInformer) {
	w.r.useClusterPolicies(c.version)
	var err error
	if c.reg, err = c.inf.AddEventHandler(w.handler()); err != nil {
		// Not on a running informer; the full syncs still read it.
		w.log.Error(err, "ClusterNetworkPolicy events", "version", c.version)
	}
	w.mu.Lock()
	old := w.cur
	w.cur = c
	w.mu.Unlock()
	if old != nil {
		w.drop(ctx, old)
	}
	w.notify(nil)
	w.log.Info("enforcing ClusterNetworkPolicy", "version", cnpGroup+"/"+c.version)
}

// stop stops reading ClusterNetworkPolicy: its CRD is gone, and every one of
// them with it.
func (w *clusterPolicyWatch) stop(ctx context.Context) {
	w.mu.Lock()
	old := w.cur
	w.cur = nil
	w.mu.Unlock()
	if old == nil {
		return
	}
	w.r.useClusterPolicies("")
	w.drop(ctx, old)
	w.notify(nil)
	w.log.Info("the ClusterNetworkPolicy CRD is gone, and every ClusterNetworkPolicy with it: no longer enforcing "+
		"ClusterNetworkPolicy (NetworkPolicy enforcement goes on); enforcing it again if the CRD comes back",
		"version", cnpGroup+"/"+old.version)
}

// tell logs what the CRD says, once per state; loud for a state the agent
// cannot follow.
func (w *clusterPolicyWatch) tell(what string, loud bool) {
	if what == w.said {
		return
	}
	w.said = what
	if loud {
		w.log.Error(errors.New(what), "ClusterNetworkPolicy: the agent cannot follow its CRD; what it enforces stays as it is")
		return
	}
	w.log.Info("ClusterNetworkPolicy CRD", "state", what)
}

// crdObject is the CRD as the watch last saw it; nil when it does not exist.
func (w *clusterPolicyWatch) crdObject() *apiextensionsv1.CustomResourceDefinition {
	o, ok, err := w.crd.GetStore().GetByKey(cnpCRDName)
	if err != nil || !ok {
		return nil
	}
	c, _ := o.(*apiextensionsv1.CustomResourceDefinition)
	return c
}

// served names version for the log.
func served(version string) string {
	if version == "" {
		return "not served"
	}
	return "served as " + version
}

// crdTooNew starts what crdWants says of a CRD that serves no version the agent reads.
const crdTooNew = "the CRD serves none of the versions this agent reads"

// crdWants returns the ClusterNetworkPolicy version the CRD object (nil: it
// does not exist) says to read, "" for none, and whether it decides at all
// (when not, what runs keeps running), with why, for the log.
func crdWants(crd *apiextensionsv1.CustomResourceDefinition) (version string, decided bool, why string) {
	switch {
	case crd == nil:
		return "", true, "the CRD is not installed: enforcing NetworkPolicy only; ClusterNetworkPolicy will be enforced once its CRD is installed"
	case crd.DeletionTimestamp != nil:
		return "", false, "the CRD is being deleted (its ClusterNetworkPolicies first)"
	}
	established := false
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established {
			established = c.Status == apiextensionsv1.ConditionTrue
		}
	}
	if !established {
		return "", false, "the CRD is not established yet"
	}
	var all []string
	for _, v := range crd.Spec.Versions {
		if v.Served {
			all = append(all, v.Name)
		}
	}
	for _, v := range []string{"v1beta1", "v1alpha2"} {
		if slices.Contains(all, v) {
			return v, true, "the CRD is established and serves " + v
		}
	}
	return "", false, fmt.Sprintf(crdTooNew+" (v1beta1, v1alpha2), but [%s]: "+
		"the ClusterNetworkPolicies read before stay enforced, later changes are not; upgrade the agent",
		strings.Join(all, ", "))
}

// trimCRD keeps what crdWants reads: the CRD's schemas are most of its 100+ KB.
func trimCRD(obj any) (any, error) {
	c, ok := obj.(*apiextensionsv1.CustomResourceDefinition)
	if !ok {
		return obj, nil
	}
	out := &apiextensionsv1.CustomResourceDefinition{ObjectMeta: trimMeta(c.ObjectMeta)}
	out.Spec.Group = c.Spec.Group
	for _, v := range c.Spec.Versions {
		out.Spec.Versions = append(out.Spec.Versions, apiextensionsv1.CustomResourceDefinitionVersion{
			Name: v.Name, Served: v.Served, Storage: v.Storage})
	}
	for _, cond := range c.Status.Conditions {
		out.Status.Conditions = append(out.Status.Conditions, apiextensionsv1.CustomResourceDefinitionCondition{
			Type: cond.Type, Status: cond.Status, Reason: cond.Reason})
	}
	return out, nil
}

// reportAccess reports a change of the CRD watch's access (log, metric, an
// Event on the agent's Node) and returns whether it is denied.
func (w *clusterPolicyWatch) reportAccess(ctx context.Context) bool {
	a := w.access.Load()
	if a == w.reported || a == accessUnknown {
		return a == accessDenied
	}
	before := w.reported
	w.reported = a
	if a == accessDenied {
		clusterPolicyCRDMode.WithLabelValues("watch").Set(0)
		clusterPolicyCRDMode.WithLabelValues("poll").Set(1)
		w.log.Error(errCRDWatchDenied, "the agent's ClusterRole predates this version: apply this release's config/rbac; "+
			"meanwhile it asks discovery for ClusterNetworkPolicy instead, so its CRD installed or removed is "+
			"followed up to that late", "every", w.interval)
		w.warned = true
		w.event(ctx, corev1.EventTypeWarning, "ClusterPolicyCRDWatchDenied", fmt.Sprintf(
			"nftpolicy agent on %s may not list and watch customresourcedefinitions (apiextensions.k8s.io): its "+
				"ClusterRole predates this version; it asks discovery every %v instead, so the ClusterNetworkPolicy CRD "+
				"installed or removed is followed up to that late. Apply this release's ClusterRole.", w.r.NodeName, w.interval))
		return true
	}
	clusterPolicyCRDMode.WithLabelValues("watch").Set(1)
	clusterPolicyCRDMode.WithLabelValues("poll").Set(0)
	if before == accessDenied {
		w.log.Info("the agent may watch the ClusterNetworkPolicy CRD again: no more asking discovery")
		if w.warned {
			w.warned = false
			w.event(ctx, corev1.EventTypeNormal, "ClusterPolicyCRDWatched", fmt.Sprintf(
				"nftpolicy agent on %s watches the ClusterNetworkPolicy CRD again", w.r.NodeName))
		}
	}
	return false
}

// event records an Event on the agent's Node, once the cache holds it (not at
// all when the Node does not exist).
func (w *clusterPolicyWatch) event(ctx context.Context, typ, reason, note string) {
	if w.r.Recorder == nil {
		return
	}
	go func() {
		if !w.cache.WaitForCacheSync(ctx) {
			return
		}
		var n corev1.Node
		if err := w.cache.Get(ctx, client.ObjectKey{Name: w.r.NodeName}, &n); err != nil {
			return
		}
		w.r.Recorder.Eventf(&n, nil, typ, reason, "WatchCRD", "%s", note)
	}()
}

// noteAccess records what the apiserver answered a list or watch of the CRD:
// success, a refusal, or neither (an outage: apiLink's business).
func (w *clusterPolicyWatch) noteAccess(err error) {
	a := accessAllowed
	switch {
	case apierrors.IsForbidden(err):
		a = accessDenied
	case err != nil:
		return
	}
	if w.access.Swap(a) != a {
		w.poke()
	}
}

// accessLW is the CRD's ListerWatcher, telling the watch whether it may.
type accessLW struct {
	w  *clusterPolicyWatch
	lw toolscache.ListerWatcherWithContext
}

func (l *accessLW) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	o, err := l.lw.ListWithContext(ctx, opts)
	l.w.noteAccess(err)
	return o, err
}

func (l *accessLW) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	i, err := l.lw.WatchWithContext(ctx, opts)
	l.w.noteAccess(err)
	return i, err
}

func (l *accessLW) List(opts metav1.ListOptions) (runtime.Object, error) {
	return l.ListWithContext(context.Background(), opts)
}

func (l *accessLW) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return l.WatchWithContext(context.Background(), opts)
}

// handler passes ClusterNetworkPolicy creates, deletes and spec changes
// (generation) to the reconciler.
func (w *clusterPolicyWatch) handler() toolscache.ResourceEventHandler {
	return informerEvents{pred: predicate.GenerationChangedPredicate{}, to: w.notify}
}

// clusterPolicySource is the reconciler's source of ClusterNetworkPolicy
// events, whichever informer runs: it outlives them all.
type clusterPolicySource struct{ w *clusterPolicyWatch }

func (s clusterPolicySource) Start(ctx context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	s.w.setSink(s.w.r.queue(ctx, q))
	return nil
}

// WaitForSync waits for the informer registered before the manager started,
// if any, as the controller does for its other sources: the first sync reads
// every ClusterNetworkPolicy.
func (s clusterPolicySource) WaitForSync(ctx context.Context) error {
	s.w.mu.Lock()
	c := s.w.cur
	s.w.mu.Unlock()
	if c == nil || toolscache.WaitForCacheSync(ctx.Done(), c.inf.HasSynced) {
		return nil
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return fmt.Errorf("timed out waiting for the ClusterNetworkPolicy %s informer to sync", c.version)
}

func (s clusterPolicySource) String() string {
	return "ClusterNetworkPolicy, as its CRD comes and goes"
}

// useClusterPolicies makes the reconciler read ClusterNetworkPolicy version
// ("" none) from its next sync on, a full one. Under the reconciler's lock: no
// sync reads an informer that is being removed.
func (r *NodeReconciler) useClusterPolicies(version string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cnp.version.Store(version)
	r.needFull = true
}
