package controllers

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	networkingv1client "k8s.io/client-go/kubernetes/typed/networking/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// restartKinds are the four informers, named for this test's counters
// (nftpolicy_apiserver_requests_total{kind}) so that the suite's agents do not
// add to them.
const (
	restartPodKind    = "restart-pod"
	restartNSKind     = "restart-namespace"
	restartPolicyKind = "restart-networkpolicy"
	restartNodeKind   = "restart-node"
)

var restartKinds = []string{restartPodKind, restartNSKind, restartPolicyKind, restartNodeKind}

// TestWatchesAcrossControlPlaneRestart: the agent's watches across a restart of
// the whole control plane (etcd and kube-apiserver killed, then started again
// with their data): which resume from their last resourceVersion and which
// relist, and why.
//
// The rule is the apiserver's (k8s.io/apiserver storage/cacher,
// watchCacheHistory.GetIntervalLocked): a new apiserver's watch cache of a
// resource starts from one list of etcd at etcd's revision L at that moment,
// and serves a watch from resourceVersion X only if X >= L; an older one is
// answered 410 "too old resource version: X (L)", and the reflector relists.
// etcd's revision is global (every write of any kind moves it), and what the
// agent holds of a kind is the revision of the last event or bookmark of that
// kind it got (a bookmark carries the revision its watch cache has seen, which
// etcd's progress notifications move past other kinds' writes). So a kind's
// watch resumes after a full restart if and only if nothing at all was written
// to etcd after that event or bookmark until the new cache listed (at the
// apiserver's start, before /readyz): in practice, if an object of that kind
// was the last write before the outage. A write after the
// apiserver is ready again does not matter: it is in the new cache's history,
// and the resumed watch delivers it.
//
// The test turns the apiserver's own periodic writes off (its identity lease and
// endpoint lease, renewed every 10 s, and compaction), so that the test's
// writes are the only ones; with them on, a renewal between the agent's last
// event and the outage makes every kind relist, as the test's own Lease write
// does (docs/scale.md, "Resumed or relisted?").
func TestWatchesAcrossControlPlaneRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped under -short: starts, kills and restarts kube-apiserver and etcd")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("KUBEBUILDER_ASSETS is unset; export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
	ctx := t.Context()
	cp, err := framework.StartControlPlane(t.TempDir(), framework.ControlPlaneOptions{Configure: quietAPIServer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	rig := newRestartRig(t, cp)
	rig.populate(ctx, 300)
	rig.start(ctx)

	// 1. The last write before the outage is a pod's: the pod watch resumes;
	// the other kinds' last events are older than the new caches' lists, so
	// they relist (a watch-list each). Pods created and deleted after the
	// return, before the informers reconnect, arrive through the resumed watch.
	rig.outage(ctx, restartPodKind, func(ctx context.Context) client.Object {
		return rig.createPod(ctx, "last-before-outage-1")
	})

	// 2. The last write is a policy's: now the policy watch resumes and the pod
	// watch, whose last event is older, relists: one LIST, the agent's own.
	rig.outage(ctx, restartPolicyKind, func(ctx context.Context) client.Object {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "rs-0", Name: "last-before-outage-2"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
		if err := cp.Client.Create(ctx, np); err != nil {
			t.Fatal(err)
		}
		return np
	})

	// 3. The last write is one no informer sees, as a kubelet's Lease renewal:
	// every kind relists, the pods with one LIST. This is a real cluster's
	// case, where such writes never stop.
	rig.outage(ctx, "", func(ctx context.Context) client.Object {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-node-lease", Name: "node-0"},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To("node-0"), RenewTime: &metav1.MicroTime{Time: time.Now()}}}
		if err := cp.Client.Create(ctx, l); err != nil {
			t.Fatal(err)
		}
		return l
	})
}

// quietAPIServer turns off the apiserver's own periodic writes to etcd: its
// identity lease (APIServerIdentity; the interoperability proxy depends on it)
// and the lease behind the kubernetes Service's endpoints, each renewed every
// 10 s, and compaction's bookkeeping key, written every 5 minutes. Each moves
// etcd's revision.
func quietAPIServer(env *envtest.Environment) {
	args := env.ControlPlane.GetAPIServer().Configure()
	args.Append("feature-gates", "APIServerIdentity=false,UnknownVersionInteroperabilityProxy=false")
	args.Append("endpoint-reconciler-type", "none")
	args.Append("etcd-compaction-interval", "0")
}

// restartRig runs the agent's four informers, built as RunAgent builds them
// (apiLink, the pod list decoded as it arrives, client-go's watch-list for the
// others), through a recorder of every request they make and a gate that can
// hold them back.
type restartRig struct {
	t    *testing.T
	cp   *framework.ControlPlane
	core corev1client.CoreV1Interface
	net  networkingv1client.NetworkingV1Interface
	inf  map[string]toolscache.SharedIndexInformer
	gate gate

	mu   sync.Mutex
	reqs []*restartRequest
	// podLists counts the test's own pod LISTs, which the apiserver's
	// request counters include.
	podLists float64
	cycles   int
}

// restartRequest is one list or watch an informer made.
type restartRequest struct {
	kind, verb, rv string
	// status is the apiserver's refusal, if any: an error for a list or a
	// watch, or the Error event that ended a watch (a 410 for a watch too old).
	status string
}

func newRestartRig(t *testing.T, cp *framework.ControlPlane) *restartRig {
	pc := rest.CopyConfig(cp.Config)
	pc.ContentType = runtime.ContentTypeProtobuf
	return &restartRig{t: t, cp: cp, core: corev1client.NewForConfigOrDie(pc), net: networkingv1client.NewForConfigOrDie(pc),
		inf: map[string]toolscache.SharedIndexInformer{}}
}

// populate writes n pods over five namespaces, some policies and the node.
func (r *restartRig) populate(ctx context.Context, n int) {
	c := r.cp.Client
	for i := range 5 {
		ns := fmt.Sprintf("rs-%d", i)
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			r.t.Fatal(err)
		}
		for j := range 4 {
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np-%d", j)},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a%d", j)}}}}
			if err := c.Create(ctx, np); err != nil {
				r.t.Fatal(err)
			}
		}
	}
	if err := c.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-0"}}); err != nil {
		r.t.Fatal(err)
	}
	for i := range n {
		r.createPod(ctx, fmt.Sprintf("p-%d", i))
	}
}

// podNamespace spreads the pods over the five namespaces by name.
func (r *restartRig) podNamespace(name string) string {
	var i int
	for _, c := range name {
		i += int(c)
	}
	return fmt.Sprintf("rs-%d", i%5)
}

func (r *restartRig) createPod(ctx context.Context, name string) *corev1.Pod {
	i := len(name)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: r.podNamespace(name), Name: name, Labels: map[string]string{"app": fmt.Sprintf("a%d", i%4)}},
		Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%3), Containers: []corev1.Container{{Name: "c", Image: "img",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}},
	}
	if err := r.cp.Client.Create(ctx, p); err != nil {
		r.t.Fatal(err)
	}
	return p
}

// start runs the informers until the test ends and waits for their first sync.
func (r *restartRig) start(ctx context.Context) {
	firsts := map[string]string{restartPodKind: "list", restartNSKind: "watch-list", restartPolicyKind: "watch-list", restartNodeKind: "watch-list"}
	before := map[string]float64{} // the counters are the process's: -count=N runs add up
	for kind, first := range firsts {
		before[kind] = r.requests(kind, first)
	}
	in := &podInterner{}
	link := newAPILink(logr.Discard())
	pl := &podLister{rc: r.core.RESTClient(), record: func(p *corev1.Pod) runtime.Object { return in.record(p) }}
	link.podList = func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		return r.listed(ctx, restartPodKind, opts, pl.list)
	}
	lws := map[string]struct {
		lw  *toolscache.ListWatch
		obj runtime.Object
	}{
		restartPodKind:    {toolscache.NewListWatchFromClient(r.core.RESTClient(), "pods", "", fields.Everything()), &corev1.Pod{}},
		restartNSKind:     {toolscache.NewListWatchFromClient(r.core.RESTClient(), "namespaces", "", fields.Everything()), &corev1.Namespace{}},
		restartPolicyKind: {toolscache.NewListWatchFromClient(r.net.RESTClient(), "networkpolicies", "", fields.Everything()), &networkingv1.NetworkPolicy{}},
		// Only this node's own Node, as the agent's cache holds it.
		restartNodeKind: {toolscache.NewListWatchFromClient(r.core.RESTClient(), "nodes", "", fields.OneTermEqualSelector("metadata.name", "node-0")), &corev1.Node{}},
	}
	ictx, cancel := context.WithCancel(ctx)
	r.t.Cleanup(cancel)
	for _, kind := range restartKinds {
		inf := link.newInformerAs(kind, r.recorded(kind, lws[kind].lw), lws[kind].obj, 0, toolscache.Indexers{})
		if kind == restartPodKind {
			if err := inf.SetTransform(in.trimPod); err != nil {
				r.t.Fatal(err)
			}
		}
		r.inf[kind] = inf
		go inf.RunWithContext(ictx)
	}
	for _, kind := range restartKinds {
		if !toolscache.WaitForCacheSync(ctx.Done(), r.inf[kind].HasSynced) {
			r.t.Fatalf("%s informer did not sync", kind)
		}
	}
	r.same(ctx)
	for kind, first := range firsts {
		if got := r.requests(kind, first) - before[kind]; got != 1 {
			r.t.Fatalf("%s: %v %s requests at start, want 1", kind, got, first)
		}
	}
}

// listed makes one list of kind through list, recorded, behind the gate, and
// notes a refusal.
func (r *restartRig) listed(ctx context.Context, kind string, opts metav1.ListOptions,
	list func(context.Context, metav1.ListOptions) (runtime.Object, error)) (runtime.Object, error) {
	req := r.note(kind, "list", opts)
	if err := r.gate.wait(ctx); err != nil {
		return nil, err
	}
	obj, err := list(ctx, opts)
	if err != nil {
		r.refused(req, err.Error())
	}
	return obj, err
}

// recorded wraps lw's watches with the recorder and the gate (the pod list
// is the agent's own, link.podList).
func (r *restartRig) recorded(kind string, lw *toolscache.ListWatch) *toolscache.ListWatch {
	return &toolscache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return r.listed(ctx, kind, opts, lw.ListWithContext)
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			verb := "watch"
			if opts.SendInitialEvents != nil && *opts.SendInitialEvents {
				verb = "watch-list"
			}
			req := r.note(kind, verb, opts)
			if err := r.gate.wait(ctx); err != nil {
				return nil, err
			}
			w, err := lw.WatchWithContext(ctx, opts)
			if err != nil {
				r.refused(req, err.Error())
				return nil, err
			}
			return newNotingWatch(w, func(e watch.Event) {
				if e.Type == watch.Error {
					r.refused(req, apierrors.FromObject(e.Object).Error())
				}
			}), nil
		},
	}
}

func (r *restartRig) note(kind, verb string, opts metav1.ListOptions) *restartRequest {
	req := &restartRequest{kind: kind, verb: verb, rv: opts.ResourceVersion}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
	return req
}

// refused records the apiserver's first refusal of req: once the reflector
// stops a watch after an Error event, client-go may add one of its own
// (decoding a closed body).
func (r *restartRig) refused(req *restartRequest, status string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.status == "" {
		req.status = status
	}
}

// since returns the requests of kind made after the first n of all kinds.
func (r *restartRig) since(n int, kind string) []restartRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []restartRequest
	for _, req := range r.reqs[n:] {
		if req.kind == kind {
			out = append(out, *req)
		}
	}
	return out
}

func (r *restartRig) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// requests is the agent's own count (nftpolicy_apiserver_requests_total).
func (r *restartRig) requests(kind, request string) float64 {
	return testutil.ToFloat64(apiRequests.WithLabelValues(kind, request))
}

// tooOld matches the apiserver's 410 for a watch from before its cache's list.
var tooOld = regexp.MustCompile(`too old resource version: (\d+) \((\d+)\)`)

// outage makes write the last write before the control plane goes away, kills
// etcd and the apiserver, starts them again, creates and deletes a pod before
// the informers reconnect, and then checks that the kind written last resumed
// its watch (resumes; "" when no informer watches it), every other kind
// relisted because the new caches listed at the revision of that last write,
// and every informer holds what the apiserver does.
func (r *restartRig) outage(ctx context.Context, resumes string, write func(context.Context) client.Object) {
	t := r.t
	r.waitQuiet(ctx)
	before := map[string]map[string]float64{}
	for _, kind := range restartKinds {
		before[kind] = map[string]float64{}
		for _, req := range []string{"list", "watch-list", "watch"} {
			before[kind][req] = r.requests(kind, req)
		}
	}
	last := write(ctx).GetResourceVersion()
	// The informer of the kind written sees the write; no other request
	// reaches the apiserver until it is down (a read now would make etcd
	// report progress, which reaches the informers as bookmarks).
	deadline := time.Now().Add(30 * time.Second)
	for resumes != "" && r.inf[resumes].LastSyncResourceVersion() != last {
		if time.Now().After(deadline) {
			t.Fatalf("%s informer at resourceVersion %s, not %s, 30s after the write", resumes, r.inf[resumes].LastSyncResourceVersion(), last)
		}
		time.Sleep(10 * time.Millisecond)
	}
	held := map[string]string{}
	for _, kind := range restartKinds {
		held[kind] = r.inf[kind].LastSyncResourceVersion()
	}
	n := r.count()
	r.gate.hold()
	if err := r.cp.Down(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	upCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := r.cp.Up(upCtx); err != nil {
		t.Fatal(err)
	}
	up := time.Since(start)
	r.podLists = 0 // the new apiserver's counters start from 0
	// Written after the apiserver is ready and before the informers reconnect.
	r.cycles++
	created := r.createPod(ctx, fmt.Sprintf("after-outage-%d", r.cycles))
	victim := &corev1.Pod{}
	if err := r.cp.Client.Get(ctx, client.ObjectKey{Namespace: r.podNamespace(fmt.Sprintf("p-%d", r.cycles)), Name: fmt.Sprintf("p-%d", r.cycles)}, victim); err != nil {
		t.Fatal(err)
	}
	if err := r.cp.Client.Delete(ctx, victim, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	r.gate.open()
	caughtUp := time.Now()
	r.same(ctx)
	// The kinds that relist do so after the reflector's backoff (~1 s) and may
	// hold what the apiserver holds before: wait until they moved past their
	// old resourceVersion.
	for _, kind := range restartKinds {
		for deadline := time.Now().Add(30 * time.Second); kind != resumes && r.inf[kind].LastSyncResourceVersion() == held[kind]; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s still at resourceVersion %s 30s after the informers reconnected", kind, held[kind])
			}
		}
	}
	relisted := time.Since(caughtUp)
	t.Logf("last write before the outage: %s at resourceVersion %s; informers held %v; apiserver ready %v after its start; "+
		"pod %s created and %s deleted after it; every informer equal to the apiserver, and past its old resourceVersion, %v after they reconnected",
		cmp.Or(resumes, "a kind no informer watches"), last, held, up.Round(time.Millisecond), created.Name, victim.Name, relisted.Round(time.Millisecond))

	for _, kind := range restartKinds {
		reqs := r.since(n, kind)
		var lines []string
		for _, req := range reqs {
			lines = append(lines, fmt.Sprintf("%s rv=%s %s", req.verb, req.rv, req.status))
		}
		t.Logf("%s after the outage: %s", kind, strings.Join(lines, "; "))
		delta := map[string]float64{}
		for _, req := range []string{"list", "watch-list", "watch"} {
			delta[req] = r.requests(kind, req) - before[kind][req]
		}
		relist := "watch-list"
		if kind == restartPodKind {
			relist = "list"
		}
		if len(reqs) == 0 || reqs[0].verb != "watch" || reqs[0].rv != held[kind] {
			t.Errorf("%s: the first request after the outage is not a watch from its last resourceVersion %s: %v", kind, held[kind], lines)
			continue
		}
		if kind == resumes {
			if reqs[0].status != "" || delta["list"]+delta["watch-list"] != 0 {
				t.Errorf("%s, written last, did not resume its watch: %v (list +%v, watch-list +%v)", kind, lines, delta["list"], delta["watch-list"])
			}
			continue
		}
		m := tooOld.FindStringSubmatch(reqs[0].status)
		switch {
		case m == nil:
			t.Errorf("%s: the watch from %s was not refused as too old: %v", kind, held[kind], lines)
		case m[1] != held[kind] || m[2] != last:
			// The new cache listed at another revision than the last write's:
			// something else wrote to etcd.
			t.Errorf("%s: refused %q; want the new cache's list at %s, the revision of the last write", kind, m[0], last)
		}
		if len(reqs) < 2 || reqs[1].verb != relist || delta[relist] != 1 || delta["list"]+delta["watch-list"] != 1 {
			t.Errorf("%s: want one %s after the 410, got %v (list +%v, watch-list +%v)", kind, relist, lines, delta["list"], delta["watch-list"])
		}
	}

	// What the new apiserver served, by its own counters (they start with it).
	m, err := r.cp.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, res := range []string{"pods", "namespaces", "networkpolicies", "nodes"} {
		// Watch events include the initial events of every watch-list
		// (apiserver_init_events_total), the apiserver's own informers' too.
		lines = append(lines, fmt.Sprintf("%s: LIST %.0f, WATCH %.0f (ended), watch events %.0f (of which initial events of watch-lists %.0f)", res,
			framework.SumMetrics(m, "apiserver_request_total", `resource="`+res+`"`, `verb="LIST"`),
			framework.SumMetrics(m, "apiserver_request_total", `resource="`+res+`"`, `verb="WATCH"`),
			framework.SumMetrics(m, "apiserver_watch_events_total", `resource="`+res+`"`),
			framework.SumMetrics(m, "apiserver_init_events_total", `resource="`+res+`"`)))
	}
	t.Logf("the new apiserver served: %s", strings.Join(lines, "; "))
	wantLists := 1.0
	if resumes == restartPodKind {
		wantLists = 0
	}
	if got := framework.SumMetrics(m, "apiserver_request_total", `resource="pods"`, `verb="LIST"`) - r.podLists; got != wantLists {
		t.Errorf("the new apiserver served %v pod LISTs besides the test's own %v, want %v", got, r.podLists, wantLists)
	}
	r.podLists = 0 // the next apiserver counts from 0
}

// waitQuiet waits until etcd's revision stays put for a second: the writes of
// the last start-up (if any) are done. Taking a second at least, it also
// leaves every watch older than a second when the control plane goes: the
// reflector relists after a watch that ends within a second of its start
// without an event (client-go's VeryShortWatchError), whatever its resourceVersion.
func (r *restartRig) waitQuiet(ctx context.Context) {
	rev := func() string {
		var l corev1.ConfigMapList
		if err := r.cp.Client.List(ctx, &l, client.Limit(1)); err != nil {
			r.t.Fatal(err)
		}
		return l.ResourceVersion
	}
	prev := rev()
	for range 30 {
		time.Sleep(time.Second)
		cur := rev()
		if cur == prev {
			return
		}
		prev = cur
	}
	r.t.Fatalf("etcd's revision still moving after 30s (at %s)", prev)
}

// same waits until every informer's store holds what the apiserver holds:
// each pod's record, and the names of the other kinds' objects.
func (r *restartRig) same(ctx context.Context) {
	var last error
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if last = r.differs(ctx); last == nil {
			return
		}
	}
	r.t.Fatalf("after a minute: %v", last)
}

func (r *restartRig) differs(ctx context.Context) error {
	var pods corev1.PodList
	r.podLists++
	if err := r.cp.Client.List(ctx, &pods); err != nil {
		return err
	}
	want := map[string]*cachedPod{}
	for i := range pods.Items {
		want[pods.Items[i].Namespace+"/"+pods.Items[i].Name] = (&podInterner{}).record(&pods.Items[i])
	}
	got := r.inf[restartPodKind].GetStore().List()
	if len(got) != len(want) {
		return fmt.Errorf("the pod store holds %d pods, the apiserver %d", len(got), len(want))
	}
	for _, obj := range got {
		rec, ok := obj.(*cachedPod)
		if !ok {
			return fmt.Errorf("the pod store holds a %T", obj)
		}
		if w := want[rec.GetNamespace()+"/"+rec.GetName()]; w == nil || !reflect.DeepEqual(rec.Pod, w.Pod) {
			return fmt.Errorf("pod %s/%s: %+v, the apiserver's %+v", rec.GetNamespace(), rec.GetName(), rec.Pod, w)
		}
	}
	for kind, list := range map[string]client.ObjectList{restartNSKind: &corev1.NamespaceList{},
		restartPolicyKind: &networkingv1.NetworkPolicyList{}, restartNodeKind: &corev1.NodeList{}} {
		if err := r.cp.Client.List(ctx, list); err != nil {
			return err
		}
		items, err := meta.ExtractList(list)
		if err != nil {
			return err
		}
		var names []string
		for _, o := range items {
			m, _ := meta.Accessor(o)
			names = append(names, m.GetNamespace()+"/"+m.GetName())
		}
		slices.Sort(names)
		if got := r.inf[kind].GetStore().ListKeys(); !slices.Equal(sortedKeys(got), names) {
			return fmt.Errorf("%s store %v, the apiserver %v", kind, got, names)
		}
	}
	return nil
}

func sortedKeys(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		if !strings.Contains(k, "/") {
			k = "/" + k
		}
		out[i] = k
	}
	slices.Sort(out)
	return out
}

// gate holds the informers' requests back while it is closed.
type gate struct {
	mu sync.Mutex
	ch chan struct{}
}

func (g *gate) hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
}

func (g *gate) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

func (g *gate) wait(ctx context.Context) error {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// notingWatch passes a watch's events on, showing each to note first.
type notingWatch struct {
	w    watch.Interface
	out  chan watch.Event
	done chan struct{}
	once sync.Once
}

func newNotingWatch(w watch.Interface, note func(watch.Event)) *notingWatch {
	nw := &notingWatch{w: w, out: make(chan watch.Event), done: make(chan struct{})}
	go func() {
		defer close(nw.out)
		for e := range w.ResultChan() {
			note(e)
			select {
			case nw.out <- e:
			case <-nw.done:
				return
			}
		}
	}()
	return nw
}

func (nw *notingWatch) ResultChan() <-chan watch.Event { return nw.out }

func (nw *notingWatch) Stop() {
	nw.once.Do(func() { close(nw.done) })
	nw.w.Stop()
}
