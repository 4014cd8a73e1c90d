package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// Agent is one `nftpolicy agent` process enforcing policy for one node, run
// from the test's own network namespace with --netns pointing at the node's.
// Its standard output and error go to LogPath, appended across restarts.
type Agent struct {
	Node *cluster.Node
	// LogPath is the agent's log file.
	LogPath string
	// LogLevel is passed as --zap-log-level.
	LogLevel string
	// Args are extra flags for the next Start (e.g. --established=keep).
	Args []string

	bin, kubeconfig string

	mu          sync.Mutex
	cmd         *exec.Cmd
	healthAddr  string
	metricsAddr string
	done        chan struct{} // closed when the current process has exited
	exitErr     error         // its exit status; set before done closes
}

// agentStopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const agentStopTimeout = 15 * time.Second

// Start starts the agent and waits until its /readyz answers 200 (caches
// synced and the node's table fully synced once), the process exits, or
// timeout passes. It fails if the agent is already running.
func (a *Agent) Start(ctx context.Context, timeout time.Duration) error {
	a.mu.Lock()
	if a.cmd != nil {
		a.mu.Unlock()
		return fmt.Errorf("agent for %s is already running", a.Node.Name)
	}
	port, err := FreePort()
	if err != nil {
		a.mu.Unlock()
		return err
	}
	a.healthAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	mport, err := FreePort()
	if err != nil {
		a.mu.Unlock()
		return err
	}
	a.metricsAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(mport))
	log, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		a.mu.Unlock()
		return err
	}
	fmt.Fprintf(log, "=== %s: starting nftpolicy agent for %s (health %s)\n", time.Now().Format(time.RFC3339Nano), a.Node.Name, a.healthAddr)
	cmd := exec.Command(a.bin, "agent",
		"--kubeconfig", a.kubeconfig,
		"--node-name", a.Node.Name,
		"--netns", a.Node.NetNSPath(),
		"--health-probe-bind-address", a.healthAddr,
		"--metrics-bind-address", a.metricsAddr,
		// The deny log as config/agent has it, at a rate no probe matrix reaches,
		// so that every denied probe is logged; each node is its own network
		// namespace, so both agents take the same group.
		"--deny-log-rate", "10000/second",
		"--deny-log-group", "7600",
		"--zap-log-level", a.LogLevel,
		"--zap-time-encoding", "rfc3339nano",
	)
	cmd.Args = append(cmd.Args, a.Args...)
	cmd.Stdout, cmd.Stderr = log, log
	err = StartChild(cmd)
	log.Close() // the child holds its own descriptor
	if err != nil {
		a.mu.Unlock()
		return fmt.Errorf("starting agent for %s: %w", a.Node.Name, err)
	}
	done := make(chan struct{})
	a.cmd, a.done, a.exitErr = cmd, done, nil
	a.mu.Unlock()
	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		a.exitErr = err
		a.mu.Unlock()
		close(done)
	}()
	if err := a.waitReady(ctx, done, timeout); err != nil {
		return errors.Join(err, a.Stop())
	}
	return nil
}

// waitReady polls /readyz until it answers 200.
func (a *Agent) waitReady(ctx context.Context, done <-chan struct{}, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	url := "http://" + a.healthAddr + "/readyz"
	client := &http.Client{Timeout: time.Second}
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(body.String()))
		} else {
			last = err.Error()
		}
		select {
		case <-done:
			return fmt.Errorf("agent for %s exited before it was ready (%v); log tail:\n%s", a.Node.Name, a.exitError(), a.LogTail(20))
		case <-ctx.Done():
			return fmt.Errorf("agent for %s not ready after %v (last /readyz: %s); log tail:\n%s", a.Node.Name, timeout, last, a.LogTail(20))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Metrics returns the agent's /metrics text.
func (a *Agent) Metrics(ctx context.Context) (string, error) {
	a.mu.Lock()
	addr := a.metricsAddr
	a.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(resp.Body); err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", addr, resp.Status)
	}
	return body.String(), nil
}

// Log returns the agent's whole log.
func (a *Agent) Log() (string, error) {
	b, err := os.ReadFile(a.LogPath)
	return string(b), err
}

// Stop sends SIGTERM and waits for the agent to exit, killing it after
// agentStopTimeout. It returns the exit status: nil for a clean exit. Stopping
// an agent that is not running does nothing.
func (a *Agent) Stop() error {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil {
		return nil
	}
	var errs []error
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		errs = append(errs, err)
	}
	select {
	case <-done:
	case <-time.After(agentStopTimeout):
		_ = cmd.Process.Kill()
		<-done
		errs = append(errs, fmt.Errorf("agent for %s ignored SIGTERM for %v; killed", a.Node.Name, agentStopTimeout))
	}
	a.mu.Lock()
	if err := a.exitErr; err != nil {
		errs = append(errs, fmt.Errorf("agent for %s: %w; log tail:\n%s", a.Node.Name, err, a.LogTail(20)))
	}
	a.cmd = nil
	a.mu.Unlock()
	return errors.Join(errs...)
}

// Running reports whether the agent process is running.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

func (a *Agent) exitError() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.exitErr
}

// LogTail returns the last n lines of the agent's log, leaving out the
// health check chatter of its start.
func (a *Agent) LogTail(n int) string {
	b, err := os.ReadFile(a.LogPath)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = slices.DeleteFunc(lines, func(l string) bool { return strings.Contains(l, `"controller-runtime.healthz"`) })
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func newAgent(node *cluster.Node, bin, kubeconfig, dir, level string) *Agent {
	return &Agent{
		Node:       node,
		LogPath:    filepath.Join(dir, "agent-"+node.Name+".log"),
		LogLevel:   level,
		bin:        bin,
		kubeconfig: kubeconfig,
	}
}

// ports are the loopback ports FreePort handed out in this process.
var ports struct {
	sync.Mutex
	given map[int]bool
	next  int
}

// FreePort returns a TCP port on loopback that was free a moment ago and that it
// never returned before. It picks below the kernel's ephemeral range
// (ip_local_port_range), which connect() and bind(":0") draw from: no client
// connection of the apiserver, an agent or a probe takes the port between the
// pick and the agent's listen. (Drawn with bind(":0") and closed, a port came
// back as the next pick: one agent's health and metrics servers got the same
// port, and it exited.)
func FreePort() (int, error) {
	ports.Lock()
	defer ports.Unlock()
	const lowest = 10000
	high := ephemeralLow()
	if ports.given == nil {
		ports.given = map[int]bool{}
		ports.next = lowest + os.Getpid()%max(high-lowest, 1) // apart from another test binary's
	}
	for range max(high-lowest, 0) {
		p := ports.next
		if ports.next++; ports.next >= high {
			ports.next = lowest
		}
		if ports.given[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // someone's
		}
		_ = l.Close()
		ports.given[p] = true
		return p, nil
	}
	// No room below the ephemeral range: draw from it, never the same twice.
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		p := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		if !ports.given[p] {
			ports.given[p] = true
			return p, nil
		}
	}
	return 0, errors.New("no free loopback port")
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768 when it
// cannot be read).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 32768
	}
	low, err := strconv.Atoi(f[0])
	if err != nil {
		return 32768
	}
	return low
}

// Health asks the running agent's /healthz or /readyz (path) and returns the
// HTTP status and body; an error when the agent does not answer at all.
func (a *Agent) Health(ctx context.Context, path string) (int, string, error) {
	a.mu.Lock()
	addr := a.healthAddr
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	return resp.StatusCode, strings.TrimSpace(body.String()), nil
}
