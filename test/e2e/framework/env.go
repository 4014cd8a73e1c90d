package framework

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// Options configures Start.
type Options struct {
	// Prefix names the network namespaces (see cluster.Config); "e2e" if empty.
	Prefix string
	// Nodes is the number of nodes; 2 if zero.
	Nodes int
	// Namespaces and PodNames are the standard pods: every name in every
	// namespace. Defaults: x, y, z and a, b, c.
	Namespaces, PodNames []string
	// AgentBinary is the nftpolicy binary (see AgentBinary); PodAgent the
	// podagent (cluster.BuildPodAgent). Both are built into Dir when empty.
	AgentBinary, PodAgent string
	// AgentLogLevel is the agents' --zap-log-level; "2" (sync summaries) if empty.
	AgentLogLevel string
	// Dir holds the kubeconfig, the agents' logs and built binaries; a new
	// temporary directory, removed by Close, if empty.
	Dir string
	// NoSignalHandler is passed to cluster.Config: set it when the caller
	// handles SIGINT/SIGTERM and calls Close itself (Ginkgo does).
	NoSignalHandler bool
	// Logf receives progress lines; nothing is logged if nil.
	Logf func(format string, args ...any)
}

// Env is a running end-to-end environment: control plane, network, agents and
// the standard pods. Its methods are safe for concurrent use, but WaitForMatrix
// calls are meant to be made one at a time.
type Env struct {
	CP      *ControlPlane
	Cluster *cluster.Cluster
	// Agents are indexed like the cluster's nodes.
	Agents []*Agent
	// Dir is Options.Dir (or the temporary directory made for it).
	Dir string

	opts   Options
	ownDir bool
	logf   func(string, ...any)

	mu sync.Mutex
	// defaults are the labels pods and namespaces are created with, which
	// ResetLabels restores; keys are "ns/name" for pods and "ns" for namespaces.
	podLabels, nsLabels map[string]map[string]string

	// For WaitForMatrix: the time of the last API write, the last write whose
	// enforcement was measured, and the reachability last confirmed per case.
	lastWrite, measured time.Time
	confirmed           map[string]*cluster.Reachability
	fresh               map[string]bool // pods (re)created since the last confirmation
	latencies           []Latency

	closeOnce sync.Once
	closeErr  error
}

// agentReadyTimeout bounds an agent's start until /readyz answers 200.
const agentReadyTimeout = 2 * time.Minute

// Start builds the environment described in the package documentation. If
// anything fails, it tears down what it built.
func Start(ctx context.Context, opts Options) (*Env, error) {
	if opts.Prefix == "" {
		opts.Prefix = "e2e"
	}
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if len(opts.Namespaces) == 0 {
		opts.Namespaces = []string{"x", "y", "z"}
	}
	if len(opts.PodNames) == 0 {
		opts.PodNames = []string{"a", "b", "c"}
	}
	if opts.AgentLogLevel == "" {
		opts.AgentLogLevel = "2"
	}
	e := &Env{
		opts:      opts,
		logf:      opts.Logf,
		podLabels: map[string]map[string]string{},
		nsLabels:  map[string]map[string]string{},
	}
	if e.logf == nil {
		e.logf = func(string, ...any) {}
	}
	e.Dir = opts.Dir
	if e.Dir == "" {
		dir, err := os.MkdirTemp("", "nftpolicy-e2e-")
		if err != nil {
			return nil, err
		}
		e.Dir, e.ownDir = dir, true
	}
	if err := e.start(ctx); err != nil {
		return nil, errors.Join(err, e.Close())
	}
	return e, nil
}

func (e *Env) start(ctx context.Context) error {
	start := time.Now()
	// The slow parts at once: the control plane, the network, the binaries.
	var (
		wg                         sync.WaitGroup
		cpErr, netErr, binErr      error
		agentBin, podAgent, binHow = e.opts.AgentBinary, e.opts.PodAgent, "given"
	)
	wg.Go(func() {
		t := time.Now()
		e.CP, cpErr = StartControlPlane(e.Dir, ControlPlaneOptions{})
		if cpErr == nil {
			e.logf("control plane up in %v (%s)", time.Since(t).Round(time.Millisecond), e.CP.Assets)
		}
	})
	wg.Go(func() {
		if agentBin == "" {
			agentBin, binHow, binErr = AgentBinary(ctx, e.Dir)
		}
		if binErr == nil && podAgent == "" {
			podAgent, binErr = cluster.BuildPodAgent(ctx, e.Dir)
		}
		if binErr != nil {
			return
		}
		e.logf("nftpolicy binary: %s [%s]", agentBin, binHow)
		e.Cluster, netErr = cluster.New(ctx, cluster.Config{
			Prefix:          e.opts.Prefix,
			Nodes:           e.opts.Nodes,
			PodAgent:        podAgent,
			NoSignalHandler: e.opts.NoSignalHandler,
			Logf:            e.logf,
		})
	})
	wg.Wait()
	if err := errors.Join(cpErr, binErr, netErr); err != nil {
		return err
	}

	for _, n := range e.Cluster.Nodes() {
		if err := e.CP.CreateNode(ctx, n); err != nil {
			return err
		}
	}
	var specs []cluster.PodSpec
	for i, ns := range e.opts.Namespaces {
		for j, name := range e.opts.PodNames {
			// x/a on node 0, x/b on node 1, x/c on node 0, y/a on node 1, ...
			specs = append(specs, cluster.PodSpec{Namespace: ns, Name: name, Node: (i*len(e.opts.PodNames) + j) % e.opts.Nodes,
				Labels: map[string]string{"pod": name}})
		}
	}
	if _, err := e.AddPods(ctx, specs...); err != nil {
		return err
	}

	for _, n := range e.Cluster.Nodes() {
		e.Agents = append(e.Agents, newAgent(n, agentBin, e.CP.Kubeconfig, e.Dir, e.opts.AgentLogLevel))
	}
	t := time.Now()
	if err := e.StartAgents(ctx); err != nil {
		return err
	}
	e.logf("%d agents ready in %v; environment up in %v", len(e.Agents), time.Since(t).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	return nil
}

// StartAgents starts every agent that is not running and waits until all are ready.
func (e *Env) StartAgents(ctx context.Context) error {
	errs := make([]error, len(e.Agents))
	var wg sync.WaitGroup
	for i, a := range e.Agents {
		if a.Running() {
			continue
		}
		wg.Go(func() { errs[i] = a.Start(ctx, agentReadyTimeout) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// StopAgents stops every running agent with SIGTERM and waits for them; it
// returns their exit errors (nil when all exited cleanly).
func (e *Env) StopAgents() error {
	errs := make([]error, len(e.Agents))
	var wg sync.WaitGroup
	for i, a := range e.Agents {
		wg.Go(func() { errs[i] = a.Stop() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close stops the agents, removes the network and stops the control plane.
// It is idempotent.
func (e *Env) Close() error {
	e.closeOnce.Do(func() {
		var errs []error
		if len(e.Agents) > 0 {
			errs = append(errs, e.StopAgents())
		}
		if e.Cluster != nil {
			errs = append(errs, e.Cluster.Close())
		}
		if e.CP != nil {
			errs = append(errs, e.CP.Stop())
		}
		if e.ownDir {
			errs = append(errs, os.RemoveAll(e.Dir))
		}
		e.closeErr = errors.Join(errs...)
	})
	return e.closeErr
}

// Namespaces returns the standard namespaces (x, y, z).
func (e *Env) Namespaces() []string { return slices.Clone(e.opts.Namespaces) }

// DefaultNamespaceLabels are the labels a namespace is created with.
func DefaultNamespaceLabels(name string) map[string]string {
	return map[string]string{"ns": name, corev1.LabelMetadataName: name}
}

// EnsureNamespace creates namespace name with DefaultNamespaceLabels unless it
// exists.
func (e *Env) EnsureNamespace(ctx context.Context, name string) error {
	labels := DefaultNamespaceLabels(name)
	e.mu.Lock()
	_, known := e.nsLabels[name]
	if !known {
		e.nsLabels[name] = maps.Clone(labels)
	}
	e.mu.Unlock()
	if known {
		return nil
	}
	e.markWrite()
	err := e.CP.Client.Create(ctx, namespaceObject(name, labels))
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	return nil
}

// AddPods creates pods in the network and their Pod objects (with status, as a
// kubelet would write it), creating missing namespaces first.
func (e *Env) AddPods(ctx context.Context, specs ...cluster.PodSpec) ([]*cluster.Pod, error) {
	for _, s := range specs {
		if err := e.EnsureNamespace(ctx, s.Namespace); err != nil {
			return nil, err
		}
	}
	pods, err := e.Cluster.AddPods(ctx, specs...)
	if err != nil {
		return nil, err
	}
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() { errs[i] = e.createPodObject(ctx, p) })
	}
	wg.Wait()
	return pods, errors.Join(errs...)
}

// CreatePodObject creates the Pod object (with status) of a pod that exists in the
// network only (Cluster.AddPods): what a kubelet writes, late.
func (e *Env) CreatePodObject(ctx context.Context, p *cluster.Pod) error {
	return e.createPodObject(ctx, p)
}

func (e *Env) createPodObject(ctx context.Context, p *cluster.Pod) error {
	node := e.Cluster.Node(p.Node)
	obj := podObject(p, node.Name, maps.Clone(p.Labels))
	e.mu.Lock()
	e.podLabels[p.String()] = maps.Clone(p.Labels)
	if e.fresh == nil {
		e.fresh = map[string]bool{}
	}
	e.fresh[p.String()] = true
	e.mu.Unlock()
	if err := e.CP.Client.Create(ctx, obj); err != nil {
		return fmt.Errorf("creating pod %s: %w", p, err)
	}
	obj.Status = podStatus(p, node)
	e.markWrite()
	if err := e.CP.Client.Status().Update(ctx, obj); err != nil {
		return fmt.Errorf("pod %s status: %w", p, err)
	}
	return nil
}

// RemovePod deletes the Pod object (without grace) and then the pod's network.
func (e *Env) RemovePod(ctx context.Context, namespace, name string) error {
	p := e.Cluster.Pod(namespace, name)
	if p == nil {
		return fmt.Errorf("no pod %s/%s", namespace, name)
	}
	e.markWrite()
	if err := e.CP.deletePodNow(ctx, namespace, name); err != nil {
		return err
	}
	return e.Cluster.RemovePod(ctx, p)
}

// Pod returns a running pod, or nil.
func (e *Env) Pod(namespace, name string) *cluster.Pod { return e.Cluster.Pod(namespace, name) }

// Pods returns the running pods of the given namespaces (every namespace if
// none), sorted by namespace and name.
func (e *Env) Pods(namespaces ...string) []*cluster.Pod {
	pods := e.Cluster.Pods()
	if len(namespaces) > 0 {
		pods = slices.DeleteFunc(pods, func(p *cluster.Pod) bool { return !slices.Contains(namespaces, p.Namespace) })
	}
	return pods
}

// Peers is Pods as probe endpoints; with no namespaces, the standard ones.
func (e *Env) Peers(namespaces ...string) []cluster.Endpoint {
	if len(namespaces) == 0 {
		namespaces = e.opts.Namespaces
	}
	var eps []cluster.Endpoint
	for _, p := range e.Pods(namespaces...) {
		eps = append(eps, p)
	}
	return eps
}

// Nodes returns the nodes as probe endpoints.
func (e *Env) Nodes() []cluster.Endpoint {
	var eps []cluster.Endpoint
	for _, n := range e.Cluster.Nodes() {
		eps = append(eps, n)
	}
	return eps
}

// markWrite records that the API is about to be written to: the start of the
// apply→enforced interval WaitForMatrix measures.
func (e *Env) markWrite() {
	e.mu.Lock()
	e.lastWrite = time.Now()
	e.mu.Unlock()
}

// ForgetWrite makes the next WaitForMatrix not measure latency, e.g. when the
// last write happened while the agents were down.
func (e *Env) ForgetWrite() {
	e.mu.Lock()
	e.measured = e.lastWrite
	e.mu.Unlock()
}

// Create creates obj, recording the write.
func (e *Env) Create(ctx context.Context, obj client.Object) error {
	e.markWrite()
	if err := e.CP.Client.Create(ctx, obj); err != nil {
		return fmt.Errorf("creating %T %s: %w", obj, client.ObjectKeyFromObject(obj), err)
	}
	return nil
}

// Update updates obj, recording the write.
func (e *Env) Update(ctx context.Context, obj client.Object) error {
	e.markWrite()
	if err := e.CP.Client.Update(ctx, obj); err != nil {
		return fmt.Errorf("updating %T %s: %w", obj, client.ObjectKeyFromObject(obj), err)
	}
	return nil
}

// Delete deletes obj, recording the write.
func (e *Env) Delete(ctx context.Context, obj client.Object) error {
	e.markWrite()
	if err := e.CP.Client.Delete(ctx, obj); err != nil {
		return fmt.Errorf("deleting %T %s: %w", obj, client.ObjectKeyFromObject(obj), err)
	}
	return nil
}

// SetPodLabels replaces a pod's labels, recording the write.
func (e *Env) SetPodLabels(ctx context.Context, namespace, name string, labels map[string]string) error {
	return e.setLabels(ctx, &corev1.Pod{}, namespace, name, labels)
}

// SetNamespaceLabels replaces a namespace's labels, recording the write. The
// apiserver keeps kubernetes.io/metadata.name whatever labels say.
func (e *Env) SetNamespaceLabels(ctx context.Context, name string, labels map[string]string) error {
	return e.setLabels(ctx, &corev1.Namespace{}, "", name, labels)
}

func (e *Env) setLabels(ctx context.Context, obj client.Object, namespace, name string, labels map[string]string) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := e.CP.Client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, obj); err != nil {
			return err
		}
		obj.SetLabels(maps.Clone(labels))
		e.markWrite()
		return e.CP.Client.Update(ctx, obj)
	})
	if err != nil {
		return fmt.Errorf("labelling %T %s/%s: %w", obj, namespace, name, err)
	}
	return nil
}

// ResetLabels gives every pod and namespace the Env created its original
// labels back, where they differ.
func (e *Env) ResetLabels(ctx context.Context) error {
	e.mu.Lock()
	pods, nss := maps.Clone(e.podLabels), maps.Clone(e.nsLabels)
	e.mu.Unlock()
	var errs []error
	for key, want := range pods {
		ns, name, _ := strings.Cut(key, "/")
		var pod corev1.Pod
		if err := e.CP.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &pod); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, err)
			}
			continue
		}
		if !maps.Equal(pod.Labels, want) {
			errs = append(errs, e.SetPodLabels(ctx, ns, name, want))
		}
	}
	for name, want := range nss {
		var ns corev1.Namespace
		if err := e.CP.Client.Get(ctx, client.ObjectKey{Name: name}, &ns); err != nil {
			errs = append(errs, err)
			continue
		}
		if !maps.Equal(ns.Labels, want) {
			errs = append(errs, e.SetNamespaceLabels(ctx, name, want))
		}
	}
	return errors.Join(errs...)
}

// DeleteAllPolicies deletes every NetworkPolicy in every namespace.
func (e *Env) DeleteAllPolicies(ctx context.Context) error {
	var list networkingv1.NetworkPolicyList
	if err := e.CP.Client.List(ctx, &list); err != nil {
		return err
	}
	var errs []error
	for i := range list.Items {
		if err := e.Delete(ctx, &list.Items[i]); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Reset brings the environment back to its starting state after a test:
// policies (ClusterNetworkPolicies too) deleted, labels restored, every agent running, and every standard
// pod reaching every other on TCP and UDP, ports 80 and 81, both families.
func (e *Env) Reset(ctx context.Context) error {
	if err := errors.Join(e.DeleteAllPolicies(ctx), e.DeleteAllClusterPolicies(ctx), e.ResetLabels(ctx), e.StartAgents(ctx)); err != nil {
		return err
	}
	e.ForgetWrite()
	all := NewExpectation(e.Peers(), true)
	if _, err := e.WaitForMatrix(ctx, Check{Protocols: []cluster.Protocol{cluster.TCP, cluster.UDP}, Ports: []int{80, 81}, Want: all}); err != nil {
		return fmt.Errorf("after deleting every policy: %w", err)
	}
	e.mu.Lock()
	e.confirmed, e.fresh = nil, nil
	e.mu.Unlock()
	return nil
}

// Ruleset returns `nft list ruleset` of node i's namespace.
func (e *Env) Ruleset(i int) (string, error) {
	return e.Cluster.Node(i).NetNS.NFT("", "list", "ruleset")
}

// Table returns `nft list table inet nftpolicy` of node i's namespace; with
// stateless, without counter values, so two listings compare equal.
func (e *Env) Table(i int, stateless bool) (string, error) {
	args := []string{"list", "table", "inet", "nftpolicy"}
	if stateless {
		args = append([]string{"-s"}, args...)
	}
	return e.Cluster.Node(i).NetNS.NFT("", args...)
}

// Diagnostics describes the state of every node: its ruleset and the tail of
// its agent's log.
func (e *Env) Diagnostics() string {
	var b strings.Builder
	for i, n := range e.Cluster.Nodes() {
		rs, err := e.Ruleset(i)
		if err != nil {
			rs = err.Error()
		}
		fmt.Fprintf(&b, "--- %s: nft list ruleset\n%s", n.Name, rs)
		if i < len(e.Agents) {
			fmt.Fprintf(&b, "--- %s: agent log (last 15 lines but health checks, %s)\n%s\n", n.Name, e.Agents[i].LogPath, e.Agents[i].LogTail(15))
		}
	}
	return b.String()
}
