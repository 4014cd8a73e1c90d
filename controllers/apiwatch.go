package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// The agent's link to the apiserver.
//
// When the apiserver goes away, the table in the kernel stays as it is (it is
// the last thing the agent applied) and the agent keeps running; it only cannot
// learn of changes. client-go's reflectors retry with an exponential backoff
// shared by their watch and list attempts that reaches 30 s, doubled by jitter
// to up to a minute: after a minute's outage an agent would go on sleeping for
// tens of seconds after the apiserver returned (measured: docs/scale.md). So the
// informers' lists and watches go through apiLink, which retries a request that
// failed without an answer from the apiserver (refused, reset, timed out) itself,
// every 0.25-2 s with jitter, and hands the reflector only the apiserver's own
// answers (a 410 for a watch too old to resume, a 429, ...), to which the
// reflector reacts as designed: a relist, or its backoff. A fleet of agents
// still spreads its reconnections over those 2 s and the apiserver's priority
// and fairness limits what it accepts at once.
//
// apiLink also records what the informers do, which says whether a return
// cost the apiserver a relist (nftpolicy_apiserver_requests_total{request}:
// list, a full list; watch-list, a list streamed as a watch with initial
// events; watch, a watch from the last resourceVersion, which resumes unless
// the apiserver refuses it as too old, 410, and a list or watch-list follows:
// after a restart of the whole control plane, always but for the kind written
// last, TestWatchesAcrossControlPlaneRestart) and whether the agent is in
// contact: /readyz reports a kind whose watch has been lost for longer than
// apiGrace (liveness does not: an agent without its apiserver still enforces
// its last table and must not be restarted for it).

// apiRetryMin and apiRetryMax bound the wait between two attempts of a request
// that got no answer.
const (
	apiRetryMin = 500 * time.Millisecond
	apiRetryMax = 2 * time.Second
	// apiGrace is how long a watch may be lost before /readyz says so: longer
	// than a watch's normal re-establishment.
	apiGrace = 10 * time.Second
)

var (
	apiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_apiserver_requests_total",
		Help: "Lists and watches the informers started, by kind and request (list, watch-list: a full list; watch: from the last resourceVersion, a resume unless a list or watch-list follows).",
	}, []string{"kind", "request"})
	apiUnanswered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_apiserver_unanswered_total",
		Help: "List and watch attempts the apiserver did not answer (refused, reset, timed out), by kind; each is retried.",
	}, []string{"kind"})
	apiConnected = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nftpolicy_apiserver_connected",
		Help: "1 while the last list or watch attempt of a kind was answered, else 0.",
	}, []string{"kind"})
)

func init() {
	metrics.Registry.MustRegister(apiRequests, apiUnanswered, apiConnected)
}

// apiLink wraps the informers' ListerWatchers (cache.Options.NewInformer).
type apiLink struct {
	log logr.Logger
	mu  sync.Mutex
	// lost holds, per kind, when its requests stopped being answered; a kind
	// in contact has no entry.
	lost    map[string]time.Time
	lastErr map[string]error
	// live is, per kind, the ListerWatcher of its informer, until forget.
	live map[string]*linkedLW
	// podList, when set, is how the pod informer lists (podlist.go), instead
	// of client-go's watch-list, and podWatch how it watches (podwatch.go).
	podList  func(context.Context, metav1.ListOptions) (runtime.Object, error)
	podWatch func(context.Context, metav1.ListOptions) (watch.Interface, error)
	// nodeList and nodeWatch, when set, are the all-node informer's
	// (nodelist.go), likewise.
	nodeList  func(context.Context, metav1.ListOptions) (runtime.Object, error)
	nodeWatch func(context.Context, metav1.ListOptions) (watch.Interface, error)
}

func newAPILink(log logr.Logger) *apiLink {
	return &apiLink{log: log, lost: map[string]time.Time{}, lastErr: map[string]error{}, live: map[string]*linkedLW{}}
}

// newInformer is a toolscache.NewSharedIndexInformer whose requests go through l.
func (l *apiLink) newInformer(lw toolscache.ListerWatcher, obj runtime.Object, resync time.Duration, indexers toolscache.Indexers) toolscache.SharedIndexInformer {
	return l.newInformerAs(informerKind(obj), lw, obj, resync, indexers)
}

// informerKind is the name the requests of the cache's informer of obj's type
// are counted and reported under.
func informerKind(obj runtime.Object) string {
	return strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", obj), "*v1."))
}

// newInformerAs is newInformer with kind, the name its requests are counted
// and reported under, given: the all-node watch (nodewatch.go) is a second
// informer of Nodes, reported apart from the own-node one.
func (l *apiLink) newInformerAs(kind string, lw toolscache.ListerWatcher, obj runtime.Object, resync time.Duration, indexers toolscache.Indexers) toolscache.SharedIndexInformer {
	apiConnected.WithLabelValues(kind).Set(0)
	linked := &linkedLW{l: l, kind: kind, lw: toolscache.ToListerWatcherWithContext(lw)}
	l.mu.Lock()
	l.live[kind] = linked
	l.mu.Unlock()
	if _, ok := obj.(*corev1.Pod); ok {
		// The pod cache is read by key and whole (podcache.go), never by
		// namespace: its namespace index would cost ~30 bytes a pod for nothing.
		indexers = maps.Clone(indexers)
		delete(indexers, toolscache.NamespaceIndex)
		linked.list, linked.watch = l.podList, l.podWatch
	}
	if kind == allNodesKind {
		linked.list, linked.watch = l.nodeList, l.nodeWatch
	}
	return toolscache.NewSharedIndexInformer(linked, obj, resync, indexers)
}

// check is the /readyz check: an error naming every kind out of contact for longer than apiGrace.
func (l *apiLink) check(*http.Request) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for kind, since := range l.lost {
		if d := time.Since(since); d > apiGrace {
			errs = append(errs, fmt.Errorf("no answer from the apiserver for the %s watch for %v: %w", kind, d.Round(time.Second), l.lastErr[kind]))
		}
	}
	return errors.Join(errs...)
}

// forget drops kind, whose informer was stopped on purpose: a watch the agent
// no longer needs is not one it lost.
func (l *apiLink) forget(kind string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Its informer stops asynchronously: a request of it that fails after
	// this must not mark the kind lost again, for good.
	if w := l.live[kind]; w != nil {
		w.gone.Store(true)
		delete(l.live, kind)
	}
	delete(l.lost, kind)
	delete(l.lastErr, kind)
	apiConnected.DeleteLabelValues(kind)
}

func (l *apiLink) answered(kind string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if since, ok := l.lost[kind]; ok {
		l.log.Info("apiserver answers again", "kind", kind, "after", time.Since(since).Round(time.Millisecond))
		delete(l.lost, kind)
		delete(l.lastErr, kind)
	}
	apiConnected.WithLabelValues(kind).Set(1)
}

func (l *apiLink) unanswered(kind string, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.markLost(kind, err)
}

// unansweredBy is unanswered for w's request, unless w's informer was
// forgotten meanwhile (checked under the lock, against forget).
func (l *apiLink) unansweredBy(w *linkedLW, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.gone.Load() {
		return
	}
	l.markLost(w.kind, err)
}

// markLost records that kind's requests are not answered; l.mu is held.
func (l *apiLink) markLost(kind string, err error) {
	if _, ok := l.lost[kind]; !ok {
		l.log.Info("apiserver does not answer; the table in force stays, retrying", "kind", kind, "error", err.Error())
		l.lost[kind] = time.Now()
	}
	l.lastErr[kind] = err
	apiUnanswered.WithLabelValues(kind).Inc()
	apiConnected.WithLabelValues(kind).Set(0)
}

// noAnswer reports whether err means the request got no answer from the
// apiserver (a transport error, a client-side timeout), rather than an answer
// that refused it. retry stops on its own context, whatever the error.
func noAnswer(err error) bool {
	var status apierrors.APIStatus
	return err != nil && !errors.As(err, &status)
}

// retryWait is a jittered wait between apiRetryMin and apiRetryMax, growing with attempt.
func retryWait(attempt int) time.Duration {
	d := min(apiRetryMin<<min(attempt, 4), apiRetryMax)
	return d/2 + rand.N(d/2+1)
}

type linkedLW struct {
	l    *apiLink
	kind string
	lw   toolscache.ListerWatcherWithContext
	gone atomic.Bool // forgotten: its informer is being stopped
	// list, when set, replaces lw's list, and the reflector lists with it
	// rather than with a watch-list (IsWatchListSemanticsUnSupported); watch,
	// when set, replaces lw's watch.
	list  func(context.Context, metav1.ListOptions) (runtime.Object, error)
	watch func(context.Context, metav1.ListOptions) (watch.Interface, error)
}

func (w *linkedLW) ListWithContext(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	return retry(ctx, w, func() (runtime.Object, error) {
		apiRequests.WithLabelValues(w.kind, "list").Inc()
		if w.list != nil {
			return w.list(ctx, opts)
		}
		return w.lw.ListWithContext(ctx, opts)
	})
}

// IsWatchListSemanticsUnSupported tells client-go's reflector (util/watchlist)
// to list, not watch-list, when the list is the agent's own.
func (w *linkedLW) IsWatchListSemanticsUnSupported() bool { return w.list != nil }

func (w *linkedLW) WatchWithContext(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	request := "watch"
	if opts.SendInitialEvents != nil && *opts.SendInitialEvents {
		request = "watch-list"
	}
	return retry(ctx, w, func() (watch.Interface, error) {
		apiRequests.WithLabelValues(w.kind, request).Inc()
		if w.watch != nil && request == "watch" {
			return w.watch(ctx, opts)
		}
		return w.lw.WatchWithContext(ctx, opts)
	})
}

// retry calls do until the apiserver answers it (with a result or an error of
// its own) or ctx is done.
func retry[T any](ctx context.Context, w *linkedLW, do func() (T, error)) (T, error) {
	for attempt := 0; ; attempt++ {
		v, err := do()
		if w.gone.Load() {
			return v, err // its informer is being stopped: nothing to report
		}
		if !noAnswer(err) || ctx.Err() != nil {
			if !noAnswer(err) {
				w.l.answered(w.kind)
			}
			return v, err
		}
		w.l.unansweredBy(w, err)
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(retryWait(attempt)):
		}
	}
}

// List and Watch are the ListerWatcher methods client-go still requires.
func (w *linkedLW) List(opts metav1.ListOptions) (runtime.Object, error) {
	return w.ListWithContext(context.Background(), opts)
}

func (w *linkedLW) Watch(opts metav1.ListOptions) (watch.Interface, error) {
	return w.WatchWithContext(context.Background(), opts)
}
