// Package conformance holds what runs against the real two-node cluster that
// cluster.sh brings up (see the README's "Conformance" section); the upstream
// suite itself is e2e.test, run by cluster.sh.
package conformance

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The first-packet window on the real cluster (issue 14, "From a pod's first
// packet"). A new pod's network is up before its Pod object carries its
// address, so its first packets may pass before the agent knows it. Each run
// creates, at once, a batch of pods that a deny-all egress policy selects, each
// with an init container that connects to a peer pod as soon as it starts, and
// counts the connections that got through: the window. Then a batch that no
// policy selects, whose init containers connect with a 900 ms timeout: those
// that fail had their first SYN dropped (TCP sends it again only after 1 s), the
// cost of closing the window. Both with the agent's --unknown-pod-cidrs off and
// =node; the DaemonSet's arguments are restored at the end.
//
// Run against a cluster from `test/conformance/cluster.sh up` (make window).
// FIRST_PACKET_PODS sets the batch size (50).

const (
	agnhost      = "registry.k8s.io/e2e-test-images/agnhost:2.66.1" // imported by cluster.sh, never pulled
	dsNamespace  = "nftpolicy-system"
	dsName       = "nftpolicy-agent"
	peerPort     = 8080
	fastTimeout  = 900 * time.Millisecond
	batchTimeout = 6 * time.Minute
)

func TestFirstPacketWindow(t *testing.T) {
	kubeconfig := os.Getenv("CONFORMANCE_KUBECONFIG")
	if kubeconfig == "" {
		t.Skip("needs the conformance cluster: CONFORMANCE_KUBECONFIG=/var/lib/nftpolicy-conformance/admin.kubeconfig (make window)")
	}
	pods := 50
	if v := os.Getenv("FIRST_PACKET_PODS"); v != "" {
		if _, err := fmt.Sscan(v, &pods); err != nil || pods < 1 {
			t.Fatalf("FIRST_PACKET_PODS=%q: want a positive number", v)
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: clientgoscheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()

	var nodes corev1.NodeList
	must(t, c.List(ctx, &nodes))
	for _, n := range nodes.Items {
		t.Logf("node %s: podCIDRs %v", n.Name, n.Spec.PodCIDRs)
		if len(n.Spec.PodCIDRs) == 0 {
			t.Fatalf("node %s has no spec.podCIDRs: --unknown-pod-cidrs=node would isolate nothing (cluster.sh up sets them)", n.Name)
		}
	}

	var ds appsv1.DaemonSet
	must(t, c.Get(ctx, client.ObjectKey{Namespace: dsNamespace, Name: dsName}, &ds))
	original := slices.Clone(ds.Spec.Template.Spec.Containers[0].Args)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := setAgentArgs(ctx, c, original); err != nil {
			t.Errorf("restoring the DaemonSet's args: %v", err)
		}
	})

	peer := startPeer(ctx, t, c)
	type result struct {
		mode                   string
		through, selected      int
		slow, free             int
		selectedDur, freeDur   time.Duration
		throughByNode, onNodes map[string]int
	}
	var results []result
	for _, mode := range []string{"off", "node"} {
		args := slices.DeleteFunc(slices.Clone(original), func(a string) bool { return strings.HasPrefix(a, "--unknown-pod-cidrs") })
		if mode != "off" {
			args = append(args, "--unknown-pod-cidrs="+mode)
		}
		t.Logf("--unknown-pod-cidrs %s: rolling the agents out", mode)
		must(t, setAgentArgs(ctx, c, args))

		r := result{mode: mode}
		start := time.Now()
		sel := runBatch(ctx, t, c, "fpw-"+mode+"-denied", peer, pods, true, 5*time.Second)
		r.selectedDur = time.Since(start)
		r.selected, r.throughByNode, r.onNodes = len(sel), map[string]int{}, map[string]int{}
		for _, o := range sel {
			r.onNodes[o.node]++
			if o.connected {
				r.through++
				r.throughByNode[o.node]++
			}
		}
		start = time.Now()
		free := runBatch(ctx, t, c, "fpw-"+mode+"-free", peer, pods, false, fastTimeout)
		r.freeDur = time.Since(start)
		r.free = len(free)
		for _, o := range free {
			if !o.connected {
				r.slow++
			}
		}
		t.Logf("--unknown-pod-cidrs %s: %d of %d pods under deny-all egress connected (by node %v, pods by node %v; batch %v); "+
			"%d of %d pods no policy selects did not connect within %v (batch %v)",
			mode, r.through, r.selected, r.throughByNode, r.onNodes, r.selectedDur.Round(time.Second),
			r.slow, r.free, fastTimeout, r.freeDur.Round(time.Second))
		results = append(results, r)
	}
	for _, r := range results {
		fmt.Printf("first-packet window: --unknown-pod-cidrs %s: %d/%d denied pods got through; %d/%d unselected pods' first connection took over %v\n",
			r.mode, r.through, r.selected, r.slow, r.free, fastTimeout)
	}
	if on := results[1]; on.through != 0 {
		t.Errorf("with --unknown-pod-cidrs=node, %d of %d pods under deny-all egress got through", on.through, on.selected)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// setAgentArgs sets the agent container's args and waits for the rollout.
func setAgentArgs(ctx context.Context, c client.Client, args []string) error {
	return updateAgents(ctx, c, func(spec *corev1.PodSpec) { spec.Containers[0].Args = args })
}

// updateAgents changes the agent DaemonSet's pod template with change and
// waits for the rollout (waitAgents).
func updateAgents(ctx context.Context, c client.Client, change func(*corev1.PodSpec)) error {
	if err := changeAgents(ctx, c, change); err != nil {
		return err
	}
	return waitAgents(ctx, c)
}

// changeAgents changes the agent DaemonSet's pod template with change, when
// that changes it.
func changeAgents(ctx context.Context, c client.Client, change func(*corev1.PodSpec)) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: dsNamespace, Name: dsName}, &ds); err != nil {
			return err
		}
		before := ds.Spec.Template.Spec.DeepCopy()
		change(&ds.Spec.Template.Spec)
		if equality.Semantic.DeepEqual(before, &ds.Spec.Template.Spec) {
			return nil
		}
		return c.Update(ctx, &ds)
	})
}

// waitAgents waits until the agent DaemonSet is rolled out: every agent it
// wants ready and of its template, no other left.
func waitAgents(ctx context.Context, c client.Client) error {
	ds := appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: dsNamespace, Name: dsName}}
	return wait.PollUntilContextTimeout(ctx, time.Second, 5*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(&ds), &ds); err != nil {
			return false, err
		}
		s := ds.Status
		if s.ObservedGeneration < ds.Generation || s.UpdatedNumberScheduled != s.DesiredNumberScheduled ||
			s.NumberReady != s.DesiredNumberScheduled || s.NumberUnavailable != 0 {
			return false, nil
		}
		// No agent of the old template left (terminating, still programming),
		// nor on a node the DaemonSet no longer wants.
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(dsNamespace), client.MatchingLabels(ds.Spec.Selector.MatchLabels)); err != nil {
			return false, err
		}
		return len(pods.Items) == int(s.DesiredNumberScheduled), nil
	})
}

// startPeer runs the pod every init container connects to, in a namespace no
// policy selects, and returns its address.
func startPeer(ctx context.Context, t *testing.T, c client.Client) string {
	t.Helper()
	ns := createNamespace(ctx, t, c, "fpw-peer")
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "peer"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{Name: "netexec", Image: agnhost, ImagePullPolicy: corev1.PullNever,
				Args: []string{"netexec", fmt.Sprintf("--http-port=%d", peerPort), "--udp-port=-1"}}},
		},
	}
	must(t, c.Create(ctx, p))
	var ip string
	must(t, wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(p), p); err != nil {
			return false, err
		}
		ip = p.Status.PodIP
		return p.Status.Phase == corev1.PodRunning && ip != "", nil
	}))
	t.Logf("peer %s/%s on %s at %s", ns, p.Name, p.Spec.NodeName, ip)
	if strings.Contains(ip, ":") {
		ip = "[" + ip + "]"
	}
	return fmt.Sprintf("%s:%d", ip, peerPort)
}

// createNamespace creates name, deleted when the test ends if it is still there.
func createNamespace(ctx context.Context, t *testing.T, c client.Client, name string) string {
	t.Helper()
	must(t, c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := deleteNamespace(ctx, c, name); err != nil {
			t.Errorf("deleting namespace %s: %v", name, err)
		}
	})
	return name
}

// deleteNamespace deletes name and waits until it is gone, so that the next
// batch's pods start on nodes that are done with this one's.
func deleteNamespace(ctx context.Context, c client.Client, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := c.Delete(ctx, ns); err != nil {
		return client.IgnoreNotFound(err)
	}
	return wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		err := c.Get(ctx, client.ObjectKeyFromObject(ns), ns)
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	})
}

// outcome is one pod's init container's result.
type outcome struct {
	node      string
	connected bool
}

// runBatch creates n pods at once in a new namespace, each with an init
// container that connects to peer with timeout, under a deny-all egress policy
// when denied; it waits for every init container to finish and returns their
// outcomes, and deletes the namespace.
func runBatch(ctx context.Context, t *testing.T, c client.Client, name, peer string, n int, denied bool, timeout time.Duration) []outcome {
	t.Helper()
	ns := createNamespace(ctx, t, c, name)
	if denied {
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny-all-egress"},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}},
		}
		must(t, c.Create(ctx, np))
		// The agents enforce a policy within milliseconds; leave them ample time,
		// so that what gets through is the new pods' window, not the policy's.
		time.Sleep(3 * time.Second)
	}
	for i := range n {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p%02d", i), Labels: map[string]string{"app": "first-packet"}},
			Spec: corev1.PodSpec{
				RestartPolicy:                 corev1.RestartPolicyNever,
				TerminationGracePeriodSeconds: ptr.To[int64](0),
				InitContainers: []corev1.Container{{Name: "connect", Image: agnhost, ImagePullPolicy: corev1.PullNever,
					Args: []string{"connect", peer, "--timeout=" + timeout.String()}}},
				// Exits at once: the pod ends, and holds nothing while the batch runs.
				Containers: []corev1.Container{{Name: "done", Image: agnhost, ImagePullPolicy: corev1.PullNever,
					Args: []string{"entrypoint-tester"}}},
			},
		}
		must(t, c.Create(ctx, p))
	}
	var out []outcome
	err := wait.PollUntilContextTimeout(ctx, 2*time.Second, batchTimeout, true, func(ctx context.Context) (bool, error) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(ns)); err != nil {
			return false, err
		}
		out = out[:0]
		for _, p := range pods.Items {
			if len(p.Status.InitContainerStatuses) == 0 {
				return false, nil
			}
			term := p.Status.InitContainerStatuses[0].State.Terminated
			if term == nil {
				return false, nil
			}
			out = append(out, outcome{node: p.Spec.NodeName, connected: term.ExitCode == 0})
		}
		return len(out) == n, nil
	})
	if err != nil {
		t.Fatalf("batch %s: not every init container finished within %v: %v", name, batchTimeout, err)
	}
	must(t, deleteNamespace(ctx, c, ns))
	return out
}
