package controllers

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Which Nodes the agent watches.
//
// An agent needs Nodes for two things: its own Node's pod CIDRs
// (--unknown-pod-cidrs=node, unknown.go), and every Node's labels and addresses
// for ClusterNetworkPolicy nodes peers. Kubelets rewrite their Node's status on
// every condition change and at least every 5 minutes, a whole Node of 5-15 KiB
// each time: an agent watching every Node would be sent each of those rewrites
// of each node, and the apiserver would encode and send them to every agent,
// for data almost no agent reads (docs/scale.md, "Agents watch only their own
// Node"). So by default the manager's cache holds only this node's Node (a
// metadata.name field selector: the apiserver filters, nothing else crosses the
// wire), and allNodes, a second informer of every Node, runs only while some
// ClusterNetworkPolicy has a nodes peer. The reconciler decides, at each sync,
// from the policies it compiles (NodeReconciler.nodeScope): the first such
// policy starts the watch, the last one's going stops it and drops the other
// nodes from the compiler and from memory.
//
// Exactness: a table with a nodes peer is never compiled from a partial node
// list. While the all-node watch has not synced its first list, a sync that
// needs it applies nothing (the table in force stays, any change waits with it)
// and is retried when the list arrives; it then reads every Node of the list.
// The informer's requests go through apiLink (as kind "node-all"), so its
// outages are retried and counted and /readyz reports them like any other
// watch's; its events pass nodeChanged, as the cache's Node events do.

// allNodesKind is the all-node informer's kind in apiLink's metrics and /readyz.
const allNodesKind = "node-all"

var nodeWatchScope = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "nftpolicy_node_watch",
	Help: "Which Nodes the agent watches: scope own is 1 while it watches only its own Node, scope all while it " +
		"watches every Node (a ClusterNetworkPolicy has a nodes peer); the other is 0.",
}, []string{"scope"})

func init() { metrics.Registry.MustRegister(nodeWatchScope) }

// allNodes is the on-demand informer of every Node.
type allNodes struct {
	base context.Context // the agent's: the informer never outlives it
	link *apiLink
	lw   toolscache.ListerWatcher
	log  logr.Logger

	mu   sync.Mutex
	inf  toolscache.SharedIndexInformer // nil while only the own Node is watched
	stop context.CancelFunc
	done chan struct{} // closed when the informer has returned
	// Told of a relevant Node event (nil: only a sync is wanted, the watch
	// has synced).
	sink
	// started is when the current watch started; runs counts watches started.
	started time.Time
	runs    int
}

func newAllNodes(ctx context.Context, link *apiLink, lw toolscache.ListerWatcher, log logr.Logger) *allNodes {
	nodeWatchScope.WithLabelValues("own").Set(1)
	nodeWatchScope.WithLabelValues("all").Set(0)
	return &allNodes{base: ctx, link: link, lw: lw, log: log}
}

// sink is how a watch that comes and goes (the all-node watch, the
// ClusterNetworkPolicy watch) reaches the reconciler's queue, which outlives it:
// the reconciler's source sets it when its controller starts.
type sink struct {
	mu sync.Mutex
	f  func(client.Object)
}

func (s *sink) setSink(f func(client.Object)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.f = f
}

// notify hands obj to the reconciler's queue (nil asks for a sync); before
// the controller starts there is no queue, and the first sync reads everything.
func (s *sink) notify(obj client.Object) {
	s.mu.Lock()
	f := s.f
	s.mu.Unlock()
	if f != nil {
		f(obj)
	}
}

// start starts the watch of every Node, unless it runs: policy is the
// ClusterNetworkPolicy with a nodes peer that needs it (the first by name of
// count such), for the log.
func (a *allNodes) start(policy string, count int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inf != nil {
		return
	}
	inf := a.link.newInformerAs(allNodesKind, a.lw, &corev1.Node{}, 0, toolscache.Indexers{})
	// Neither fails on an informer that has not started.
	_ = inf.SetTransform(trimNode)
	_, _ = inf.AddEventHandler(a.handler())
	ctx, cancel := context.WithCancel(a.base)
	done, started := make(chan struct{}), time.Now()
	a.inf, a.stop, a.done, a.started = inf, cancel, done, started
	a.runs++
	go func() {
		defer close(done)
		inf.RunWithContext(ctx)
	}()
	go func() {
		if toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			a.log.Info("every Node is known", "nodes", len(inf.GetStore().ListKeys()), "after", time.Since(started).Round(time.Millisecond))
			a.notify(nil)
		}
	}()
	nodeWatchScope.WithLabelValues("own").Set(0)
	nodeWatchScope.WithLabelValues("all").Set(1)
	a.log.Info("watching every Node: a ClusterNetworkPolicy has a nodes peer", "policy", policy, "policiesWithNodesPeers", count)
}

// stopWatch stops the watch of every Node, if it runs, and lets its store go.
func (a *allNodes) stopWatch() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inf == nil {
		return
	}
	a.stop()
	a.inf = nil
	// Once the informer has returned its requests report nothing more: only
	// then is its kind forgotten (an outage it saw must not outlive it in /readyz).
	done := a.done
	go func() {
		<-done
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.inf == nil { // not started again meanwhile
			a.link.forget(allNodesKind)
		}
	}()
	nodeWatchScope.WithLabelValues("own").Set(1)
	nodeWatchScope.WithLabelValues("all").Set(0)
	a.log.Info("watching only this node's Node: no ClusterNetworkPolicy has a nodes peer any more",
		"watchedEveryNodeFor", time.Since(a.started).Round(time.Millisecond))
}

// running reports whether the watch of every Node runs.
func (a *allNodes) running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inf != nil
}

// list returns every Node and true once the watch has synced its first list;
// nil and false before, or when it does not run. The Nodes are the store's:
// read only.
func (a *allNodes) list() ([]*corev1.Node, bool) {
	a.mu.Lock()
	inf := a.inf
	a.mu.Unlock()
	if inf == nil || !inf.HasSynced() {
		return nil, false
	}
	objs := inf.GetStore().List()
	out := make([]*corev1.Node, 0, len(objs))
	for _, o := range objs {
		if n, ok := o.(*corev1.Node); ok {
			out = append(out, n)
		}
	}
	return out, true
}

// get returns Node name from the watch's store (read only); nil when it is
// not there or the watch does not run.
func (a *allNodes) get(name string) *corev1.Node {
	a.mu.Lock()
	inf := a.inf
	a.mu.Unlock()
	if inf == nil {
		return nil
	}
	o, ok, err := inf.GetStore().GetByKey(name)
	if err != nil || !ok {
		return nil
	}
	n, _ := o.(*corev1.Node)
	return n
}

// stats returns how many Nodes the watch's store holds (0 when it does not
// run) and how many watches were started: what the tests read.
func (a *allNodes) stats() (held, runs int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inf != nil {
		held = len(a.inf.GetStore().ListKeys())
	}
	return held, a.runs
}

// handler passes the informer's events that nodeChanged passes to the sink.
func (a *allNodes) handler() toolscache.ResourceEventHandler {
	return informerEvents{pred: nodeChanged(), to: a.notify}
}

// nodeWaitRetry is how soon a sync that waits for every Node is retried when
// the watch's sync does not queue it first (an apiserver that does not answer).
const nodeWaitRetry = time.Second

var nodeWaits = prometheus.NewCounter(prometheus.CounterOpts{
	Name: "nftpolicy_node_watch_waits_total",
	Help: "Syncs that applied nothing because a ClusterNetworkPolicy has a nodes peer and the list of every Node had not arrived yet.",
})

func init() { metrics.Registry.MustRegister(nodeWaits) }

// hasNodesPeer reports whether cnp has a nodes peer (egress only: ingress peers
// cannot name nodes).
func hasNodesPeer(cnp *cnpv1beta1.ClusterNetworkPolicy) bool {
	for _, r := range cnp.Spec.Egress {
		for _, p := range r.To {
			if p.Nodes != nil {
				return true
			}
		}
	}
	return false
}

// noteNodePeers records whether ClusterNetworkPolicy cnp has a nodes peer.
func (r *NodeReconciler) noteNodePeers(cnp *cnpv1beta1.ClusterNetworkPolicy) {
	if r.nodePeers == nil {
		r.nodePeers = map[string]struct{}{}
	}
	if hasNodesPeer(cnp) {
		r.nodePeers[cnp.Name] = struct{}{}
	} else {
		delete(r.nodePeers, cnp.Name)
	}
}

// listNodes returns the Nodes a full read starts from, and this node's own
// (nil: it does not exist): with an all-node watch (Nodes), only the own Node,
// from Reader's own-node cache; without, every Node Reader holds.
func (r *NodeReconciler) listNodes(ctx context.Context) ([]*corev1.Node, *corev1.Node, error) {
	if r.Nodes != nil {
		var n corev1.Node
		err := r.Reader.Get(ctx, client.ObjectKey{Name: r.NodeName}, &n, client.UnsafeDisableDeepCopy)
		switch {
		case apierrors.IsNotFound(err):
			return nil, nil, nil
		case err != nil:
			return nil, nil, err
		}
		return []*corev1.Node{&n}, &n, nil
	}
	var list corev1.NodeList
	if err := r.Reader.List(ctx, &list, client.UnsafeDisableDeepCopy); err != nil {
		return nil, nil, err
	}
	out := make([]*corev1.Node, len(list.Items))
	var own *corev1.Node
	for i := range list.Items {
		out[i] = &list.Items[i]
		if out[i].Name == r.NodeName {
			own = out[i]
		}
	}
	return out, own, nil
}

// remoteNode records in the compiler what the all-node watch holds of another
// node, name; while the compiler does not hold every node (the watch stopped,
// or has not synced), it holds none but its own.
func (r *NodeReconciler) remoteNode(name string) {
	var n *corev1.Node
	if r.nodesLoaded {
		n = r.Nodes.get(name)
	}
	if n == nil {
		r.compiler.DeleteNode(name)
		delete(r.remoteNodes, name)
		return
	}
	r.compiler.SetNode(n)
	r.remoteNodes[name] = struct{}{}
}

// nodeScope makes the Nodes the compiler holds follow what its
// ClusterNetworkPolicies need (see the top of this file), and reports whether
// the sync must wait: a policy has a nodes peer, and the list of every Node
// has not arrived yet. Without an all-node watch (Nodes nil) the compiler holds
// every Node already.
func (r *NodeReconciler) nodeScope(log logr.Logger) bool {
	if r.Nodes == nil {
		return false
	}
	if len(r.nodePeers) == 0 {
		if r.Nodes.running() || len(r.remoteNodes) > 0 {
			for name := range r.remoteNodes {
				r.compiler.DeleteNode(name)
			}
			log.V(1).Info("dropped the other nodes", "nodes", len(r.remoteNodes))
			r.remoteNodes, r.nodesLoaded = nil, false
			r.Nodes.stopWatch()
		}
		return false
	}
	if r.nodesLoaded {
		return false
	}
	r.Nodes.start(slices.Min(slices.Collect(maps.Keys(r.nodePeers))), len(r.nodePeers))
	nodes, synced := r.Nodes.list()
	if !synced {
		return true
	}
	r.remoteNodes = make(map[string]struct{}, len(nodes))
	for _, n := range nodes {
		// The own Node comes from the own-node cache, as without the watch.
		if n.Name != r.NodeName {
			r.compiler.SetNode(n)
			r.remoteNodes[n.Name] = struct{}{}
		}
	}
	r.nodesLoaded = true
	log.V(1).Info("the compiler holds every Node", "nodes", len(nodes))
	return false
}
