package nfttest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// NetNSDir is where `ip netns` keeps the bind mounts that name network namespaces.
const NetNSDir = "/var/run/netns"

// Capability bits from linux/capability.h that network namespace tests need.
const (
	capNetAdmin = 12
	capSysAdmin = 21
)

// RequireRoot skips t unless the process can create and enter network namespaces
// (effective uid 0 with CAP_NET_ADMIN and CAP_SYS_ADMIN) and the `ip` and `nft`
// binaries are on PATH. Call it first in every test that uses NetNS.
func RequireRoot(t testing.TB) {
	t.Helper()
	if reason := rootMissing(); reason != "" {
		t.Skipf("skipping: needs root for network namespaces: %s", reason)
	}
}

// rootMissing says why this process cannot run network namespace tests, or "".
func rootMissing() string {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Sprintf("effective uid is %d (run the test binary with sudo)", uid)
	}
	caps, err := effectiveCaps()
	if err != nil {
		return err.Error()
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "CAP_NET_ADMIN"}, {capSysAdmin, "CAP_SYS_ADMIN"}} {
		if caps&(1<<c.bit) == 0 {
			return c.name + " is missing from the effective capability set"
		}
	}
	for _, bin := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Sprintf("%q not found on PATH (install iproute2 and nftables)", bin)
		}
	}
	return ""
}

// effectiveCaps reads CapEff of this process from /proc/self/status.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("reading capabilities: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

// NetNS is a named network namespace, as created by `ip netns add`: it lives as
// long as the bind mount at Path exists, whether or not any process is inside.
type NetNS struct {
	// Name is the name `ip netns` and `ip -n` know it by.
	Name string
}

// NewNetNS creates a network namespace named prefix-<random hex> and deletes it
// when t and its subtests finish. It fails t if the namespace cannot be created;
// call RequireRoot first to skip instead when not privileged.
func NewNetNS(t testing.TB, prefix string) *NetNS {
	t.Helper()
	name := prefix + "-" + RandomHex(3)
	ns, err := CreateNetNS(name)
	if err != nil {
		t.Fatalf("creating network namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Errorf("deleting network namespace: %v", err)
		}
	})
	return ns
}

// CreateNetNS creates the network namespace name with `ip netns add`, with its
// loopback interface up. It fails if the name is taken. The caller owns the
// namespace and must Delete it; nothing removes it automatically.
func CreateNetNS(name string) (*NetNS, error) {
	if name == "" || strings.ContainsAny(name, "/ \t\n") || name == "." || name == ".." {
		return nil, fmt.Errorf("invalid network namespace name %q", name)
	}
	ns := &NetNS{Name: name}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		_ = ns.Delete()
		return nil, fmt.Errorf("ip -n %s link set lo up: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return ns, nil
}

// Path is the namespace's bind mount, usable with setns(2), nsenter --net= and
// any agent flag that takes a namespace path.
func (n *NetNS) Path() string { return filepath.Join(NetNSDir, n.Name) }

// Delete removes the namespace's name. The kernel destroys the namespace, and
// with it every interface inside (and both ends of any veth pair with an end
// inside), once no process and no open file refers to it any more. Deleting a
// namespace that is already gone is not an error.
func (n *NetNS) Delete() error {
	if _, err := os.Stat(n.Path()); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	out, err := exec.Command("ip", "netns", "delete", n.Name).CombinedOutput()
	if err != nil {
		if _, serr := os.Stat(n.Path()); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("ip netns delete %s: %w: %s", n.Name, err, bytes.TrimSpace(out))
	}
	return nil
}

// Run runs a command inside the namespace and returns its standard output. On
// failure the error carries the standard error text.
//
// Unlike `ip netns exec`, only the network namespace changes: the command sees
// the caller's /sys and /etc. That is what ip, nft, ss and sysctl-by-/proc need.
func (n *NetNS) Run(args ...string) (string, error) {
	return n.RunContext(context.Background(), "", args...)
}

// RunContext is Run with a context that kills the command and standard input.
func (n *NetNS) RunContext(ctx context.Context, stdin string, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("no command given")
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := n.Start(cmd); err != nil {
		return "", err
	}
	if err := cmd.Wait(); err != nil {
		return stdout.String(), fmt.Errorf("netns %s: %s: %w: %s",
			n.Name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.String(), nil
}

// Attach connects pod to n, as a node's routed pod: a veth pair, dev in n with
// gw/24, eth0 in pod with addr/24 and a default route via gw, all up.
func (n *NetNS) Attach(pod *NetNS, dev, gw, addr string) error {
	for _, args := range [][]string{
		{"link", "add", dev, "netns", n.Name, "type", "veth", "peer", "name", "eth0", "netns", pod.Name},
		{"-n", n.Name, "addr", "add", gw + "/24", "dev", dev},
		{"-n", n.Name, "link", "set", dev, "up"},
		{"-n", pod.Name, "addr", "add", addr + "/24", "dev", "eth0"},
		{"-n", pod.Name, "link", "set", "eth0", "up"},
		{"-n", pod.Name, "link", "set", "lo", "up"},
		{"-n", pod.Name, "route", "add", "default", "via", gw},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// NFT runs the nft CLI inside the namespace with stdin as its standard input,
// e.g. NFT(ruleset, "-f", "-") or NFT("", "list", "ruleset").
func (n *NetNS) NFT(stdin string, args ...string) (string, error) {
	return n.RunContext(context.Background(), stdin, append([]string{"nft"}, args...)...)
}

// Start starts cmd inside the namespace: it is forked from an OS thread that
// has entered the namespace, so the child and everything it runs live there.
// The caller waits for it as usual.
func (n *NetNS) Start(cmd *exec.Cmd) error {
	return n.Do(func() error {
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("netns %s: starting %s: %w", n.Name, cmd.Path, err)
		}
		return nil
	})
}

// Sysctl writes value to a network sysctl inside the namespace. key is either
// dotted ("net.ipv4.ip_forward") or a path below /proc/sys
// ("net/ipv4/conf/eth0.100/rp_filter", for names that contain dots).
func (n *NetNS) Sysctl(key, value string) error {
	path := key
	if !strings.Contains(key, "/") {
		path = strings.ReplaceAll(key, ".", "/")
	}
	path = filepath.Join("/proc/sys", path)
	return n.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("netns %s: sysctl %s=%s: %w", n.Name, key, value, err)
		}
		return nil
	})
}

// Do runs fn on the calling goroutine with its OS thread switched into the
// namespace, then switches the thread back.
//
// Inside fn, sockets opened, files under /proc/sys/net and
// /proc/thread-self/net, netlink connections and forked processes all belong to
// the namespace, and keep belonging to it after Do returns. Goroutines that fn
// starts do not: they run on other threads. fn must not call
// runtime.UnlockOSThread.
//
// If the thread cannot be switched back, Do leaves it locked so that the Go
// runtime terminates it when the goroutine exits, instead of reusing a thread
// that sits in the wrong namespace.
func (n *NetNS) Do(fn func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := os.Open(n.Path())
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening network namespace %s: %w", n.Name, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread() // still in the original namespace
		return fmt.Errorf("entering network namespace %s: %w", n.Name, err)
	}
	defer func() {
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			return // stay locked: the thread dies with the goroutine
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// RandomHex returns 2*n random lowercase hex digits, for unique names.
func RandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}
