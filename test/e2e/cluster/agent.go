package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// podagentPackage is the import path of the agent binary's source.
const podagentPackage = "github.com/nftpolicy/nftpolicy/test/e2e/podagent"

// agentReadyTimeout bounds how long an agent may take to bind its ports.
const agentReadyTimeout = 10 * time.Second

// BuildPodAgent compiles test/e2e/podagent into dir and returns the binary's
// path. It needs the go tool and this module's source, found next to this
// package's source file, or else through the current directory. Build it once
// (e.g. in TestMain) and pass the path as Config.PodAgent to share it between
// clusters.
func BuildPodAgent(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "podagent")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, podagentPackage)
	if _, file, _, ok := runtime.Caller(0); ok {
		src := filepath.Join(filepath.Dir(file), "..", "podagent")
		if _, err := os.Stat(filepath.Join(src, "main.go")); err == nil {
			cmd = exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
			cmd.Dir = src
		}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building podagent: %w\n%s", err, out)
	}
	return bin, nil
}

// probeRequest and probeResponse mirror the podagent's JSON lines.
type probeRequest struct {
	ID          uint64 `json:"id"`
	Proto       string `json:"proto"`
	Addr        string `json:"addr"`
	Port        int    `json:"port"`
	TimeoutMs   int    `json:"timeoutMs"`
	ConnectOnly bool   `json:"connectOnly,omitempty"`
}

type probeResponse struct {
	ID     uint64 `json:"id"`
	OK     bool   `json:"ok"`
	Err    string `json:"err,omitempty"`
	Micros int64  `json:"us"`
	// Ready, PID and Ports are set on the first line only.
	Ready bool  `json:"ready"`
	PID   int   `json:"pid"`
	Ports []int `json:"ports"`
}

// agent is one running podagent and the client side of its probe protocol.
type agent struct {
	name  string // "pod x/a", "node-0": for errors
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ports []int

	mu      sync.Mutex
	enc     *json.Encoder
	pending map[uint64]chan probeResponse
	nextID  uint64

	done    chan struct{} // closed when the agent's output ends
	exitErr error         // why it ended; set before done is closed
	stderr  tail

	stopOnce sync.Once
	stopErr  error
}

// startAgent starts bin inside ns in its own process group and waits until it
// serves. The agent exits on its own when its standard input closes, so it
// does not outlive this process. (Not Pdeathsig: that fires when the forking
// OS thread exits, and any goroutine that locks a thread and returns without
// unlocking it ends that thread.)
//
// ports are the ports to serve; nil means the agent's default, 80 and 81.
func startAgent(ctx context.Context, ns *nfttest.NetNS, bin, name string, ports []int) (*agent, error) {
	var args []string
	if ports != nil {
		s := make([]string, len(ports))
		for i, p := range ports {
			s[i] = strconv.Itoa(p)
		}
		args = append(args, "-ports", strings.Join(s, ","))
	}
	a := &agent{
		name:    name,
		cmd:     exec.Command(bin, args...),
		pending: map[uint64]chan probeResponse{},
		done:    make(chan struct{}),
	}
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	a.cmd.Stderr = &a.stderr
	var err error
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	a.enc = json.NewEncoder(a.stdin)
	if err := ns.Start(a.cmd); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}

	ready := make(chan probeResponse, 1)
	go a.read(stdout, ready)
	ctx, cancel := context.WithTimeout(ctx, agentReadyTimeout)
	defer cancel()
	select {
	case r := <-ready:
		a.ports = r.Ports
		return a, nil
	case <-a.done:
		err = a.exitErr
	case <-ctx.Done():
		err = fmt.Errorf("waiting for it to serve: %w", ctx.Err())
	}
	_ = a.stop() // the start error is what the caller needs
	return nil, fmt.Errorf("podagent for %s: %w", name, err)
}

// read dispatches the agent's output lines until it ends.
func (a *agent) read(stdout io.Reader, ready chan<- probeResponse) {
	sc := bufio.NewScanner(stdout)
	first := true
	var err error
	for sc.Scan() {
		var r probeResponse
		if err = json.Unmarshal(sc.Bytes(), &r); err != nil {
			err = fmt.Errorf("bad output line %q: %w", sc.Text(), err)
			break
		}
		if first {
			if !r.Ready {
				err = fmt.Errorf("first output line %q is not a ready line", sc.Text())
				break
			}
			first = false
			ready <- r
			continue
		}
		a.mu.Lock()
		ch := a.pending[r.ID]
		delete(a.pending, r.ID)
		a.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
	if err == nil {
		err = sc.Err()
	}
	if err == nil {
		err = errors.New("exited")
	}
	if s := strings.TrimSpace(a.stderr.String()); s != "" {
		err = fmt.Errorf("%w; stderr: %s", err, s)
	}
	a.mu.Lock()
	a.exitErr = err
	a.pending = nil
	a.mu.Unlock()
	close(a.done)
}

// probe asks the agent to run req and waits for the answer. The error reports
// a broken agent or ctx ending, never a failed probe.
func (a *agent) probe(ctx context.Context, req probeRequest) (probeResponse, error) {
	ch := make(chan probeResponse, 1)
	a.mu.Lock()
	if a.pending == nil {
		err := a.exitErr
		a.mu.Unlock()
		return probeResponse{}, fmt.Errorf("podagent for %s: %w", a.name, err)
	}
	a.nextID++
	req.ID = a.nextID
	a.pending[req.ID] = ch
	err := a.enc.Encode(req)
	a.mu.Unlock()
	if err != nil {
		return probeResponse{}, fmt.Errorf("podagent for %s: sending probe: %w", a.name, err)
	}

	// The agent enforces the probe's timeout; this one only catches a stuck agent.
	wait := time.NewTimer(time.Duration(req.TimeoutMs)*time.Millisecond + 5*time.Second)
	defer wait.Stop()
	select {
	case r := <-ch:
		return r, nil
	case <-a.done:
		return probeResponse{}, fmt.Errorf("podagent for %s: %w", a.name, a.exitErr)
	case <-ctx.Done():
		err = ctx.Err()
	case <-wait.C:
		err = errors.New("no answer from podagent")
	}
	a.mu.Lock()
	if a.pending != nil {
		delete(a.pending, req.ID)
	}
	a.mu.Unlock()
	return probeResponse{}, fmt.Errorf("podagent for %s: %w", a.name, err)
}

// pid is the agent's process id, and its process group id.
func (a *agent) pid() int { return a.cmd.Process.Pid }

// stop kills the agent's process group and reaps it. Only stop waits for the
// process, so until then its pid (and process group) cannot be reused, and the
// group kill cannot hit a stranger.
func (a *agent) stop() error {
	a.stopOnce.Do(func() {
		err := syscall.Kill(-a.pid(), syscall.SIGKILL)
		if err != nil && !errors.Is(err, syscall.ESRCH) {
			a.stopErr = fmt.Errorf("killing podagent for %s: %w", a.name, err)
		}
		a.stdin.Close()
		select {
		case <-a.done:
		case <-time.After(5 * time.Second):
			a.stopErr = errors.Join(a.stopErr, fmt.Errorf("podagent for %s: output still open 5s after SIGKILL", a.name))
		}
		_ = a.cmd.Wait() // "signal: killed" is the expected outcome
	})
	return a.stopErr
}

// tail keeps the last few KiB written to it; safe for concurrent use.
type tail struct {
	mu  sync.Mutex
	buf []byte
}

const tailSize = 4 << 10

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailSize {
		t.buf = t.buf[len(t.buf)-tailSize:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
