// Package deploy tests the deployment manifests in config/: that each
// kustomization renders, that the API server accepts what it renders, that the
// agent's DaemonSet has the security settings we promise, and that the
// ClusterRole generated from the RBAC markers is exactly enough for the real
// agent binary: with it the agent becomes ready and enforces a policy; without
// any one of its rules it does not.
//
// Tiers: the render tests need kubectl (from $KUBEBUILDER_ASSETS, which
// hack/envtest-assets.sh fills); the apply tests also start an envtest API
// server (skipped under -short); the least-privilege test also needs root, for
// network namespaces. Run everything with
//
//	KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh) go test ./test/deploy/... -count=1 -v
package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// The names config/default promises; the README and the uninstall procedure use them.
const (
	namespace   = "nftpolicy-system"
	agentName   = "nftpolicy-agent" // ServiceAccount, ClusterRole, ClusterRoleBinding, DaemonSet
	cleanupName = "nftpolicy-cleanup"
	image       = "ghcr.io/nftpolicy/nftpolicy:latest"
	tableName   = "nftpolicy" // the agent's default --table-name
)

func TestMain(m *testing.M) {
	code := m.Run()
	stopCluster()
	os.Exit(code)
}

// repoRoot is the module's root directory, found from this file's path.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test's source file")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// kubectl returns the kubectl that hack/envtest-assets.sh builds next to the
// envtest binaries, or skips t.
func kubectl(t testing.TB) string {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Skip("KUBEBUILDER_ASSETS is unset; run 'make test', or export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
	bin := filepath.Join(assets, "kubectl")
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("no kubectl in KUBEBUILDER_ASSETS (%v); hack/envtest-assets.sh builds it", err)
	}
	return bin
}

// run runs a command with stdin and returns its stdout; a failure carries stderr.
func run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", filepath.Base(name), strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

// render returns `kubectl kustomize config/<dir>`.
func render(t testing.TB, dir string) []byte {
	t.Helper()
	return renderPath(t, filepath.Join(repoRoot(t), "config", dir))
}

// renderPath returns `kubectl kustomize <dir>`: an overlay under testdata that
// puts a kustomize Component of config/ to use, as a user's overlay would.
func renderPath(t testing.TB, dir string) []byte {
	t.Helper()
	out, err := run(context.Background(), nil, kubectl(t), "kustomize", dir)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// decode splits a rendered multi-document YAML stream into objects.
func decode(t testing.TB, data []byte) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		u := &unstructured.Unstructured{}
		err := d.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return objs
		}
		if err != nil {
			t.Fatalf("decoding rendered YAML: %v", err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// find returns the one object of kind and name, or fails t.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	var found *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			if found != nil {
				t.Fatalf("two %s objects named %s", kind, name)
			}
			found = o
		}
	}
	if found == nil {
		t.Fatalf("no %s named %s in the rendered manifests", kind, name)
	}
	return found
}

// typed converts u into a typed API object such as *appsv1.DaemonSet.
func typed[T any](t testing.TB, u *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := k8sruntime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, out, true); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
	return out
}

// cluster is one envtest API server shared by the tests of this package.
type cluster struct {
	cp         *framework.ControlPlane
	cfg        *rest.Config
	clientset  *kubernetes.Clientset
	dir        string // scratch files: kubeconfigs, kubectl's cache
	kubeconfig string // system:masters, for kubectl
}

var (
	clusterOnce sync.Once
	theCluster  *cluster
	clusterErr  error
)

// requireCluster returns the shared API server, starting it on first use, or
// skips t under -short or without KUBEBUILDER_ASSETS.
func requireCluster(t testing.TB) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped under -short: needs an envtest API server")
	}
	kubectl(t) // skips without assets
	clusterOnce.Do(func() { theCluster, clusterErr = startCluster() })
	if clusterErr != nil {
		t.Fatalf("starting envtest: %v", clusterErr)
	}
	return theCluster
}

// startCluster starts the control plane the way every test tier does
// (test/e2e/framework: killed with this process if it dies before TestMain
// stops it).
func startCluster() (*cluster, error) {
	c := &cluster{}
	var err error
	if c.dir, err = os.MkdirTemp("", "nftpolicy-deploy-test-"); err != nil {
		return nil, err
	}
	c.cp, err = framework.StartControlPlane(c.dir, framework.ControlPlaneOptions{
		User: "deploy-test-admin",
		// Lets the least-privilege test create a policy that the API server
		// accepts and the agent cannot enforce (an ipBlock with a leading zero,
		// "010.0.0.0/8"), so that the agent must record a Warning Event: the only
		// way to see that the events rule is needed. The gate is beta (default
		// on) in 1.37; once it is GA and locked this needs another trigger.
		Configure: func(env *envtest.Environment) {
			env.ControlPlane.GetAPIServer().Configure().Append("feature-gates", "StrictIPCIDRValidation=false")
		},
	})
	if err != nil {
		return c, err
	}
	c.cfg, c.kubeconfig = c.cp.Config, c.cp.Kubeconfig
	quiet := rest.CopyConfig(c.cfg)
	quiet.WarningHandler = rest.NoWarnings{} // the leading-zero CIDR is expected
	c.clientset, err = kubernetes.NewForConfig(quiet)
	return c, err
}

func stopCluster() {
	if theCluster == nil {
		return
	}
	if theCluster.cp != nil {
		if err := theCluster.cp.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping envtest: %v\n", err)
		}
	}
	if theCluster.dir != "" {
		_ = os.RemoveAll(theCluster.dir)
	}
}

// kubectl runs kubectl as cluster admin.
func (c *cluster) kubectl(t testing.TB, stdin []byte, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args = append([]string{"--kubeconfig", c.kubeconfig, "--cache-dir", filepath.Join(c.dir, "kubectl-cache")}, args...)
	return run(ctx, stdin, kubectl(t), args...)
}

// applyObjects applies objs for real (server-side apply).
func (c *cluster) applyObjects(t testing.TB, objs ...*unstructured.Unstructured) {
	t.Helper()
	items := make([]any, len(objs))
	for i, o := range objs {
		items[i] = o.Object
	}
	list, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.kubectl(t, list, "apply", "--server-side", "--field-manager="+fieldManager, "-f", "-"); err != nil {
		t.Fatal(err)
	}
}
