package conformance

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// A rolling update of the DaemonSet on the real cluster: the kubelet stops each
// node's agent (SIGTERM) and starts the new one, which finds the old agent's
// table in force and replaces it in its first full sync. Policy must hold
// throughout: on each node a server that a policy admits only "allowed" pods
// to, and on each node an allowed and a denied client, probed across and
// within nodes (8 connections a round) without pause while the DaemonSet rolls.
// Every allowed probe must connect and every denied one must time out, before,
// during and after the roll. The test reports how long each node's step took
// (the old agent's deletion to the new one ready), what sets how long a
// rollout takes on a large cluster (README, "Deploy": "Rolling updates").
//
// Run against a cluster from `test/conformance/cluster.sh up` (make rollout);
// `make conformance` runs it after the Netpol suite.

const (
	rolloutPort    = 8080
	probeTimeout   = 500 * time.Millisecond
	rolloutTimeout = 5 * time.Minute
)

// probe is one connection the test makes over and over: from a client pod to a
// server's address, and whether policy admits it.
type probe struct {
	client, server, addr string
	allowed              bool
}

// probeResult is one attempt's: connected, or the agnhost connect error class
// (TIMEOUT, REFUSED, ...), or an exec failure (inconclusive, retried).
type probeResult struct {
	at        time.Time
	connected bool
	class     string
	execErr   error
}

func TestRollingUpdate(t *testing.T) {
	kubeconfig := os.Getenv("CONFORMANCE_KUBECONFIG")
	if kubeconfig == "" {
		t.Skip("needs the conformance cluster: CONFORMANCE_KUBECONFIG=/var/lib/nftpolicy-conformance/admin.kubeconfig (make rollout)")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	must(t, err)
	c, err := client.New(cfg, client.Options{Scheme: clientgoscheme.Scheme})
	must(t, err)
	cs, err := kubernetes.NewForConfig(cfg)
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	var nodes corev1.NodeList
	must(t, c.List(ctx, &nodes))
	if len(nodes.Items) < 2 {
		t.Fatalf("%d nodes: the test needs two", len(nodes.Items))
	}
	var nodeNames []string
	for _, n := range nodes.Items {
		nodeNames = append(nodeNames, n.Name)
	}
	slices.Sort(nodeNames)
	nodeNames = nodeNames[:2]

	// The pods: a server and two clients on each node.
	ns := createNamespace(ctx, t, c, fmt.Sprintf("rollout-%d", time.Now().Unix()%100000))
	var pods []*corev1.Pod
	for _, node := range nodeNames {
		pods = append(pods,
			netexecPod(ns, "server-"+node, node, "server", rolloutPort),
			netexecPod(ns, "allowed-"+node, node, "allowed", rolloutPort+1),
			netexecPod(ns, "denied-"+node, node, "denied", rolloutPort+1))
	}
	for _, p := range pods {
		must(t, c.Create(ctx, p))
	}
	addrs := map[string]string{}
	for _, p := range pods {
		must(t, wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
			if err := c.Get(ctx, client.ObjectKeyFromObject(p), p); err != nil {
				return false, err
			}
			return p.Status.PodIP != "" && podReady(p), nil
		}))
		addrs[p.Name] = p.Status.PodIP
	}
	// Servers admit "allowed" pods alone, on the server port.
	must(t, c.Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "servers-admit-allowed"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "allowed"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr.To(intstr.FromInt32(rolloutPort))}},
			}},
		},
	}))
	var probes []probe
	for _, client := range []string{"allowed", "denied"} {
		for _, from := range nodeNames {
			for _, to := range nodeNames {
				probes = append(probes, probe{client: client + "-" + from, server: "server-" + to,
					addr: net.JoinHostPort(addrs["server-"+to], strconv.Itoa(rolloutPort)), allowed: client == "allowed"})
			}
		}
	}
	// The policy in force on both nodes: one round entirely as expected.
	must(t, wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		for i, r := range probeRound(ctx, cs, cfg, ns, probes) {
			if r.execErr != nil || r.connected != probes[i].allowed {
				return false, nil
			}
		}
		return true, nil
	}))

	// Probe without pause from here until the rollout is done, and a little after.
	stop := make(chan struct{})
	var rounds [][]probeResult
	probing := make(chan struct{})
	go func() {
		defer close(probing)
		for {
			select {
			case <-stop:
				return
			default:
			}
			rounds = append(rounds, probeRound(ctx, cs, cfg, ns, probes))
		}
	}()

	steps, total, err := restartAgents(ctx, c)
	time.Sleep(5 * time.Second) // the new agents' first seconds, probed too
	close(stop)
	<-probing
	must(t, err)

	// Every probe's result.
	var inconclusive, wrong int
	for n, round := range rounds {
		for i, r := range round {
			p := probes[i]
			switch {
			case r.execErr != nil:
				inconclusive++
				t.Logf("round %d: %s -> %s: exec failed (inconclusive): %v", n, p.client, p.server, r.execErr)
			case r.connected != p.allowed || (!p.allowed && r.class != "TIMEOUT"):
				wrong++
				t.Errorf("round %d at %s: %s -> %s connected=%v (%s), want allowed=%v", n,
					r.at.Format("15:04:05.000"), p.client, p.server, r.connected, r.class, p.allowed)
			}
		}
	}
	t.Logf("rollout_probes: %d (%d rounds of %d), wrong %d, inconclusive %d", len(rounds)*len(probes), len(rounds), len(probes), wrong, inconclusive)
	if inconclusive > len(rounds)*len(probes)/10 {
		t.Errorf("%d of %d probes inconclusive (exec failed)", inconclusive, len(rounds)*len(probes))
	}
	for _, s := range steps {
		// The rounds that began while the node had no ready agent.
		during := 0
		for _, round := range rounds {
			if at := round[0].at; !at.Before(s.deleted) && at.Before(s.ready) {
				during++
			}
		}
		t.Logf("rollout_node_step_s %s: %.1f (old agent deleted %s, new agent ready %s, %d rounds of probes meanwhile)", s.node,
			s.ready.Sub(s.deleted).Seconds(), s.deleted.Format("15:04:05.0"), s.ready.Format("15:04:05.0"), during)
		if during == 0 {
			t.Errorf("node %s: no round of probes while its agent was replaced", s.node)
		}
	}
	t.Logf("rollout_total_s: %.1f for %d nodes (maxUnavailable %s)", total.Seconds(), len(steps), maxUnavailable(ctx, c))
}

// netexecPod is an agnhost netexec pod on node, labelled role. (netexec's
// /healthz says 412 without its UDP server: the probe asks for /hostname.)
func netexecPod(ns, name, node, role string, port int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"role": role}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{Name: "netexec", Image: agnhost, ImagePullPolicy: corev1.PullNever,
				Args: []string{"netexec", fmt.Sprintf("--http-port=%d", port), "--udp-port=-1"},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/hostname", Port: intstr.FromInt(port)}},
					PeriodSeconds: 1,
				}}},
		},
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// probeRound runs every probe once, at the same time.
func probeRound(ctx context.Context, cs kubernetes.Interface, cfg *rest.Config, ns string, probes []probe) []probeResult {
	out := make([]probeResult, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Go(func() {
			r := probeResult{at: time.Now()}
			stdout, stderr, err := execIn(ctx, cs, cfg, ns, p.client,
				"/agnhost", "connect", p.addr, fmt.Sprintf("--timeout=%s", probeTimeout))
			msg := strings.TrimSpace(stdout + stderr)
			switch {
			case err == nil:
				r.connected = true
			case msg != "":
				// agnhost connect exits 1 with its error class first.
				r.class, _, _ = strings.Cut(msg, ":")
			default:
				r.execErr = err
			}
			out[i] = r
		})
	}
	wg.Wait()
	return out
}

// execIn runs cmd in pod's first container, as kubectl exec does.
func execIn(ctx context.Context, cs kubernetes.Interface, cfg *rest.Config, ns, pod string, cmd ...string) (string, string, error) {
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Command: cmd, Stdout: true, Stderr: true}, clientgoscheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	if err != nil {
		return "", "", err
	}
	var stdout, stderr bytes.Buffer
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	return stdout.String(), stderr.String(), err
}

// nodeStep is one node's part of a rollout: when its old agent was seen
// deleted, and when its new agent was ready.
type nodeStep struct {
	node           string
	deleted, ready time.Time
}

// restartAgents restarts the agent DaemonSet's pods as `kubectl rollout
// restart` does (a template annotation) and waits until the rollout is done,
// watching each node's agents every 200 ms.
func restartAgents(ctx context.Context, c client.Client) ([]nodeStep, time.Duration, error) {
	var ds appsv1.DaemonSet
	if err := c.Get(ctx, client.ObjectKey{Namespace: dsNamespace, Name: dsName}, &ds); err != nil {
		return nil, 0, err
	}
	var before corev1.PodList
	if err := c.List(ctx, &before, client.InNamespace(dsNamespace), client.MatchingLabels(ds.Spec.Selector.MatchLabels)); err != nil {
		return nil, 0, err
	}
	old := map[string]string{} // pod name -> node
	for _, p := range before.Items {
		old[p.Name] = p.Spec.NodeName
	}
	if ds.Spec.Template.Annotations == nil {
		ds.Spec.Template.Annotations = map[string]string{}
	}
	ds.Spec.Template.Annotations["kubectl.kubernetes.io/restartedAt"] = time.Now().Format(time.RFC3339Nano)
	start := time.Now()
	if err := c.Update(ctx, &ds); err != nil {
		return nil, 0, err
	}
	steps := map[string]*nodeStep{}
	for _, node := range old {
		steps[node] = &nodeStep{node: node}
	}
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, rolloutTimeout, true, func(ctx context.Context) (bool, error) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(dsNamespace), client.MatchingLabels(ds.Spec.Selector.MatchLabels)); err != nil {
			return false, err
		}
		now := time.Now()
		present := map[string]bool{}
		for _, p := range pods.Items {
			present[p.Name] = true
			s := steps[p.Spec.NodeName]
			switch {
			case s == nil:
			case old[p.Name] != "":
				if p.DeletionTimestamp != nil && s.deleted.IsZero() {
					s.deleted = now
				}
			case podReady(&p) && s.ready.IsZero():
				s.ready = now
			}
		}
		for name, node := range old {
			if s := steps[node]; !present[name] && s.deleted.IsZero() {
				s.deleted = now // gone between two looks
			}
		}
		for _, s := range steps {
			if s.deleted.IsZero() || s.ready.IsZero() {
				return false, nil
			}
		}
		return len(pods.Items) == len(old), nil
	})
	var out []nodeStep
	for _, s := range steps {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b nodeStep) int { return a.deleted.Compare(b.deleted) })
	if err != nil {
		return out, time.Since(start), fmt.Errorf("rollout not done within %v: %w", rolloutTimeout, err)
	}
	return out, time.Since(start), nil
}

func maxUnavailable(ctx context.Context, c client.Client) string {
	var ds appsv1.DaemonSet
	if err := c.Get(ctx, client.ObjectKey{Namespace: dsNamespace, Name: dsName}, &ds); err != nil {
		return "?"
	}
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil {
		return ru.MaxUnavailable.String()
	}
	return "1"
}
