// Package controlplane benchmarks the agent against a large cluster: a real
// kube-apiserver (envtest) holding 10,000 pods on 100 nodes and 1,000
// NetworkPolicies, and the real agent binary programming a private network
// namespace for node-0. It measures event-to-kernel latency and the agent's memory,
// next to a bare controller-runtime manager (./bare) watching the same kinds.
//
// It needs root, KUBEBUILDER_ASSETS and NFTPOLICY_BENCH=1, so `make test` skips it;
// `make bench-controlplane` runs it. README.md has the method and the figures.
package controlplane

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// The run's settings (the cluster's shape is benchcluster's).
const (
	createWorkers   = 16
	samples         = 40 // per latency kind, interleaved
	settleTime      = 10 * time.Second
	pollInterval    = 2 * time.Millisecond
	latencyTimeout  = 10 * time.Second
	latNS           = "cp-lat" // the namespace the latency samples live in
	ourNode         = "node-0"
	programmingHist = "nftpolicy_programming_latency_seconds"
)

func TestControlPlane(t *testing.T) {
	if os.Getenv("NFTPOLICY_BENCH") != "1" {
		t.Skip("control-plane benchmark: set NFTPOLICY_BENCH=1 (make bench-controlplane)")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("control-plane benchmark: KUBEBUILDER_ASSETS is unset")
	}
	nfttest.RequireRoot(t)
	ctx := t.Context()
	dir := t.TempDir()
	var summary []string
	// NFTPOLICY_BENCH_SHAPE=100k measures the 100k-pod cluster; its lines
	// carry a _100k suffix, so both sizes sit side by side in make bench.
	shape, suffix := benchcluster.Shape10k, ""
	if os.Getenv("NFTPOLICY_BENCH_SHAPE") == "100k" {
		shape, suffix = benchcluster.Shape100k, "_100k"
	}
	report := func(name string, format string, args ...any) {
		line := fmt.Sprintf("%s%s: %s", name, suffix, fmt.Sprintf(format, args...))
		summary = append(summary, line)
		t.Log(line)
		// make bench collects the lines of every benchmark from here.
		if out := os.Getenv("NFTPOLICY_BENCH_OUT"); out != "" {
			if f, err := os.OpenFile(filepath.Join(out, "controlplane.txt"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				fmt.Fprintln(f, line)
				f.Close()
			}
		}
	}

	// Build both binaries while the control plane starts and fills.
	built := make(chan error, 1)
	agentBin, bareBin := filepath.Join(dir, "nftpolicy"), filepath.Join(dir, "bare")
	go func() {
		built <- errors.Join(
			goBuild(ctx, agentBin, "github.com/nftpolicy/nftpolicy/cmd/nftpolicy"),
			goBuild(ctx, bareBin, "github.com/nftpolicy/nftpolicy/test/bench/controlplane/bare"))
	}()

	cp, c := benchcluster.StartControlPlane(t, dir)
	// Agent and baseline share one cluster-admin identity: this measures
	// cost, not RBAC (controllers/agent_test.go covers that).
	kubeconfig := cp.Kubeconfig

	// Node-0 as a network namespace with pods, for the restart measurement
	// (restart_test.go); the agent programs this namespace.
	cl, err := cluster.New(ctx, cluster.Config{Prefix: "npcp", Nodes: 1, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Close(); err != nil {
			t.Error(err)
		}
	})

	// 1. Setup.
	start := time.Now()
	if err := createCluster(ctx, c, shape, report); err != nil {
		t.Fatalf("setup: %v", err)
	}
	lat, err := createLatencyFixtures(ctx, c)
	if err != nil {
		t.Fatalf("latency fixtures: %v", err)
	}
	rp, err := createRestartPods(ctx, c, cl)
	if err != nil {
		t.Fatalf("restart fixtures: %v", err)
	}
	report("setup_total_s", "%.1f", time.Since(start).Seconds())
	if err := <-built; err != nil {
		t.Fatal(err)
	}

	// 2. The agent for node-0, in node-0's network namespace.
	netns := cl.Node(0).NetNS
	healthPort, metricsPort := freePort(t), freePort(t)
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)
	agentLog := filepath.Join(dir, "agent.log")
	agentArgs := func(extra ...string) []string {
		return append([]string{"agent", "--kubeconfig", kubeconfig, "--node-name", ourNode,
			"--netns", netns.Path(),
			"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", healthPort),
			"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", metricsPort)}, extra...)
	}
	startAgent := func(logPath string, extra ...string) (*process, error) {
		return startProcess(logPath, agentBin, agentArgs(extra...)...)
	}
	// NFTPOLICY_BENCH_CP_PROFILE=dir: the first agent serves pprof, and the
	// churn below is profiled into dir/churn<suffix>.pprof.
	profileDir, pprofURL := os.Getenv("NFTPOLICY_BENCH_CP_PROFILE"), ""
	var first []string
	if profileDir != "" {
		pprofPort := freePort(t)
		pprofURL = fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile", pprofPort)
		first = []string{"--pprof-bind-address", fmt.Sprintf("127.0.0.1:%d", pprofPort)}
	}
	agent, err := startAgent(agentLog, first...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.stop(); dumpTail(t, agentLog) })
	start = time.Now()
	if err := waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort), agent, 2*time.Minute); err != nil {
		t.Fatalf("agent not ready: %v", err)
	}
	report("agent_ready_s", "%.2f", time.Since(start).Seconds())
	report("startup_ms", "%.0f", ms(time.Since(start))) // to the first full sync in force
	m, err := scrape(metricsURL)
	if err != nil {
		t.Fatal(err)
	}
	report("initial_full_sync_ms", "%.1f", 1000*m["nftpolicy_sync_duration_seconds_sum{kind=\"full\"}"])
	report("ruleset_elements", "%.0f", m["nftpolicy_ruleset_objects{object=\"elements\"}"])
	report("ruleset_rules", "%.0f", m["nftpolicy_ruleset_objects{object=\"rules\"}"])
	report("ruleset_chains", "%.0f", m["nftpolicy_ruleset_objects{object=\"chains\"}"])
	time.Sleep(settleTime)
	rss, hwm := procMemory(agent.cmd.Process.Pid)
	report("agent_rss_settled_mib", "%.1f", rss)
	if m, err := scrape(metricsURL); err == nil {
		if v, ok := m["go_memstats_heap_inuse_bytes"]; ok {
			report("agent_heap_inuse_settled_mib", "%.1f", v/(1<<20))
		}
	}

	// The set the remote peers of the latency policy land in.
	peerSet, err := findSet(netns, lat.seedPeerIP)
	if err != nil {
		t.Fatal(err)
	}
	// From here on the samples learn of the kernel's changes from its
	// notifications (kernelwatch_test.go), not by listing.
	kw, err := watchKernel(netns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer kw.close()
	const dispatchMap = "ingress-v4"
	// The outage measurement still lists the dispatch map (cheap: it is small).
	listMap := func() (string, error) { return netns.NFT("", "list", "map", "inet", "nftpolicy", dispatchMap) }

	var podAdd, label, policy series
	for i := range samples {
		// (a) a pod on node-0 gets its IP.
		pod := latPod(fmt.Sprintf("new-%d", i), ourNode, map[string]string{"app": "lat-target"}, "")
		if err := c.Create(ctx, pod); err != nil {
			t.Fatal(err)
		}
		ip := latIP(3, i)
		err := podAdd.measure(metricsURL, kw, dispatchMap, ip, func() error {
			pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
			return c.Status().Update(ctx, pod)
		})
		if err != nil {
			t.Fatalf("pod add sample %d: %v", i, err)
		}
		// (b) a remote pod's labels make it a peer of a policy selecting node-0 pods.
		err = label.measure(metricsURL, kw, peerSet, lat.idlePeerIPs[i], func() error {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: latNS, Name: fmt.Sprintf("peer-%d", i)}}
			patch := []byte(`{"metadata":{"labels":{"role":"peer"}}}`)
			return c.Patch(ctx, p, client.RawPatch("application/merge-patch+json", patch))
		})
		if err != nil {
			t.Fatalf("label change sample %d: %v", i, err)
		}
		// (c) a new policy isolates a node-0 pod.
		err = policy.measure(metricsURL, kw, dispatchMap, lat.unisolatedIPs[i], func() error {
			return c.Create(ctx, peerPolicy(fmt.Sprintf("pa-%d", i), fmt.Sprintf("pa-%d", i)))
		})
		if err != nil {
			t.Fatalf("policy add sample %d: %v", i, err)
		}
	}
	podAdd.report(report, "pod_add")
	label.report(report, "label_change")
	policy.report(report, "policy_add")
	if m, err = scrape(metricsURL); err == nil {
		report("incremental_sync_mean_ms", "%.2f", 1000*m["nftpolicy_sync_duration_seconds_sum{kind=\"incremental\"}"]/
			m["nftpolicy_sync_duration_seconds_count{kind=\"incremental\"}"])
		// From the agent's histogram, interpolated within its buckets
		// (1-2-5 steps), as Prometheus' histogram_quantile does.
		report("incremental_sync_p50_ms", "%.2f", 1000*histQuantile(m, "nftpolicy_sync_duration_seconds", `kind="incremental"`, 0.5))
		report("incremental_sync_p99_ms", "%.2f", 1000*histQuantile(m, "nftpolicy_sync_duration_seconds", `kind="incremental"`, 0.99))
		report("apply_failures", "%.0f", m["nftpolicy_apply_failures_total"])
	}
	if m, err = scrape(metricsURL); err == nil {
		if v, ok := m["go_memstats_heap_inuse_bytes"]; ok {
			report("agent_heap_inuse_mib", "%.1f", v/(1<<20))
		}
	}
	// What every node's agent adds to Prometheus (docs/scale.md, "Metrics"):
	// its series, those of the policy counters, and one scrape's bytes.
	if all, counters, size, err := scrapeSize(metricsURL, "nftpolicy_policy_packets_total"); err == nil {
		report("b5_metric_series", "%d", all)
		report("b5_policy_counter_series", "%d", counters)
		report("b5_metrics_scrape_kib", "%.1f", float64(size)/1024)
	} else {
		t.Logf("metrics size: %v", err)
	}

	// 3. Memory, agent then baseline, each after the same settle time.
	time.Sleep(settleTime)
	agentRSS, agentHWM := procMemory(agent.cmd.Process.Pid)
	report("agent_rss_mib", "%.1f", agentRSS)
	report("agent_rss_peak_mib", "%.1f", max(hwm, agentHWM))

	// CPU per 1,000 pod events, twice: remote bulk pods change a label no
	// policy reads (every agent sees each change; agent_cpu_ms_per_1k_pod_events),
	// then others change their tier, which policies' peers select
	// (agent_cpu_ms_per_1k_selected_pod_events). After the memory readings, so
	// that their garbage does not count there, and their syncs are not in
	// incremental_sync_mean_ms.
	_, bulk, _ := shape.Objects()
	// NFTPOLICY_BENCH_CHURN_EVENTS: more events per churn (the same 1,000 pods
	// changed again, with other values), for a profile with enough samples.
	events := churnEvents
	if n, err := strconv.Atoi(os.Getenv("NFTPOLICY_BENCH_CHURN_EVENTS")); err == nil && n > 0 {
		events = n
	}
	for _, ch := range []struct {
		name, lines string // the profile's name; the lines' infix
		offset      int    // into the bulk pods: each churn changes others
		patch       func(p *corev1.Pod, i int) string
	}{
		{"churn", "", 1, func(_ *corev1.Pod, i int) string { return fmt.Sprintf(`{"metadata":{"labels":{"churn":"c%d"}}}`, i) }},
		{"churn-selected", "selected_", 2, func(p *corev1.Pod, i int) string {
			var t int
			_, _ = fmt.Sscanf(p.Labels["tier"], "tier-%d", &t) // a pod without a tier is tier 0
			// Round r of the same pods moves each r+1 tiers from its own: a
			// change every round.
			return fmt.Sprintf(`{"metadata":{"labels":{"tier":"tier-%d"}}}`, (t+1+i/churnEvents)%benchcluster.Tiers)
		}},
	} {
		profile := ""
		if pprofURL != "" {
			profile = filepath.Join(profileDir, ch.name+suffix+".pprof")
		}
		if err := measureChurn(ctx, c, agent, metricsURL, pprofURL, profile, ch.lines, events, report, func(i int) (*corev1.Pod, []byte) {
			p := bulk[((i%churnEvents)*shape.Pods()/churnEvents+ch.offset)%len(bulk)]
			return p, []byte(ch.patch(p, i))
		}); err != nil {
			t.Fatal(err)
		}
	}

	// 4. The apiserver goes away for a minute (outage_test.go).
	if err := measureOutage(ctx, cp, c, cl, rp, agent, fmt.Sprintf("http://127.0.0.1:%d", healthPort), metricsURL,
		listMap, report, t.Logf); err != nil {
		t.Fatalf("outage: %v", err)
	}

	// 5. Restart under probe traffic (restart_test.go); NFTPOLICY_BENCH_RESTARTS
	// repeats it (default once), each line reported per restart.
	restarts, _ := strconv.Atoi(os.Getenv("NFTPOLICY_BENCH_RESTARTS"))
	current := agent
	for i := range max(restarts, 1) {
		restartLog := filepath.Join(dir, fmt.Sprintf("agent-restarted-%d.log", i))
		restarted, err := measureRestart(ctx, cl, rp, current, func() (*process, error) { return startAgent(restartLog) },
			fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort), metricsURL, report, t.Logf)
		if restarted != nil {
			t.Cleanup(func() { restarted.stop(); dumpTail(t, restartLog) })
		}
		if err != nil {
			t.Fatalf("restart: %v", err)
		}
		current = restarted
	}
	current.stop()

	// 6. Start-up with the informers' lists and watches in JSON (--api-json),
	// then protobuf with the pods listed through client-go's watch-list
	// (--pod-watch-list), then the default: protobuf, the pods in one list
	// decoded as it arrives (controllers/podlist.go).
	for _, enc := range []string{"json", "watchlist", "protobuf"} {
		var extra []string
		switch enc {
		case "json":
			extra = append(extra, "--api-json")
		case "watchlist":
			extra = append(extra, "--pod-watch-list")
		}
		before, _ := cp.Metrics(ctx)
		logPath := filepath.Join(dir, "agent-"+enc+".log")
		a, err := startAgent(logPath, extra...)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := waitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort), a, 2*time.Minute); err != nil {
			a.stop()
			dumpTail(t, logPath)
			t.Fatalf("agent (%s) not ready: %v", enc, err)
		}
		report("b9_startup_ms_"+enc, "%.0f", ms(time.Since(t0)))
		after, _ := cp.Metrics(ctx)
		for _, res := range []string{"pods", "namespaces", "networkpolicies"} {
			sum := func(m map[string]float64) float64 {
				return framework.SumMetrics(m, "apiserver_watch_events_sizes_sum", `resource="`+res+`"`) +
					framework.SumMetrics(m, "apiserver_response_sizes_sum", `resource="`+res+`"`, `verb="LIST"`)
			}
			report(fmt.Sprintf("b9_apiserver_sent_%s_kib_%s", res, enc), "%.0f", (sum(after)-sum(before))/1024)
		}
		report("b9_apiserver_cpu_s_"+enc, "%.2f", after["process_cpu_seconds_total"]-before["process_cpu_seconds_total"])
		_, peak := procMemory(a.cmd.Process.Pid)
		report("b9_agent_peak_rss_mib_"+enc, "%.1f", peak)
		time.Sleep(settleTime)
		rss, _ := procMemory(a.cmd.Process.Pid)
		report("b9_agent_rss_mib_"+enc, "%.1f", rss)
		if m, err := scrape(metricsURL); err == nil {
			report("b9_agent_heap_inuse_mib_"+enc, "%.1f", m["go_memstats_heap_inuse_bytes"]/(1<<20))
		}
		a.stop()
	}

	// 7. The full syncs after the first: every --full-sync-period (5 min by
	// default) the agent lists its cache and compiles anew, and reads the
	// kernel's table, off the sync path; then the full sync rewrites its
	// chains (drift repair), and events wait for that. An agent with a short
	// period, for three of them.
	if err := measurePeriodicFullSync(ctx, startAgent, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort), metricsURL,
		filepath.Join(dir, "agent-fullsync.log"), report, t.Logf); err != nil {
		t.Fatalf("periodic full syncs: %v", err)
	}

	// 7b. nftpolicy explain from an operator's laptop, or from the agent's
	// container (kubectl exec: its memory counts against the container's
	// limit): it lists the cluster and compiles both ends' nodes.
	if err := measureExplain(ctx, cp, agentBin, kubeconfig, bulk[0], bulk[len(bulk)-1], report); err != nil {
		t.Fatalf("explain: %v", err)
	}

	// 8. Under the DaemonSet's memory limit and smaller ones (memlimit_test.go),
	// each agent through a churn of the selected pods' tiers.
	churnRound := func(round int) error {
		return benchproc.Parallel(createWorkers, churnEvents, func(i int) error {
			p := bulk[(i*shape.Pods()/churnEvents+3+round)%len(bulk)]
			return c.Patch(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}},
				client.RawPatch("application/merge-patch+json", fmt.Appendf(nil, `{"metadata":{"labels":{"tier":"tier-%d"}}}`, (round+1+i)%benchcluster.Tiers)))
		})
	}
	if err := measureMemoryLimits(ctx, agentBin, agentArgs, dir, fmt.Sprintf("http://127.0.0.1:%d/readyz", healthPort), metricsURL,
		churnRound, report, t.Logf); err != nil {
		t.Fatalf("memory limits: %v", err)
	}

	bareLog := filepath.Join(dir, "bare.log")
	bare, err := startProcess(bareLog, bareBin, "--kubeconfig", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bare.stop)
	start = time.Now()
	if err := waitForLine(ctx, bareLog, "synced", bare, 2*time.Minute); err != nil {
		dumpTail(t, bareLog)
		t.Fatalf("bare manager: %v", err)
	}
	report("bare_synced_s", "%.2f", time.Since(start).Seconds())
	time.Sleep(settleTime)
	bareRSS, bareHWM := procMemory(bare.cmd.Process.Pid)
	bare.stop()
	report("bare_rss_mib", "%.1f", bareRSS)
	report("bare_rss_peak_mib", "%.1f", bareHWM)
	report("rss_ratio_vs_bare", "%.2f", agentRSS/bareRSS)
	report("agent_rss_goal_100mib", "%v", agentRSS <= 100)

	// The lines make bench sums up (test/bench/README.md).
	report("b2_policy_enforce_p50_ms", "%.1f", percentile(policy.external, 50))
	report("b2_policy_enforce_p99_ms", "%.1f", percentile(policy.external, 99))
	report("b2_pod_enforce_p50_ms", "%.1f", percentile(podAdd.external, 50))
	report("b2_pod_enforce_p99_ms", "%.1f", percentile(podAdd.external, 99))
	report("b5_agent_rss_mib", "%.1f", agentRSS)
	report("b5_rss_ratio_vs_bare", "%.2f", agentRSS/bareRSS)

	fmt.Printf("\n--- control-plane benchmark summary ---\n%s\n", strings.Join(summary, "\n"))
}

// createCluster creates the shape's namespaces, pods (with their addresses)
// and policies, and reports how long each kind took.
func createCluster(ctx context.Context, c client.Client, shape benchcluster.Shape, report func(string, string, ...any)) error {
	nss, pods, nps := shape.Objects()
	start := time.Now()
	for _, ns := range nss {
		if err := c.Create(ctx, ns); err != nil {
			return err
		}
	}
	report("setup_namespaces_s", "%.1f", time.Since(start).Seconds())

	start = time.Now()
	if err := benchcluster.CreatePods(ctx, c, pods, createWorkers); err != nil {
		return err
	}
	report("setup_pods_s", "%.1f", time.Since(start).Seconds())

	start = time.Now()
	if err := benchproc.Parallel(createWorkers, len(nps), func(i int) error { return c.Create(ctx, nps[i]) }); err != nil {
		return err
	}
	report("setup_policies_s", "%.1f", time.Since(start).Seconds())
	return nil
}

// latencyFixtures are the objects the latency samples act on, in namespace
// cp-lat (team f, which no namespaceSelector of the bulk policies matches):
// policy lat-peer selects app=lat-target pods and admits role=peer pods.
type latencyFixtures struct {
	seedPeerIP    string   // a remote role=peer pod, so the peer set exists
	idlePeerIPs   []string // remote pods peer-i (role=idle) that samples relabel
	unisolatedIPs []string // node-0 pods pa-i that no policy selects yet
}

func createLatencyFixtures(ctx context.Context, c client.Client) (latencyFixtures, error) {
	var f latencyFixtures
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: latNS, Labels: map[string]string{"ns": latNS, "team": "f"}}}
	if err := c.Create(ctx, ns); err != nil {
		return f, err
	}
	if err := c.Create(ctx, peerPolicy("lat-peer", "lat-target")); err != nil {
		return f, err
	}
	withIP := func(p *corev1.Pod) error {
		ip := p.Status.PodIP
		if err := c.Create(ctx, p); err != nil {
			return err
		}
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		return c.Status().Update(ctx, p)
	}
	f.seedPeerIP = latIP(0, 0)
	if err := errors.Join(
		withIP(latPod("target", ourNode, map[string]string{"app": "lat-target"}, latIP(0, 1))),
		withIP(latPod("peer-seed", "node-1", map[string]string{"role": "peer"}, f.seedPeerIP)),
	); err != nil {
		return f, err
	}
	for i := range samples {
		f.idlePeerIPs = append(f.idlePeerIPs, latIP(1, i))
		f.unisolatedIPs = append(f.unisolatedIPs, latIP(2, i))
	}
	return f, benchproc.Parallel(createWorkers, samples, func(i int) error {
		return errors.Join(
			withIP(latPod(fmt.Sprintf("peer-%d", i), fmt.Sprintf("node-%d", 1+i%(benchcluster.Nodes-1)),
				map[string]string{"role": "idle"}, f.idlePeerIPs[i])),
			withIP(latPod(fmt.Sprintf("pa-%d", i), ourNode, map[string]string{"app": fmt.Sprintf("pa-%d", i)}, f.unisolatedIPs[i])))
	})
}

// latIP is the i-th address of group g in 10.99.0.0/16. Addresses are two
// apart so that no two ever merge into one range in an interval set's listing.
func latIP(g, i int) string { return fmt.Sprintf("10.99.%d.%d", g, 2+2*i) }

func latPod(name, node string, labels map[string]string, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: latNS, Name: name, Labels: labels},
		Spec:       benchcluster.PodSpecOn(node),
		Status:     corev1.PodStatus{PodIP: ip},
	}
}

// peerPolicy selects app=app in cp-lat and admits role=peer pods on any port.
func peerPolicy(name, app string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: latNS, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "peer"}}}}}},
		},
	}
}

// series holds one latency kind's samples, in milliseconds.
type series struct {
	external []float64 // API write started -> committed in the kernel (its notification)
	agent    []float64 // the agent's own programming latency for the same change
}

// measure runs write, then waits for the kernel to commit an element of set
// whose key starts with ip (kw: the kernel's own notification, no polling),
// then waits for the agent's programming-latency histogram to count the sync
// and takes its mean over the syncs this sample caused (one, normally).
func (s *series) measure(metricsURL string, kw *kernelWatch, set, ip string, write func() error) error {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return err
	}
	before, err := scrape(metricsURL)
	if err != nil {
		return err
	}
	// From the write's start: the agent may commit the change before the
	// apiserver's answer to the write reaches the benchmark.
	t0 := time.Now()
	if err := write(); err != nil {
		return err
	}
	at, err := kw.wait(set, addr, t0, latencyTimeout)
	if err != nil {
		return err
	}
	s.external = append(s.external, ms(at.Sub(t0)))
	for {
		after, err := scrape(metricsURL)
		if err != nil {
			return err
		}
		if n := after[programmingHist+"_count"] - before[programmingHist+"_count"]; n > 0 {
			s.agent = append(s.agent, 1000*(after[programmingHist+"_sum"]-before[programmingHist+"_sum"])/n)
			break
		}
		if time.Since(t0) > latencyTimeout {
			return errors.New("the agent's programming-latency histogram did not count the sync")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(30 * time.Millisecond) // past --min-sync-interval, so samples do not coalesce
	return nil
}

func (s *series) report(report func(string, string, ...any), name string) {
	report(name+"_p50_ms", "%.1f", percentile(s.external, 50))
	report(name+"_p99_ms", "%.1f", percentile(s.external, 99))
	report(name+"_agent_p50_ms", "%.1f", percentile(s.agent, 50))
	report(name+"_agent_p99_ms", "%.1f", percentile(s.agent, 99))
	report(name+"_samples", "%d", len(s.external))
}

// percentile is the nearest-rank percentile p of v.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Sorted(slices.Values(v))
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(i, 0)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// containsIP reports whether ip appears in nft output as a whole address.
func containsIP(out, ip string) bool {
	for i := 0; ; {
		j := strings.Index(out[i:], ip)
		if j < 0 {
			return false
		}
		j += i
		end := j + len(ip)
		before := j == 0 || !isAddrByte(out[j-1])
		after := end == len(out) || !isAddrByte(out[end])
		if before && after {
			return true
		}
		i = j + 1
	}
}

func isAddrByte(b byte) bool { return b == '.' || (b >= '0' && b <= '9') }

// findSet names the set of the agent's table that lists ip.
func findSet(ns *nfttest.NetNS, ip string) (string, error) {
	deadline := time.Now().Add(latencyTimeout)
	for {
		out, err := ns.NFT("", "list", "table", "inet", "nftpolicy")
		if err != nil {
			return "", err
		}
		var set string
		var inSet bool
		for line := range strings.Lines(out) {
			f := strings.Fields(line)
			switch {
			case len(f) >= 2 && (f[0] == "set" || f[0] == "map"):
				set, inSet = f[1], f[0] == "set"
			case len(f) == 1 && f[0] == "}":
				inSet = false
			}
			if inSet && containsIP(line, ip) {
				return set, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no set of the table lists %s", ip)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scrape reads a Prometheus text endpoint into name{labels} -> value.
func scrape(url string) (map[string]float64, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return framework.ParseMetrics(body)
}

// measureExplain runs `nftpolicy explain` from pod from to pod to three
// times, and reports its median wall time, its largest peak RSS, and the
// apiserver's CPU for one run.
func measureExplain(ctx context.Context, cp *framework.ControlPlane, bin, kubeconfig string, from, to *corev1.Pod,
	report func(string, string, ...any)) error {
	var walls []float64
	var peak, apiCPU float64
	for range 3 {
		before, _ := cp.Metrics(ctx)
		cmd := exec.CommandContext(ctx, bin, "explain", "--kubeconfig", kubeconfig, "--port", "tcp/80",
			"--from", from.Namespace+"/"+from.Name, "--to", to.Namespace+"/"+to.Name)
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		wall := time.Since(t0)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if !strings.HasPrefix(string(out), "ALLOW") && !strings.HasPrefix(string(out), "DENY") {
			return fmt.Errorf("explain answered %q", out)
		}
		after, _ := cp.Metrics(ctx)
		walls = append(walls, ms(wall))
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			peak = max(peak, float64(ru.Maxrss)/1024) // KiB
		}
		apiCPU = after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"]
	}
	slices.Sort(walls)
	report("b12_explain_ms", "%.0f", walls[len(walls)/2])
	report("b12_explain_peak_rss_mib", "%.1f", peak)
	report("b12_explain_apiserver_cpu_s", "%.2f", apiCPU)
	return nil
}

// scrapeSize reads the metrics at url once and returns how many series they
// hold, how many of those are family's, and the response's size in bytes
// (uncompressed, as the text format is served without gzip).
func scrapeSize(url, family string) (series, ofFamily, size int, err error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, 0, err
	}
	for line := range strings.Lines(string(body)) {
		if line == "\n" || strings.HasPrefix(line, "#") {
			continue
		}
		series++
		if strings.HasPrefix(line, family+"{") || strings.HasPrefix(line, family+" ") {
			ofFamily++
		}
	}
	return series, ofFamily, len(body), nil
}

// procMemory returns VmRSS and VmHWM of pid in MiB.
func procMemory(pid int) (rss, hwm float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return math.NaN(), math.NaN()
	}
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = kb / 1024
		case "VmHWM:":
			hwm = kb / 1024
		}
	}
	return rss, hwm
}

func goBuild(ctx context.Context, out, pkg string) error {
	b, err := exec.CommandContext(ctx, "go", "build", "-o", out, pkg).CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, b)
	}
	return nil
}

// process is a child whose stdout and stderr go to a log file.
type process struct {
	cmd    *exec.Cmd
	exited chan struct{}
	once   sync.Once
}

func startProcess(logPath, bin string, args ...string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &process{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := framework.StartChild(p.cmd); err != nil { // dies with the test binary
		f.Close()
		return nil, err
	}
	go func() { _ = p.cmd.Wait(); f.Close(); close(p.exited) }()
	return p, nil
}

// stop sends SIGTERM, then SIGKILL after 30 s; safe to call twice.
func (p *process) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
}

// churnEvents is how many pod changes a churn measurement makes by default, on
// as many pods; churnIdle how long it first watches the agent idle.
const (
	churnEvents = 1000
	churnIdle   = 4 * time.Second
)

// measureChurn makes events pod changes (patch gives each one's object and
// merge patch), 16 at a time, and reports the agent's CPU per 1,000 of their
// events (as measured, and net of its idle rate just before) and its syncs meanwhile: all of them, those that found nothing to
// change, and their mean duration. With pprofURL it saves the agent's CPU
// profile of the churn at profile.
func measureChurn(ctx context.Context, c client.Client, agent *process, metricsURL, pprofURL, profile, infix string, events int,
	report func(string, string, ...any), patch func(i int) (*corev1.Pod, []byte)) error {
	// The agent's CPU while nothing changes (probes, scrapes, the runtime's
	// own work), over as long as a churn takes, to tell its events' CPU from it.
	pid := agent.cmd.Process.Pid
	idle0, idleT0 := benchproc.CPUSeconds(pid), time.Now()
	time.Sleep(churnIdle)
	idleRate := (benchproc.CPUSeconds(pid) - idle0) / time.Since(idleT0).Seconds()
	report("agent_idle_cpu_ms_per_s"+strings.TrimSuffix("_"+infix, "_"), "%.1f", 1000*idleRate)
	cpu0, cpuT0 := benchproc.CPUSeconds(pid), time.Now()
	mc0, err := scrape(metricsURL)
	if err != nil {
		return err
	}
	profiled := make(chan error, 1)
	if pprofURL != "" {
		go func() {
			profiled <- fetchProfile(ctx, fmt.Sprintf("%s?seconds=%d", pprofURL, 2+4*events/churnEvents), profile)
		}()
		time.Sleep(100 * time.Millisecond) // the profile has started
	}
	t0 := time.Now()
	if err := benchproc.Parallel(createWorkers, events, func(i int) error {
		p, body := patch(i)
		return c.Patch(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name}},
			client.RawPatch("application/merge-patch+json", body))
	}); err != nil {
		return fmt.Errorf("pod churn: %w", err)
	}
	report("churn_"+infix+"pod_events_per_s", "%.0f", float64(events)/time.Since(t0).Seconds())
	time.Sleep(2 * time.Second) // the last syncs
	if pprofURL != "" {
		if err := <-profiled; err != nil {
			return fmt.Errorf("profiling the churn: %w", err)
		}
	}
	cpu := benchproc.CPUSeconds(pid) - cpu0
	report("agent_cpu_ms_per_1k_"+infix+"pod_events", "%.0f", 1000*cpu*1000/float64(events))
	report("agent_cpu_ms_per_1k_"+infix+"pod_events_net", "%.0f", 1000*(cpu-idleRate*time.Since(cpuT0).Seconds())*1000/float64(events))
	mc1, err := scrape(metricsURL)
	if err != nil {
		return err
	}
	delta := func(name, kind string) float64 {
		m := fmt.Sprintf(`nftpolicy_sync_duration_seconds_%s{kind="%s"}`, name, kind)
		return mc1[m] - mc0[m]
	}
	syncs := delta("count", "incremental") + delta("count", "unchanged")
	report("churn_"+infix+"syncs", "%.0f", syncs)
	report("churn_"+infix+"syncs_unchanged", "%.0f", delta("count", "unchanged"))
	if syncs > 0 {
		report("churn_"+infix+"sync_mean_ms", "%.2f", 1000*(delta("sum", "incremental")+delta("sum", "unchanged"))/syncs)
	}
	return nil
}

// fetchProfile saves the CPU profile served at url into path.
func fetchProfile(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func waitHTTP(ctx context.Context, url string, p *process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	hc := http.Client{Timeout: 2 * time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			return errors.New("process exited")
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if resp, err := hc.Get(url); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("%s not OK after %v", url, timeout)
}

func waitForLine(ctx context.Context, logPath, want string, p *process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if b, _ := os.ReadFile(logPath); slices.Contains(strings.Fields(string(b)), want) {
			return nil
		}
		select {
		case <-p.exited:
			return errors.New("process exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("no %q line after %v", want, timeout)
}

// dumpTail logs the end of a child's log when the benchmark failed.
func dumpTail(t *testing.T, path string) {
	if !t.Failed() {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	t.Logf("%s (tail):\n%s", filepath.Base(path), b)
}

func freePort(t *testing.T) int {
	t.Helper()
	p, err := framework.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// measurePeriodicFullSync starts an agent with a 5 s full-sync period and
// reports the mean duration of its full syncs after the first (what events
// arriving meanwhile wait for), how many, and the mean of their reads of the
// cache off the sync path before them (controllers/rebuild.go).
func measurePeriodicFullSync(ctx context.Context, startAgent func(string, ...string) (*process, error), readyURL, metricsURL, logPath string,
	report func(string, string, ...any), logf func(string, ...any)) error {
	const periodic = 3
	a, err := startAgent(logPath, "--full-sync-period=5s")
	if err != nil {
		return err
	}
	defer a.stop()
	if err := waitHTTP(ctx, readyURL, a, 2*time.Minute); err != nil {
		return fmt.Errorf("agent not ready: %w", err)
	}
	const sum, count = `nftpolicy_sync_duration_seconds_sum{kind="full"}`, `nftpolicy_sync_duration_seconds_count{kind="full"}`
	m0, err := scrape(metricsURL)
	if err != nil {
		return err
	}
	m1, err := waitFullSyncs(ctx, metricsURL, a, m0[count]+periodic, time.Minute)
	if err != nil {
		return err
	}
	n := m1[count] - m0[count]
	report("full_sync_periodic_ms", "%.1f", 1000*(m1[sum]-m0[sum])/n)
	report("full_sync_periodic_n", "%.0f", n)
	const rsum, rcount = `nftpolicy_sync_duration_seconds_sum{kind="rebuild"}`, `nftpolicy_sync_duration_seconds_count{kind="rebuild"}`
	if rn := m1[rcount] - m0[rcount]; rn > 0 {
		report("full_sync_rebuild_ms", "%.1f", 1000*(m1[rsum]-m0[rsum])/rn)
	}
	const ahead = `nftpolicy_full_sync_kernel_reads_total{read="ahead"}`
	report("full_sync_read_ahead_n", "%.0f", m1[ahead]-m0[ahead])
	if m1[ahead]-m0[ahead] < n {
		// Why a full sync read the kernel's table itself, or the cache under
		// the lock: the agent says (controllers/rebuild.go).
		if b, err := os.ReadFile(logPath); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if strings.Contains(line, "itself") || strings.Contains(line, "off the sync path failed") {
					logf("full sync not read ahead: %s", line)
				}
			}
		}
	}
	return nil
}

// waitFullSyncs waits until the agent has made want full syncs in all (its
// first included), and returns its metrics then.
func waitFullSyncs(ctx context.Context, metricsURL string, a *process, want float64, timeout time.Duration) (map[string]float64, error) {
	const count = `nftpolicy_sync_duration_seconds_count{kind="full"}`
	deadline := time.Now().Add(timeout)
	for {
		m, err := scrape(metricsURL)
		if err == nil && m[count] >= want {
			return m, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%.0f full syncs in %v, want %.0f (scrape: %v)", m[count], timeout, want, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-a.exited:
			return nil, errors.New("the agent exited")
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// histQuantile is the q-quantile of the histogram name (the series whose labels
// contain label), interpolated linearly within the bucket it falls in, as
// Prometheus' histogram_quantile does; NaN without observations.
func histQuantile(m map[string]float64, name, label string, q float64) float64 {
	type bucket struct{ le, n float64 }
	var bs []bucket
	for k, v := range m {
		rest, ok := strings.CutPrefix(k, name+"_bucket{")
		if !ok || !strings.Contains(rest, label) {
			continue
		}
		_, le, ok := strings.Cut(rest, `le="`)
		if !ok {
			continue
		}
		le, _, _ = strings.Cut(le, `"`)
		x, err := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
		if err != nil {
			continue
		}
		bs = append(bs, bucket{x, v})
	}
	slices.SortFunc(bs, func(a, b bucket) int { return cmp.Compare(a.le, b.le) })
	if len(bs) == 0 || bs[len(bs)-1].n == 0 {
		return math.NaN()
	}
	rank := q * bs[len(bs)-1].n
	lo, below := 0.0, 0.0
	for _, b := range bs {
		if b.n >= rank {
			if math.IsInf(b.le, 1) {
				return lo // beyond the last bound: its bound, as Prometheus does
			}
			return lo + (b.le-lo)*(rank-below)/max(b.n-below, 1e-9)
		}
		lo, below = b.le, b.n
	}
	return lo
}
