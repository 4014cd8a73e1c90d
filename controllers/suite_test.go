package controllers

import (
	"os"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// The envtest suite: a real kube-apiserver and etcd (no kubelet, no
// controllers), started once for every spec in this package. The binaries
// come from KUBEBUILDER_ASSETS, which `make test` sets from
// hack/envtest-assets.sh.
var (
	testEnv   *envtest.Environment
	cfg       *rest.Config
	k8sClient client.Client
)

func TestControllers(t *testing.T) {
	if testing.Short() {
		t.Skip("envtest suite skipped under -short (needs kube-apiserver and etcd)")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("envtest suite skipped: KUBEBUILDER_ASSETS is unset; run 'make test', " +
			"or export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
	RegisterFailHandler(Fail)
	RunSpecs(t, "controllers envtest suite")
}

var _ = BeforeSuite(func(ctx SpecContext) {
	logf.SetLogger(zap.New(zap.WriteTo(GinkgoWriter), zap.UseDevMode(true)))

	testEnv = &envtest.Environment{
		// A loaded 2-core CI machine can take a while to bring up the apiserver.
		ControlPlaneStartTimeout: 2 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	// Lets specs create a policy that the apiserver accepts and the agent
	// cannot enforce (an ipBlock with a leading zero, "010.0.0.0/8"), as
	// test/deploy does. The gate is beta (default on) in 1.37.
	testEnv.ControlPlane.GetAPIServer().Configure().Append("feature-gates", "StrictIPCIDRValidation=false")
	var err error
	cfg, err = testEnv.Start()
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() {
		Expect(testEnv.Stop()).To(Succeed())
	})

	k8sClient, err = client.New(cfg, client.Options{Scheme: scheme.Scheme})
	Expect(err).NotTo(HaveOccurred())
}, NodeTimeout(3*time.Minute))
