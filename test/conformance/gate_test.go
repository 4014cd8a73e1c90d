package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
	"github.com/nftpolicy/nftpolicy/nft"
)

// The CNI gate on the real cluster (config/cni-gate, which
// test/conformance/kustomization.yaml deploys). After a reboot a node's pods
// start while its agent does, and would run unfiltered until the agent's first
// full sync creates the table; the gate, a plugin the agent chains into the
// node's CNI conflist as {"type": "nftpolicy", "table": "nftpolicy"} (written
// once, nothing in it about a boot), holds their network setup until the table
// is in force in this boot: until table inet nftpolicy holds the empty set
// synced-boot-<boot id> of the node's current boot (nft.SyncedBootSet), which
// every table the agent writes carries. The plugin's ADD looks for that set
// every 100 ms for up to cnigate.DefaultWait (20 s, the cluster does not set
// NFTPOLICY_CNI_GATE_WAIT), passes as soon as it is there, and past the wait
// fails with "try again later": the kubelet reports FailedCreatePodSandBox with
// the gate's message, tears the sandbox down and tries again at its next retry.
//
// First every node's gate is checked: the entry last in its conflist, exactly
// type and table, the plugin in its plugin directory, its table holding this
// boot's set. The entry is dropped from node1's conflist, as a CNI that writes
// its configuration anew would: its agent must put it back. Then the test takes
// node2 through what a reboot does to the gate, one condition at a time. Its
// agent is taken off the node (a node affinity in the DaemonSet) and its table
// deleted, the entry and plugin binary left where they are (files outlive a
// reboot): a pod created on node2 must not start, for gateHold and until the
// kubelet reports FailedCreatePodSandBox with the gate's "not in force on this
// node", which comes only once the plugin's ADD has waited cnigate.DefaultWait.
// Then the table is back with the set of an earlier boot, as a ruleset saved
// then and restored at boot would bring it: the pod must still not start,
// through a sandbox failure that says the agent has not put the table in force
// since the node started; nor a second pod created then, whose sandbox retries
// are out of step with the first's. Meanwhile the plugin's ADDs for the pods
// are watched in /proc (the nodes' containerds run on this machine): an ADD
// that ended before the table must have waited cnigate.DefaultWait. The agent
// is given back (it runs with hostNetwork: never gated) when one pod's ADD is
// waiting and the other's sandbox is between the kubelet's retries: its first
// sync writes the table with this boot's set, and each pod must run within
// gateRunning of that, never before; the log says, for each, whether an ADD was
// waiting when the table came (the pod then starts within a poll, ~1-2 s with
// the rest of its sandbox) or the pod waited for the kubelet's next retry. No
// address is left reserved by the failed sandboxes.
// The DaemonSet is restored at the end, and both agents are ready again, every
// node's gate in place and its table in force.
//
// Run against a cluster from `test/conformance/cluster.sh up` (cluster.sh gate,
// make cni-gate); `make conformance` runs it before the suites. The nodes' CNI
// directories are $STATE/<node>/cni and $STATE/<node>/cni-bin, and host-local
// keeps their addresses in $STATE/<node>/ipam, $STATE being
// CONFORMANCE_KUBECONFIG's directory; CONFORMANCE_NODE_NETNS names the network
// namespace of each node that does not run in this process's
// (node2=/run/netns/npc-node2). The nodes share this machine's kernel, so its
// boot id is theirs.

const (
	gateTable  = "nftpolicy" // the agent's --table-name
	gatePlugin = "nftpolicy" // the conflist entry's type, and its binary's name
	// gateWait is how long the plugin's ADD waits for the table before it fails.
	gateWait = cnigate.DefaultWait
	// gateHold is the least a pod on the rebooted node is held without a table.
	gateHold = gateWait + 5*time.Second
	// gateFailure bounds the wait for a sandbox failure of a new state of the
	// node: the kubelet's next retry, then the plugin's whole wait.
	gateFailure = 75 * time.Second
	gateAgent   = 90 * time.Second // the agent given back -> its table in force
	gateRunning = 30 * time.Second // the table in force -> the pod Running
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
	mark := nft.SyncedBootSet(boot)
	// What the plugin says of each state of the node, in the sandbox's error.
	noTable := fmt.Sprintf("nftpolicy: table inet %s is not in force on this node", gateTable)
	staleTable := fmt.Sprintf("nftpolicy: the agent has not put table inet %s in force since this node started (no set %s)", gateTable, mark)
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

	// (a) Every agent has installed the gate and put its table in force in
	// this boot: the entry last in the node's conflist, exactly type and table,
	// the binary in the node's plugin directory, this boot's set in the table.
	for _, node := range nodeNames {
		var g gateState
		var missing error
		err := wait.PollUntilContextTimeout(ctx, time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			if g, missing = readGate(state, node); missing == nil && !inForce(ctx, netns, node, mark) {
				missing = fmt.Errorf("table inet %s does not hold set %s", gateTable, mark)
			}
			return missing == nil, nil
		})
		if err != nil {
			t.Fatalf("%s: the gate is not in place: %v (%s)", node, missing, g)
		}
		if !agentTable(ctx, netns, node) {
			t.Fatalf("%s: table inet %s holds set %s and no chain", node, gateTable, mark)
		}
		t.Logf("%s: %s; table inet %s holds %v", node, g, gateTable, bootSets(ctx, netns, node))
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
		return err == nil, nil
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

	// (c) A pod on node2 does not start: no table. The plugin's ADDs for the
	// test's pods are watched from before they exist.
	ns := createNamespace(ctx, t, c, fmt.Sprintf("cni-gate-%d", time.Now().Unix()%100000))
	watchCtx, stopWatch := context.WithCancel(ctx)
	adds, watched := watchAdds(watchCtx, g.bin, ns)
	t.Cleanup(func() { stopWatch(); <-watched })
	pod := gatedPod(ns, "after-reboot", rebooted)
	must(t, c.Create(ctx, pod))
	created := map[string]time.Time{pod.Name: time.Now()}
	var failures int
	var first time.Time
	var last string
	holdPods(ctx, t, c, []*corev1.Pod{pod}, func() bool {
		var others []string
		failures, last, first, others = sandboxFailures(ctx, t, c, pod, noTable)
		if failures > 0 && time.Since(created[pod.Name]) >= gateHold {
			return true
		}
		if time.Since(created[pod.Name]) > gateFailure {
			t.Fatalf("%s: no FailedCreatePodSandBox event with %q in %v (phase %s); other events: %q",
				pod.Name, noTable, gateFailure, pod.Status.Phase, others)
		}
		return false
	})
	// The first failure came once an ADD had waited its whole gateWait (the
	// event's time has a resolution of one second).
	if d := first.Sub(created[pod.Name]); d < gateWait-2*time.Second {
		t.Errorf("%s: the first sandbox failure came %v after the pod was created, before the plugin's wait of %v", pod.Name, d, gateWait)
	}
	t.Logf("cni_gate_first_failure_s: %.0f (%s created %s, first failure %s)", first.Sub(created[pod.Name]).Seconds(),
		pod.Name, created[pod.Name].Format("15:04:05.0"), first.Format("15:04:05"))
	t.Logf("%s: %s %v after it was created without a table, %d failed sandboxes; the last: %s",
		pod.Name, pod.Status.Phase, time.Since(created[pod.Name]).Round(100*time.Millisecond), failures, last)

	// (c2) Nor with a table the agent did not put in force in this boot: the
	// table back with an earlier boot's set, as a ruleset saved then and
	// restored at boot would bring it. A second pod, created now, is held by
	// this table from its first sandbox on; its retries are out of step with
	// the first pod's, for (d).
	if out, err := inNode(ctx, netns, rebooted, "nft", "add", "table", "inet", gateTable); err != nil {
		t.Fatalf("adding %s's table: %v: %s", rebooted, err, out)
	}
	if out, err := inNode(ctx, netns, rebooted, "nft", "add", "set", "inet", gateTable, nft.SyncedBootSet(staleBoot), "{ type inet_proto; }"); err != nil {
		t.Fatalf("adding set %s to %s's table: %v: %s", nft.SyncedBootSet(staleBoot), rebooted, err, out)
	}
	restored := time.Now()
	late := gatedPod(ns, "after-reboot-late", rebooted)
	must(t, c.Create(ctx, late))
	created[late.Name] = time.Now()
	held := []*corev1.Pod{pod, late}
	lasts := map[string]string{}
	holdPods(ctx, t, c, held, func() bool {
		for _, p := range held {
			n, newest, first, others := sandboxFailures(ctx, t, c, p, staleTable)
			if n == 0 {
				if time.Since(restored) > gateFailure {
					t.Fatalf("%s: no FailedCreatePodSandBox event with %q in the %v since the table was restored; other events: %q",
						p.Name, staleTable, gateFailure, others)
				}
				return false
			}
			if lasts[p.Name] == "" && p == late {
				if d := first.Sub(created[p.Name]); d < gateWait-2*time.Second {
					t.Errorf("%s: the first sandbox failure came %v after the pod was created, before the plugin's wait of %v", p.Name, d, gateWait)
				}
			}
			lasts[p.Name] = newest
		}
		return true
	})
	for _, p := range held {
		t.Logf("%s: still %s %v after the table was restored with %s's set; the failure: %s",
			p.Name, p.Status.Phase, time.Since(restored).Round(100*time.Millisecond), staleBoot, lasts[p.Name])
	}

	// (d) The agent back on node2: its table in force (this boot's set in
	// it), then the pods, never before. It is given back when one pod's ADD
	// has been waiting less than 10 s (it will see the table) and the other
	// pod has none (between the kubelet's retries), so that the table comes
	// to both; at most gateFailure later, when the pods' retries stay in step.
	waiting := func() (names []string) {
		for _, p := range held {
			if a := adds(p.Name); len(a) > 0 {
				if last := a[len(a)-1]; time.Since(last.last) < 300*time.Millisecond && time.Since(last.first) < 10*time.Second {
					names = append(names, p.Name)
				}
			}
		}
		return names
	}
	settled := time.Now()
	var waitingAt []string
	holdPods(ctx, t, c, held, func() bool {
		waitingAt = waiting()
		return len(waitingAt) == 1 || time.Since(settled) > gateFailure
	})
	if len(waitingAt) != 1 {
		t.Logf("the agent given back with ADDs waiting for %v: no moment with one in %v", waitingAt, gateFailure)
	}
	released := time.Now()
	must(t, changeAgents(ctx, c, func(spec *corev1.PodSpec) { spec.Affinity = nil }))
	var tableAt time.Time
	runningAt := map[string]time.Time{}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, gateAgent+gateRunning, true, func(ctx context.Context) (bool, error) {
		// The table looked at before the pods: a pod Running in a round whose
		// table was not in force is looked at once more below.
		if tableAt.IsZero() {
			if inForce(ctx, netns, rebooted, mark) {
				tableAt = time.Now()
			} else if time.Since(released) > gateAgent {
				return false, fmt.Errorf("table inet %s does not hold set %s %v after the agent was given back", gateTable, mark, gateAgent)
			}
		}
		for _, p := range held {
			if !runningAt[p.Name].IsZero() {
				continue
			}
			if err := c.Get(ctx, client.ObjectKeyFromObject(p), p); err != nil {
				return false, err
			}
			if p.Status.Phase != corev1.PodRunning {
				if !tableAt.IsZero() && time.Since(tableAt) > gateRunning {
					return false, fmt.Errorf("%s is not Running %v after its table was in force", p.Name, gateRunning)
				}
				continue
			}
			runningAt[p.Name] = time.Now()
			if tableAt.IsZero() {
				if !inForce(ctx, netns, rebooted, mark) {
					return false, fmt.Errorf("%s is Running, and table inet %s does not hold set %s", p.Name, gateTable, mark)
				}
				tableAt = runningAt[p.Name]
			}
		}
		return len(runningAt) == len(held), nil
	})
	if err != nil {
		t.Fatalf("on %s: agent given back at %s, table in force at %s, Running at %v: %v", rebooted,
			released.Format("15:04:05.0"), tableAt.Format("15:04:05.0"), runningAt, err)
	}
	if !agentTable(ctx, netns, rebooted) {
		t.Errorf("%s: table inet %s holds set %s and no chain", rebooted, gateTable, mark)
	}
	// The sandboxes' networks came up once the table was in force (the
	// condition's time has a resolution of one second).
	for _, p := range held {
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReadyToStartContainers && cond.Status == corev1.ConditionTrue {
				t.Logf("%s: sandbox ready at %s", p.Name, cond.LastTransitionTime.Format("15:04:05"))
				if cond.LastTransitionTime.Time.Before(tableAt.Truncate(time.Second)) {
					t.Errorf("%s's sandbox was ready at %s, before its table was in force (%s)", p.Name, cond.LastTransitionTime.Format("15:04:05"), tableAt.Format("15:04:05.0"))
				}
			}
		}
	}
	reserved, leaked := leakedAddresses(ctx, t, c, state, rebooted)
	if len(leaked) > 0 {
		t.Errorf("%s: addresses reserved by host-local and no pod's: %v", rebooted, leaked)
	}
	t.Logf("%s: host-local holds %d addresses, %d of no pod", rebooted, reserved, len(leaked))
	must(t, waitAgents(ctx, c))

	// The plugin's ADDs for each pod, seen every 100 ms. One begun before the
	// table came and seen at it or after it, or last seen within 500 ms
	// before it (the plugin polls every 100 ms, this test too) having waited
	// less than gateWait, was waiting when the table came, and passed; any
	// other begun before the table failed, and must have waited the whole
	// gateWait.
	stopWatch()
	<-watched
	t.Logf("cni_gate_agent_to_table_s: %.1f (agent given back %s, table in force %s)", tableAt.Sub(released).Seconds(),
		released.Format("15:04:05.0"), tableAt.Format("15:04:05.0"))
	for _, p := range held {
		seen := adds(p.Name)
		var pending *gateAdd
		var timeline []string
		for i, a := range seen {
			took := a.last.Sub(a.first)
			switch {
			case !a.first.Before(tableAt): // a retry after the table
			case !a.last.Before(tableAt), !a.last.Before(tableAt.Add(-500*time.Millisecond)) && took < gateWait-500*time.Millisecond:
				pending = &seen[i]
			case took < gateWait-time.Second:
				t.Errorf("an ADD of %s (sandbox %.12s) ended %v after it began, before the table: the plugin did not wait %v",
					p.Name, a.sandbox, took.Round(100*time.Millisecond), gateWait)
			}
			gap := ""
			if i > 0 {
				gap = fmt.Sprintf(" (%.1f s after the last)", a.first.Sub(seen[i-1].last).Seconds())
			}
			timeline = append(timeline, fmt.Sprintf("%+.1f..%+.1f s%s", a.first.Sub(tableAt).Seconds(), a.last.Sub(tableAt).Seconds(), gap))
		}
		if len(seen) == 0 {
			t.Errorf("no ADD of the plugin for %s seen in /proc (%s)", p.Name, g.bin)
		}
		at := "ADD pending: no, the kubelet's next retry"
		if pending != nil {
			at = fmt.Sprintf("ADD pending: yes, waiting %.1f s when the table came, last seen %v after it",
				tableAt.Sub(pending.first).Seconds(), pending.last.Sub(tableAt).Round(10*time.Millisecond))
		}
		failures, _, _, _ := sandboxFailures(ctx, t, c, p, "nftpolicy: ")
		stale, _, _, _ := sandboxFailures(ctx, t, c, p, staleTable)
		t.Logf("cni_gate_table_to_running_s: %.1f (%s; %s)", runningAt[p.Name].Sub(tableAt).Seconds(), p.Name, at)
		t.Logf("cni_gate_pod_waited_s: %.1f (%s created %s, Running %s)", runningAt[p.Name].Sub(created[p.Name]).Seconds(),
			p.Name, created[p.Name].Format("15:04:05.0"), runningAt[p.Name].Format("15:04:05.0"))
		t.Logf("cni_gate_adds: %d (%s; seen from..to, relative to the table: %s)", len(seen), p.Name, strings.Join(timeline, ", "))
		t.Logf("cni_gate_sandbox_failures: %d (%s; %d without a table, %d with an earlier boot's)", failures, p.Name, failures-stale, stale)
		// The plugin's own account, in the runtime's log: a line for an ADD
		// that passed after a wait (libcni passes a failed plugin's error on,
		// not its standard error).
		lines := pluginLog(t, state, rebooted, ns+"/"+p.Name)
		passed := slices.ContainsFunc(lines, func(l string) bool { return strings.HasSuffix(l, ": passed") })
		if len(lines) > 1 || len(lines) == 1 && !passed {
			t.Errorf("containerd's log of %s: %d lines of the gate for %s, want one (passed) for the ADD the table came to, at most:\n%s",
				rebooted, len(lines), p.Name, strings.Join(lines, "\n"))
		}
		if passed != (pending != nil) { // /proc seen every 100 ms: an ADD that ended as the table came may be either
			t.Logf("%s: the plugin's log says an ADD passed after a wait: %v; /proc said one was pending: %v", p.Name, passed, pending != nil)
		}
		for _, l := range lines {
			t.Logf("containerd-%s: %s", rebooted, l)
		}
	}

	// (e) Every node as the test found it: the agents ready (waitAgents), each
	// node's gate in place, its table in force. The earlier boot's set went
	// with the table the agent replaced, or is logged.
	for _, node := range nodeNames {
		if g, err := readGate(state, node); err != nil {
			t.Errorf("%s after the test: %v (%s)", node, err, g)
		}
		if !inForce(ctx, netns, node, mark) || !agentTable(ctx, netns, node) {
			t.Errorf("%s after the test: table inet %s is not the agent's in force (synced-boot sets %v)", node, gateTable, bootSets(ctx, netns, node))
		}
	}
	if sets := bootSets(ctx, netns, rebooted); !slices.Equal(sets, []string{mark}) {
		t.Logf("%s after the test: table inet %s holds %v", rebooted, gateTable, sets)
	}
}

// gatedPod is a pod on node that starts only if its network comes up.
func gatedPod(ns, name, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{Name: "pause", Image: agnhost, ImagePullPolicy: corev1.PullNever,
				Args: []string{"pause"}}},
		},
	}
}

// holdPods fails t if one of pods is Running at any look (every 500 ms)
// until done.
func holdPods(ctx context.Context, t *testing.T, c client.Client, pods []*corev1.Pod, done func() bool) {
	t.Helper()
	for !done() {
		for _, pod := range pods {
			must(t, c.Get(ctx, client.ObjectKeyFromObject(pod), pod))
			if pod.Status.Phase == corev1.PodRunning {
				t.Fatalf("%s on %s is Running: the gate let it through", pod.Name, pod.Spec.NodeName)
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// inForce says whether node's table holds set (the plugin's one question).
func inForce(ctx context.Context, netns map[string]string, node, set string) bool {
	_, err := inNode(ctx, netns, node, "nft", "list", "set", "inet", gateTable, set)
	return err == nil
}

// agentTable says whether node has the table with chains in it: the agent's
// (a table restored by hand, a set in it, is not).
func agentTable(ctx context.Context, netns map[string]string, node string) bool {
	out, err := inNode(ctx, netns, node, "nft", "list", "table", "inet", gateTable)
	return err == nil && strings.Contains(string(out), "\tchain ")
}

// bootSets returns the names of the synced-boot sets in node's table.
func bootSets(ctx context.Context, netns map[string]string, node string) []string {
	out, err := inNode(ctx, netns, node, "nft", "-t", "list", "table", "inet", gateTable)
	if err != nil {
		return nil
	}
	var sets []string
	for line := range strings.Lines(string(out)) {
		if name, ok := strings.CutPrefix(strings.TrimSpace(line), "set "+nft.SetSyncedBootPrefix); ok {
			sets = append(sets, nft.SetSyncedBootPrefix+strings.TrimSuffix(name, " {"))
		}
	}
	slices.Sort(sets)
	return sets
}

// gateState is the gate on a node as its files show it.
type gateState struct {
	conf  string   // the conflist the runtime uses
	types []string // its plugins' types
	entry string   // the last plugin's entry
	bin   string
	mode  os.FileMode
	size  int64
}

func (g gateState) String() string {
	return fmt.Sprintf("%s plugins %v, last %s; %s %v, %d bytes", filepath.Base(g.conf), g.types, g.entry, g.bin, g.mode, g.size)
}

// readGate reads the gate's files on node, or says what is missing: the first
// conflist of the node's CNI directory by name (the one the runtime uses) must
// end with exactly one entry of the gate, {"type": "nftpolicy", "table":
// "nftpolicy"} and nothing else (no "boot"), and the plugin directory must
// hold the gate's executable.
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
	entry, _ := json.Marshal(last) // keys sorted
	g.entry = string(entry)
	if gates != 1 || len(last) != 2 || last["type"] != gatePlugin || last["table"] != gateTable {
		return g, fmt.Errorf("%s: plugins %v, the last %s: want one entry of the gate, last, exactly {\"type\": %q, \"table\": %q}",
			conf, g.types, entry, gatePlugin, gateTable)
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

// sandboxFailures counts pod's FailedCreatePodSandBox events whose message
// holds msg, an Event's count included, with the newest such message and the
// first time one was seen; others are the messages of its other events.
func sandboxFailures(ctx context.Context, t *testing.T, c client.Client, pod *corev1.Pod, msg string) (n int, newest string, first time.Time, others []string) {
	t.Helper()
	var events corev1.EventList
	must(t, c.List(ctx, &events, client.InNamespace(pod.Namespace)))
	slices.SortFunc(events.Items, func(a, b corev1.Event) int { return a.LastTimestamp.Compare(b.LastTimestamp.Time) })
	for _, e := range events.Items {
		if e.InvolvedObject.Name != pod.Name || e.InvolvedObject.UID != pod.UID {
			continue
		}
		if e.Reason != "FailedCreatePodSandBox" || !strings.Contains(e.Message, msg) {
			others = append(others, e.Reason+": "+e.Message)
			continue
		}
		n += max(int(e.Count), 1)
		newest = e.Message
		if first.IsZero() || e.FirstTimestamp.Time.Before(first) {
			first = e.FirstTimestamp.Time
		}
	}
	return n, newest, first, others
}

// gateAdd is one ADD of the gate's plugin, as /proc showed it.
type gateAdd struct {
	sandbox     string    // CNI_CONTAINERID
	first, last time.Time // first and last seen running
}

// watchAdds looks in /proc every 100 ms, until ctx is done, for the gate's
// plugin bin running an ADD for a pod of namespace (CNI_COMMAND and the
// CNI_ARGS containerd gives it, in its environment); the nodes' containerds
// run on this machine, and their plugins in its PID namespace. It returns the
// ADDs seen so far for a pod, by its name, in the order they were first seen,
// and a channel closed when it has stopped looking.
func watchAdds(ctx context.Context, bin, namespace string) (adds func(pod string) []gateAdd, done <-chan struct{}) {
	if real, err := filepath.EvalSymlinks(bin); err == nil {
		bin = real
	}
	var mu sync.Mutex
	seen := map[string][]gateAdd{} // by pod
	index := map[string]int{}      // by sandbox, in its pod's
	stopped := make(chan struct{})
	look := func() {
		procs, _ := os.ReadDir("/proc")
		now := time.Now()
		for _, p := range procs {
			if _, err := strconv.Atoi(p.Name()); err != nil {
				continue
			}
			exe, err := os.Readlink(filepath.Join("/proc", p.Name(), "exe"))
			if err != nil || strings.TrimSuffix(exe, " (deleted)") != bin {
				continue
			}
			environ, err := os.ReadFile(filepath.Join("/proc", p.Name(), "environ"))
			if err != nil {
				continue
			}
			env := map[string]string{}
			for kv := range strings.SplitSeq(string(environ), "\x00") {
				if k, v, ok := strings.Cut(kv, "="); ok {
					env[k] = v
				}
			}
			args := map[string]string{}
			for kv := range strings.SplitSeq(env["CNI_ARGS"], ";") {
				if k, v, ok := strings.Cut(kv, "="); ok {
					args[k] = v
				}
			}
			pod, sandbox := args["K8S_POD_NAME"], env["CNI_CONTAINERID"]
			if env["CNI_COMMAND"] != "ADD" || args["K8S_POD_NAMESPACE"] != namespace || pod == "" {
				continue
			}
			mu.Lock()
			if i, ok := index[sandbox]; ok {
				seen[pod][i].last = now
			} else {
				index[sandbox] = len(seen[pod])
				seen[pod] = append(seen[pod], gateAdd{sandbox: sandbox, first: now, last: now})
			}
			mu.Unlock()
		}
	}
	go func() {
		defer close(stopped)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			look()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func(pod string) []gateAdd {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen[pod])
	}, stopped
}

// leakedAddresses returns how many addresses host-local keeps reserved on node
// (under $STATE/<node>/ipam), and those that no pod on the node has: what a
// failed sandbox would leave if its teardown did not release its address.
func leakedAddresses(ctx context.Context, t *testing.T, c client.Client, state, node string) (reserved int, leaked []string) {
	t.Helper()
	var pods corev1.PodList
	must(t, c.List(ctx, &pods))
	owned := map[netip.Addr]bool{}
	for _, p := range pods.Items {
		if p.Spec.NodeName != node {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				owned[a] = true
			}
		}
	}
	err := filepath.WalkDir(filepath.Join(state, node, "ipam"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		a, perr := netip.ParseAddr(d.Name())
		if perr != nil || d.IsDir() {
			return nil
		}
		reserved++
		if !owned[a] {
			leaked = append(leaked, a.String())
		}
		return nil
	})
	if err != nil {
		t.Errorf("reading %s's reserved addresses: %v", node, err)
	}
	return reserved, leaked
}

// pluginLog returns the gate's lines for pod (namespace/name) in node's
// containerd log ($STATE/logs/containerd-<node>.log, where cluster.sh sends
// the runtime's standard error, and so its plugins').
func pluginLog(t *testing.T, state, node, pod string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(state, "logs", "containerd-"+node+".log"))
	if err != nil {
		t.Errorf("containerd's log of %s: %v", node, err)
		return nil
	}
	var out []string
	for l := range strings.SplitSeq(string(data), "\n") {
		if strings.HasPrefix(l, "nftpolicy-cni-gate: pod "+pod+" ") {
			out = append(out, l)
		}
	}
	return out
}
