package benchcluster

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// StartControlPlane starts envtest's control plane for a benchmark (the test
// framework's, with its watchdog; stopped when the test ends) in dir, and returns
// it with a client fast enough to fill it (5,000 requests a second). The
// kubeconfig's user is "bench", of system:masters: benchmarks measure cost, not
// RBAC.
func StartControlPlane(t testing.TB, dir string) (*framework.ControlPlane, client.Client) {
	t.Helper()
	cp, err := framework.StartControlPlane(dir, framework.ControlPlaneOptions{User: "bench"})
	if err != nil {
		t.Fatalf("envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = 5000, 5000
	c, err := client.New(cfg, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	return cp, c
}

// CreatePods creates pods with their status, workers at a time: Create keeps
// only the spec, so each pod's status (its addresses) is written after it.
func CreatePods(ctx context.Context, c client.Client, pods []*corev1.Pod, workers int) error {
	return benchproc.Parallel(workers, len(pods), func(i int) error {
		pod := pods[i]
		status := pod.Status
		if err := c.Create(ctx, pod); err != nil {
			return err
		}
		pod.Status = status
		return c.Status().Update(ctx, pod)
	})
}
