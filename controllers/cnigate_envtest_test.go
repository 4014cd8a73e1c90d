package controllers

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// slowPodList delays the agent's first list of pods, as a big cluster's is
// (README: start to ready 3.6-7.6 s at 100,000 pods).
type slowPodList struct {
	rt    http.RoundTripper
	delay time.Duration
}

func (s slowPodList) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/api/v1/pods") && r.URL.Query().Get("watch") == "" {
		time.Sleep(s.delay)
	}
	return s.rt.RoundTrip(r)
}

// gateNode is a node's CNI directories, with the list a CNI writes at its
// start (flannel's install-cni copies its template): without the gate's entry.
type gateNode struct{ confDir, binDir, self, conf string }

func newGateNode() gateNode {
	root := GinkgoT().TempDir()
	n := gateNode{confDir: filepath.Join(root, "net.d"), binDir: filepath.Join(root, "bin"), self: filepath.Join(root, "gate")}
	n.conf = filepath.Join(n.confDir, "10-flannel.conflist")
	Expect(os.Mkdir(n.confDir, 0o755)).To(Succeed())
	Expect(os.Mkdir(n.binDir, 0o755)).To(Succeed())
	Expect(os.WriteFile(n.self, []byte("gate"), 0o755)).To(Succeed())
	Expect(os.WriteFile(n.conf, []byte(`{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel"}]}`), 0o644)).To(Succeed())
	return n
}

func (n gateNode) hasEntry() bool {
	b, _ := os.ReadFile(n.conf)
	return strings.Contains(string(b), `"nftpolicy"`)
}

// runGateAgent runs RunAgent with the gate on n until the spec ends; the
// channel gets what it returned.
func runGateAgent(c *rest.Config, node string, n gateNode, applier *nfttest.Fake) <-chan error {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, Options{
			Config: c, NodeName: node, TableName: "nftpolicy",
			MetricsAddr: "0", HealthAddr: "0", FullSyncPeriod: time.Hour, Applier: applier,
			SyncedBoot: testBoot, CNIGateConfDir: n.confDir, CNIGateBinDir: n.binDir, CNIGateBinary: n.self,
		}, zap.New(zap.WriteTo(GinkgoWriter)))
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done, time.Minute).Should(Receive(BeNil()))
	})
	return done
}

var _ = Describe("CNI gate at the agent's start", func() {
	It("puts the entry back at once, however long the pod list takes", func() {
		n := newGateNode()
		c := rest.CopyConfig(cfg)
		c.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return slowPodList{rt, 4 * time.Second} }
		fake := nfttest.NewFake()
		start := time.Now()
		runGateAgent(c, "node-gate-slow", n, fake)
		Eventually(n.hasEntry, 10*time.Second, 10*time.Millisecond).Should(BeTrue())
		took := time.Since(start)
		Expect(took).To(BeNumerically("<", time.Second), "entry back %v after the agent started (the pod list takes 4 s)", took)
		Expect(fake.Last()).To(BeNil(), "the table applied before the pod list came")
		// Kept meanwhile: a CNI writing its list anew loses the entry for a
		// check period, not until the caches sync.
		Expect(os.WriteFile(n.conf, []byte(`{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel"}]}`), 0o644)).To(Succeed())
		Eventually(n.hasEntry, cniGatePeriod+time.Second, 10*time.Millisecond).Should(BeTrue())
		Expect(fake.Last()).To(BeNil())
		Eventually(fake.Last, 20*time.Second, 50*time.Millisecond).ShouldNot(BeNil())
	})
})
