package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
)

// bin is the nftpolicy binary under test, built once by TestMain: these tests
// check the contract a user or the kubelet sees (exit codes, stderr), so they
// run the real binary rather than calling run().
var bin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nftpolicy-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { _ = os.RemoveAll(dir) }()
	bin = filepath.Join(dir, "nftpolicy")
	// The CNI gate's plugin beside it, as in the image.
	for out, pkg := range map[string]string{bin: ".", filepath.Join(dir, gatePluginName): "../nftpolicy-cni-gate"} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building", pkg+":", err)
			return 1
		}
	}
	return m.Run()
}

// exitCode is a finished command's exit code, from cmd.Run's error; t fails
// when the command did not run at all.
func exitCode(t *testing.T, err error) int {
	t.Helper()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return exit.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return 0
}

// applyIn applies rs with the agent's applier in the network namespace at
// netns; t's cleanup closes the applier.
func applyIn(t *testing.T, netns string, rs *nft.Ruleset) *netlink.Applier {
	t.Helper()
	a, err := netlink.New(netlink.Options{Table: rs.Table, NetNSPath: netns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	if _, err := a.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	return a
}

// A kubeconfig that parses but points nowhere: the flag checks that need a
// valid kubeconfig get past it, and nothing ever connects.
const validKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user: {token: t}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
`

func TestContract(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "kubeconfig")
	garbage := filepath.Join(dir, "garbage")
	for p, s := range map[string]string{good: validKubeconfig, garbage: "{not: [yaml"} {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name     string
		args     []string
		env      []string
		wantCode int
		// wantOut must all occur in stdout (exit 0) or the one stderr line.
		wantOut []string
	}{
		{name: "version", args: []string{"version"}, wantCode: 0,
			wantOut: []string{"nftpolicy dev", runtime.Version()}},
		{name: "help", args: []string{"help"}, wantCode: 0, wantOut: []string{"agent", "cleanup", "version"}},
		{name: "agent -h", args: []string{"agent", "-h"}, wantCode: 0,
			wantOut: []string{"-node-name", "-netns", "-zap-log-level", "127.0.0.1:9090", ":8081", "-deny-log-rate", "-policy-counters",
				"-established", "-ct-mark-mask", "-startup-taint", "-cni-gate-conf-dir", "-cni-gate-bin-dir"}},
		{name: "no command", args: nil, wantCode: 2, wantOut: []string{"missing command"}},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2, wantOut: []string{`"frobnicate"`}},
		{name: "unknown flag", args: []string{"agent", "--bogus"}, wantCode: 2,
			wantOut: []string{"-bogus", "run 'nftpolicy agent -h' for usage"}},
		{name: "stray argument", args: []string{"agent", "--node-name", "n", "extra"}, wantCode: 2,
			wantOut: []string{`"extra"`}},
		{name: "bad duration", args: []string{"agent", "--full-sync-period", "soon"}, wantCode: 2,
			wantOut: []string{"full-sync-period"}},
		{name: "missing node name", args: []string{"agent", "--kubeconfig", good}, wantCode: 2,
			wantOut: []string{"--node-name", "NODE_NAME"}},
		{name: "node name from env", args: []string{"agent", "--kubeconfig", "/nonexistent"},
			env: []string{"NODE_NAME=node-1"}, wantCode: 2, wantOut: []string{"kubeconfig", "/nonexistent"}},
		{name: "bad metrics address", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--metrics-bind-address", "localhost"},
			wantCode: 2, wantOut: []string{"--metrics-bind-address", `"localhost"`}},
		{name: "bad health address", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--health-probe-bind-address", "127.0.0.1:http-alt"},
			wantCode: 2, wantOut: []string{"--health-probe-bind-address"}},
		{name: "zero period", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--full-sync-period", "0s"},
			wantCode: 2, wantOut: []string{"--full-sync-period"}},
		{name: "bad established mode", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--established", "strict"},
			wantCode: 2, wantOut: []string{"--established", `"strict"`, "recheck or keep"}},
		{name: "bad ct mark mask", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--ct-mark-mask", "0x00ff00f0"},
			wantCode: 2, wantOut: []string{"--ct-mark-mask", "contiguous"}},
		{name: "ct mark mask not a number", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--ct-mark-mask", "lots"},
			wantCode: 2, wantOut: []string{"--ct-mark-mask", `"lots"`}},
		{name: "bad startup taint", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--startup-taint", "not a key"},
			wantCode: 2, wantOut: []string{"--startup-taint", `"not a key"`, "not a taint key"}},
		{name: "bad unknown pod cidr", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--unknown-pod-cidrs", "10.244.1.0/24,10.244.1.1/24"},
			wantCode: 2, wantOut: []string{"--unknown-pod-cidrs", `"10.244.1.1/24"`}},
		{name: "node mixed with CIDRs", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--unknown-pod-cidrs", "node,10.244.1.0/24"},
			wantCode: 2, wantOut: []string{"--unknown-pod-cidrs", `"node"`, "node alone"}},
		// node alone passes, so the next check (the kubeconfig) is what fails.
		{name: "unknown pod cidrs from the node", args: []string{"agent", "--node-name", "n", "--kubeconfig", "/nonexistent/k", "--unknown-pod-cidrs", "node"},
			wantCode: 2, wantOut: []string{"/nonexistent/k"}},
		{name: "bad table name", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--table-name", "a b"},
			wantCode: 2, wantOut: []string{"--table-name"}},
		{name: "missing kubeconfig", args: []string{"agent", "--node-name", "n", "--kubeconfig", "/nonexistent/kubeconfig"},
			wantCode: 2, wantOut: []string{"kubeconfig", "/nonexistent/kubeconfig"}},
		{name: "kubeconfig from env", args: []string{"agent", "--node-name", "n"},
			env: []string{"KUBECONFIG=/nonexistent/env-kubeconfig"}, wantCode: 2, wantOut: []string{"/nonexistent/env-kubeconfig"}},
		{name: "garbage kubeconfig", args: []string{"agent", "--node-name", "n", "--kubeconfig", garbage},
			wantCode: 2, wantOut: []string{"kubeconfig"}},
		{name: "kubeconfig is a directory", args: []string{"agent", "--node-name", "n", "--kubeconfig", dir},
			wantCode: 2, wantOut: []string{"kubeconfig"}},
		{name: "no kubeconfig outside a cluster", args: []string{"agent", "--node-name", "n"},
			wantCode: 2, wantOut: []string{"--kubeconfig", "not in a cluster"}},
		{name: "CNI gate conf dir alone", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--cni-gate-conf-dir", "/etc/cni/net.d"},
			wantCode: 2, wantOut: []string{"--cni-gate-conf-dir and --cni-gate-bin-dir go together"}},
		{name: "CNI gate relative dir", args: []string{"cleanup", "--cni-gate-conf-dir", "etc/cni/net.d", "--cni-gate-bin-dir", "/opt/cni/bin"},
			wantCode: 2, wantOut: []string{"absolute"}},
		{name: "nonexistent netns", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--netns", "/nonexistent/netns"},
			wantCode: 2, wantOut: []string{"--netns", "/nonexistent/netns"}},
		{name: "netns not a namespace", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--netns", good},
			wantCode: 2, wantOut: []string{"--netns", "not a namespace"}},
		{name: "netns of another type", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--netns", "/proc/self/ns/uts"},
			wantCode: 2, wantOut: []string{"--netns", "not a network namespace"}},
		// A real netns passes, so the next check (the kubeconfig) is what fails.
		{name: "good netns", args: []string{"agent", "--node-name", "n", "--kubeconfig", "/nonexistent/k", "--netns", "/proc/self/ns/net"},
			wantCode: 2, wantOut: []string{"/nonexistent/k"}},
		{name: "bad memory limit", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--memory-limit", "lots"},
			wantCode: 2, wantOut: []string{"--memory-limit", `"lots"`}},
		{name: "bad memory limit from env", args: []string{"agent", "--node-name", "n", "--kubeconfig", good},
			env: []string{"MEMORY_LIMIT=-1"}, wantCode: 2, wantOut: []string{"--memory-limit", `"-1"`}},
		// A valid limit passes, so the next check (the kubeconfig) is what fails.
		{name: "memory limit from env", args: []string{"agent", "--node-name", "n", "--kubeconfig", "/nonexistent/k"},
			env: []string{"MEMORY_LIMIT=268435456"}, wantCode: 2, wantOut: []string{"/nonexistent/k"}},
		{name: "bad deny log rate", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--deny-log-rate", "100/fortnight"},
			wantCode: 2, wantOut: []string{"--deny-log-rate", `"100/fortnight"`}},
		{name: "zero deny log rate", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--deny-log-rate", "0/second"},
			wantCode: 2, wantOut: []string{"--deny-log-rate"}},
		{name: "bad deny log group", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--deny-log-rate", "10/second", "--deny-log-group", "70000"},
			wantCode: 2, wantOut: []string{"--deny-log-group"}},
		// A valid rate passes, so the next check (the kubeconfig) is what fails.
		{name: "good deny log rate", args: []string{"agent", "--node-name", "n", "--kubeconfig", "/nonexistent/k", "--deny-log-rate", "100/minute", "--deny-log-burst", "5"},
			wantCode: 2, wantOut: []string{"/nonexistent/k"}},
		{name: "bad pprof address", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--pprof-bind-address", "garbage"},
			wantCode: 2, wantOut: []string{"--pprof-bind-address"}},
		{name: "negative min sync interval", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--min-sync-interval", "-1s"},
			wantCode: 2, wantOut: []string{"--min-sync-interval", "negative"}},
		{name: "deny log burst too large, deny log off", args: []string{"agent", "--node-name", "n", "--kubeconfig", good, "--deny-log-burst", "4294967296"},
			wantCode: 2, wantOut: []string{"--deny-log-burst"}},
		{name: "cleanup unknown flag", args: []string{"cleanup", "--node-name", "n"}, wantCode: 2,
			wantOut: []string{"-node-name", "run 'nftpolicy cleanup -h' for usage"}},
		{name: "cleanup nonexistent netns", args: []string{"cleanup", "--netns", "/nonexistent/netns"}, wantCode: 2,
			wantOut: []string{"--netns"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			cmd.Env = append(cleanEnv(), tt.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			code := exitCode(t, cmd.Run())
			if code != tt.wantCode {
				t.Fatalf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			out := stdout.String()
			if tt.wantCode != 0 {
				out = stderr.String()
				if stdout.Len() != 0 {
					t.Errorf("stdout not empty on error: %q", stdout.String())
				}
				if n := strings.Count(out, "\n"); n != 1 || !strings.HasSuffix(out, "\n") {
					t.Errorf("stderr is %d lines, want exactly one: %q", n, out)
				}
				if !strings.HasPrefix(out, "nftpolicy") {
					t.Errorf("stderr does not start with the program name: %q", out)
				}
				if strings.Contains(out, "goroutine ") || strings.Contains(out, "panic") {
					t.Errorf("stderr has a trace: %q", out)
				}
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output %q does not mention %q", out, w)
				}
			}
		})
	}
}

// cleanEnv is the test's environment without what the agent reads from it, so
// that a developer's own KUBECONFIG or NODE_NAME cannot change the result.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		switch strings.SplitN(kv, "=", 2)[0] {
		case "KUBECONFIG", "NODE_NAME", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "MEMORY_LIMIT", "GOMEMLIMIT":
			continue
		}
		env = append(env, kv)
	}
	return env
}
