package controllers

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

var update = flag.Bool("update", false, "rewrite controllers/testdata/*.nft from what the agent applies")

// step is one change to the cluster, after which the node's whole table must equal
// testdata/<prefix>-<name>.nft.
type step struct {
	name string
	do   func(ctx context.Context, f *fixture)
}

// fixture creates objects in its own namespaces (suffix), so the sequences run with
// the fake and the real applier do not see each other's policies.
type fixture struct {
	sfx string
}

func (f *fixture) ns(n string) string { return n + "-" + f.sfx }

// newFixture returns a fixture whose pods and policies are deleted when the spec ends
// (envtest runs no namespace controller and no kubelet, so pods are deleted at once).
func newFixture() *fixture {
	f := &fixture{sfx: nextSuffix()}
	DeferCleanup(func(ctx SpecContext) {
		var nss corev1.NamespaceList
		Expect(k8sClient.List(ctx, &nss)).To(Succeed())
		for _, ns := range nss.Items {
			if !strings.HasSuffix(ns.Name, "-"+f.sfx) {
				continue
			}
			Expect(k8sClient.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(ns.Name), client.GracePeriodSeconds(0))).To(Succeed())
			Expect(k8sClient.DeleteAllOf(ctx, &networkingv1.NetworkPolicy{}, client.InNamespace(ns.Name))).To(Succeed())
		}
	})
	return f
}

func (f *fixture) namespace(ctx context.Context, name string, labels map[string]string) {
	labels["ns"] = name
	Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.ns(name), Labels: labels}})).To(Succeed())
}

type podOpts struct {
	node        string
	ips         []string
	hostNetwork bool
	phase       corev1.PodPhase
}

func (f *fixture) pod(ctx context.Context, ns, name string, o podOpts) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns(ns), Name: name, Labels: map[string]string{"pod": name}},
		Spec: corev1.PodSpec{
			NodeName:    o.node,
			HostNetwork: o.hostNetwork,
			Containers: []corev1.Container{{Name: "c", Image: "agnhost", Ports: []corev1.ContainerPort{
				{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
				{Name: "serve-81-udp", ContainerPort: 81, Protocol: corev1.ProtocolUDP},
			}}},
		},
	}
	Expect(k8sClient.Create(ctx, p)).To(Succeed())
	f.setStatus(ctx, ns, name, o.phase, o.ips...)
}

func (f *fixture) setStatus(ctx context.Context, ns, name string, phase corev1.PodPhase, ips ...string) {
	var p corev1.Pod
	Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: f.ns(ns), Name: name}, &p)).To(Succeed())
	if phase == "" {
		phase = corev1.PodRunning
	}
	p.Status.Phase = phase
	p.Status.PodIPs = nil
	p.Status.PodIP = ""
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	Expect(k8sClient.Status().Update(ctx, &p)).To(Succeed())
}

func (f *fixture) relabel(ctx context.Context, obj client.Object, key, value string) {
	Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(Succeed())
	l := obj.GetLabels()
	if l == nil {
		l = map[string]string{}
	}
	l[key] = value
	obj.SetLabels(l)
	Expect(k8sClient.Update(ctx, obj)).To(Succeed())
}

// ingressFromNS allows ingress to pod=a in ns from namespaces labelled team=<team> on serve-80-tcp.
func (f *fixture) ingressFromTeam(ns, name, team string) *networkingv1.NetworkPolicy {
	port := intstr.FromString("serve-80-tcp")
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns(ns), Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": team}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
			}},
		},
	}
}

func (f *fixture) denyEgress(ns string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns(ns), Name: "deny-egress"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		},
	}
}

// flow is the sequence every applier is taken through. The node under test is node-1.
func flow() []step {
	return []step{
		{"empty", func(ctx context.Context, f *fixture) {
			f.namespace(ctx, "x", map[string]string{"team": "blue"})
			f.namespace(ctx, "y", map[string]string{"team": "red"})
			f.pod(ctx, "x", "a", podOpts{node: "node-1", ips: []string{"10.1.0.1", "fd00::1:1"}})
			f.pod(ctx, "y", "b", podOpts{node: "node-1", ips: []string{"10.1.0.2"}})
			f.pod(ctx, "y", "c", podOpts{node: "node-2", ips: []string{"10.2.0.3", "fd00::2:3"}})
		}},
		{"policy-created", func(ctx context.Context, f *fixture) {
			Expect(k8sClient.Create(ctx, f.ingressFromTeam("x", "allow-red", "red"))).To(Succeed())
		}},
		{"pod-relabelled", func(ctx context.Context, f *fixture) {
			// y/b stops being pod=b: nothing selects on pod=b, but the label is in the snapshot;
			// the table must not change.
			f.relabel(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("y"), Name: "b"}}, "tier", "web")
		}},
		{"namespace-relabelled", func(ctx context.Context, f *fixture) {
			f.relabel(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.ns("y")}}, "team", "blue")
			f.relabel(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.ns("x")}}, "team", "red")
		}},
		{"pod-ip-changed", func(ctx context.Context, f *fixture) {
			f.setStatus(ctx, "x", "a", corev1.PodRunning, "10.1.0.9", "fd00::1:9")
		}},
		{"policy-updated", func(ctx context.Context, f *fixture) {
			var np networkingv1.NetworkPolicy
			Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: f.ns("x"), Name: "allow-red"}, &np)).To(Succeed())
			np.Spec.Ingress[0].From[0].NamespaceSelector.MatchLabels["team"] = "blue"
			Expect(k8sClient.Update(ctx, &np)).To(Succeed())
			Expect(k8sClient.Create(ctx, f.denyEgress("y"))).To(Succeed())
		}},
		{"special-pods", func(ctx context.Context, f *fixture) {
			// None of these is a target on node-1 or a peer.
			f.pod(ctx, "y", "host", podOpts{node: "node-1", ips: []string{"192.0.2.1"}, hostNetwork: true})
			f.pod(ctx, "y", "done", podOpts{node: "node-1", ips: []string{"10.1.0.7"}, phase: corev1.PodSucceeded})
			f.pod(ctx, "y", "noip", podOpts{node: "node-1"})
			f.pod(ctx, "y", "remote", podOpts{node: "node-2", ips: []string{"10.2.0.8"}})
		}},
		{"pod-deleted", func(ctx context.Context, f *fixture) {
			Expect(k8sClient.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("y"), Name: "b"}})).To(Succeed())
		}},
		{"policies-deleted", func(ctx context.Context, f *fixture) {
			Expect(k8sClient.Delete(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("x"), Name: "allow-red"}})).To(Succeed())
			Expect(k8sClient.Delete(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("y"), Name: "deny-egress"}})).To(Succeed())
		}},
	}
}

// hashRE matches the short hash in per-policy names (nft.ObjectName).
var hashRE = regexp.MustCompile(`\b(ing|eg)-[0-9a-f]{8}-`)

// normalize makes a table independent of the fixture's namespace suffix: the suffix
// becomes SFX and, since the hash in per-policy names covers the namespace, the hash
// becomes HASH. Normalized names are still unique and valid, so goldens load with nft -f.
func normalize(text, sfx string) string {
	return hashRE.ReplaceAllString(strings.ReplaceAll(text, sfx, "SFX"), "${1}-HASH-")
}

// golden reads testdata/<name>.nft.
func golden(name string) string {
	b, err := os.ReadFile(filepath.Join("testdata", name+".nft"))
	Expect(err).NotTo(HaveOccurred(), "missing golden file; run go test ./controllers -update")
	return string(b)
}

func writeGolden(name, text string) {
	Expect(os.MkdirAll("testdata", 0o755)).To(Succeed())
	Expect(os.WriteFile(filepath.Join("testdata", name+".nft"), []byte(text), 0o644)).To(Succeed())
}

// startAgent runs RunAgent for node-1 with the given applier until the spec ends.
func startAgent(applier nft.Applier, minSync time.Duration) {
	startAgentOn("node-1", applier, minSync)
}

// testBoot is the boot the agents of these specs mark their tables with
// (compile.Options.SyncedBoot).
const testBoot = "6b1f0c2e-0000-4000-8000-000000000001"

// startAgentOn runs RunAgent for node until the spec ends.
func startAgentOn(node string, applier nft.Applier, minSync time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, Options{
			Config: cfg, NodeName: node, TableName: nft.DefaultTable,
			MetricsAddr: "0", HealthAddr: "0", FullSyncPeriod: time.Hour,
			Applier: applier, MinSyncInterval: minSync,
			SyncedBoot: testBoot, // not the kernel's: the golden files' tables stay the same
		}, zap.New(zap.WriteTo(GinkgoWriter)))
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done, time.Minute).Should(Receive(BeNil()))
	})
}

// The suffix is stable for golden files only if sorting does not depend on it; every
// object of a sequence carries the same suffix, so it does not.
var sfxSeq = struct {
	sync.Mutex
	n int
}{}

func nextSuffix() string {
	sfxSeq.Lock()
	defer sfxSeq.Unlock()
	sfxSeq.n++
	return fmt.Sprintf("s%d", sfxSeq.n)
}

var _ = Describe("node reconciler", func() {
	It("keeps the whole table equal to the cluster's policy, step by step (fake applier)", func(ctx SpecContext) {
		fake := nfttest.NewFake()
		startAgent(fake, 0)
		f := newFixture()
		for _, s := range flow() {
			By(s.name)
			s.do(ctx, f)
			if *update {
				time.Sleep(2 * time.Second)
				writeGolden(s.name, normalize(fake.Dump(), f.sfx))
				continue
			}
			want := golden(s.name)
			dump := func() string { return normalize(fake.Dump(), f.sfx) }
			Eventually(dump, 10*time.Second, 10*time.Millisecond).Should(Equal(want), "step %s", s.name)
			Consistently(dump, 300*time.Millisecond, 20*time.Millisecond).Should(Equal(want), "step %s", s.name)
		}
		calls := fake.Calls()
		Expect(calls.FullSync).To(Equal(1), "only the first sync is full")
		for i, st := range fake.History()[1:] {
			Expect(st.Full).To(BeFalse(), "sync %d", i+1)
		}
	}, SpecTimeout(3*time.Minute))

	It("programs the same tables into a real kernel (netlink applier in a network namespace)", func(ctx SpecContext) {
		if os.Geteuid() != 0 {
			Skip("needs root for network namespaces and nftables")
		}
		if *update {
			Skip("-update rewrites goldens from the fake-applier spec only")
		}
		newNS := func(prefix string) *nfttest.NetNS {
			ns, err := nfttest.CreateNetNS(prefix + "-" + nfttest.RandomHex(3))
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(ns.Delete)
			return ns
		}
		real, ref := newNS("ctrl-real"), newNS("ctrl-ref")
		applier, err := netlink.New(netlink.Options{Table: nft.DefaultTable, NetNSPath: real.Path()})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(applier.Close)
		startAgent(applier, 0)
		f := newFixture()
		list := func(ns *nfttest.NetNS) string {
			out, err := ns.NFT("", "list", "table", "inet", nft.DefaultTable)
			if err != nil {
				return "error: " + err.Error()
			}
			return nfttest.SortBlocks(out)
		}
		for _, s := range flow() {
			By(s.name)
			s.do(ctx, f)
			_, _ = ref.NFT("", "delete", "table", "inet", nft.DefaultTable)
			_, err := ref.NFT(golden(s.name), "-f", "-")
			Expect(err).NotTo(HaveOccurred())
			want := list(ref)
			Eventually(func() string { return normalize(list(real), f.sfx) }, 10*time.Second, 20*time.Millisecond).Should(Equal(want), "step %s", s.name)
		}
	}, SpecTimeout(3*time.Minute))

	It("serves an event no table depends on without compiling or a kernel transaction, and the next that matters as before", func(ctx SpecContext) {
		fake := nfttest.NewFake()
		startAgent(fake, 0)
		f := newFixture()
		f.namespace(ctx, "quiet", map[string]string{})
		f.pod(ctx, "quiet", "a", podOpts{node: "node-1", ips: []string{"10.1.0.1"}})
		f.pod(ctx, "quiet", "r", podOpts{node: "node-2", ips: []string{"10.2.0.77"}})
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("quiet"), Name: "from-friends"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
					{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"friend": "yes"}}}}}},
			},
		}
		Expect(k8sClient.Create(ctx, np)).To(Succeed())
		dump := func() string { return fake.Dump() }
		Eventually(dump, 10*time.Second, 10*time.Millisecond).Should(ContainSubstring("from-friends"))
		settled := dump()
		Consistently(dump, 300*time.Millisecond, 20*time.Millisecond).Should(Equal(settled))

		unchanged := func() float64 { return testutil.ToFloat64(syncsTotal.WithLabelValues("unchanged", "ok")) }
		before, applies := unchanged(), fake.Calls().Apply
		By("a label no policy reads, on another node's pod")
		f.relabel(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("quiet"), Name: "r"}}, "unread", "1")
		Eventually(unchanged, 10*time.Second, 10*time.Millisecond).Should(BeNumerically(">", before))
		Consistently(func() int { return fake.Calls().Apply }, 300*time.Millisecond, 20*time.Millisecond).Should(Equal(applies))
		Expect(dump()).To(Equal(settled))

		By("a label the policy's peer selects, on the same pod")
		f.relabel(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("quiet"), Name: "r"}}, "friend", "yes")
		Eventually(dump, 10*time.Second, 10*time.Millisecond).Should(ContainSubstring("10.2.0.77"))
		Expect(fake.Calls().Apply).To(BeNumerically(">", applies))
	}, SpecTimeout(time.Minute))

	It("coalesces a burst of 1,000 pod events: at most one sync per MinSyncInterval, fewer syncs than events", func(ctx SpecContext) {
		fake := nfttest.NewFake()
		startAgent(fake, 10*time.Millisecond)
		f := newFixture()
		f.namespace(ctx, "burst", map[string]string{})
		Expect(k8sClient.Create(ctx, f.denyEgress("burst"))).To(Succeed())
		Eventually(func() int { return fake.Calls().Apply + fake.Calls().FullSync }, 10*time.Second).Should(BeNumerically(">", 0))
		before := fake.Calls().Apply + fake.Calls().FullSync

		const n = 1000
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				defer GinkgoRecover()
				for i := w; i < n; i += 16 {
					name := fmt.Sprintf("p%04d", i)
					p := &corev1.Pod{
						ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("burst"), Name: name},
						Spec:       corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
					}
					if err := k8sClient.Create(ctx, p); err != nil && !apierrors.IsAlreadyExists(err) {
						errs <- err
						return
					}
					p.Status.Phase = corev1.PodRunning
					p.Status.PodIPs = []corev1.PodIP{{IP: fmt.Sprintf("10.9.%d.%d", i/250, i%250+1)}}
					if err := k8sClient.Status().Update(ctx, p); err != nil {
						errs <- err
						return
					}
				}
			}(w)
		}
		wg.Wait()
		burst := time.Since(start)
		close(errs)
		for err := range errs {
			Expect(err).NotTo(HaveOccurred())
		}
		// Every pod is selected by deny-egress: each must be in the egress map.
		Eventually(func() int {
			last := fake.Last()
			if last == nil {
				return 0
			}
			if s := last.FindSet(nft.MapEgressV4); s != nil {
				return len(s.Elements)
			}
			return 0
		}, 30*time.Second, 20*time.Millisecond).Should(Equal(n))
		syncs := fake.Calls().Apply + fake.Calls().FullSync - before
		GinkgoWriter.Printf("1,000 pod creates + status updates over %v -> %d syncs\n", burst, syncs)
		AddReportEntry("burst syncs", fmt.Sprintf("%d syncs for %d events over %v", syncs, 2*n, burst))
		// At most one sync per MinSyncInterval while the burst lasts (plus the tail),
		// and fewer syncs than the n status updates that change the table. (How
		// many fewer depends on how fast the apiserver takes the writes against how
		// long a sync takes: on a loaded machine the writes trickle in at tens a
		// second and a sync of this table costs a millisecond or two, so many are
		// served one by one, as they should be.)
		Expect(syncs).To(BeNumerically("<=", int(burst/(10*time.Millisecond))+5), "syncs for %d pod events", 2*n)
		Expect(syncs).To(BeNumerically("<", n), "syncs for %d pod events", 2*n)
	}, SpecTimeout(3*time.Minute))
})
