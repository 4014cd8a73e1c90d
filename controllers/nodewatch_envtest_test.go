package controllers

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	cnpv1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// nodeBytes counts the response bytes an agent reads from the Node resource
// (lists and watches, as client-go reads them off the HTTP/2 stream: the
// protobuf the apiserver encoded), apart for its own-Node requests (with a
// field selector) and its all-node ones, and how many all-node responses are open.
type nodeBytes struct {
	own, all atomic.Int64
	openAll  atomic.Int64
}

func (b *nodeBytes) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if err != nil || req.URL.Path != "/api/v1/nodes" {
			return resp, err
		}
		n := &b.all
		if req.URL.Query().Get("fieldSelector") != "" {
			n = &b.own
		} else {
			b.openAll.Add(1)
		}
		resp.Body = &countedBody{ReadCloser: resp.Body, n: n, open: &b.openAll, all: n == &b.all}
		return resp, nil
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type countedBody struct {
	io.ReadCloser
	n, open *atomic.Int64
	all     bool
	closed  sync.Once
}

func (c *countedBody) Read(p []byte) (int, error) {
	k, err := c.ReadCloser.Read(p)
	c.n.Add(int64(k))
	return k, err
}

func (c *countedBody) Close() error {
	if c.all {
		c.closed.Do(func() { c.open.Add(-1) })
	}
	return c.ReadCloser.Close()
}

// nodeCountApplier is a fake applier that also records, for every table
// applied, how many of addrs (the test Nodes' addresses) it holds.
type nodeCountApplier struct {
	*nfttest.Fake
	addrs  []string
	mu     sync.Mutex
	counts []int
}

func (a *nodeCountApplier) Apply(ctx context.Context, d *nft.Ruleset) (nft.Stats, error) {
	a.note(d)
	return a.Fake.Apply(ctx, d)
}

func (a *nodeCountApplier) FullSync(ctx context.Context, d *nft.Ruleset) (nft.Stats, error) {
	a.note(d)
	return a.Fake.FullSync(ctx, d)
}

func (a *nodeCountApplier) note(d *nft.Ruleset) {
	n := nodeAddrsIn(d, a.addrs)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.counts = append(a.counts, n)
}

// applied is the count of every table applied so far, in order.
func (a *nodeCountApplier) applied() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.counts)
}

// holds is the count of the last table applied.
func (a *nodeCountApplier) holds() int { return nodeAddrsIn(a.Last(), a.addrs) }

// ensureClusterPolicyCRD installs the experimental ClusterNetworkPolicy CRD
// (v1beta1 stored and served, v1alpha2 served) unless one is installed, and
// then removes it when the spec ends, waiting until discovery no longer serves
// it: the ClusterNetworkPolicy spec (cnp_test.go) starts without it.
func ensureClusterPolicyCRD(ctx context.Context) {
	Expect(cnpv1beta1.Install(scheme.Scheme)).To(Succeed())
	Expect(cnpv1alpha2.Install(scheme.Scheme)).To(Succeed())
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())
	if v, err := discoverClusterPolicies(dc); err == nil && v == "v1beta1" {
		return
	}
	crd := clusterPolicyCRD()
	serveOnly(crd, "v1beta1", true)
	crds := []*apiextensionsv1.CustomResourceDefinition{crd}
	_, err = envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{CRDs: crds})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func(ctx SpecContext) {
		Expect(envtest.UninstallCRDs(cfg, envtest.CRDInstallOptions{CRDs: crds})).To(Succeed())
		Eventually(func() string { v, _ := discoverClusterPolicies(dc); return v }, time.Minute, 100*time.Millisecond).Should(BeEmpty())
	})
	Eventually(func() string { v, _ := discoverClusterPolicies(dc); return v }, 30*time.Second, 100*time.Millisecond).Should(Equal("v1beta1"))
}

var _ = Describe("Node watch scope", func() {
	It("watches only its own Node until a ClusterNetworkPolicy has a nodes peer, then every Node, never compiling a partial list", func(ctx SpecContext) {
		ensureClusterPolicyCRD(ctx)
		f := newFixture()
		const remotes = 30
		const rounds = 5 // status rewrites of every remote Node per phase
		sel := map[string]string{"nodewatch": f.sfx}
		ownName := "nw-" + f.sfx + "-0"
		var addrs []string
		var nodes []*corev1.Node // the remote Nodes, as last written
		for i := 0; i <= remotes; i++ {
			n := testNode(fmt.Sprintf("nw-%s-%d", f.sfx, i), nodeAddr("10.201", i), map[string]string{"nodewatch": f.sfx})
			if i == 0 {
				n.Spec.PodCIDRs = []string{"10.91.0.0/24"}
				n.Spec.PodCIDR = n.Spec.PodCIDRs[0]
			}
			status := n.Status
			Expect(k8sClient.Create(ctx, n)).To(Succeed())
			DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, n))).To(Succeed()) })
			n.Status = status
			Expect(k8sClient.Status().Update(ctx, n)).To(Succeed())
			addrs = append(addrs, nodeAddr("10.201", i))
			if i > 0 {
				nodes = append(nodes, n)
			}
		}
		size := nodes[0].Size() // protobuf, as the apiserver sends it
		f.namespace(ctx, "nw", map[string]string{})
		f.pod(ctx, "nw", "a", podOpts{node: ownName, ips: []string{"10.91.0.5"}})

		var wire nodeBytes
		agentCfg := rest.CopyConfig(cfg)
		agentCfg.WrapTransport = wire.wrap
		applier := &nodeCountApplier{Fake: nfttest.NewFake(), addrs: addrs}
		startNodeWatchAgent(agentCfg, ownName, applier)
		render := func() string {
			if applier.Last() == nil {
				return ""
			}
			return nft.Render(applier.Last())
		}
		gauge := func(scope string) float64 { return testutil.ToFloat64(nodeWatchScope.WithLabelValues(scope)) }

		beat := 0
		rewriteRemotes := func() {
			for range rounds {
				beat++
				for _, n := range nodes {
					n.Status.Conditions[3].LastHeartbeatTime = metav1.NewTime(time.Unix(1_700_000_000+int64(beat)*300, 0))
					Expect(k8sClient.Status().Update(ctx, n)).To(Succeed())
				}
			}
		}
		// The own Node's status is rewritten too, after the remote ones: a watch
		// sends its events in the order they were written, so once the agent has
		// read this one it would have read any remote one sent to it before.
		ownSentinel := func() {
			before := wire.own.Load()
			var own corev1.Node
			Expect(k8sClient.Get(ctx, client.ObjectKey{Name: ownName}, &own)).To(Succeed())
			beat++
			own.Status.Conditions[3].LastHeartbeatTime = metav1.NewTime(time.Unix(1_700_000_000+int64(beat)*300, 0))
			Expect(k8sClient.Status().Update(ctx, &own)).To(Succeed())
			Eventually(wire.own.Load, 20*time.Second, 20*time.Millisecond).Should(BeNumerically(">=", before+int64(size)*9/10))
		}

		By("no nodes peer: only the own Node is watched; remote status rewrites never reach the agent")
		Eventually(render, 30*time.Second, 20*time.Millisecond).Should(ContainSubstring("ip saddr 10.91.0.0/24"))
		Expect(gauge("own")).To(Equal(1.0))
		own0, all0 := wire.own.Load(), wire.all.Load()
		rewriteRemotes()
		ownSentinel()
		ownA, allA := wire.own.Load()-own0, wire.all.Load()-all0
		Expect(allA).To(BeZero(), "no all-node request")
		Expect(ownA).To(BeNumerically("<", 3*size), "the own watch carried the own Node's rewrite, nothing else")
		Expect(applier.holds()).To(BeZero(), "no nodes peer: no Node address in the table")

		By("a nodes peer arrives: every Node's address, at once")
		waits0 := testutil.ToFloat64(nodeWaits)
		policy := nodesPolicy("to-nodes-"+f.sfx, sel)
		Expect(k8sClient.Create(ctx, policy)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, policy))).To(Succeed()) })
		Eventually(applier.holds, 30*time.Second, 20*time.Millisecond).Should(Equal(remotes + 1))
		Expect(gauge("all")).To(Equal(1.0))
		// Not asserted: a list quicker than the reconciler's next line would make it 0.
		AddReportEntry("syncs that waited for the all-node list", testutil.ToFloat64(nodeWaits)-waits0)

		By("while it is there, every remote status rewrite reaches the agent (what every agent paid before)")
		own1, all1 := wire.own.Load(), wire.all.Load()
		rewriteRemotes()
		// A remote label change the table shows, sent after the rewrites.
		out := nodes[remotes-1]
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(out), out)).To(Succeed())
		out.Labels = map[string]string{"nodewatch": "out-" + f.sfx}
		Expect(k8sClient.Update(ctx, out)).To(Succeed())
		Eventually(applier.holds, 20*time.Second, 20*time.Millisecond).Should(Equal(remotes))
		ownB, allB := wire.own.Load()-own1, wire.all.Load()-all1
		updates := int64(remotes*rounds + 1)
		Expect(allB).To(BeNumerically(">=", updates*int64(size)*9/10), "every rewrite, a whole Node each")
		Expect(ownB).To(BeNumerically("<", 3*size))
		report := fmt.Sprintf("Node %d B (protobuf); %d remote status rewrites: all-node watch %d B (%d B each), own-Node watch %d B; "+
			"without a nodes peer: all-node %d B, own-Node %d B (its own Node's rewrite included)",
			size, updates, allB, allB/updates, ownB, allA, ownA)
		AddReportEntry("node watch bytes", report)
		GinkgoWriter.Println(report)

		By("the nodes peer goes: back to the own Node, the remote ones dropped")
		Expect(k8sClient.Delete(ctx, policy)).To(Succeed())
		Eventually(applier.holds, 20*time.Second, 20*time.Millisecond).Should(BeZero())
		Eventually(gauge, 20*time.Second, 20*time.Millisecond).WithArguments("own").Should(Equal(1.0))
		Expect(gauge("all")).To(BeZero())
		Eventually(wire.openAll.Load, 20*time.Second, 20*time.Millisecond).Should(BeZero(), "the all-node watch is closed")
		own2, all2 := wire.own.Load(), wire.all.Load()
		rewriteRemotes()
		ownSentinel()
		Expect(wire.all.Load() - all2).To(BeZero())
		Expect(wire.own.Load() - own2).To(BeNumerically("<", 3*size))

		By("a nodes peer present when an agent starts: its first table holds every Node")
		again := nodesPolicy("to-nodes-again-"+f.sfx, sel)
		Expect(k8sClient.Create(ctx, again)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, again))).To(Succeed()) })
		fresh := &nodeCountApplier{Fake: nfttest.NewFake(), addrs: addrs}
		startNodeWatchAgent(cfg, ownName, fresh)
		Eventually(fresh.applied, 30*time.Second, 20*time.Millisecond).ShouldNot(BeEmpty())
		Expect(fresh.applied()[0]).To(Equal(remotes), "the first table")
		Eventually(applier.holds, 30*time.Second, 20*time.Millisecond).Should(Equal(remotes), "the running agent too")

		By("no table either agent applied held a partial node list")
		for _, a := range []*nodeCountApplier{applier, fresh} {
			for i, n := range a.applied() {
				// 1 would be the own Node alone: a list before the all-node watch synced.
				Expect(n).To(BeElementOf(0, remotes, remotes+1), "table %d", i)
			}
		}
	}, SpecTimeout(4*time.Minute))
})

// startNodeWatchAgent runs RunAgent with --unknown-pod-cidrs=node for node
// until the spec ends.
func startNodeWatchAgent(c *rest.Config, node string, applier nft.Applier) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, Options{
			Config: c, NodeName: node, TableName: nft.DefaultTable,
			MetricsAddr: "0", HealthAddr: "0", FullSyncPeriod: time.Hour,
			Applier: applier, UnknownPodCIDRsFromNode: true,
		}, zap.New(zap.WriteTo(GinkgoWriter)))
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done, time.Minute).Should(Receive(BeNil()))
	})
}
