package controlplane

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
)

// TestHold fills a control plane with a benchmark cluster and holds it, for
// experiments that start agents against the same objects again and again (the
// start-up study in docs/scale.md): creating 100,000 pods takes ~10 minutes, a
// start ~10 s. With NFTPOLICY_BENCH_HOLD=DIR it writes DIR/kubeconfig,
// DIR/apiserver.pid (to read the apiserver's CPU from /proc) and, last, DIR/ready,
// then holds the control plane until DIR/stop exists. NFTPOLICY_BENCH_SHAPE=10k
// holds the 10k cluster; the default is the 100k one. NFTPOLICY_BENCH_PODS=deployment
// makes its pods as big as real ones, NFTPOLICY_BENCH_NODES=1 adds its Nodes. Run it as
//
//	NFTPOLICY_BENCH_HOLD=/tmp/hold go test -timeout 3h -run TestHold ./test/bench/controlplane/
func TestHold(t *testing.T) {
	hold := os.Getenv("NFTPOLICY_BENCH_HOLD")
	if hold == "" {
		t.Skip("holds a benchmark cluster for experiments: set NFTPOLICY_BENCH_HOLD=DIR")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("KUBEBUILDER_ASSETS is unset")
	}
	cp, c := benchcluster.StartControlPlane(t, t.TempDir())
	shape := benchcluster.Shape100k
	if os.Getenv("NFTPOLICY_BENCH_SHAPE") == "10k" {
		shape = benchcluster.Shape10k
	}
	// NFTPOLICY_BENCH_PODS=deployment: pods as a Deployment's carry
	// everything else too (benchcluster.DeploymentShaped).
	shape.DeploymentPods = os.Getenv("NFTPOLICY_BENCH_PODS") == "deployment"
	if err := createCluster(t.Context(), c, shape, func(name, format string, args ...any) {
		t.Logf("%s: %s", name, fmt.Sprintf(format, args...))
	}); err != nil {
		t.Fatal(err)
	}
	// NFTPOLICY_BENCH_NODES=1: the shape's Nodes too, as kubelets report them
	// (benchcluster.NodeObject); the benchmarks run without Node objects.
	if os.Getenv("NFTPOLICY_BENCH_NODES") == "1" {
		err := benchproc.Parallel(createWorkers, shape.Nodes, func(i int) error {
			n := benchcluster.NodeObject(i)
			status := n.Status
			if err := c.Create(t.Context(), n); err != nil {
				return err
			}
			n.Status = status
			return c.Status().Update(t.Context(), n)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	kubeconfig, err := os.ReadFile(cp.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"kubeconfig": kubeconfig, "apiserver.pid": fmt.Appendf(nil, "%d", cp.PID("kube-apiserver"))} {
		if err := os.WriteFile(filepath.Join(hold, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(hold, "ready"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("holding the cluster (kubeconfig %s) until %s exists", filepath.Join(hold, "kubeconfig"), filepath.Join(hold, "stop"))
	for {
		if _, err := os.Stat(filepath.Join(hold, "stop")); err == nil {
			return
		}
		select {
		case <-t.Context().Done():
			return
		case <-time.After(2 * time.Second):
		}
	}
}
