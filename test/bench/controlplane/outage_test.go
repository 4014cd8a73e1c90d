package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// B8: the apiserver goes away. etcd and kube-apiserver are killed (SIGKILL)
// for a minute ($NFTPOLICY_BENCH_OUTAGE, a duration; 0 skips) while pods on
// node-0 probe as in B3. The agent must stay up (its /healthz answering 200
// throughout) and its table in force (no probe error); then the control plane
// starts again with its data, a pod of node-0 gets an address at once, and the
// benchmark measures how long after the apiserver's return the address is in
// the kernel, and what the apiserver served to bring the agent up to date: a
// resumed watch costs nothing, a relist every object. The agent's own request
// counters say which each kind did: a watch resumes after a full restart only
// if nothing else reached etcd after that kind's last event (docs/scale.md,
// "Resumed or relisted?").

const defaultOutage = time.Minute

func outageDuration() time.Duration {
	v := os.Getenv("NFTPOLICY_BENCH_OUTAGE")
	if v == "" {
		return defaultOutage
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return defaultOutage
	}
	return d
}

func measureOutage(ctx context.Context, cp *framework.ControlPlane, c client.Client, cl *cluster.Cluster, rp restartPods,
	agent *process, healthBase, metricsURL string, listMap func() (string, error), report func(string, string, ...any),
	logf func(string, ...any)) error {
	outage := outageDuration()
	if outage <= 0 {
		return nil
	}
	agent0, err := scrape(metricsURL)
	if err != nil {
		return fmt.Errorf("the agent's metrics before the outage: %w", err)
	}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	var pc probeCounts
	wg := probe(pctx, cl, rp, &pc)
	time.Sleep(restartSettle)

	if err := cp.Down(); err != nil {
		return err
	}
	down := time.Now()
	pc.killedAt.Store(down.UnixNano())
	hc := http.Client{Timeout: 2 * time.Second}
	status := func(path string) int {
		resp, err := hc.Get(healthBase + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	var checks, healthzBad, readyzBad int
	for time.Since(down) < outage {
		select {
		case <-agent.exited:
			return fmt.Errorf("the agent exited %v into the outage", time.Since(down).Round(time.Millisecond))
		case <-time.After(time.Second):
		}
		checks++
		if status("/healthz") != http.StatusOK {
			healthzBad++
		}
		if status("/readyz") != http.StatusOK {
			readyzBad++
		}
	}
	report("b8_outage_s", "%.0f", time.Since(down).Seconds())

	start := time.Now()
	upCtx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := cp.Up(upCtx); err != nil {
		return err
	}
	back := time.Now()
	report("b8_apiserver_restart_ms", "%.0f", ms(back.Sub(start)))
	cpu0, _ := apiserverCPU(ctx, cp)

	// A change made as soon as the apiserver answers: a new node-0 pod with an address.
	ip := latIP(4, 0)
	pod := latPod("after-outage", ourNode, map[string]string{"app": "lat-target"}, "")
	if err := c.Create(ctx, pod); err != nil {
		return fmt.Errorf("creating a pod after the return: %w", err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if err := c.Status().Update(ctx, pod); err != nil {
		return err
	}
	written := time.Now()
	for {
		out, err := listMap()
		if err != nil {
			return err
		}
		if containsIP(out, ip) {
			break
		}
		if time.Since(written) > 3*time.Minute {
			return fmt.Errorf("%s not in the kernel 3 minutes after the apiserver's return", ip)
		}
		time.Sleep(pollInterval)
	}
	enforced := time.Now()
	report("b8_write_after_return_ms", "%.0f", ms(written.Sub(back)))
	report("b8_catchup_ms", "%.0f", ms(enforced.Sub(back)))
	report("b8_write_to_enforce_ms", "%.0f", ms(enforced.Sub(written)))
	time.Sleep(restartObserve)
	stop()
	wg.Wait()
	report("b8_probes_allowed", "%d", pc.allowed.Load())
	report("b8_probes_denied", "%d", pc.denied.Load())
	report("b8_probe_errors", "%d", pc.errors())
	if e, ok := pc.firstErr.Load().(string); ok {
		report("b8_first_probe_error", "%q", e)
	}
	report("b8_syn_retransmitted", "%d", pc.synRetrans.Load())
	report("b8_agent_healthz_not_ok", "%d/%d", healthzBad, checks)
	report("b8_agent_readyz_not_ok", "%d/%d", readyzBad, checks)

	// What the agent's catching up cost the apiserver (its counters started
	// with it; the benchmark itself only created and updated one pod).
	m, err := cp.Metrics(ctx)
	if err != nil {
		return err
	}
	for _, res := range []string{"pods", "namespaces", "networkpolicies"} {
		for _, verb := range []string{"LIST", "WATCH"} {
			report(fmt.Sprintf("b8_apiserver_%s_%s", strings.ToLower(verb), res), "%.0f",
				framework.SumMetrics(m, "apiserver_request_total", `resource="`+res+`"`, `verb="`+verb+`"`))
		}
		report("b8_apiserver_list_bytes_"+res, "%.0f",
			framework.SumMetrics(m, "apiserver_response_sizes_sum", `resource="`+res+`"`, `verb="LIST"`))
		// A relist of pods is a LIST (the agent's own, controllers/podlist.go),
		// of the other kinds a streamed watch-list, whose objects are watch events.
		report("b8_apiserver_watch_events_"+res, "%.0f", framework.SumMetrics(m, "apiserver_watch_events_total", `resource="`+res+`"`))
		report("b8_apiserver_watch_event_kib_"+res, "%.0f", framework.SumMetrics(m, "apiserver_watch_events_sizes_sum", `resource="`+res+`"`)/1024)
	}
	if cpu1, err := apiserverCPU(ctx, cp); err == nil && cpu0 > 0 {
		report("b8_apiserver_cpu_s", "%.2f", cpu1-cpu0)
	}
	var lines []string
	for k, v := range m {
		for _, p := range []string{"apiserver_watch_events_total", "apiserver_watch_events_sizes_sum", "apiserver_watch_list",
			"apiserver_cache_list_total", "apiserver_init_events_total", "apiserver_watch_cache_initializations_total"} {
			if strings.HasPrefix(k, p) && (strings.Contains(k, "pods") || strings.Contains(k, "networkpolicies") || strings.Contains(k, "namespaces")) {
				lines = append(lines, fmt.Sprintf("%s %.0f", k, v))
			}
		}
	}
	slices.Sort(lines)
	logf("apiserver since its return:\n%s", strings.Join(lines, "\n"))

	// What the agent asked, by kind: every kind's watch from its last
	// resourceVersion, and a list or watch-list after it where the apiserver
	// refused that as too old. A refused watch is relisted after the
	// reflector's backoff (~1 s), which may not have passed yet.
	time.Sleep(3 * time.Second)
	agent1, err := scrape(metricsURL)
	if err != nil {
		return fmt.Errorf("the agent's metrics after the outage: %w", err)
	}
	var relisted []string
	for _, kind := range []string{"pod", "namespace", "networkpolicy", "node"} {
		delta := map[string]float64{}
		for _, req := range []string{"watch", "list", "watch-list"} {
			series := fmt.Sprintf(`nftpolicy_apiserver_requests_total{kind="%s",request="%s"}`, kind, req)
			delta[req] = agent1[series] - agent0[series]
		}
		report("b8_agent_requests_"+kind, "watch %.0f, list %.0f, watch-list %.0f", delta["watch"], delta["list"], delta["watch-list"])
		if delta["list"]+delta["watch-list"] > 0 {
			relisted = append(relisted, kind)
		}
	}
	report("b8_agent_relisted", "%q", strings.Join(relisted, ","))
	return nil
}

// apiserverCPU is the apiserver's process_cpu_seconds_total.
func apiserverCPU(ctx context.Context, cp *framework.ControlPlane) (float64, error) {
	m, err := cp.Metrics(ctx)
	if err != nil {
		return 0, err
	}
	return m["process_cpu_seconds_total"], nil
}
