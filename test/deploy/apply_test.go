package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fieldManager is the server-side apply manager of every apply in these tests.
const fieldManager = "nftpolicy-deploy-test"

// TestServerSideDryRun applies each kustomization as `kubectl apply
// --server-side --dry-run=server`: the API server validates and admits every
// object (schemas, strict field validation, defaulting) without keeping it.
func TestServerSideDryRun(t *testing.T) {
	c := requireCluster(t)
	// config/prometheus has a ServiceMonitor and a PrometheusRule: install
	// stand-ins for their CRDs.
	c.installMonitoringCRDs(t)

	config := func(dir string) string { return filepath.Join(repoRoot(t), "config", dir) }
	for _, dir := range []string{config("default"), config("prometheus"), config("cleanup"),
		filepath.Join("testdata", "cni-gate"), // config/default with config/cni-gate
	} {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			rendered := renderPath(t, dir)
			objs := decode(t, rendered)
			// A dry-run namespace does not exist for the objects in it: create it for real.
			c.applyObjects(t, find(t, objs, "Namespace", namespace))
			out, err := c.kubectl(t, rendered, "apply", "--server-side", "--dry-run=server",
				"--field-manager="+fieldManager, "-f", "-")
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(string(out), "(server dry run)"); n != len(objs) {
				t.Errorf("the API server accepted %d of %d objects:\n%s", n, len(objs), out)
			}
			t.Logf("%s:\n%s", dir, out)
		})
	}
}

// installMonitoringCRDs installs testdata's stand-ins for the ServiceMonitor
// and PrometheusRule CRDs for real and waits until the kinds are served.
func (c *cluster) installMonitoringCRDs(t *testing.T) {
	t.Helper()
	for _, kind := range []string{"servicemonitor", "prometheusrule"} {
		crd, err := os.ReadFile(filepath.Join("testdata", kind+"-crd.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.kubectl(t, crd, "apply", "--server-side", "--field-manager="+fieldManager, "-f", "-"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.kubectl(t, nil, "wait", "--for=condition=Established", "--timeout=60s",
			"crd/"+kind+"s.monitoring.coreos.com"); err != nil {
			t.Fatal(err)
		}
	}
}
