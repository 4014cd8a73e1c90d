package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zapcore"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// crdClient reads and deletes CustomResourceDefinitions.
func crdClient() client.Client {
	s := runtime.NewScheme()
	Expect(apiextensionsv1.AddToScheme(s)).To(Succeed())
	c, err := client.New(cfg, client.Options{Scheme: s})
	Expect(err).NotTo(HaveOccurred())
	return c
}

// removeClusterPolicyCRD deletes the ClusterNetworkPolicy CRD, if installed,
// and waits until it is gone and discovery no longer serves it: the specs that
// install it start without it, whatever ran before them.
func removeClusterPolicyCRD(ctx context.Context) {
	c := crdClient()
	Expect(client.IgnoreNotFound(c.Delete(ctx, &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: cnpCRDName}}))).To(Succeed())
	Eventually(func() bool {
		return apierrors.IsNotFound(c.Get(ctx, client.ObjectKey{Name: cnpCRDName}, &apiextensionsv1.CustomResourceDefinition{}))
	}, time.Minute, 100*time.Millisecond).Should(BeTrue(), "the CRD is deleted")
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	Expect(err).NotTo(HaveOccurred())
	Eventually(func() string { v, _ := discoverClusterPolicies(dc); return v }, time.Minute, 100*time.Millisecond).Should(BeEmpty())
}

// installServingBeta installs the ClusterNetworkPolicy CRD serving v1beta1
// (stored) and v1alpha2.
func installServingBeta() {
	crd := clusterPolicyCRD()
	serveOnly(crd, "v1beta1", true)
	_, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{CRDs: []*apiextensionsv1.CustomResourceDefinition{crd}})
	Expect(err).NotTo(HaveOccurred())
}

// crdTraffic counts an agent's requests that concern ClusterNetworkPolicy:
// discovery (any /api or /apis path that names no resource: what a poll
// asks), the ClusterNetworkPolicy resource, and the CRD watch, with the bytes
// the CRD watch's responses carried (as the agent's client reads them).
type crdTraffic struct {
	discovery, cnp, crd atomic.Int64
	crdBytes            atomic.Int64
	crdType             atomic.Value // string: the content type of the CRD watch's last response
}

func (t *crdTraffic) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		p := req.URL.Path
		seg := strings.Split(strings.Trim(p, "/"), "/")
		crd := false
		switch {
		case strings.Contains(p, "/"+cnpResource):
			t.cnp.Add(1)
		case p == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions":
			t.crd.Add(1)
			crd = true
		case (seg[0] == "apis" && len(seg) <= 3) || (seg[0] == "api" && len(seg) <= 2):
			t.discovery.Add(1)
		}
		resp, err := rt.RoundTrip(req)
		if crd && err == nil {
			resp.Body = &byteCount{ReadCloser: resp.Body, n: &t.crdBytes}
			t.crdType.Store(resp.Header.Get("Content-Type"))
		}
		return resp, err
	})
}

func (t *crdTraffic) String() string {
	return fmt.Sprintf("%d discovery, %d ClusterNetworkPolicy, %d CRD requests", t.discovery.Load(), t.cnp.Load(), t.crd.Load())
}

type byteCount struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *byteCount) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	b.n.Add(int64(k))
	return k, err
}

// agentLog is an agent's log, kept for the spec to read.
type agentLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *agentLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *agentLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// count is how many lines of the log contain all of parts.
func (l *agentLog) count(parts ...string) int {
	n := 0
	for line := range strings.Lines(l.String()) {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			n++
		}
	}
	return n
}

// at is the time stamp of the last line of the log that contains all of parts
// (zero when none does).
func (l *agentLog) at(parts ...string) time.Time {
	var t time.Time
	for line := range strings.Lines(l.String()) {
		if slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			continue
		}
		var rec struct {
			TS string `json:"ts"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil {
			t, _ = time.Parse(time.RFC3339Nano, rec.TS)
		}
	}
	return t
}

// startLoggedAgent runs RunAgent for node with c and interval (0: the
// default) until the spec ends, and returns its log.
func startLoggedAgent(c *rest.Config, node string, applier nft.Applier, interval time.Duration) *agentLog {
	log := &agentLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunAgent(ctx, Options{
			Config: c, NodeName: node, TableName: nft.DefaultTable,
			MetricsAddr: "0", HealthAddr: "0", FullSyncPeriod: time.Hour, Applier: applier,
			CNPDiscoveryInterval: interval,
		}, zap.New(zap.WriteTo(io.MultiWriter(GinkgoWriter, log)), func(o *zap.Options) { o.TimeEncoder = zapcore.RFC3339NanoTimeEncoder }))
	}()
	DeferCleanup(func() {
		cancel()
		Eventually(done, time.Minute).Should(Receive(BeNil()))
	})
	return log
}

// denyFrom is a v1beta1 Admin ClusterNetworkPolicy denying ingress to
// namespace ns from every namespace.
func denyFrom(name, ns string) *cnpv1beta1.ClusterNetworkPolicy {
	return &cnpv1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnpv1beta1.ClusterNetworkPolicySpec{
			Tier: cnpv1beta1.AdminTier, Priority: 10,
			Subject: cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}},
			Ingress: []cnpv1beta1.ClusterNetworkPolicyIngressRule{{
				Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
				From:   []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}},
			}},
		},
	}
}

// createOnceServed creates obj, retrying while the apiserver does not serve its kind yet.
func createOnceServed(ctx context.Context, obj client.Object) {
	Eventually(func() error { return k8sClient.Create(ctx, obj) }, 30*time.Second, 50*time.Millisecond).Should(Succeed())
	DeferCleanup(func(ctx SpecContext) {
		err := k8sClient.Delete(ctx, obj)
		if !apierrors.IsNotFound(err) && !strings.Contains(fmt.Sprint(err), "no matches for kind") {
			Expect(err).NotTo(HaveOccurred())
		}
	})
}

// hasEvent reports whether an Event with reason is recorded on the Node named node.
func hasEvent(ctx context.Context, node, reason string) bool {
	var evs eventsv1.EventList
	Expect(k8sClient.List(ctx, &evs)).To(Succeed())
	for _, e := range evs.Items {
		if e.Regarding.Kind == "Node" && e.Regarding.Name == node && e.Reason == reason {
			return true
		}
	}
	return false
}

var _ = Describe("ClusterNetworkPolicy CRD watch", func() {
	It("enforces within seconds of the CRD appearing without asking anything while it is absent, and stops and starts again as it goes and comes back", func(ctx SpecContext) {
		Expect(cnpv1beta1.Install(scheme.Scheme)).To(Succeed())
		removeClusterPolicyCRD(ctx)
		DeferCleanup(func(ctx SpecContext) { removeClusterPolicyCRD(ctx) })

		f := newFixture()
		f.isolatedPod(ctx, "node-1", "10.1.0.10")
		npRule := `10.1.0.10 comment "x-` + f.sfx + `/a" : goto ing-`
		cnpRule := `10\.1\.0\.10 comment "x-` + f.sfx + `/a" : goto adm-in-[0-9a-f]+-cnp/deny-x-` + f.sfx + `-v4`

		// Two agents: one with the discovery interval at its default (30 s),
		// which must still enforce within seconds; one with it at 200 ms, which
		// the old poll would have made ask discovery ~10 times a second.
		var trDefault, trFast crdTraffic
		cDefault, cFast := rest.CopyConfig(cfg), rest.CopyConfig(cfg)
		cDefault.WrapTransport, cFast.WrapTransport = trDefault.wrap, trFast.wrap
		fakeDefault, fakeFast := nfttest.NewFake(), nfttest.NewFake()
		logDefault := startLoggedAgent(cDefault, "node-1", fakeDefault, 0)
		logFast := startLoggedAgent(cFast, "node-1", fakeFast, 200*time.Millisecond)

		By("no CRD: NetworkPolicy alone, and not one request about ClusterNetworkPolicy while the CRD is absent")
		for _, fk := range []*nfttest.Fake{fakeDefault, fakeFast} {
			Eventually(fk.Dump, 30*time.Second, 20*time.Millisecond).Should(ContainSubstring(npRule))
			Expect(fk.Dump()).NotTo(ContainSubstring("adm-in-"))
		}
		for _, l := range []*agentLog{logDefault, logFast} {
			Eventually(l.String, 30*time.Second, 50*time.Millisecond).Should(ContainSubstring("the CRD is not installed"))
		}
		quiet := func() [2]int64 {
			sum := func(t *crdTraffic) int64 { return t.discovery.Load() + t.cnp.Load() + t.crd.Load() }
			return [2]int64{sum(&trDefault), sum(&trFast)}
		}
		Consistently(quiet, 5*time.Second, 100*time.Millisecond).Should(Equal(quiet()),
			"no request about ClusterNetworkPolicy in 5 s: the old poll would have asked ~50 times at 200 ms")
		AddReportEntry("requests of the 200 ms agent from its start to 5 s after, without the CRD", trFast.String())
		Expect(trFast.cnp.Load()).To(BeZero())
		Expect(trFast.crd.Load()).To(BeNumerically("<=", 3), "the CRD watch: one list (or watch-list) and one watch")

		By("the CRD appears: both agents enforce a ClusterNetworkPolicy within 10 s of its creation, the default interval included")
		bytes0 := trDefault.crdBytes.Load()
		t0 := time.Now()
		installServingBeta() // returns once discovery serves it
		served := time.Since(t0)
		createOnceServed(ctx, denyFrom("deny-x-"+f.sfx, f.ns("x")))
		GinkgoWriter.Printf("ClusterNetworkPolicy created %v after the CRD\n", time.Since(t0))
		var took []time.Duration
		for _, fk := range []*nfttest.Fake{fakeDefault, fakeFast} {
			Eventually(fk.Dump, 30*time.Second, 20*time.Millisecond).Should(And(MatchRegexp(cnpRule), ContainSubstring(npRule)))
			took = append(took, time.Since(t0))
		}
		enforcing := logDefault.at(`"msg":"enforcing ClusterNetworkPolicy"`).Sub(t0)
		AddReportEntry("CRD created -> the agent with the default interval logs enforcing ClusterNetworkPolicy", enforcing)
		Expect(enforcing).To(BeNumerically("<", 10*time.Second), "with the 30 s default interval: no poll involved")
		AddReportEntry("CRD created -> a ClusterNetworkPolicy, created as soon as the apiserver accepted it, enforced (default interval; 200 ms interval)", fmt.Sprint(took))
		AddReportEntry("of which CRD created -> served by discovery (envtest's wait)", served)
		GinkgoWriter.Printf("CRD created -> served by discovery %v, enforcing logged %v, policy enforced %v; the CRD watch read %d B (%v) for the install\n",
			served, enforcing, took, trDefault.crdBytes.Load()-bytes0, trDefault.crdType.Load())
		Expect(took[0]).To(BeNumerically("<", 10*time.Second), "with the 30 s default interval: no poll involved")
		Expect(logDefault.count(`"msg":"enforcing ClusterNetworkPolicy"`, "v1beta1")).To(Equal(1))
		AddReportEntry("bytes the CRD watch read while the CRD was installed (one agent)", trDefault.crdBytes.Load()-bytes0)

		By("the CRD is deleted, its policies first: both agents stop reading ClusterNetworkPolicy, NetworkPolicy stays")
		Expect(crdClient().Delete(ctx, &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: cnpCRDName}})).To(Succeed())
		for i, fk := range []*nfttest.Fake{fakeDefault, fakeFast} {
			Eventually(fk.Dump, 30*time.Second, 20*time.Millisecond).ShouldNot(ContainSubstring("cnp/deny-x-"))
			Expect(fk.Dump()).To(ContainSubstring(npRule))
			l := []*agentLog{logDefault, logFast}[i]
			Eventually(l.String, 30*time.Second, 50*time.Millisecond).Should(ContainSubstring("the ClusterNetworkPolicy CRD is gone"))
		}
		By("its informer is gone: no more requests for ClusterNetworkPolicy (a running one would relist, and be refused, every few seconds)")
		cnpReqs := trFast.cnp.Load()
		Consistently(trFast.cnp.Load, 5*time.Second, 100*time.Millisecond).Should(Equal(cnpReqs))
		for _, l := range []*agentLog{logDefault, logFast} {
			Expect(l.String()).NotTo(ContainSubstring("reading the cache"), "no sync read a removed informer")
		}

		By("the CRD comes back: enforced again, within 10 s")
		t1 := time.Now()
		installServingBeta()
		createOnceServed(ctx, denyFrom("deny-x-"+f.sfx, f.ns("x")))
		for _, fk := range []*nfttest.Fake{fakeDefault, fakeFast} {
			Eventually(fk.Dump, 30*time.Second, 20*time.Millisecond).Should(And(MatchRegexp(cnpRule), ContainSubstring(npRule)))
		}
		again := time.Since(t1)
		AddReportEntry("CRD re-created -> ClusterNetworkPolicy enforced by both", again)
		AddReportEntry("CRD re-created -> the agent with the default interval logs enforcing ClusterNetworkPolicy",
			logDefault.at(`"msg":"enforcing ClusterNetworkPolicy"`).Sub(t1))
		Expect(again).To(BeNumerically("<", 10*time.Second))
		Expect(logDefault.count(`"msg":"enforcing ClusterNetworkPolicy"`, "v1beta1")).To(Equal(2))
		GinkgoWriter.Printf("requests at the end: default interval %s; 200 ms interval %s\n", &trDefault, &trFast)
	}, SpecTimeout(4*time.Minute))

	It("with an old ClusterRole (no CRD rule) says so and asks discovery instead, and watches the CRD once the rule is granted", func(ctx SpecContext) {
		Expect(cnpv1beta1.Install(scheme.Scheme)).To(Succeed())
		removeClusterPolicyCRD(ctx)
		DeferCleanup(func(ctx SpecContext) { removeClusterPolicyCRD(ctx) })
		f := newFixture()

		full := agentClusterRole()
		old := full.DeepCopy()
		old.Name = "nftpolicy-agent-old-" + f.sfx
		old.Rules = slices.DeleteFunc(old.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.APIGroups, "apiextensions.k8s.io") })
		Expect(old.Rules).To(HaveLen(len(full.Rules)-1), "config/rbac/role.yaml has one rule for the CRD")
		user := "crdwatch-old-" + f.sfx
		au := userWithRole(ctx, old, user)

		nodeName := "crd-old-" + f.sfx
		node := testNode(nodeName, "10.202.0.7", nil)
		Expect(k8sClient.Create(ctx, node)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, node))).To(Succeed()) })
		f.isolatedPod(ctx, nodeName, "10.1.0.11")
		npRule := `10.1.0.11 comment "x-` + f.sfx + `/a" : goto ing-`
		cnpRule := `10\.1\.0\.11 comment "x-` + f.sfx + `/a" : goto adm-in-[0-9a-f]+-cnp/deny-x-` + f.sfx + `-v4`

		var tr crdTraffic
		oldCfg := rest.CopyConfig(au.Config())
		oldCfg.WrapTransport = tr.wrap
		fake := nfttest.NewFake()
		log := startLoggedAgent(oldCfg, nodeName, fake, 500*time.Millisecond)
		mode := func(m string) func() float64 {
			return func() float64 { return testutil.ToFloat64(clusterPolicyCRDMode.WithLabelValues(m)) }
		}

		By("it says so: an error in its log, the metric, a Warning Event on its Node; and enforces NetworkPolicy")
		Eventually(log.String, 30*time.Second, 50*time.Millisecond).Should(ContainSubstring("may not list and watch customresourcedefinitions"))
		Expect(log.count(`"level":"error"`, "may not list and watch customresourcedefinitions")).To(Equal(1), "once")
		Expect(mode("poll")()).To(Equal(1.0))
		Expect(mode("watch")()).To(BeZero())
		Eventually(func() bool { return hasEvent(ctx, nodeName, "ClusterPolicyCRDWatchDenied") }, 30*time.Second, 200*time.Millisecond).Should(BeTrue())
		Eventually(fake.Dump, 30*time.Second, 20*time.Millisecond).Should(ContainSubstring(npRule))

		By("it asks discovery every 500 ms instead, two GETs a poll (v1beta1, v1alpha2) while the CRD is absent")
		d0 := tr.discovery.Load()
		time.Sleep(3 * time.Second)
		polled := tr.discovery.Load() - d0
		AddReportEntry("discovery GETs of the fallback poll in 3 s at 500 ms, without the CRD", polled)
		Expect(polled).To(BeNumerically(">=", 6), "~6 polls of 2 GETs")
		Expect(polled).To(BeNumerically("<=", 16))

		By("the CRD appears: the discovery poll finds it")
		installServingBeta()
		createOnceServed(ctx, denyFrom("deny-x-"+f.sfx, f.ns("x")))
		Eventually(fake.Dump, 30*time.Second, 20*time.Millisecond).Should(And(MatchRegexp(cnpRule), ContainSubstring(npRule)))

		By("the rule is granted: the agent watches the CRD again, without a restart (its refused watch retries every 30-60 s)")
		var role rbacv1.ClusterRole
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: old.Name}, &role)).To(Succeed())
		role.Rules = full.Rules
		Expect(k8sClient.Update(ctx, &role)).To(Succeed())
		Eventually(mode("watch"), 3*time.Minute, 200*time.Millisecond).Should(Equal(1.0))
		Expect(mode("poll")()).To(BeZero())
		Expect(log.String()).To(ContainSubstring("may watch the ClusterNetworkPolicy CRD again"))
		Eventually(func() bool { return hasEvent(ctx, nodeName, "ClusterPolicyCRDWatched") }, 30*time.Second, 200*time.Millisecond).Should(BeTrue())
		Expect(fake.Dump()).To(MatchRegexp(cnpRule), "nothing changed in the table")

		By("the CRD is deleted: followed, and NetworkPolicy stays")
		Expect(crdClient().Delete(ctx, &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: cnpCRDName}})).To(Succeed())
		Eventually(log.String, 30*time.Second, 50*time.Millisecond).Should(ContainSubstring("the ClusterNetworkPolicy CRD is gone"))
		Eventually(fake.Dump, 30*time.Second, 20*time.Millisecond).ShouldNot(ContainSubstring("cnp/deny-x-"))
		Expect(fake.Dump()).To(ContainSubstring(npRule))
	}, SpecTimeout(6*time.Minute))

	It("without the clusternetworkpolicies rule says that ClusterNetworkPolicy is served but not enforced, and goes on enforcing NetworkPolicy", func(ctx SpecContext) {
		Expect(cnpv1beta1.Install(scheme.Scheme)).To(Succeed())
		removeClusterPolicyCRD(ctx)
		DeferCleanup(func(ctx SpecContext) { removeClusterPolicyCRD(ctx) })
		warn := cnpListWarn
		cnpListWarn = 2 * time.Second
		DeferCleanup(func() { cnpListWarn = warn })
		f := newFixture()

		role := agentClusterRole()
		role.Name = "nftpolicy-agent-nocnp-" + f.sfx
		n := len(role.Rules)
		role.Rules = slices.DeleteFunc(role.Rules, func(r rbacv1.PolicyRule) bool { return slices.Contains(r.Resources, cnpResource) })
		Expect(role.Rules).To(HaveLen(n - 1))
		user := "crdwatch-nocnp-" + f.sfx
		au := userWithRole(ctx, role, user)

		f.isolatedPod(ctx, "node-1", "10.1.0.12")
		fake := nfttest.NewFake()
		log := startLoggedAgent(au.Config(), "node-1", fake, 0)
		Eventually(fake.Dump, 30*time.Second, 20*time.Millisecond).Should(ContainSubstring(`10.1.0.12 comment "x-` + f.sfx + `/a" : goto ing-`))

		installServingBeta()
		Eventually(func() int {
			return log.count(`"level":"error"`, "ClusterNetworkPolicy is served but not enforced", "has not completed")
		}, 30*time.Second, 100*time.Millisecond).Should(Equal(1))
		Expect(log.count(`"msg":"enforcing ClusterNetworkPolicy"`)).To(BeZero())
		By("the policies in force stay: a NetworkPolicy change is still enforced")
		f.pod(ctx, "x", "b", podOpts{node: "node-1", ips: []string{"10.1.0.13"}})
		Eventually(fake.Dump, 30*time.Second, 20*time.Millisecond).Should(ContainSubstring(`10.1.0.13 comment "x-` + f.sfx + `/b" : goto ing-`))
	}, SpecTimeout(3*time.Minute))
})

// userWithRole creates role, binds it to a new envtest user named user, and
// returns that user; both objects go when the spec ends.
func userWithRole(ctx SpecContext, role *rbacv1.ClusterRole, user string) *envtest.AuthenticatedUser {
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role.Name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}
	for _, o := range []client.Object{role, binding} {
		Expect(k8sClient.Create(ctx, o)).To(Succeed())
		DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, o))).To(Succeed()) })
	}
	au, err := testEnv.AddUser(envtest.User{Name: user}, nil)
	Expect(err).NotTo(HaveOccurred())
	return au
}
