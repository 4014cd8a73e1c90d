package fanout

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// wire counts the bytes the apiserver sent to a set of watchers, as read from
// their TCP connections (TLS records, HTTP/2 frames, gzip when the apiserver
// compresses: what crosses the network), and keeps the live connections so
// that a test can cut them all at once.
type wire struct {
	read  atomic.Int64
	mu    sync.Mutex
	conns map[*countedConn]struct{}
}

func newWire() *wire { return &wire{conns: map[*countedConn]struct{}{}} }

// dial is a rest.Config Dial: a config with its own Dial gets its own
// transport (client-go caches transports only for configs without one), so
// every watcher set has its own TCP and TLS connection, as every agent does.
func (w *wire) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	cc := &countedConn{Conn: c, w: w}
	w.mu.Lock()
	w.conns[cc] = struct{}{}
	w.mu.Unlock()
	return cc, nil
}

// cut closes every connection, as a broken network path or a restarted
// load balancer would: the watchers' reflectors see the stream end and watch
// again from the last resourceVersion they saw.
func (w *wire) cut() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(w.conns)
	for c := range w.conns {
		_ = c.Conn.Close()
		delete(w.conns, c)
	}
	return n
}

type countedConn struct {
	net.Conn
	w *wire
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.w.read.Add(int64(n))
	return n, err
}

func (c *countedConn) Close() error {
	c.w.mu.Lock()
	delete(c.w.conns, c)
	c.w.mu.Unlock()
	return c.Conn.Close()
}

// keyStore is a reflector's store that decodes nothing more and keeps only
// keys: the reflector has already decoded every event into the typed object
// (protobuf or JSON), as the agent's informers do; what an informer does with
// the object after that (the agent's transforms, its cache) costs the agent,
// not the apiserver. It counts the events it was handed and says when the
// first full list arrived.
type keyStore struct {
	events   atomic.Int64
	replaces atomic.Int64 // full lists: the first, and any relist
	mu       sync.Mutex
	keys     map[string]struct{}
	synced   chan struct{}
	once     sync.Once
}

func newKeyStore() *keyStore {
	return &keyStore{keys: map[string]struct{}{}, synced: make(chan struct{})}
}

func (s *keyStore) key(obj any) string {
	k, _ := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	return k
}

func (s *keyStore) put(obj any) error {
	s.events.Add(1)
	s.mu.Lock()
	s.keys[s.key(obj)] = struct{}{}
	s.mu.Unlock()
	return nil
}

func (s *keyStore) Add(obj any) error    { return s.put(obj) }
func (s *keyStore) Update(obj any) error { return s.put(obj) }
func (s *keyStore) Delete(obj any) error {
	s.events.Add(1)
	s.mu.Lock()
	delete(s.keys, s.key(obj))
	s.mu.Unlock()
	return nil
}
func (s *keyStore) Replace(list []any, _ string) error {
	s.mu.Lock()
	clear(s.keys)
	for _, o := range list {
		s.keys[s.key(o)] = struct{}{}
	}
	s.mu.Unlock()
	s.replaces.Add(1)
	s.once.Do(func() { close(s.synced) })
	return nil
}
func (s *keyStore) Resync() error { return nil }

// watcherSet is one agent's worth of watches on one connection: pods,
// namespaces, networkpolicies, nodes and clusternetworkpolicies, every object
// of each (every node must know every pod; the real agent watches only its own
// Node unless a ClusterNetworkPolicy has a nodes peer, controllers/nodewatch.go,
// but this benchmark's Nodes never change, so watching them all costs only
// their initial list), through client-go reflectors as controller-runtime's informers
// run them (a streamed watch-list first, then watches from the last
// resourceVersion), in the agent's content type. With endpointSlices it is
// instead kube-proxy's EndpointSlice watch (its label selector, protobuf).
type watcherSet struct {
	stores []*keyStore
	pods   *keyStore
	cancel context.CancelFunc
	done   sync.WaitGroup
}

// watchKind is one reflector of a set.
type watchKind struct {
	name string
	lw   cache.ListerWatcher
	obj  runtime.Object
}

// setConfig is the REST config of one watcher set: its own dialer (so its own
// connection) and the agent's content types (controllers/agent.go RunAgent).
func setConfig(base *rest.Config, w *wire, json bool) *rest.Config {
	cfg := rest.CopyConfig(base)
	cfg.Dial = w.dial
	cfg.UserAgent = "nftpolicy-fanout-watcher"
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if json {
		cfg.ContentType, cfg.AcceptContentTypes = runtime.ContentTypeJSON, runtime.ContentTypeJSON
	}
	return cfg
}

// agentKinds are the agent's five watches (controllers/agent.go watched(),
// controllers/cnp.go); cnpVersion is the ClusterNetworkPolicy version the API
// serves ("" when none).
func agentKinds(cfg *rest.Config, cnpVersion string) ([]watchKind, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfigAndClient(cfg, hc)
	if err != nil {
		return nil, err
	}
	core, netv1 := cs.CoreV1().RESTClient(), cs.NetworkingV1().RESTClient()
	kinds := []watchKind{
		{"pods", cache.NewListWatchFromClient(core, "pods", metav1.NamespaceAll, fields.Everything()), &corev1.Pod{}},
		{"namespaces", cache.NewListWatchFromClient(core, "namespaces", metav1.NamespaceAll, fields.Everything()), &corev1.Namespace{}},
		{"networkpolicies", cache.NewListWatchFromClient(netv1, "networkpolicies", metav1.NamespaceAll, fields.Everything()), &networkingv1.NetworkPolicy{}},
		{"nodes", cache.NewListWatchFromClient(core, "nodes", metav1.NamespaceAll, fields.Everything()), &corev1.Node{}},
	}
	if cnpVersion != "" {
		// A CRD: JSON whatever the config asks (CRDs have no protobuf).
		dcfg := rest.CopyConfig(cfg)
		dcfg.ContentType, dcfg.AcceptContentTypes = runtime.ContentTypeJSON, runtime.ContentTypeJSON
		dc, err := dynamic.NewForConfigAndClient(dcfg, hc)
		if err != nil {
			return nil, err
		}
		ri := dc.Resource(schema.GroupVersionResource{Group: "policy.networking.k8s.io", Version: cnpVersion, Resource: "clusternetworkpolicies"})
		lw := &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return ri.List(ctx, o)
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return ri.Watch(ctx, o)
			},
		}
		kinds = append(kinds, watchKind{"clusternetworkpolicies", lw, &unstructured.Unstructured{}})
	}
	return kinds, nil
}

// proxyKinds is kube-proxy's EndpointSlice watch: every slice not of a
// headless service and not claimed by another proxy (pkg/proxy's informer
// factory's label selector), protobuf.
func proxyKinds(cfg *rest.Config) ([]watchKind, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	sel := "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless"
	lw := cache.NewFilteredListWatchFromClient(cs.DiscoveryV1().RESTClient(), "endpointslices", metav1.NamespaceAll,
		func(o *metav1.ListOptions) { o.LabelSelector = sel })
	return []watchKind{{"endpointslices", lw, &discoveryv1.EndpointSlice{}}}, nil
}

// startSet runs one reflector per kind until stop.
func startSet(ctx context.Context, kinds []watchKind) *watcherSet {
	ctx, cancel := context.WithCancel(ctx)
	s := &watcherSet{cancel: cancel}
	for _, k := range kinds {
		st := newKeyStore()
		s.stores = append(s.stores, st)
		if k.name == "pods" || k.name == "endpointslices" {
			s.pods = st
		}
		r := cache.NewReflectorWithOptions(k.lw, k.obj, st, cache.ReflectorOptions{Name: "fanout/" + k.name})
		s.done.Go(func() { r.RunWithContext(ctx) })
	}
	return s
}

// waitSynced waits until every reflector of the set has its first list.
func (s *watcherSet) waitSynced(ctx context.Context) error {
	for _, st := range s.stores {
		select {
		case <-st.synced:
		case <-ctx.Done():
			return fmt.Errorf("watchers not synced: %w", ctx.Err())
		}
	}
	return nil
}

func (s *watcherSet) stop() {
	s.cancel()
	s.done.Wait()
}
