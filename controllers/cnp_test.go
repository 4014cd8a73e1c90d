package controllers

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	cnpv1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// clusterPolicyCRD is the module's experimental ClusterNetworkPolicy CRD
// (config/crd/experimental of sigs.k8s.io/network-policy-api, from the module
// cache): the standard one has no nodes or domainNames peers, and prunes them.
func clusterPolicyCRD() *apiextensionsv1.CustomResourceDefinition {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	Expect(err).NotTo(HaveOccurred(), "go list -m sigs.k8s.io/network-policy-api")
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd", "experimental")
	data, err := os.ReadFile(filepath.Join(dir, "policy.networking.k8s.io_clusternetworkpolicies.yaml"))
	Expect(err).NotTo(HaveOccurred())
	crd := &apiextensionsv1.CustomResourceDefinition{}
	Expect(yaml.Unmarshal(data, crd)).To(Succeed())
	return crd
}

// serveOnly makes crd serve (and store) only version v, or every version with v
// stored when also is true.
func serveOnly(crd *apiextensionsv1.CustomResourceDefinition, v string, also bool) {
	for i := range crd.Spec.Versions {
		ver := &crd.Spec.Versions[i]
		ver.Storage = ver.Name == v
		ver.Served = also || ver.Name == v
	}
}

var _ = Describe("ClusterNetworkPolicy", func() {
	It("is optional: NetworkPolicy is enforced without its CRD, v1alpha2 is enforced once a CRD serving only it appears, v1beta1 when served", func(ctx SpecContext) {
		Expect(cnpv1beta1.Install(scheme.Scheme)).To(Succeed())
		Expect(cnpv1alpha2.Install(scheme.Scheme)).To(Succeed())
		removeClusterPolicyCRD(ctx)
		DeferCleanup(func(ctx SpecContext) { removeClusterPolicyCRD(ctx) })

		fake := nfttest.NewFake()
		log := startLoggedAgent(cfg, "node-1", fake, 0)
		f := newFixture()
		f.isolatedPod(ctx, "node-1", "10.1.0.10")
		By("no CRD: NetworkPolicy alone")
		Eventually(fake.Dump, 20*time.Second, 20*time.Millisecond).Should(ContainSubstring(`10.1.0.10 comment "x-` + f.sfx + `/a" : goto ing-`))
		Expect(fake.Dump()).NotTo(ContainSubstring("admin-ingress"))

		By("a CRD serving only v1alpha2 appears: the running agent enforces it")
		crd := clusterPolicyCRD()
		serveOnly(crd, "v1alpha2", false)
		_, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{CRDs: []*apiextensionsv1.CustomResourceDefinition{crd}})
		Expect(err).NotTo(HaveOccurred())
		deny := &cnpv1alpha2.ClusterNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "deny-x-" + f.sfx},
			Spec: cnpv1alpha2.ClusterNetworkPolicySpec{
				Tier: cnpv1alpha2.AdminTier, Priority: 10,
				Subject: cnpv1alpha2.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": f.ns("x")}}},
				Ingress: []cnpv1alpha2.ClusterNetworkPolicyIngressRule{{
					Action: cnpv1alpha2.ClusterNetworkPolicyRuleActionDeny,
					From:   []cnpv1alpha2.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}},
				}},
			},
		}
		domains := &cnpv1alpha2.ClusterNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "domains-" + f.sfx},
			Spec: cnpv1alpha2.ClusterNetworkPolicySpec{
				Tier: cnpv1alpha2.AdminTier, Priority: 20,
				Subject: cnpv1alpha2.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": f.ns("x")}}},
				Egress: []cnpv1alpha2.ClusterNetworkPolicyEgressRule{{
					Action: cnpv1alpha2.ClusterNetworkPolicyRuleActionAccept,
					To:     []cnpv1alpha2.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1alpha2.DomainName{"example.com"}}},
				}},
			},
		}
		for _, c := range []client.Object{deny, domains} {
			Eventually(func() error { return k8sClient.Create(ctx, c) }, 20*time.Second, 100*time.Millisecond).Should(Succeed())
			DeferCleanup(func(ctx SpecContext) { Expect(client.IgnoreNotFound(k8sClient.Delete(ctx, c))).To(Succeed()) })
		}
		Eventually(fake.Dump, 30*time.Second, 50*time.Millisecond).Should(And(
			ContainSubstring(`counter drop comment "cnp/deny-x-`+f.sfx+` ingress rule 0: Deny"`),
			MatchRegexp(`10\.1\.0\.10 comment "x-`+f.sfx+`/a" : goto adm-in-[0-9a-f]+-cnp/deny-x-`+f.sfx+`-v4`),
			ContainSubstring(`10.1.0.10 comment "x-`+f.sfx+`/a" : goto ing-`), // NetworkPolicy still enforced
		))

		By("a problem (domainNames) is a Warning Event on the ClusterNetworkPolicy")
		Eventually(func() bool {
			var evs eventsv1.EventList
			Expect(k8sClient.List(ctx, &evs)).To(Succeed())
			for _, e := range evs.Items {
				if e.Regarding.Name == domains.Name && e.Reason == "NotEnforceable" && strings.Contains(e.Note, "domainNames") {
					return true
				}
			}
			return false
		}, 20*time.Second, 100*time.Millisecond).Should(BeTrue())

		By("the CRD serves v1beta1 too (stored): the running agent moves to v1beta1, a new agent reads v1beta1")
		Expect(log.count(`"msg":"enforcing ClusterNetworkPolicy"`, "v1alpha2")).To(Equal(1))
		crd = clusterPolicyCRD()
		serveOnly(crd, "v1beta1", true)
		_, err = envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{CRDs: []*apiextensionsv1.CustomResourceDefinition{crd}})
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() int { return log.count(`"msg":"enforcing ClusterNetworkPolicy"`, "v1beta1") }, 30*time.Second, 50*time.Millisecond).Should(Equal(1))
		Expect(fake.Dump()).To(MatchRegexp(`10\.1\.0\.10 comment "x-` + f.sfx + `/a" : goto adm-in-[0-9a-f]+-cnp/deny-x-` + f.sfx + `-v4`))
		fake2 := nfttest.NewFake()
		startLoggedAgent(cfg, "node-1", fake2, 0)
		Eventually(fake2.Dump, 30*time.Second, 50*time.Millisecond).Should(
			MatchRegexp(`10\.1\.0\.10 comment "x-` + f.sfx + `/a" : goto adm-in-[0-9a-f]+-cnp/deny-x-` + f.sfx + `-v4`))
		var got cnpv1beta1.ClusterNetworkPolicy
		Expect(k8sClient.Get(ctx, client.ObjectKey{Name: deny.Name}, &got)).To(Succeed())
		Expect(got.Spec.Tier).To(Equal(cnpv1beta1.AdminTier))
	}, SpecTimeout(3*time.Minute))
})

// isolatedPod makes pod x/a on node with address ip, isolated for ingress by a
// deny-all NetworkPolicy: the table's map sends ip to its ingress chain.
func (f *fixture) isolatedPod(ctx context.Context, node, ip string) {
	f.namespace(ctx, "x", map[string]string{})
	f.pod(ctx, "x", "a", podOpts{node: node, ips: []string{ip}})
	Expect(k8sClient.Create(ctx, &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("x"), Name: "deny-all"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	})).To(Succeed())
}
