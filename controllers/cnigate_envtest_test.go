package controllers

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
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

// tcpProxy forwards the connections it accepts on l to to, until l is
// closed; the connections end with their client's.
func tcpProxy(l net.Listener, to string) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := net.Dial("tcp", to)
			if err != nil {
				return
			}
			defer up.Close()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			_, _ = io.Copy(c, up)
		}()
	}
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

	It("waits in process for an apiserver that refuses connections, the gate in place meanwhile", func() {
		n := newGateNode()
		// The apiserver's address answers only after a while, as the Service
		// address after a reboot answers once kube-proxy has written its rules.
		u, err := url.Parse(cfg.Host)
		Expect(err).NotTo(HaveOccurred())
		l, err := net.Listen("tcp", "127.0.0.1:0")
		Expect(err).NotTo(HaveOccurred())
		addr := l.Addr().String()
		Expect(l.Close()).To(Succeed())
		c := rest.CopyConfig(cfg)
		c.Host = "https://" + addr // the serving certificate names 127.0.0.1
		fake := nfttest.NewFake()
		done := runGateAgent(c, "node-gate-refused", n, fake)

		Eventually(n.hasEntry, time.Second, 10*time.Millisecond).Should(BeTrue())
		Consistently(done, 2*time.Second, 50*time.Millisecond).ShouldNot(Receive(), "the agent exited while the apiserver refused")
		Expect(fake.Last()).To(BeNil())

		l, err = net.Listen("tcp", addr)
		Expect(err).NotTo(HaveOccurred())
		proxied := make(chan struct{})
		go func() { defer close(proxied); tcpProxy(l, u.Host) }()
		DeferCleanup(func() { l.Close(); <-proxied })
		Eventually(fake.Last, 30*time.Second, 50*time.Millisecond).ShouldNot(BeNil(), "no sync once the apiserver answered")
		Expect(done).NotTo(Receive())
	})
})
