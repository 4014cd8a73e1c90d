package controlplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// B3: the agent is killed (SIGKILL, no chance to tidy up) and started again
// while pods on its node talk. The table it left behind keeps enforcing until
// the new agent replaces it in one transaction, so no probe may fail: an allowed
// connection that fails, or a denied one that gets through, is an error.

const (
	restartNS       = "cp-b3" // no team label: no bulk policy's namespaceSelector matches it
	probeInterval   = 10 * time.Millisecond
	deniedTimeout   = 100 * time.Millisecond
	restartSettle   = 300 * time.Millisecond // probing before the kill
	restartObserve  = time.Second            // probing after the new agent is ready
	restartDeadline = 2 * time.Minute
)

// restartPods are the pods of B3: network namespaces on node-0 of the netns
// cluster, and the same pods in the apiserver.
type restartPods struct {
	server, client, stranger *cluster.Pod
}

// createRestartPods starts the three pods in the netns cluster and creates
// them, and the policy that admits client (not stranger) to server on TCP 80,
// in the apiserver.
func createRestartPods(ctx context.Context, c client.Client, cl *cluster.Cluster) (restartPods, error) {
	var rp restartPods
	pods, err := cl.AddPods(ctx,
		cluster.PodSpec{Namespace: restartNS, Name: "server", Node: 0, Labels: map[string]string{"app": "b3-server"}},
		cluster.PodSpec{Namespace: restartNS, Name: "client", Node: 0, Labels: map[string]string{"role": "b3-client"}},
		cluster.PodSpec{Namespace: restartNS, Name: "stranger", Node: 0, Labels: map[string]string{"role": "stranger"}})
	if err != nil {
		return rp, err
	}
	rp.server, rp.client, rp.stranger = pods[0], pods[1], pods[2]
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: restartNS}}); err != nil {
		return rp, err
	}
	for _, p := range pods {
		obj := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: restartNS, Name: p.Name, Labels: p.Labels},
			Spec:       benchcluster.PodSpecOn(ourNode),
		}
		if err := c.Create(ctx, obj); err != nil {
			return rp, err
		}
		obj.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IPv4.String(),
			PodIPs: []corev1.PodIP{{IP: p.IPv4.String()}, {IP: p.IPv6.String()}}}
		if err := c.Status().Update(ctx, obj); err != nil {
			return rp, err
		}
	}
	tcp, port := corev1.ProtocolTCP, intstr.FromInt32(80)
	return rp, c.Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: restartNS, Name: "b3"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b3-server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "b3-client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
		},
	})
}

// probeCounts are what the probe loops saw.
type probeCounts struct {
	allowed, allowedFailed atomic.Int64 // client -> server: must connect
	denied, deniedPassed   atomic.Int64 // stranger -> server: must not
	broken                 atomic.Int64 // a probe that could not run at all
	firstErr               atomic.Value
	killedAt               atomic.Int64 // unix nanoseconds of the SIGKILL; 0 before
	readyAt                atomic.Int64 // unix nanoseconds the new agent was seen ready
	// synLoop's: connections, those whose SYN (or another packet) the kernel had
	// to retransmit, and those that failed within synTimeout.
	syn, synRetrans, synFailed atomic.Int64
	firstRetrans               atomic.Value
}

const synTimeout = 3 * time.Second

// synLoop connects client -> server:80 every probeInterval from this process,
// in the client's namespace, and asks the kernel (TCP_INFO) whether anything
// had to be retransmitted. A retransmission means a packet was lost on the way,
// which a probe that merely timed out cannot tell from a probing process that
// did not get a CPU in time.
func synLoop(ctx context.Context, rp restartPods, pc *probeCounts) {
	addr := net.JoinHostPort(rp.server.IPv4.String(), "80")
	_ = rp.client.NetNS.Do(func() error {
		for ctx.Err() == nil {
			sent := time.Now()
			d := net.Dialer{Timeout: synTimeout}
			conn, err := d.Dial("tcp4", addr)
			pc.syn.Add(1)
			if err != nil {
				pc.synFailed.Add(1)
			} else {
				var info *unix.TCPInfo
				if raw, err := conn.(*net.TCPConn).SyscallConn(); err == nil {
					_ = raw.Control(func(fd uintptr) { info, _ = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) })
				}
				if info != nil && info.Total_retrans > 0 {
					pc.synRetrans.Add(1)
					pc.firstRetrans.CompareAndSwap(nil, fmt.Sprintf("%d retransmitted, connected in %v, sent %s",
						info.Total_retrans, time.Since(sent).Round(time.Millisecond), pc.sinceKill(sent)))
				}
				conn.Close()
			}
			time.Sleep(probeInterval)
		}
		return nil
	})
}

// sinceKill says when t was relative to the kill, for error messages.
func (pc *probeCounts) sinceKill(t time.Time) string {
	k := pc.killedAt.Load()
	if k == 0 {
		return "before the kill"
	}
	return fmt.Sprintf("%+dms from the kill", t.Sub(time.Unix(0, k)).Milliseconds())
}

func (pc *probeCounts) errors() int64 {
	return pc.allowedFailed.Load() + pc.deniedPassed.Load() + pc.broken.Load()
}

// probe runs both probe loops, one probe every probeInterval each, until ctx ends.
func probe(ctx context.Context, cl *cluster.Cluster, rp restartPods, pc *probeCounts) *sync.WaitGroup {
	var wg sync.WaitGroup
	loop := func(from *cluster.Pod, timeout time.Duration, want bool, total, bad *atomic.Int64) {
		tick := time.NewTicker(probeInterval)
		defer tick.Stop()
		for ctx.Err() == nil {
			sent := time.Now()
			r, err := cl.Probe(context.WithoutCancel(ctx), from, rp.server, cluster.TCP, cluster.V4, 80, timeout)
			switch {
			case err != nil:
				pc.broken.Add(1)
				pc.firstErr.CompareAndSwap(nil, err.Error())
			case r.OK != want:
				bad.Add(1)
				pc.firstErr.CompareAndSwap(nil, fmt.Sprintf("%s -> server: %s, sent %s", from.Name, r, pc.sinceKill(sent)))
			}
			total.Add(1)
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}
	wg.Go(func() { loop(rp.client, time.Second, true, &pc.allowed, &pc.allowedFailed) })
	wg.Go(func() { synLoop(ctx, rp, pc) })
	wg.Go(func() { loop(rp.stranger, deniedTimeout, false, &pc.denied, &pc.deniedPassed) })
	return &wg
}

// measureRestart kills agent, starts a new one with start and waits until it is
// ready, all under probe traffic. It returns the new agent.
func measureRestart(ctx context.Context, cl *cluster.Cluster, rp restartPods, agent *process,
	start func() (*process, error), readyURL, metricsURL string, report func(string, string, ...any),
	logf func(string, ...any)) (*process, error) {
	// The table enforces before anything happens.
	for _, c := range []struct {
		from *cluster.Pod
		want bool
	}{{rp.client, true}, {rp.stranger, false}} {
		r, err := cl.Probe(ctx, c.from, rp.server, cluster.TCP, cluster.V4, 80, deniedTimeout*5)
		if err != nil {
			return nil, err
		}
		if r.OK != c.want {
			return nil, fmt.Errorf("before the restart: %s -> server: %s", c.from.Name, r)
		}
	}

	pctx, stop := context.WithCancel(ctx)
	defer stop()
	var pc probeCounts
	mon, err := startMonitor(cl.Node(0).NetNS, &pc)
	if err != nil {
		return nil, err
	}
	defer mon.stop()
	wg := probe(pctx, cl, rp, &pc)
	time.Sleep(restartSettle)

	pc.killedAt.Store(time.Now().UnixNano())
	_ = agent.cmd.Process.Signal(syscall.SIGKILL)
	<-agent.exited
	t0 := time.Now()
	next, err := start()
	if err != nil {
		return nil, err
	}
	if err := waitHTTP(ctx, readyURL, next, restartDeadline); err != nil {
		return next, fmt.Errorf("restarted agent not ready: %w", err)
	}
	ready := time.Since(t0)
	pc.readyAt.Store(time.Now().UnixNano())
	time.Sleep(restartObserve)
	stop()
	wg.Wait()
	mon.stop()
	if pc.errors() > 0 {
		// What the kernel's table went through, to tell a drop from a stall.
		logf("restart: agent ready %s; nft monitor of node-0 (element lines counted, not shown):\n%s",
			pc.sinceKill(time.Unix(0, pc.readyAt.Load())), mon.String())
	}

	m, err := scrape(metricsURL)
	if err != nil {
		return next, err
	}
	full := m["nftpolicy_sync_duration_seconds_sum{kind=\"full\"}"]
	if n := m["nftpolicy_sync_duration_seconds_count{kind=\"full\"}"]; n != 1 {
		return next, fmt.Errorf("restarted agent: %v full syncs, want 1", n)
	}
	report("restart_to_ready_ms", "%.0f", ms(ready))
	report("restart_probes_allowed", "%d", pc.allowed.Load())
	report("restart_probes_allowed_failed", "%d", pc.allowedFailed.Load())
	report("restart_probes_denied", "%d", pc.denied.Load())
	report("restart_probes_denied_passed", "%d", pc.deniedPassed.Load())
	if e, ok := pc.firstErr.Load().(string); ok {
		// firstErr is written as the probe fails; it and the monitor lines use
		// the same clock.
		report("restart_first_probe_error", "%q", e)
	}
	report("restart_syn_probes", "%d", pc.syn.Load())
	report("restart_syn_retransmitted", "%d", pc.synRetrans.Load())
	report("restart_syn_failed", "%d", pc.synFailed.Load())
	if e, ok := pc.firstRetrans.Load().(string); ok {
		report("restart_first_retransmit", "%q", e)
	}
	if pc.allowed.Load() == 0 || pc.denied.Load() == 0 {
		return next, errors.New("no probes ran during the restart")
	}
	report("b3_restart_program_ms", "%.1f", 1000*full)
	report("b3_restart_probe_errors", "%d", pc.errors())
	return next, nil
}

// monitor runs `nft monitor` in a namespace and keeps its lines about tables,
// chains, sets and rules, each with its time relative to the kill; element
// lines (tens of thousands in a full sync) are only counted.
type monitor struct {
	cmd      *exec.Cmd
	pc       *probeCounts
	mu       sync.Mutex
	lines    []string
	elements int
	done     chan struct{}
	once     sync.Once
}

func startMonitor(ns *nfttest.NetNS, pc *probeCounts) (*monitor, error) {
	m := &monitor{cmd: exec.Command("nft", "monitor"), pc: pc, done: make(chan struct{})}
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := ns.Start(m.cmd); err != nil {
		return nil, err
	}
	go func() {
		defer close(m.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			line := sc.Text()
			at := pc.sinceKill(time.Now())
			m.mu.Lock()
			switch {
			case strings.HasPrefix(line, "add element"), strings.HasPrefix(line, "delete element"):
				if m.elements == 0 {
					m.lines = append(m.lines, at+": first element line")
				}
				m.elements++
			case len(m.lines) < 500:
				if len(line) > 160 {
					line = line[:160] + "..."
				}
				m.lines = append(m.lines, at+": "+line)
			}
			m.mu.Unlock()
		}
	}()
	return m, nil
}

func (m *monitor) stop() {
	m.once.Do(func() {
		_ = m.cmd.Process.Kill()
		<-m.done
		_ = m.cmd.Wait()
	})
}

func (m *monitor) String() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fmt.Sprintf("%s\n(%d element lines)", strings.Join(m.lines, "\n"), m.elements)
}
