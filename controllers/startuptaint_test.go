package controllers

import (
	"context"
	"slices"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// gatedApplier holds every transaction until open is closed.
type gatedApplier struct {
	*nfttest.Fake
	open chan struct{}
}

func (g *gatedApplier) wait(ctx context.Context) error {
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gatedApplier) Apply(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	if err := g.wait(ctx); err != nil {
		return nft.Stats{}, err
	}
	return g.Fake.Apply(ctx, desired)
}

func (g *gatedApplier) FullSync(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	if err := g.wait(ctx); err != nil {
		return nft.Stats{}, err
	}
	return g.Fake.FullSync(ctx, desired)
}

var _ = Describe("the startup taint", func() {
	other := corev1.Taint{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}
	startup := corev1.Taint{Key: DefaultStartupTaint, Effect: corev1.TaintEffectNoSchedule}
	hasStartup := func(ts []corev1.Taint) bool {
		return slices.ContainsFunc(ts, func(t corev1.Taint) bool { return t.Key == DefaultStartupTaint })
	}
	taintedNode := func(ctx context.Context, name string) func() []corev1.Taint {
		GinkgoHelper()
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{other, startup, {Key: DefaultStartupTaint, Effect: corev1.TaintEffectNoExecute}}}}
		Expect(k8sClient.Create(ctx, n)).To(Succeed())
		DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, n)).To(Succeed()) })
		return func() []corev1.Taint {
			var got corev1.Node
			Expect(k8sClient.Get(ctx, client.ObjectKey{Name: name}, &got)).To(Succeed())
			return got.Spec.Taints
		}
	}
	run := func(node, taint string, applier nft.Applier) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- RunAgent(ctx, Options{
				Config: cfg, NodeName: node, TableName: nft.DefaultTable, StartupTaint: taint,
				MetricsAddr: "0", HealthAddr: "0", FullSyncPeriod: time.Hour, Applier: applier,
			}, zap.New(zap.WriteTo(GinkgoWriter)))
		}()
		DeferCleanup(func() {
			cancel()
			Eventually(done, time.Minute).Should(Receive(BeNil()))
		})
	}

	It("stays on the Node until the node's table is in force, then goes, every effect of it, and only it; it goes again when put back", func(ctx SpecContext) {
		taints := taintedNode(ctx, "taint-node-a")
		applier := &gatedApplier{Fake: nfttest.NewFake(), open: make(chan struct{})}
		run("taint-node-a", DefaultStartupTaint, applier)

		By("while the first sync cannot be applied, the taint stays")
		Consistently(taints, 2*time.Second, 100*time.Millisecond).Should(Satisfy(hasStartup))
		Expect(applier.Last()).To(BeNil())

		By("once it is applied, the taint goes")
		close(applier.open)
		Eventually(taints, 30*time.Second, 20*time.Millisecond).ShouldNot(Satisfy(hasStartup))
		Expect(applier.Last()).NotTo(BeNil(), "the taint went before the table was applied")
		Expect(taints()).To(ContainElement(other))

		By("put back by someone, it goes again")
		var n corev1.Node
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: "taint-node-a"}, &n)).To(Succeed())
		n.Spec.Taints = append(n.Spec.Taints, startup)
		Expect(k8sClient.Update(ctx, &n)).To(Succeed())
		Eventually(taints, 30*time.Second, 20*time.Millisecond).ShouldNot(Satisfy(hasStartup))
		Expect(taints()).To(ContainElement(other))
	}, SpecTimeout(2*time.Minute))

	It("is left alone without --startup-taint", func(ctx SpecContext) {
		taints := taintedNode(ctx, "taint-node-b")
		applier := nfttest.NewFake()
		run("taint-node-b", "", applier)
		Eventually(applier.Last, 30*time.Second, 20*time.Millisecond).ShouldNot(BeNil())
		Consistently(taints, 2*time.Second, 100*time.Millisecond).Should(Satisfy(hasStartup))
		// Without the CNI gate too, the table carries the node's boot, read
		// from the kernel (a gate's entry left on the node holds no pod).
		boot, err := cnigate.BootID()
		Expect(err).NotTo(HaveOccurred())
		Expect(applier.Last().FindSet(nft.SyncedBootSet(boot))).NotTo(BeNil(), "no set %s", nft.SyncedBootSet(boot))
	}, SpecTimeout(time.Minute))
})
