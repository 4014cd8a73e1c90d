package e2e

// ClusterNetworkPolicy: the Admin and Baseline tiers around NetworkPolicy, on real
// traffic between pods and nodes.

import (
	"context"
	"net/netip"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// Building ClusterNetworkPolicies.

func cnp(name string, tier cnpv1.Tier, priority int32, subject cnpv1.ClusterNetworkPolicySubject) *cnpv1.ClusterNetworkPolicy {
	return &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnpv1.ClusterNetworkPolicySpec{Tier: tier, Priority: priority, Subject: subject}}
}

func subjectNS(names ...string) cnpv1.ClusterNetworkPolicySubject {
	return cnpv1.ClusterNetworkPolicySubject{Namespaces: nsIn(names...)}
}

// nsIn selects the namespaces named (every namespace when none is).
func nsIn(names ...string) *metav1.LabelSelector {
	if len(names) == 0 {
		return &metav1.LabelSelector{}
	}
	return expr("kubernetes.io/metadata.name", metav1.LabelSelectorOpIn, names...)
}

func inRule(action cnpv1.ClusterNetworkPolicyRuleAction, fromNS []string, protos ...cnpv1.ClusterNetworkPolicyProtocol) cnpv1.ClusterNetworkPolicyIngressRule {
	return cnpv1.ClusterNetworkPolicyIngressRule{Action: action,
		From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: nsIn(fromNS...)}}, Protocols: protos}
}

func tcpPort(n int32) cnpv1.ClusterNetworkPolicyProtocol {
	return cnpv1.ClusterNetworkPolicyProtocol{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: n}}}
}

const (
	accept = cnpv1.ClusterNetworkPolicyRuleActionAccept
	deny   = cnpv1.ClusterNetworkPolicyRuleActionDeny
	pass   = cnpv1.ClusterNetworkPolicyRuleActionPass
)

func createCNP(ctx context.Context, c *cnpv1.ClusterNetworkPolicy) {
	GinkgoHelper()
	Expect(env.Create(ctx, c)).To(Succeed())
}

var _ = Describe("ClusterNetworkPolicy", func() {
	It("Admin Deny wins over a NetworkPolicy allow", func(ctx SpecContext) {
		create(ctx, "x", policy("allow-all", nil, ingress(from())))
		c := cnp("deny-y-to-x", cnpv1.AdminTier, 10, subjectNS("x"))
		c.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(deny, []string{"y"})}
		createCNP(ctx, c)

		r := reach(true)
		r.ExpectPeer(ns("y"), ns("x"), false)
		validate(ctx, framework.TCP(r, 80))
	}, specTimeout)

	It("Admin Accept wins over a NetworkPolicy deny, on its port only", func(ctx SpecContext) {
		create(ctx, "x", policy("deny-all", nil, ingress()))
		c := cnp("z-to-x-80", cnpv1.AdminTier, 10, subjectNS("x"))
		c.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(accept, []string{"z"}, tcpPort(80))}
		createCNP(ctx, c)

		on80 := reach(true)
		on80.ExpectPeer(anyone(), ns("x"), false)
		on80.ExpectPeer(ns("z"), ns("x"), true)
		on81 := reach(true)
		on81.ExpectPeer(anyone(), ns("x"), false)
		validate(ctx, framework.TCP(on80, 80), framework.TCP(on81, 81))
	}, specTimeout)

	It("Admin Pass hands over to NetworkPolicy where it isolates, and to Baseline elsewhere", func(ctx SpecContext) {
		// z's traffic to x and y: passed by Admin ahead of an Admin Deny; x's
		// NetworkPolicy allows z (and isolates x), y has none, so Baseline's
		// Deny decides for y.
		create(ctx, "x", policy("from-z", nil, ingress(from(nsPeer(matching("ns", "z"))))))
		passZ := cnp("pass-z", cnpv1.AdminTier, 1, subjectNS("x", "y"))
		passZ.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(pass, []string{"z"})}
		denyZ := cnp("deny-z", cnpv1.AdminTier, 5, subjectNS("x", "y"))
		denyZ.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(deny, []string{"z"})}
		baseline := cnp("baseline-deny-z", cnpv1.BaselineTier, 1, subjectNS("x", "y"))
		baseline.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(deny, []string{"z"})}
		for _, c := range []*cnpv1.ClusterNetworkPolicy{passZ, denyZ, baseline} {
			createCNP(ctx, c)
		}

		r := reach(true)
		r.ExpectPeer(anyone(), ns("x"), false) // x/from-z isolates x
		r.ExpectPeer(ns("z"), ns("x"), true)   // passed, allowed by x/from-z
		r.ExpectPeer(ns("z"), ns("y"), false)  // passed, denied by Baseline
		validate(ctx, framework.TCP(r, 80))
	}, specTimeout)

	It("Baseline default deny gives way to a NetworkPolicy allow", func(ctx SpecContext) {
		c := cnp("default-deny", cnpv1.BaselineTier, 100, subjectNS())
		c.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(deny, nil)}
		createCNP(ctx, c)
		create(ctx, "y", policy("from-x", nil, ingress(from(nsPeer(matching("ns", "x"))))))

		r := reach(false)
		r.ExpectPeer(ns("x"), ns("y"), true)
		validate(ctx, framework.TCP(r, 80))
	}, specTimeout)

	It("judges egress to nodes (a pod's own node through the input hook) and to networks that hold pods", func(ctx SpecContext) {
		xa := pod("x", "a")
		nodes := cnp("x-no-nodes", cnpv1.AdminTier, 10, subjectNS("x"))
		nodes.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: deny,
			To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{}}}}}
		nets := cnp("y-not-x-a", cnpv1.AdminTier, 10, subjectNS("y"))
		nets.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: deny,
			To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{
				cnpv1.CIDR(netip.PrefixFrom(xa.IPv4, 32).String()), cnpv1.CIDR(netip.PrefixFrom(xa.IPv6, 128).String())}}}}}
		createCNP(ctx, nodes)
		createCNP(ctx, nets)

		pods := reach(true)
		pods.ExpectPeer(ns("y"), nsPod("x", "a"), false)
		podsToNodes := framework.NewExpectationFromTo(env.Peers(), env.Nodes(), true)
		for _, p := range env.Pods("x") {
			for _, n := range env.Cluster.Nodes() {
				podsToNodes.Expect(p, n, false) // its own node included
			}
		}
		both := []cluster.Protocol{cluster.TCP, cluster.UDP}
		validate(ctx, framework.TCP(pods, 80), framework.Check{Protocols: both, Want: podsToNodes})
	}, specTimeout)

	It("follows a priority change live", func(ctx SpecContext) {
		acceptY := cnp("accept-y", cnpv1.AdminTier, 10, subjectNS("x"))
		acceptY.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(accept, []string{"y"})}
		denyY := cnp("deny-y", cnpv1.AdminTier, 20, subjectNS("x"))
		denyY.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{inRule(deny, []string{"y"})}
		createCNP(ctx, acceptY)
		createCNP(ctx, denyY)
		validate(ctx, framework.TCP(reach(true), 80))

		By("accept-y goes behind deny-y")
		var cur cnpv1.ClusterNetworkPolicy
		Expect(env.CP.Client.Get(ctx, client.ObjectKey{Name: "accept-y"}, &cur)).To(Succeed())
		cur.Spec.Priority = 30
		Expect(env.Update(ctx, &cur)).To(Succeed())
		r := reach(true)
		r.ExpectPeer(ns("y"), ns("x"), false)
		validate(ctx, framework.TCP(r, 80))
	}, specTimeout)
})
