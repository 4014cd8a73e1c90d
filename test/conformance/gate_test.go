package conformance

import (
	"context"
	"encoding/json"
	"errors"
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
// node's CNI conflist, fails their network setup until the agent has put the
// table in force in this boot: its entry names the boot the agent last synced
// in, and the table must exist.
//
// First the entry is dropped from node1's conflist, as a CNI that writes its
// configuration anew would: its agent must put it back. Then the test takes
// node2 through what a reboot does to the gate, one condition at a time. Its
// agent is taken off the node (a node affinity in the DaemonSet) and its table
// deleted, the entry and plugin binary left where they are (files outlive a
// reboot): a pod created on node2 must not start, for gateHold, and the kubelet
// reports FailedCreatePodSandBox with nftpolicy's error. Then the entry names
// an earlier boot and the table is back, empty, as a ruleset restored at boot
// would bring it: the pod must still not start, through one more sandbox
// failure. With the agent back (it runs with hostNetwork: never gated) the pod
// must run once the agent's table is in force and the entry names this boot
// again, within gateRelease. The DaemonSet is restored at the end, and both
// agents are ready again.
//
// Run against a cluster from `test/conformance/cluster.sh up` (cluster.sh gate,
// make cni-gate); `make conformance` runs it before the suites. The nodes' CNI
// directories are $STATE/<node>/cni and $STATE/<node>/cni-bin, $STATE being
// CONFORMANCE_KUBECONFIG's directory; CONFORMANCE_NODE_NETNS names the network
// namespace of each node that does not run in this process's
// (node2=/run/netns/npc-node2). The nodes share this machine's kernel, so its
// boot id is theirs.

const (
	gateTable   = "nftpolicy" // the agent's --table-name
	gatePlugin  = "nftpolicy" // the conflist entry's type, and its binary's name
	gateHold    = 15 * time.Second
	gateRelease = 90 * time.Second
	// staleBoot stands for the boot before the node's reboot.
	staleBoot = "00000000-0000-0000-0000-000000000000"
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
	bootID, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	must(t, err)
	boot := strings.TrimSpace(string(bootID))
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

	// (a) Every agent has installed the gate and opened it for this boot: its
	// entry last in the node's conflist, naming the table and this boot, its
	// binary in the node's plugin directory.
	for _, node := range nodeNames {
		var g gateState
		var missing error
		err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(context.Context) (bool, error) {
			if g, missing = readGate(state, node); missing == nil && g.boot != boot {
				missing = fmt.Errorf("%s: the entry names boot %q, this boot is %s", g.conf, g.boot, boot)
			}
			return missing == nil, nil
		})
		if err != nil {
			t.Fatalf("%s: the gate is not in place: %v", node, missing)
		}
		t.Logf("%s: %s", node, g)
	}

	// (a2) A CNI that writes its configuration anew drops the entry: the agent
	// puts it back (node1, whose agent stays).
	kept := nodeNames[0]
	must(t, editGate(state, kept, func(plugins []any) []any { return plugins[:len(plugins)-1] }))
	dropped := time.Now()
	var back gateState
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		g, err := readGate(state, kept)
		back = g
		return err == nil && g.boot == boot, nil
	}); err != nil {
		t.Fatalf("%s: the entry is not back a minute after its conflist was written without it: %s", kept, back)
	}
	t.Logf("cni_gate_entry_back_s: %.1f (%s: %s)", time.Since(dropped).Seconds(), kept, back)

	// (b) node2 loses its agent and its table. The DaemonSet is put back
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
	g, err := readGate(state, rebooted)
	must(t, err)
	t.Logf("%s: no agent, no table inet %s; %s", rebooted, gateTable, g)

	// (c) A pod on node2 does not start: no table.
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
	holdPod(ctx, t, c, pod, func() bool { return time.Since(created) >= gateHold })
	failures, last, others := sandboxFailures(ctx, t, c, pod, time.Time{})
	if failures == 0 {
		t.Fatalf("%s: no FailedCreatePodSandBox event naming %s in %v (phase %s); other events: %q",
			pod.Name, gatePlugin, gateHold, pod.Status.Phase, others)
	}
	t.Logf("%s: %s after %v without a table, %d failed sandboxes; the last: %s", pod.Name, pod.Status.Phase, gateHold, failures, last)

	// (c2) Nor with a table the agent did not put in force in this boot: the
	// entry as an earlier boot left it, the table back (empty) as a ruleset
	// restored at boot would bring it.
	must(t, setGateBoot(state, rebooted, staleBoot))
	if out, err := inNode(ctx, netns, rebooted, "nft", "add", "table", "inet", gateTable); err != nil {
		t.Fatalf("adding %s's table: %v: %s", rebooted, err, out)
	}
	// A failure first seen a second after the change (events have seconds)
	// is of a sandbox set up after it.
	restored := time.Now()
	holdPod(ctx, t, c, pod, func() bool {
		if n, newest, _ := sandboxFailures(ctx, t, c, pod, restored.Add(time.Second)); n > 0 {
			last = newest
			return true
		}
		if time.Since(restored) > 45*time.Second {
			t.Fatalf("%s: no sandbox failure in the %v since the table was restored", pod.Name, time.Since(restored).Round(time.Second))
		}
		return false
	})
	t.Logf("%s: still %s %v after a stale entry and a restored table; the last failure: %s",
		pod.Name, pod.Status.Phase, time.Since(restored).Round(100*time.Millisecond), last)

	// (d) The agent back on node2: its table in force, the entry naming this
	// boot, then the pod.
	released := time.Now()
	must(t, changeAgents(ctx, c, func(spec *corev1.PodSpec) { spec.Affinity = nil }))
	var tableAt, openAt, runningAt time.Time
	// The gate open (the entry naming this boot) and the table in force, looked
	// at in that order: an entry seen open and then a table not the agent's
	// would be an open gate before the policies, pods let through unfiltered.
	look := func(ctx context.Context) (open, inForce bool) {
		g, err := readGate(state, rebooted)
		open = err == nil && g.boot == boot
		return open, agentTable(ctx, netns, rebooted)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, gateRelease, true, func(ctx context.Context) (bool, error) {
		open, inForce := look(ctx)
		now := time.Now()
		if open && !inForce {
			return false, fmt.Errorf("the entry names this boot, and table inet %s is not the agent's", gateTable)
		}
		if tableAt.IsZero() && inForce {
			tableAt = now
		}
		if openAt.IsZero() && open {
			openAt = now
		}
		// The pod last: Running, it had an open gate, seen in this round at the
		// latest (or just after it: looked at once more).
		if err := c.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			return false, err
		}
		if pod.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		runningAt = time.Now()
		if openAt.IsZero() {
			if open, inForce := look(ctx); !open || !inForce {
				return false, fmt.Errorf("%s is Running, and the gate is not open (entry for this boot %v, the agent's table %v)", pod.Name, open, inForce)
			}
			openAt = runningAt
			if tableAt.IsZero() {
				tableAt = runningAt
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("%s on %s: agent back at %s, table at %s, entry for this boot at %s, Running at %s (phase %s): %v", pod.Name, rebooted,
			released.Format("15:04:05.0"), tableAt.Format("15:04:05.0"), openAt.Format("15:04:05.0"), runningAt.Format("15:04:05.0"), pod.Status.Phase, err)
	}
	// The sandbox's network came up once the gate was open (the condition's
	// time has a resolution of one second).
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReadyToStartContainers && cond.Status == corev1.ConditionTrue {
			t.Logf("%s: sandbox ready at %s", pod.Name, cond.LastTransitionTime.Format("15:04:05"))
			if cond.LastTransitionTime.Time.Before(openAt.Truncate(time.Second)) {
				t.Errorf("%s's sandbox was ready at %s, before the gate opened (%s)", pod.Name, cond.LastTransitionTime.Format("15:04:05"), openAt.Format("15:04:05.0"))
			}
		}
	}
	must(t, waitAgents(ctx, c))
	failures, _, _ = sandboxFailures(ctx, t, c, pod, time.Time{})
	t.Logf("cni_gate_pod_waited_s: %.1f (created %s, Running %s)", runningAt.Sub(created).Seconds(),
		created.Format("15:04:05.0"), runningAt.Format("15:04:05.0"))
	t.Logf("cni_gate_agent_to_table_s: %.1f (agent given back %s, table in force %s, entry for this boot %s)", tableAt.Sub(released).Seconds(),
		released.Format("15:04:05.0"), tableAt.Format("15:04:05.0"), openAt.Format("15:04:05.0"))
	t.Logf("cni_gate_table_to_open_s: %.1f", openAt.Sub(tableAt).Seconds())
	t.Logf("cni_gate_table_to_running_s: %.1f", runningAt.Sub(tableAt).Seconds())
	t.Logf("cni_gate_sandbox_failures: %d", failures)

	// (e) Every node as the test found it: the agents ready (waitAgents), each
	// node's gate in place and open, its table in force.
	for _, node := range nodeNames {
		if g, err := readGate(state, node); err != nil || g.boot != boot {
			t.Errorf("%s after the test: %v (%s)", node, err, g)
		}
		if !agentTable(ctx, netns, node) {
			t.Errorf("%s after the test: table inet %s is not the agent's", node, gateTable)
		}
	}
}

// holdPod fails t if pod is Running at any look (every 500 ms) until done.
func holdPod(ctx context.Context, t *testing.T, c client.Client, pod *corev1.Pod, done func() bool) {
	t.Helper()
	for !done() {
		must(t, c.Get(ctx, client.ObjectKeyFromObject(pod), pod))
		if pod.Status.Phase == corev1.PodRunning {
			t.Fatalf("%s on %s is Running: the gate let it through", pod.Name, pod.Spec.NodeName)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// agentTable says whether node has the table with chains in it: the agent's
// (a table restored by hand, empty, is not).
func agentTable(ctx context.Context, netns map[string]string, node string) bool {
	out, err := inNode(ctx, netns, node, "nft", "list", "table", "inet", gateTable)
	return err == nil && strings.Contains(string(out), "\tchain ")
}

// gateState is the gate on a node as its files show it.
type gateState struct {
	conf  string   // the conflist the runtime uses
	types []string // its plugins' types
	boot  string   // the boot the entry names
	bin   string
	mode  os.FileMode
	size  int64
}

func (g gateState) String() string {
	return fmt.Sprintf("%s plugins %v, boot %q; %s %v, %d bytes", filepath.Base(g.conf), g.types, g.boot, g.bin, g.mode, g.size)
}

// readGate reads the gate's files on node, or says what is missing: the first
// conflist of the node's CNI directory by name (the one the runtime uses) must
// end with exactly one entry of the gate, naming the table, and the plugin
// directory must hold the gate's executable.
func readGate(state, node string) (gateState, error) {
	var g gateState
	conf, list, err := readConflist(state, node)
	g.conf = conf
	if err != nil {
		return g, err
	}
	gates := 0
	for _, p := range list {
		typ, _ := p["type"].(string)
		g.types = append(g.types, typ)
		if typ == gatePlugin {
			gates++
		}
	}
	last := map[string]any{}
	if n := len(list); n > 0 {
		last = list[n-1]
	}
	g.boot, _ = last["boot"].(string)
	if gates != 1 || last["type"] != gatePlugin || last["table"] != gateTable {
		return g, fmt.Errorf("%s: plugins %v, want one %q entry naming table %q, last", conf, g.types, gatePlugin, gateTable)
	}
	g.bin = filepath.Join(state, node, "cni-bin", gatePlugin)
	fi, err := os.Stat(g.bin)
	if err != nil {
		return g, err
	}
	g.mode, g.size = fi.Mode().Perm(), fi.Size()
	if !fi.Mode().IsRegular() || g.mode&0o111 == 0 {
		return g, fmt.Errorf("%s: mode %v, want an executable file", g.bin, fi.Mode())
	}
	return g, nil
}

// readConflist returns the path and the plugins of the network configuration
// node's runtime uses: the first *.conflist, *.conf or *.json by name.
func readConflist(state, node string) (string, []map[string]any, error) {
	dir := filepath.Join(state, node, "cni")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", nil, err
	}
	var conf string
	for _, e := range entries { // by name
		if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".conflist" || ext == ".conf" || ext == ".json") {
			conf = filepath.Join(dir, e.Name())
			break
		}
	}
	if conf == "" {
		return "", nil, fmt.Errorf("no CNI configuration in %s", dir)
	}
	data, err := os.ReadFile(conf)
	if err != nil {
		return conf, nil, err
	}
	var list struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		return conf, nil, fmt.Errorf("%s: %w", conf, err)
	}
	return conf, list.Plugins, nil
}

// setGateBoot makes node's gate entry name boot, as the agent would have
// written it in that boot.
func setGateBoot(state, node, boot string) error {
	var err error
	edit := editGate(state, node, func(plugins []any) []any {
		last, _ := plugins[len(plugins)-1].(map[string]any)
		if last == nil || last["type"] != gatePlugin {
			err = errors.New("the last plugin is not the gate")
			return plugins
		}
		last["boot"] = boot
		return plugins
	})
	return errors.Join(err, edit)
}

// editGate rewrites the plugins of the conflist node's runtime uses with edit
// (given at least one). The file is replaced whole (renamed over), as the agent
// and CNIs write it, so that the runtime never reads half of it.
func editGate(state, node string, edit func(plugins []any) []any) error {
	conf, _, err := readConflist(state, node)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(conf)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(data, &doc); err != nil {
		return err
	}
	plugins, _ := doc["plugins"].([]any)
	if len(plugins) == 0 {
		return fmt.Errorf("%s: no plugins", conf)
	}
	doc["plugins"] = edit(plugins)
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(filepath.Dir(conf), ".gate-test.tmp") // no extension a runtime reads
	if err := os.WriteFile(tmp, append(out, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, conf)
}

// inNode runs a command in node's network namespace: netns's, or this
// process's for a node netns does not name.
func inNode(ctx context.Context, netns map[string]string, node string, cmd ...string) ([]byte, error) {
	if path := netns[node]; path != "" {
		cmd = append([]string{"nsenter", "--net=" + path, "--"}, cmd...)
	}
	return exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput()
}

// sandboxFailures counts pod's FailedCreatePodSandBox events since since
// (first seen then or later) whose message names the gate's plugin, an Event's
// count included, with the newest such message; others are the messages of
// its other events.
func sandboxFailures(ctx context.Context, t *testing.T, c client.Client, pod *corev1.Pod, since time.Time) (n int, newest string, others []string) {
	t.Helper()
	var events corev1.EventList
	must(t, c.List(ctx, &events, client.InNamespace(pod.Namespace)))
	slices.SortFunc(events.Items, func(a, b corev1.Event) int { return a.LastTimestamp.Compare(b.LastTimestamp.Time) })
	for _, e := range events.Items {
		if e.InvolvedObject.Name != pod.Name || e.InvolvedObject.UID != pod.UID {
			continue
		}
		if e.Reason != "FailedCreatePodSandBox" || !strings.Contains(e.Message, gatePlugin) {
			others = append(others, e.Reason+": "+e.Message)
			continue
		}
		if e.FirstTimestamp.Time.Before(since) {
			continue
		}
		n += max(int(e.Count), 1)
		newest = e.Message
	}
	return n, newest, others
}
