package deploy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

const (
	// fullBound bounds each step for the agent with every permission: generous,
	// a loaded CI machine is slow and a false failure here is costly.
	fullBound = 60 * time.Second
	// removalBound bounds each step for an agent missing a permission: long
	// enough that a working agent would have done it many times over (it takes
	// about a second on an idle machine), short enough to keep the test quick.
	removalBound = 20 * time.Second
)

// TestLeastPrivilege proves that the ClusterRole config/default deploys is
// enough for the agent and that none of it is superfluous.
//
// The real agent binary runs against the API server with a token of the
// ServiceAccount config/default creates, so the rendered ServiceAccount,
// ClusterRoleBinding and ClusterRole are what authorize it, and programs its
// table in a network namespace of its own. It must do its whole job: become
// ready (caches synced, first full sync done), enforce a deny-all policy
// created afterwards (the pod's address appears in the table's ingress map),
// record a Warning Event on a policy it cannot enforce, remove the startup
// taint from its Node (through config/rbac's admission policy: its token is
// bound to a pod on that node, as the kubelet mounts it), and watch the
// ClusterNetworkPolicy CRD (its metrics say so: an agent refused that watch
// still enforces, but follows the CRD by asking discovery every 30 s, and says
// that instead). The agent with the deployed role runs with the CNI gate too
// (which needs no permission): it opens the gate once synced, and its /metrics
// serves every metric and label config/prometheus's alerts read.
//
// Then, for each rule of the ClusterRole, and for each resource of a rule that
// names several, an agent runs with a copy of the role without it, all in
// parallel; each must fail at one of those steps within removalBound.
func TestLeastPrivilege(t *testing.T) {
	c := requireCluster(t)
	nfttest.RequireRoot(t)
	bin := buildAgent(t)

	// The ClusterNetworkPolicy CRD is served, so the agent watches it from the
	// start and its list/watch rule must be needed.
	c.installClusterPolicyCRD(t)
	objs := decode(t, render(t, "default"))
	// Everything but the DaemonSet, which would do nothing here (envtest runs
	// no controllers and no kubelets).
	c.applyObjects(t, slices.DeleteFunc(slices.Clone(objs), func(o *unstructured.Unstructured) bool { return o.GetKind() == "DaemonSet" })...)
	role := typed[rbacv1.ClusterRole](t, find(t, objs, "ClusterRole", agentName))

	type privCase struct {
		name   string // subtest, and suffix of the test's objects
		sa     string // the ServiceAccount the agent runs as
		remove string // what the role lacks; "" for the deployed role
	}
	cases := []privCase{{name: "deployed-role", sa: agentName}}
	for _, r := range removals(role.Rules) {
		name := "without-" + r.slug
		c.bindReducedRole(t, "test-"+name, r.rules)
		cases = append(cases, privCase{name: name, sa: "test-" + name, remove: r.what})
	}

	// Every agent at once, so the whole test takes about one removalBound. The
	// goroutines only poll and create objects; failures of the test itself
	// come back as errors and are reported below.
	agents := make([]*agentRun, len(cases))
	for i, tc := range cases {
		node := "node-" + tc.name
		c.createTaintedNode(t, node)
		agents[i] = &agentRun{c: c, bin: bin, kubeconfig: c.serviceAccountKubeconfig(t, tc.sa, node),
			node: node, podIP: fmt.Sprintf("10.250.%d.10", i), k8sNamespace: "lp-" + tc.name, gate: tc.remove == ""}
		agents[i].start(t)
	}
	var wg sync.WaitGroup
	for i, tc := range cases {
		bound := removalBound
		if tc.remove == "" {
			bound = fullBound
		}
		wg.Go(func() { agents[i].failure, agents[i].err = agents[i].exercise(bound) })
	}
	wg.Wait()

	for i, tc := range cases {
		a := agents[i]
		t.Run(tc.name, func(t *testing.T) {
			if a.err != nil {
				a.dumpLog(t)
				t.Fatal(a.err)
			}
			if tc.remove == "" {
				if a.failure != "" {
					a.dumpLog(t)
					t.Fatalf("the agent with the deployed ClusterRole failed: %s", a.failure)
				}
				t.Log("with the deployed ClusterRole the agent became ready, enforced the policy, recorded the Event, removed the startup taint and opened the CNI gate")
				checkAlertMetrics(t, a.metricsText)
				return
			}
			if a.failure == "" {
				a.dumpLog(t)
				t.Fatalf("the agent did its whole job without %s: that permission is superfluous", tc.remove)
			}
			t.Logf("without %s: %s", tc.remove, a.failure)
			if line := a.firstLogLine(`forbidden`); line != "" {
				t.Logf("agent log: %.400s", line)
			}
		})
	}
}

// installClusterPolicyCRD installs the ClusterNetworkPolicy CRD of the module
// (config/crd/experimental, from the module cache) and waits until it is served.
func (c *cluster) installClusterPolicyCRD(t *testing.T) {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("go list -m sigs.k8s.io/network-policy-api: %v", err)
	}
	crd := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental", "policy.networking.k8s.io_clusternetworkpolicies.yaml")
	if out, err := c.kubectl(t, nil, "apply", "--server-side", "--field-manager="+fieldManager, "-f", crd); err != nil {
		t.Fatalf("installing the ClusterNetworkPolicy CRD: %v: %s", err, out)
	}
	if out, err := c.kubectl(t, nil, "wait", "--for=condition=Established", "--timeout=60s", "crd/clusternetworkpolicies.policy.networking.k8s.io"); err != nil {
		t.Fatalf("waiting for the ClusterNetworkPolicy CRD: %v: %s", err, out)
	}
}

// removal is the ClusterRole's rules without one rule, or without one resource of a rule.
type removal struct {
	slug  string // for object names
	what  string // for people
	rules []rbacv1.PolicyRule
}

func removals(rules []rbacv1.PolicyRule) []removal {
	describe := func(r rbacv1.PolicyRule, resources []string) string {
		group := strings.Join(r.APIGroups, ",")
		if group == "" {
			group = "core"
		}
		return fmt.Sprintf("rule %s %s %s", group, strings.Join(resources, ","), strings.Join(r.Verbs, ","))
	}
	var out []removal
	for i, r := range rules {
		without := slices.Concat(rules[:i:i], rules[i+1:])
		out = append(out, removal{slug: fmt.Sprintf("rule%d", i), what: describe(r, r.Resources), rules: without})
		if len(r.Resources) < 2 {
			continue
		}
		for _, res := range r.Resources {
			reduced := r.DeepCopy()
			reduced.Resources = slices.DeleteFunc(reduced.Resources, func(s string) bool { return s == res })
			rs := slices.Clone(rules)
			rs[i] = *reduced
			out = append(out, removal{slug: fmt.Sprintf("rule%d-%s", i, res), what: describe(r, []string{res}) + " (only that resource)", rules: rs})
		}
	}
	// One verb of one rule: every verb granted must be one the agent uses. Not
	// list or watch alone: they are the informers' pair, removed together with
	// their rule above. Either one alone leaves a degraded agent that still
	// passes the checks here: client-go streams the first list over a watch
	// (watch-list, which a 1.37 API server serves), and falls back to a list
	// when an API server does not; without watch, a reflector relists with
	// backoff and so sees changes late instead of never.
	for i, r := range rules {
		if len(r.Verbs) < 2 {
			continue
		}
		for _, verb := range r.Verbs {
			if verb == "list" || verb == "watch" {
				continue
			}
			reduced := r.DeepCopy()
			reduced.Verbs = slices.DeleteFunc(reduced.Verbs, func(s string) bool { return s == verb })
			rs := slices.Clone(rules)
			rs[i] = *reduced
			group := strings.Join(r.APIGroups, ",")
			if group == "" {
				group = "core"
			}
			out = append(out, removal{slug: fmt.Sprintf("rule%d-%s", i, verb),
				what:  fmt.Sprintf("verb %s on %s %s (only that verb)", verb, group, strings.Join(r.Resources, ",")),
				rules: rs})
		}
	}
	return out
}

// bindReducedRole creates ServiceAccount sa in the agent's namespace, bound to
// a ClusterRole of its own with rules.
func (c *cluster) bindReducedRole(t *testing.T, sa string, rules []rbacv1.PolicyRule) {
	t.Helper()
	ctx := context.Background()
	name := "nftpolicy-" + sa
	cs := c.clientset
	create := func(err error) {
		t.Helper()
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	_, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	create(err)
	_, err = cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}, metav1.CreateOptions{})
	create(err)
	_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: namespace}},
	}, metav1.CreateOptions{})
	create(err)
}

// createTaintedNode creates the Node an agent runs for, registered with the
// startup taint.
func (c *cluster) createTaintedNode(t *testing.T, name string) {
	t.Helper()
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{Taints: []corev1.Taint{startupTaint}}}
	if _, err := c.clientset.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.clientset.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{}) })
}

// serviceAccountKubeconfig writes a kubeconfig that authenticates with a fresh
// token of the ServiceAccount bound to a pod of it on node, as the in-cluster
// config of its pod would.
func (c *cluster) serviceAccountKubeconfig(t *testing.T, sa, node string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(c.kubeconfig) // the admin's: server and CA
	if err != nil {
		t.Fatal(err)
	}
	user := "system:serviceaccount:" + namespace + ":" + sa
	cfg.AuthInfos = map[string]*clientcmdapi.AuthInfo{user: {Token: c.boundToken(t, sa, node)}}
	for _, ctx := range cfg.Contexts {
		ctx.AuthInfo = user
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// buildAgent builds ./cmd/nftpolicy, and the CNI gate's plugin beside it (as
// in the image), once per test binary.
func buildAgent(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"nftpolicy", "nftpolicy-cni-gate"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "./cmd/"+name)
		cmd.Dir = repoRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build ./cmd/%s: %v\n%s", name, err, out)
		}
	}
	return filepath.Join(dir, "nftpolicy")
}

// agentRun is one agent process on its own node name, network namespace and
// Kubernetes namespace.
type agentRun struct {
	c            *cluster
	bin          string
	kubeconfig   string
	node         string
	podIP        string
	k8sNamespace string

	// gate runs the agent with the CNI gate, on a CNI configuration of its own
	// (gateConf); metricsText is its /metrics once its job is done.
	gate        bool
	gateConf    string
	metricsText string

	log     string         // the agent's output, a file
	port    string         // of /healthz and /readyz
	metrics string         // port of /metrics
	netns   *nfttest.NetNS // where it programs its table
	exited  chan struct{}  // closed when the process has exited
	failure string         // what exercise found missing; "" when it all worked
	err     error          // a failure of the test itself
}

// start starts the agent in a network namespace of its own; t's cleanup
// stops it (before the namespace goes).
func (a *agentRun) start(t *testing.T) {
	t.Helper()
	a.netns = nfttest.NewNetNS(t, "np-deploy")
	a.port = freePort(t)
	a.metrics = freePort(t)
	a.log = filepath.Join(t.TempDir(), "agent.log")
	logf, err := os.Create(a.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(a.bin, "agent",
		"--kubeconfig="+a.kubeconfig, "--node-name="+a.node, "--netns="+a.netns.Path(), "--table-name="+tableName,
		"--metrics-bind-address=127.0.0.1:"+a.metrics, "--health-probe-bind-address=127.0.0.1:"+a.port,
		// As deployed: the Node's pod CIDRs come from the same Node watch (its
		// node has no Node object here, so it isolates nothing and says so).
		"--unknown-pod-cidrs=node")
	if a.gate {
		confDir, binDir := filepath.Join(t.TempDir(), "net.d"), filepath.Join(t.TempDir(), "bin")
		for _, d := range []string{confDir, binDir} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		a.gateConf = filepath.Join(confDir, "10-podnet.conflist")
		if err := os.WriteFile(a.gateConf, []byte(`{"cniVersion": "1.0.0", "name": "podnet", "plugins": [{"type": "ptp"}]}`), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd.Args = append(cmd.Args, "--cni-gate-conf-dir="+confDir, "--cni-gate-bin-dir="+binDir)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := framework.StartChild(cmd); err != nil { // dies with the test binary
		t.Fatal(err)
	}
	a.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(a.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(45 * time.Second):
			_ = cmd.Process.Kill()
			<-a.exited
			t.Errorf("agent %s did not stop within 45s of SIGTERM", a.node)
		}
		_ = logf.Close()
	})
}

// exercise checks each part of the agent's job in turn, each within bound. It
// returns "" when the agent did it all, else what failed first; err reports a
// failure of the test's own set-up.
func (a *agentRun) exercise(bound time.Duration) (failure string, err error) {
	// 1. Ready: caches synced (list and watch of every kind) and the first full sync done.
	readyz := "http://127.0.0.1:" + a.port + "/readyz?verbose"
	var last string
	if !poll(bound, a.exited, func() bool {
		var ok bool
		ok, last = httpOK(readyz)
		return ok
	}) {
		return fmt.Sprintf("not ready within %s (last /readyz: %s)", bound, last), nil
	}

	// 2. Enforce a policy created after start (so the watches matter): a pod of
	// this node isolated by a deny-all policy is in the ingress map.
	if err := a.createWorkload(); err != nil {
		return "", err
	}
	var table string
	if !poll(bound, a.exited, func() bool {
		table, _ = a.netns.NFT("", "list", "table", "inet", tableName)
		return inMap(table, "ingress-v4", a.podIP)
	}) {
		return fmt.Sprintf("the deny-all policy was not enforced within %s (%s not in map ingress-v4):\n%s", bound, a.podIP, table), nil
	}

	// 3. Report a policy it cannot enforce, as a Warning Event on the policy.
	var listErr error
	if !poll(bound, a.exited, func() bool {
		var ok bool
		ok, listErr = a.hasProblemEvent()
		return ok
	}) {
		if listErr != nil {
			return "", fmt.Errorf("listing events: %w", listErr)
		}
		return fmt.Sprintf("no NotEnforceable Event within %s", bound), nil
	}

	// 4. Remove the startup taint from its Node (it is ready, so its table is in force).
	var taints []corev1.Taint
	if !poll(bound, a.exited, func() bool {
		n, err := a.c.clientset.CoreV1().Nodes().Get(context.Background(), a.node, metav1.GetOptions{})
		if err != nil {
			return false
		}
		taints = n.Spec.Taints
		return !slices.ContainsFunc(taints, func(t corev1.Taint) bool { return t.Key == startupTaint.Key })
	}) {
		return fmt.Sprintf("the startup taint is still on Node %s after %s (taints %v)", a.node, bound, taints), nil
	}

	// 5. Watch the ClusterNetworkPolicy CRD rather than ask discovery for it.
	const watching = `nftpolicy_clusterpolicy_crd{mode="watch"} 1`
	var crd string
	if !poll(bound, a.exited, func() bool {
		crd = metricLines(httpBody("http://127.0.0.1:"+a.metrics+"/metrics"), "nftpolicy_clusterpolicy_crd{")
		return strings.Contains(crd, watching)
	}) {
		return fmt.Sprintf("not watching the ClusterNetworkPolicy CRD within %s (want %s; /metrics: %q)", bound, watching, crd), nil
	}

	// 6. With the CNI gate: its entry in the node's list, and the table
	// marked for this boot, nothing more asked of the API. Then what it
	// serves, for the alerts' metrics.
	if a.gate {
		b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
		if err != nil {
			return "", err
		}
		mark := nft.SyncedBootSet(strings.TrimSpace(string(b)))
		var conf, table string
		if !poll(bound, a.exited, func() bool {
			b, _ := os.ReadFile(a.gateConf)
			conf = string(b)
			table, _ = a.netns.NFT("", "list", "set", "inet", tableName, mark)
			return strings.Contains(conf, `"type": "nftpolicy"`) && strings.Contains(table, "set "+mark+" {")
		}) {
			return fmt.Sprintf("the CNI gate not open within %s:\n%s\n%s", bound, conf, table), nil
		}
		a.metricsText = httpBody("http://127.0.0.1:" + a.metrics + "/metrics")
	}
	return "", nil
}

// badCIDR is an ipBlock the agent cannot parse (a leading zero), accepted by
// the API server only because startCluster turns StrictIPCIDRValidation off.
const badCIDR = "010.0.0.0/8"

// createWorkload creates the Kubernetes namespace, a pod running on the
// agent's node with an address, a deny-all ingress policy, and a policy whose
// ipBlock the agent cannot parse (badCIDR).
func (a *agentRun) createWorkload() error {
	ctx := context.Background()
	cs := a.c.clientset
	ns := a.k8sNamespace
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	pod, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName:   a.node,
			Containers: []corev1.Container{{Name: "web", Image: "web"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: a.podIP, PodIPs: []corev1.PodIP{{IP: a.podIP}}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return err
	}
	ingress := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	for _, np := range []*networkingv1.NetworkPolicy{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "deny-all"},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: ingress},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "unenforceable"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: ingress, Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: badCIDR}}},
			}}},
		},
	} {
		if _, err := cs.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// hasProblemEvent reports whether this agent recorded its Warning Event on the
// unenforceable policy. Every agent of the test sees every policy, and all run
// on this host (same reporting instance), so the note's node name tells them apart.
func (a *agentRun) hasProblemEvent() (bool, error) {
	return a.findProblemEvent(func(*eventsv1.Event) bool { return true })
}

func (a *agentRun) findProblemEvent(match func(*eventsv1.Event) bool) (bool, error) {
	evs, err := a.c.clientset.EventsV1().Events(a.k8sNamespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return false, err
	}
	for i := range evs.Items {
		e := &evs.Items[i]
		if e.Reason == "NotEnforceable" && e.Type == corev1.EventTypeWarning &&
			e.Regarding.Kind == "NetworkPolicy" && e.Regarding.Name == "unenforceable" &&
			strings.Contains(e.Note, "node "+a.node+" ") && match(e) {
			return true, nil
		}
	}
	return false, nil
}

// inMap reports whether the `nft list` text has addr as a key of the named map.
func inMap(table, name, addr string) bool {
	_, rest, ok := strings.Cut(table, "map "+name+" {")
	if !ok {
		return false
	}
	block, _, _ := strings.Cut(rest, "}")
	// Elements read `{ 10.0.0.1 comment "ns/pod" : goto ..., 10.0.0.2 ... }`.
	return regexp.MustCompile(`[\s{,]` + regexp.QuoteMeta(addr) + `\s`).MatchString(block)
}

// poll calls cond every 100 ms until it holds (true), bound passes or the
// agent exits (false).
func poll(bound time.Duration, exited <-chan struct{}, cond func() bool) bool {
	deadline := time.Now().Add(bound)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-exited:
			return cond()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// httpOK GETs url and reports a 200, with a short description of the answer.
func httpOK(url string) (bool, string) {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return false, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return resp.StatusCode == http.StatusOK, fmt.Sprintf("%d %s", resp.StatusCode, strings.Join(strings.Fields(string(body)), " "))
}

// httpBody GETs url and returns its body, or "" when that fails.
func httpBody(url string) string {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return string(body)
}

// metricLines returns the lines of a Prometheus text exposition that start with prefix.
func metricLines(text, prefix string) string {
	var out []string
	for line := range strings.Lines(text) {
		if strings.HasPrefix(line, prefix) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return strings.Join(out, "; ")
}

// freePort is framework.FreePort as a string.
func freePort(t *testing.T) string {
	t.Helper()
	p, err := framework.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(p)
}

// firstLogLine returns the agent's first log line matching re, or "".
func (a *agentRun) firstLogLine(re string) string {
	data, err := os.ReadFile(a.log)
	if err != nil {
		return ""
	}
	r := regexp.MustCompile(re)
	for line := range strings.Lines(string(data)) {
		if r.MatchString(line) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// dumpLog logs the agent's output (the last 8 KiB).
func (a *agentRun) dumpLog(t *testing.T) {
	data, _ := os.ReadFile(a.log)
	if len(data) > 8<<10 {
		data = data[len(data)-8<<10:]
	}
	t.Logf("agent log (%s):\n%s", a.node, data)
}
