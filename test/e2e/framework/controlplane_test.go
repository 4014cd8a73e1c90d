package framework

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

func requireAssets(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped under -short: starts kube-apiserver and etcd")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("KUBEBUILDER_ASSETS is unset; export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
}

// childEnv makes this test binary a process that starts a control plane,
// prints the pids of its servers and waits to be killed.
const childEnv = "NFTPOLICY_FRAMEWORK_TEST_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		cp, err := StartControlPlane(dir, ControlPlaneOptions{})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		var pids []string
		for _, s := range cp.servers {
			pids = append(pids, strconv.Itoa(s.pid))
		}
		fmt.Println("pids:", strings.Join(pids, " "))
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

// A process that dies without stopping its control plane takes the apiserver
// and etcd with it.
func TestControlPlaneDiesWithItsProcess(t *testing.T) {
	requireAssets(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+t.TempDir())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var line string
	buf := make([]byte, 4096)
	for !strings.Contains(line, "\n") {
		n, err := out.Read(buf)
		if err != nil {
			t.Fatalf("child: %v (output %q)", err, line)
		}
		line += string(buf[:n])
	}
	pidText, ok := strings.CutPrefix(strings.TrimSpace(line), "pids: ")
	if !ok {
		t.Fatalf("child: %s", line)
	}
	pids := strings.Fields(pidText)
	if len(pids) != 2 {
		t.Fatalf("child reported pids %q, want etcd and kube-apiserver", pids)
	}
	for _, pid := range pids {
		if !alive(pid) {
			t.Fatalf("pid %s is not running before the kill", pid)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for alive(pid) {
			if time.Now().After(deadline) {
				for _, p := range pids {
					_ = syscall.Kill(mustAtoi(p), syscall.SIGKILL)
				}
				t.Fatalf("pid %s (%s) outlived the killed test process by 10s", pid, comm(pid))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Down and Up: the apiserver is unreachable in between, and back with the
// same data, certificates and users afterwards; Stop stops the restarted
// servers.
func TestControlPlaneDownUp(t *testing.T) {
	requireAssets(t)
	ctx := t.Context()
	cp, err := StartControlPlane(t.TempDir(), ControlPlaneOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = cp.Stop()
		}
	}()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "down-up"}}
	if err := cp.Client.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := cp.Down(); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = cp.Client.Get(short, client.ObjectKeyFromObject(ns), &corev1.Namespace{})
	cancel()
	if err == nil {
		t.Fatal("the apiserver answered while down")
	}
	upCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	start := time.Now()
	if err := cp.Up(upCtx); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane up again in %v", time.Since(start).Round(time.Millisecond))
	if err := cp.Client.Get(ctx, client.ObjectKeyFromObject(ns), &corev1.Namespace{}); err != nil {
		t.Fatalf("namespace created before Down: %v", err)
	}
	// The kubeconfig's user (a client certificate) is still accepted.
	if _, err := os.Stat(cp.Kubeconfig); err != nil {
		t.Fatal(err)
	}
	kubectl := exec.CommandContext(ctx, filepath.Join(cp.Assets, "kubectl"), "--kubeconfig", cp.Kubeconfig, "get", "namespace", "down-up", "-o", "name")
	if b, err := kubectl.CombinedOutput(); err != nil || strings.TrimSpace(string(b)) != "namespace/down-up" {
		t.Fatalf("kubectl with the kubeconfig after Up: %v: %s", err, b)
	}
	var pids []string
	for _, s := range cp.servers {
		pids = append(pids, strconv.Itoa(s.pid))
	}
	stopped = true
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("pid %s (%s) still running after Stop", pid, comm(pid))
		}
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if errors.Is(err, os.ErrNotExist) || err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 {
		return s[i+2] != 'Z'
	}
	return true
}

func comm(pid string) string {
	b, _ := os.ReadFile(filepath.Join("/proc", pid, "comm"))
	return strings.TrimSpace(string(b))
}

func mustAtoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
