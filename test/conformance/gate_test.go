package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// The CNI gate on the real cluster (config/cni-gate, which
// test/conformance/kustomization.yaml deploys). After a reboot a node's pods
// start while its agent does, and would run unfiltered until the agent's first
// full sync creates the table; the gate, a plugin the agent chains into the
// node's CNI conflist, fails their network setup until the table exists.
//
// The test reboots node2 as far as the gate can tell: its agent taken off the
// node (a node affinity in the DaemonSet), its table deleted, its conflist
// entry and plugin binary left where they are (files outlive a reboot). A pod
// created on node2 must not start: for gateHold it is not Running, and the
// kubelet reports FailedCreatePodSandBox with nftpolicy's error. With the agent
// back (the agent itself runs with hostNetwork: never gated) the pod must run
// once the table is in force, within gateRelease. The DaemonSet is restored at
// the end, and both agents are ready again.
//
// Run against a cluster from `test/conformance/cluster.sh up` (cluster.sh gate,
// make cni-gate); `make conformance` runs it before the suites. The nodes' CNI
// directories are $STATE/<node>/cni and $STATE/<node>/cni-bin, $STATE being
// CONFORMANCE_KUBECONFIG's directory; CONFORMANCE_NODE_NETNS names the network
// namespace of each node that does not run in this process's
// (node2=/run/netns/npc-node2).

const (
	gateTable   = "nftpolicy" // the agent's --table-name
	gatePlugin  = "nftpolicy" // the conflist entry's type, and its binary's name
	gateHold    = 15 * time.Second
	gateRelease = 90 * time.Second
)

func TestRebootedNodeWaitsForTable(t *testing.T) {
	kubeconfig := os.Getenv("CONFORMANCE_KUBECONFIG")
	if kubeconfig == "" {
		t.Skip("needs the conformance cluster: CONFORMANCE_KUBECONFIG=/var/lib/nftpolicy-conformance/admin.kubeconfig (cluster.sh gate)")
	}
	state := filepath.Dir(kubeconfig)
	netns := map[string]string{}
	for kv := range strings.SplitSeq(os.Getenv("CONFORMANCE_NODE_NETNS"), ",") {
		if node, path, ok := strings.Cut(kv, "="); ok {
			netns[node] = path
		}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	must(t, err)
	c, err := client.New(cfg, client.Options{Scheme: clientgoscheme.Scheme})
	must(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()

	var nodes corev1.NodeList
	must(t, c.List(ctx, &nodes))
	var nodeNames []string
	for _, n := range nodes.Items {
		nodeNames = append(nodeNames, n.Name)
	}
	slices.Sort(nodeNames)
	if len(nodeNames) < 2 {
		t.Fatalf("nodes %v: the test needs two, one to reboot", nodeNames)
	}
	rebooted := nodeNames[len(nodeNames)-1]

	// (a) Every agent has installed the gate: its entry last in the node's
	// conflist, its binary in the node's plugin directory.
	for _, node := range nodeNames {
		var msg string
		var missing error
		err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
			msg, missing = gateInstalled(state, node)
			return missing == nil, nil
		})
		if err != nil {
			t.Fatalf("%s: the gate is not installed: %v", node, missing)
		}
		t.Logf("%s: %s", node, msg)
	}

	// (b) node2 "reboots": no agent, no table. The DaemonSet is put back
	// whatever happens next.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := updateAgents(ctx, c, func(spec *corev1.PodSpec) { spec.Affinity = nil }); err != nil {
			t.Errorf("restoring the agent DaemonSet: %v", err)
		}
	})
	must(t, updateAgents(ctx, c, func(spec *corev1.PodSpec) {
		spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpNotIn, Values: []string{rebooted}}},
			}}},
		}}
	}))
	if out, err := inNode(ctx, netns, rebooted, "nft", "delete", "table", "inet", gateTable); err != nil {
		t.Fatalf("deleting %s's table: %v: %s", rebooted, err, out)
	}
	if msg, err := gateInstalled(state, rebooted); err != nil {
		t.Fatalf("%s without its agent: %v", rebooted, err)
	} else {
		t.Logf("%s: no agent, no table inet %s; %s", rebooted, gateTable, msg)
	}

	// (c) A pod on node2 does not start.
	ns := createNamespace(ctx, t, c, fmt.Sprintf("cni-gate-%d", time.Now().Unix()%100000))
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "after-reboot"},
		Spec: corev1.PodSpec{
			NodeName:                      rebooted,
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{Name: "pause", Image: agnhost, ImagePullPolicy: corev1.PullNever,
				Args: []string{"pause"}}},
		},
	}
	must(t, c.Create(ctx, pod))
	created := time.Now()
	for time.Since(created) < gateHold {
		must(t, c.Get(ctx, client.ObjectKeyFromObject(pod), pod))
		if pod.Status.Phase == corev1.PodRunning {
			t.Fatalf("%s on %s is Running %v after its creation, without a table", pod.Name, rebooted, time.Since(created).Round(time.Millisecond))
		}
		time.Sleep(500 * time.Millisecond)
	}
	failures, first, others := sandboxFailures(ctx, t, c, pod)
	if failures == 0 {
		t.Fatalf("%s: no FailedCreatePodSandBox event naming %s in %v (phase %s); other events: %q",
			pod.Name, gatePlugin, gateHold, pod.Status.Phase, others)
	}
	t.Logf("%s: %s after %v, %d failed sandboxes; the first: %s", pod.Name, pod.Status.Phase, gateHold, failures, first)

	// (d) The agent back on node2: the table, then the pod.
	released := time.Now()
	must(t, changeAgents(ctx, c, func(spec *corev1.PodSpec) { spec.Affinity = nil }))
	tableExists := func(ctx context.Context) bool {
		_, err := inNode(ctx, netns, rebooted, "nft", "list", "table", "inet", gateTable)
		return err == nil
	}
	var tableAt, runningAt time.Time
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, gateRelease, true, func(ctx context.Context) (bool, error) {
		if tableAt.IsZero() && tableExists(ctx) {
			tableAt = time.Now()
		}
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return false, err
		}
		if pod.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		runningAt = time.Now()
		if tableAt.IsZero() { // created since the look above, or never
			if !tableExists(ctx) {
				return false, fmt.Errorf("%s is Running, and %s has no table", pod.Name, rebooted)
			}
			tableAt = runningAt
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("%s on %s: agent back at %s, table at %s, Running at %s (phase %s): %v", pod.Name, rebooted, released.Format("15:04:05.0"),
			tableAt.Format("15:04:05.0"), runningAt.Format("15:04:05.0"), pod.Status.Phase, err)
	}
	must(t, waitAgents(ctx, c))
	// The sandbox's network came up once the table was there (the condition's
	// time has a resolution of one second).
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReadyToStartContainers && cond.Status == corev1.ConditionTrue {
			t.Logf("%s: sandbox ready at %s, table at %s", pod.Name, cond.LastTransitionTime.Format("15:04:05"), tableAt.Format("15:04:05.0"))
			if cond.LastTransitionTime.Time.Before(tableAt.Truncate(time.Second)) {
				t.Errorf("%s's sandbox was ready at %s, before the table (%s)", pod.Name, cond.LastTransitionTime.Format("15:04:05"), tableAt.Format("15:04:05.0"))
			}
		}
	}
	failures, _, _ = sandboxFailures(ctx, t, c, pod)
	t.Logf("cni_gate_pod_waited_s: %.1f (created %s, Running %s)", runningAt.Sub(created).Seconds(),
		created.Format("15:04:05.0"), runningAt.Format("15:04:05.0"))
	t.Logf("cni_gate_agent_to_table_s: %.1f (agent given back %s, table %s)", tableAt.Sub(released).Seconds(),
		released.Format("15:04:05.0"), tableAt.Format("15:04:05.0"))
	t.Logf("cni_gate_table_to_running_s: %.1f", runningAt.Sub(tableAt).Seconds())
	t.Logf("cni_gate_sandbox_failures: %d", failures)

	// (e) Every node as the test found it: the agents ready (updateAgents
	// waited), each node's gate installed and table in force.
	for _, node := range nodeNames {
		if _, err := gateInstalled(state, node); err != nil {
			t.Errorf("%s after the test: %v", node, err)
		}
		if out, err := inNode(ctx, netns, node, "nft", "list", "table", "inet", gateTable); err != nil {
			t.Errorf("%s after the test: no table: %v: %s", node, err, out)
		}
	}
}

// gateInstalled says what of the gate is on node (the conflist's plugins and
// the binary), or what is missing: the first conflist of the node's CNI
// directory by name (the one the runtime uses) must end with exactly one
// entry of the gate, naming the table, and the plugin directory must hold the
// gate's executable.
func gateInstalled(state, node string) (string, error) {
	confDir, binDir := filepath.Join(state, node, "cni"), filepath.Join(state, node, "cni-bin")
	entries, err := os.ReadDir(confDir)
	if err != nil {
		return "", err
	}
	var conf string
	for _, e := range entries { // by name
		if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".conflist" || ext == ".conf" || ext == ".json") {
			conf = filepath.Join(confDir, e.Name())
			break
		}
	}
	if conf == "" {
		return "", fmt.Errorf("no CNI configuration in %s", confDir)
	}
	data, err := os.ReadFile(conf)
	if err != nil {
		return "", err
	}
	var list struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return "", fmt.Errorf("%s: %w", conf, err)
	}
	var types []string
	gates := 0
	for _, p := range list.Plugins {
		typ, _ := p["type"].(string)
		types = append(types, typ)
		if typ == gatePlugin {
			gates++
		}
	}
	last := map[string]any{}
	if n := len(list.Plugins); n > 0 {
		last = list.Plugins[n-1]
	}
	if gates != 1 || last["type"] != gatePlugin || last["table"] != gateTable {
		return "", fmt.Errorf("%s: plugins %v, want one %q entry naming table %q, last: %s", conf, types, gatePlugin, gateTable, data)
	}
	bin := filepath.Join(binDir, gatePlugin)
	fi, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%s: mode %v, want an executable file", bin, fi.Mode())
	}
	return fmt.Sprintf("%s plugins %v; %s %v, %d bytes", filepath.Base(conf), types, bin, fi.Mode().Perm(), fi.Size()), nil
}

// inNode runs a command in node's network namespace: netns's, or this
// process's for a node netns does not name.
func inNode(ctx context.Context, netns map[string]string, node string, cmd ...string) ([]byte, error) {
	if path := netns[node]; path != "" {
		cmd = append([]string{"nsenter", "--net=" + path, "--"}, cmd...)
	}
	return exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput()
}

// sandboxFailures counts pod's FailedCreatePodSandBox events whose message
// names the gate's plugin (an Event's count included), with the first such
// message; others are the messages of its other events.
func sandboxFailures(ctx context.Context, t *testing.T, c client.Client, pod *corev1.Pod) (n int, first string, others []string) {
	t.Helper()
	var events corev1.EventList
	must(t, c.List(ctx, &events, client.InNamespace(pod.Namespace)))
	slices.SortFunc(events.Items, func(a, b corev1.Event) int { return a.FirstTimestamp.Compare(b.FirstTimestamp.Time) })
	for _, e := range events.Items {
		if e.InvolvedObject.Name != pod.Name || e.InvolvedObject.UID != pod.UID {
			continue
		}
		if e.Reason != "FailedCreatePodSandBox" || !strings.Contains(e.Message, gatePlugin) {
			others = append(others, e.Reason+": "+e.Message)
			continue
		}
		n += max(int(e.Count), 1)
		if first == "" {
			first = e.Message
		}
	}
	return n, first, others
}
