package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	cnpv1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// The agent reads only through its informer caches (list and watch; never a
// get from the API). It writes Events, and one patch of its own Node when that
// carries the startup taint (startuptaint.go). These markers, there and in
// cnp.go and crdwatch.go, are the whole of its RBAC.
// +kubebuilder:rbac:groups="",resources=pods;namespaces,verbs=list;watch
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=list;watch
// Warning Events on policies that cannot be fully enforced, one agent per
// policy (problems.go). Create only: the
// recorder patches an Event to count a repeat of it, and a repeat cannot happen
// here, since a policy's problems depend on its spec alone, an Event names the
// policy's resourceVersion, and the node reconciler reports each version's
// problems once.
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create

// Options configures RunAgent. cmd/nftpolicy fills it from flags and has
// validated every field before RunAgent sees it.
type Options struct {
	// Kubeconfig is the path to a kubeconfig; "" means in-cluster. Used only
	// when Config is nil.
	Kubeconfig string
	// Config, when set, is used instead of loading Kubeconfig.
	Config *rest.Config
	// NodeName is the Node whose pods this agent enforces policy for.
	NodeName string
	// StartupTaint is the key of the taint the agent removes from its Node once
	// the node's table is in force (startuptaint.go); "" leaves taints alone.
	StartupTaint string
	// NetNS is the path of the network namespace to program the table in;
	// "" means the agent's own. The apiserver is always reached from the
	// agent's own namespace.
	NetNS string
	// TableName is the nftables inet table the agent owns.
	TableName string
	// MetricsAddr and HealthAddr are host:port bind addresses; "0" disables.
	MetricsAddr, HealthAddr string
	// PprofAddr serves /debug/pprof; "" or "0" disables.
	PprofAddr string
	// FullSyncPeriod is how often the node's table is rewritten whole even
	// when nothing changed.
	FullSyncPeriod time.Duration
	// Applier programs the node's table (nft/netlink in the binary, a fake in
	// controller tests). Required.
	Applier nft.Applier
	// MinSyncInterval spaces syncs during event bursts (see NodeReconciler).
	MinSyncInterval time.Duration
	// DenyLog hands isolation drops to an NFLOG group (nft/doc.go, "Deny log");
	// Rate 0 turns it off. OpenDenyLog opens that group in the node's network
	// namespace; required when the deny log is on.
	DenyLog     compile.DenyLog
	OpenDenyLog func() (DenyLogSource, error)
	// PolicyCounters, when set, makes the table count packets per policy and
	// serves them as nftpolicy_policy_packets_total, read at scrape time.
	PolicyCounters CounterPackets
	// Established is what a policy change does to open connections, and
	// CtMarkMask the connection mark bits EstablishedRecheck owns (0: the
	// default); see NodeReconciler.
	Established compile.Established
	CtMarkMask  uint32
	// UnknownPodCIDRs are this node's pod CIDRs: traffic from an address in them
	// that no known local pod has is dropped (compile.Options.UnknownLocalPods).
	// With UnknownPodCIDRsFromNode they are read from this node's Node object
	// instead, and follow its changes (unknown.go); UnknownPodCIDRs is then unused.
	UnknownPodCIDRs         []netip.Prefix
	UnknownPodCIDRsFromNode bool
	// JSON makes the agent's requests use JSON rather than protobuf (the
	// default, as controller-runtime's for built-in kinds); for comparison.
	JSON bool
	// PodWatchList lists pods through client-go's watch-list, a stream of one
	// event per pod, rather than the agent's own list decoded as it arrives
	// (podlist.go); for comparison.
	PodWatchList bool
	// APICompression lets the apiserver gzip its responses (client-go's
	// default); off, the agent asks for them uncompressed.
	APICompression bool
	// CNIGateConfDir and CNIGateBinDir, when set, are the node's CNI
	// configuration and plugin directories: the agent keeps its binary
	// (CNIGateBinary, its own) and the gate's entry there (cnigate.go).
	CNIGateConfDir, CNIGateBinDir, CNIGateBinary string
	// SyncedBoot is the node's boot id that the table carries for the CNI
	// gate (compile.Options.SyncedBoot); read from the kernel when "".
	SyncedBoot string
	// CNPDiscoveryInterval is how often the agent asks discovery whether
	// ClusterNetworkPolicy is served when it may not watch the CRD (an old
	// ClusterRole; crdwatch.go); 0 means 30s.
	CNPDiscoveryInterval time.Duration
}

// LoadRESTConfig returns the apiserver config for kubeconfig: that file when
// set (a $KUBECONFIG-style list of files is accepted), else the in-cluster
// service account. It fails when the file is unreadable or invalid, or when
// kubeconfig is "" and the process is not in a pod.
func LoadRESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig or $KUBECONFIG and not in a cluster: %w", err)
		}
		return cfg, nil
	}
	paths := filepath.SplitList(kubeconfig)
	for _, p := range paths {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
	}
	rules := &clientcmd.ClientConfigLoadingRules{Precedence: paths}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// newScheme holds only the kinds the agent reads.
func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(s), networkingv1.AddToScheme(s),
		cnpv1beta1.Install(s), cnpv1alpha2.Install(s)); err != nil {
		return nil, err
	}
	return s, nil
}

// watched lists every kind the agent caches. The cache refuses reads of any
// other kind (ReaderFailOnMissingInformer) so memory stays bounded by these:
// every node must know every pod, namespace and policy. Of Nodes the cache
// holds only this node's own; every Node is watched apart, and only while a
// ClusterNetworkPolicy has a nodes peer (nodewatch.go). ClusterNetworkPolicy
// joins them when the API serves it (cnp.go).
func watched() []client.Object {
	return []client.Object{&corev1.Pod{}, &corev1.Namespace{}, &networkingv1.NetworkPolicy{}, &corev1.Node{}}
}

// RunAgent runs the agent until ctx is done: a controller-runtime manager
// without leader election (one agent per node), caching only the watched
// kinds, serving metrics on opts.MetricsAddr and /healthz and /readyz on
// opts.HealthAddr. It returns nil after a clean shutdown, an error when the
// manager could not be built or failed while running.
func RunAgent(ctx context.Context, opts Options, log logr.Logger) error {
	log = log.WithValues("node", opts.NodeName)
	// The CNI gate before anything else: it needs no apiserver, and a CNI that
	// wrote its configuration anew at the node's start has dropped its entry
	// (cnigate.go).
	var gate *cniGate
	if opts.CNIGateConfDir != "" {
		gate = newCNIGate(opts, log)
		defer gate.start(ctx)()
	}
	cfg := opts.Config
	if cfg == nil {
		var err error
		if cfg, err = LoadRESTConfig(opts.Kubeconfig); err != nil {
			return err
		}
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "nftpolicy-agent/" + opts.NodeName
	// Every kind the agent reads or writes is built in, so the apiserver can
	// encode it as protobuf: about half the bytes of JSON and cheaper to decode
	// (test/bench/controlplane B9). controller-runtime picks protobuf for such
	// kinds when the config names no content type; naming it here makes the
	// choice ours and visible.
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	// Uncompressed: gzip made one agent's list of 100,000 pods cost the
	// apiserver ~2.6 s more CPU (on ~5.5 s) and the agent a slower start, for
	// bytes that cross a data-centre network (docs/scale.md).
	cfg.DisableCompression = !opts.APICompression
	if opts.JSON {
		cfg.ContentType, cfg.AcceptContentTypes = runtime.ContentTypeJSON, runtime.ContentTypeJSON
	}

	scheme, err := newScheme()
	if err != nil {
		return fmt.Errorf("scheme: %w", err)
	}
	link := newAPILink(log.WithName("apiserver"))
	interner := &podInterner{}
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("core client: %w", err)
	}
	if !opts.PodWatchList && !opts.JSON {
		// The first list of pods, decoded as it arrives (podlist.go); it needs
		// protobuf, so with JSON the pods come through client-go's watch-list.
		// Its watch decodes pods pruned (podwatch.go).
		rc, err := newPodClient(cfg)
		if err != nil {
			return fmt.Errorf("pod client: %w", err)
		}
		pl := &podLister{rc: rc, record: func(p *corev1.Pod) runtime.Object { return interner.record(p) }}
		link.podList, link.podWatch = pl.list, pl.watch
	}
	mopts := manager.Options{
		PprofBindAddress:       opts.PprofAddr,
		Scheme:                 scheme,
		Logger:                 log,
		LeaderElection:         false,
		Metrics:                metricsserver.Options{BindAddress: opts.MetricsAddr},
		HealthProbeBindAddress: opts.HealthAddr,
		Cache: cache.Options{
			// ClusterNetworkPolicy's trim rides on the default: a ByObject entry for a
			// kind the API does not serve (yet) stops the cache from starting.
			DefaultTransform:            trimClusterPolicyOr(cache.TransformStripManagedFields()),
			ReaderFailOnMissingInformer: true,
			NewInformer:                 link.newInformer,
			ByObject: map[client.Object]cache.ByObject{
				// Every pod, without a selector: the first list (podlist.go) takes none.
				&corev1.Pod{}:                 {Transform: interner.trimPod},
				&corev1.Namespace{}:           {Transform: trimNamespace},
				&networkingv1.NetworkPolicy{}: {Transform: trimPolicy},
				// Only this node's own Node: the apiserver filters the others' status
				// rewrites out of the watch (nodewatch.go).
				&corev1.Node{}: {Transform: trimNode, Field: fields.OneTermEqualSelector("metadata.name", opts.NodeName)},
			},
		},
	}
	// manager.New asks the apiserver at once (the REST mappings of the cached
	// kinds). After a reboot the in-cluster Service address needs kube-proxy's
	// rules first: the agent waits in process rather than exit and meet the
	// kubelet's crash-loop back-off, which would delay its first sync, and the
	// pods the gate holds, by minutes.
	mgr, err := newManager(ctx, func() (manager.Manager, error) { return manager.New(cfg, mopts) },
		opts.HealthAddr, managerRetry, log.WithName("apiserver"))
	if err != nil {
		if ctx.Err() != nil {
			log.Info("agent stopped before the apiserver answered")
			return nil
		}
		return fmt.Errorf("manager: %w", err)
	}
	if gate != nil {
		gate.setEvents(ownNode(mgr.GetCache(), opts.NodeName), mgr.GetEventRecorder("nftpolicy-agent"))
	}
	// Informers registered before Start are started, and waited for, with the cache.
	for _, obj := range watched() {
		if _, err := mgr.GetCache().GetInformer(ctx, obj); err != nil {
			return fmt.Errorf("informer for %T: %w", obj, err)
		}
	}
	// The pod informer's store holds cachedPods (podcache.go), which the cache's
	// typed reads cannot return: pods are read from the store itself.
	inf, err := mgr.GetCache().GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	podInformer, ok := inf.(toolscache.SharedIndexInformer)
	if !ok {
		return fmt.Errorf("pod informer: a %T, not a SharedIndexInformer", inf)
	}

	at := &attribution{}
	if err := setupObserve(mgr, podInformer, opts, at, log); err != nil {
		return fmt.Errorf("deny log and counters setup: %w", err)
	}
	if opts.PolicyCounters != nil {
		// Unregistered on return: tests run several agents, one after another, in
		// one process.
		pc := newPolicyCollector(opts.PolicyCounters, at)
		if err := metrics.Registry.Register(pc); err != nil {
			return fmt.Errorf("policy counters: %w", err)
		}
		defer metrics.Registry.Unregister(pc)
	}

	ready := newReadiness()
	if err := errors.Join(
		mgr.AddHealthzCheck("ping", healthz.Ping),
		mgr.AddReadyzCheck("synced", ready.check),
		mgr.AddReadyzCheck("apiserver", link.check),
		mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			if mgr.GetCache().WaitForCacheSync(ctx) {
				ready.cachesSynced.Store(true)
				log.Info("caches synced")
			}
			return nil
		})),
	); err != nil {
		return fmt.Errorf("manager setup: %w", err)
	}
	// Every Node, while a nodes peer needs them: listed and watched pruned
	// (nodelist.go), but for JSON, where client-go decodes them whole.
	if !opts.JSON {
		nl, err := newNodeLister(cfg)
		if err != nil {
			return fmt.Errorf("node client: %w", err)
		}
		link.nodeList, link.nodeWatch = nl.list, nl.watch
	}
	nodes := newAllNodes(ctx, link, toolscache.NewListWatchFromClient(core.RESTClient(), "nodes", "", fields.Everything()),
		log.WithName("nodes"))
	if opts.SyncedBoot == "" {
		// The CNI gate opens when the table names this boot: the agent reads
		// the id the plugin will (not namespaced; a container reads the
		// node's). Marked with the gate off too: an entry left on the node
		// (the component taken out of the overlay, without config/cleanup)
		// then holds no pod while an agent runs.
		id, err := cnigate.BootID()
		switch {
		case err == nil:
			opts.SyncedBoot = id
		case opts.CNIGateConfDir != "":
			return fmt.Errorf("CNI gate: reading the node's boot id: %w", err)
		default:
			log.Error(err, "cannot read the node's boot id: the table carries no synced-boot set, so a CNI gate left on this node holds its new pods")
		}
	}
	if err := setupNodeSync(ctx, mgr, cfg, link, podInformer, nodes, opts, ready, at, log); err != nil {
		return fmt.Errorf("node sync setup: %w", err)
	}
	if err := setupStartupTaint(ctx, mgr, core, opts, ready, log); err != nil {
		return fmt.Errorf("startup taint setup: %w", err)
	}

	log.Info("starting agent", "table", opts.TableName, "netns", opts.NetNS,
		"metrics", opts.MetricsAddr, "health", opts.HealthAddr, "fullSyncPeriod", opts.FullSyncPeriod,
		"established", opts.Established.String(), "unknownPodCIDRs", unknownFlag(opts))
	errc := make(chan error, 1)
	go func() { errc <- mgr.Start(ctx) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		err = awaitStop(errc, ready, log)
	}
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	log.Info("agent stopped")
	return nil
}

// unknownFlag is --unknown-pod-cidrs as the agent understood it, for its first log line.
func unknownFlag(opts Options) string {
	if opts.UnknownPodCIDRsFromNode {
		return "node"
	}
	return prefixList(opts.UnknownPodCIDRs)
}

// awaitStop waits for the manager to return after its context is done. A
// manager whose caches never synced (an API server that refuses a list, as with
// a missing RBAC rule) does not return: controller-runtime waits for the
// cache group with its own context, not the caller's. Nothing has been applied
// before caches sync, so there is nothing to stop cleanly; such an agent
// returns at once (the table of an earlier run stays, as on any stop).
func awaitStop(errc <-chan error, ready *readiness, log logr.Logger) error {
	if ready.cachesSynced.Load() {
		return <-errc
	}
	select {
	case err := <-errc:
		return err
	case <-time.After(time.Second):
		if ready.cachesSynced.Load() { // synced meanwhile: the manager runs its controllers and stops them
			return <-errc
		}
		log.Info("stopping before the caches synced")
		return nil
	}
}

// setupNodeSync registers the node reconciler; its first successful sync (always
// a full one: the applier starts without a last-applied table) marks the agent ready.
func setupNodeSync(ctx context.Context, mgr manager.Manager, cfg *rest.Config, link *apiLink, pods toolscache.SharedIndexInformer, nodes *allNodes, opts Options, ready *readiness, at *attribution, log logr.Logger) error {
	if opts.Applier == nil {
		return errors.New("no applier configured")
	}
	if !opts.UnknownPodCIDRsFromNode && len(opts.UnknownPodCIDRs) > 0 {
		unknownPodCIDRs.WithLabelValues("flag").Set(float64(len(opts.UnknownPodCIDRs)))
	}
	r := &NodeReconciler{
		Reader:                  mgr.GetCache(),
		Pods:                    storePods{pods.GetStore()},
		PodEvents:               pods,
		Nodes:                   nodes,
		NodeName:                opts.NodeName,
		Table:                   opts.TableName,
		DenyLog:                 opts.DenyLog,
		PolicyCounters:          opts.PolicyCounters != nil,
		OnApplying:              at.applying,
		OnApplied:               at.applied,
		Applier:                 opts.Applier,
		Recorder:                mgr.GetEventRecorder("nftpolicy-agent"),
		Log:                     log.WithName("sync"),
		FullSyncPeriod:          opts.FullSyncPeriod,
		MinSyncInterval:         opts.MinSyncInterval,
		Established:             opts.Established,
		CtMarkMask:              opts.CtMarkMask,
		UnknownPodCIDRs:         opts.UnknownPodCIDRs,
		UnknownPodCIDRsFromNode: opts.UnknownPodCIDRsFromNode,
		SyncedBoot:              opts.SyncedBoot,
		OnSynced:                ready.MarkSynced,
		// A full sync lists every object and compiles the whole table: the
		// garbage it leaves (and, at start, the informers' initial lists) would
		// otherwise stay in the process's RSS until the background scavenger
		// returns it, minutes later. Incremental syncs allocate little.
		AfterFullSync: func() { go debug.FreeOSMemory() },
		cnp:           &clusterPolicyAPI{},
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return err
	}
	if tw, ok := opts.Applier.(nft.WatchesTable); ok {
		if err := mgr.Add(&tableWatch{w: tw, r: r, ready: ready, log: log.WithName("table"), retry: 10 * time.Second}); err != nil {
			return err
		}
	}
	w, err := newClusterPolicyWatch(mgr.GetCache(), cfg, r, link, opts.CNPDiscoveryInterval, log.WithName("clusternetworkpolicy"))
	if err != nil {
		return err
	}
	if err := w.watchIfServed(ctx); err != nil {
		return err
	}
	if err := r.ctrl.Watch(clusterPolicySource{w}); err != nil {
		return err
	}
	return mgr.Add(w)
}

// setupStartupTaint adds the removal of opts.StartupTaint from the agent's Node
// after the first full sync (startuptaint.go), unless it is "".
func setupStartupTaint(ctx context.Context, mgr manager.Manager, core corev1client.CoreV1Interface, opts Options, ready *readiness, log logr.Logger) error {
	if opts.StartupTaint == "" {
		return nil
	}
	inf, err := mgr.GetCache().GetInformer(ctx, &corev1.Node{})
	if err != nil {
		return err
	}
	changed := make(chan struct{}, 1)
	signal := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { signal() },
		UpdateFunc: func(any, any) { signal() },
	}); err != nil {
		return err
	}
	return mgr.Add(&startupTaint{
		key: opts.StartupTaint, node: opts.NodeName,
		own:   ownNode(mgr.GetCache(), opts.NodeName),
		nodes: core.Nodes(), synced: ready.syncedCh, changed: changed,
		recorder: mgr.GetEventRecorder("nftpolicy-agent"), log: log.WithName("startup-taint"),
		retry: time.Second, maxRetry: time.Minute,
	})
}

// newCNIGate keeps the CNI gate's files (cnigate.go) where opts names the
// node's CNI directories.
func newCNIGate(opts Options, log logr.Logger) *cniGate {
	return &cniGate{
		in:     &cnigate.Installer{ConfDir: opts.CNIGateConfDir, BinDir: opts.CNIGateBinDir, Table: opts.TableName, Binary: opts.CNIGateBinary},
		period: cniGatePeriod, eventAfter: cniGateEventAfter,
		log: log.WithName("cni-gate"),
	}
}

// ownNode reads the agent's Node named name from the cache.
func ownNode(reader client.Reader, name string) func(ctx context.Context) (*corev1.Node, error) {
	return func(ctx context.Context) (*corev1.Node, error) {
		var n corev1.Node
		err := reader.Get(ctx, client.ObjectKey{Name: name}, &n)
		return &n, err
	}
}

// setupObserve adds the deny log reader, with the pod address index it names
// packets' ends with, when the deny log is on.
func setupObserve(mgr manager.Manager, pods toolscache.SharedIndexInformer, opts Options, at *attribution, log logr.Logger) error {
	if opts.DenyLog.Rate == 0 {
		return nil
	}
	if opts.OpenDenyLog == nil {
		return errors.New("deny log on, but no way to open it")
	}
	if err := pods.AddIndexers(toolscache.Indexers{podIPIndex: indexRecordIPs}); err != nil {
		return fmt.Errorf("pod address index: %w", err)
	}
	return mgr.Add(&denyLogger{open: opts.OpenDenyLog, pods: podIPReader{pods.GetIndexer()}, attrib: at,
		log: log.WithName("deny"), retry: 10 * time.Second})
}

// readiness is what /readyz reports: ready once the informer caches have
// synced and the first full sync of the node's table has succeeded. A node
// whose agent is not ready may not yet enforce its policies.
type readiness struct {
	cachesSynced atomic.Bool
	synced       atomic.Bool
	once         sync.Once
	syncedCh     chan struct{} // closed by MarkSynced; see newReadiness
}

func newReadiness() *readiness { return &readiness{syncedCh: make(chan struct{})} }

// MarkSynced records that the node's table has been fully synced once.
func (r *readiness) MarkSynced() {
	r.synced.Store(true)
	r.once.Do(func() {
		if r.syncedCh != nil {
			close(r.syncedCh)
		}
	})
}

// Ready reports both conditions.
func (r *readiness) Ready() bool { return r.cachesSynced.Load() && r.synced.Load() }

func (r *readiness) check(*http.Request) error {
	switch {
	case !r.cachesSynced.Load():
		return errors.New("caches not synced")
	case !r.synced.Load():
		return errors.New("node table not synced yet")
	}
	return nil
}

// TableRemover removes the table named table from the network namespace at
// netns ("" for the caller's own). A missing table is not an error.
type TableRemover func(ctx context.Context, netns, table string) error

// CleanupOptions configures RunCleanup.
type CleanupOptions struct {
	NetNS, TableName string
	// CNIGateConfDir and CNIGateBinDir, when set, are where the agent kept the
	// CNI gate: its entries and binary are removed first. CNICacheDir is
	// libcni's cache directory (cnigate.DefaultCacheDir when ""): the binary
	// stays while a pod's cached configuration there names the gate
	// (cnigate.Installer.Remove).
	CNIGateConfDir, CNIGateBinDir, CNICacheDir string
	// RemoveTable does the removal; cmd/nftpolicy wires it to nft/netlink.
	RemoveTable TableRemover
	// Out, when set, gets a line for what is left in place on purpose.
	Out io.Writer
}

// ErrNoTableRemover is returned by RunCleanup when no TableRemover is wired.
var ErrNoTableRemover = errors.New("not implemented: no table remover is wired into this build")

// RunCleanup removes the agent's table: what a node needs after uninstall. The
// CNI gate goes first: without the table, it would hold every new pod.
func RunCleanup(ctx context.Context, opts CleanupOptions) error {
	if opts.RemoveTable == nil {
		return ErrNoTableRemover
	}
	if opts.CNIGateConfDir != "" {
		in := &cnigate.Installer{ConfDir: opts.CNIGateConfDir, BinDir: opts.CNIGateBinDir, CacheDir: opts.CNICacheDir}
		st, err := in.Remove()
		if err != nil {
			return fmt.Errorf("remove the CNI gate (the table stays, so that pods can start): %w", err)
		}
		if n := len(st.BinaryInUse); n > 0 && opts.Out != nil {
			fmt.Fprintf(opts.Out, "CNI gate: entry removed; plugin %s kept: the cached network configuration of %d pod network(s) still runs it at teardown (CRI-O), e.g. %s in libcni's cache; "+
				"its DEL needs no agent. Run cleanup again once those pods are gone to remove it.\n",
				filepath.Join(opts.CNIGateBinDir, cnigate.PluginType), n, st.BinaryInUse[0])
		}
	}
	if err := opts.RemoveTable(ctx, opts.NetNS, opts.TableName); err != nil {
		return fmt.Errorf("remove table inet %s: %w", opts.TableName, err)
	}
	return nil
}
