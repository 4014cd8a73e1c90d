package e2e

import (
	"context"
	"net/netip"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// Building policies. A policy is a name, a pod selector and ingress and/or
// egress rule lists; ingress() and egress() also set the policy type, so that
// ingress() with no rules is a default deny, as upstream's SetSpecIngressRules.

type specOption func(*netv1.NetworkPolicySpec)

// policy selects the pods matching labels (every pod if labels is empty).
func policy(name string, labels map[string]string, opts ...specOption) *netv1.NetworkPolicy {
	return policySelecting(name, metav1.LabelSelector{MatchLabels: labels}, opts...)
}

func policySelecting(name string, sel metav1.LabelSelector, opts ...specOption) *netv1.NetworkPolicy {
	np := &netv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       netv1.NetworkPolicySpec{PodSelector: sel},
	}
	for _, o := range opts {
		o(&np.Spec)
	}
	return np
}

func ingress(rules ...netv1.NetworkPolicyIngressRule) specOption {
	return func(s *netv1.NetworkPolicySpec) {
		s.PolicyTypes = append(s.PolicyTypes, netv1.PolicyTypeIngress)
		s.Ingress = append([]netv1.NetworkPolicyIngressRule{}, rules...)
	}
}

func egress(rules ...netv1.NetworkPolicyEgressRule) specOption {
	return func(s *netv1.NetworkPolicySpec) {
		s.PolicyTypes = append(s.PolicyTypes, netv1.PolicyTypeEgress)
		s.Egress = append([]netv1.NetworkPolicyEgressRule{}, rules...)
	}
}

func from(peers ...netv1.NetworkPolicyPeer) netv1.NetworkPolicyIngressRule {
	return netv1.NetworkPolicyIngressRule{From: peers}
}

func to(peers ...netv1.NetworkPolicyPeer) netv1.NetworkPolicyEgressRule {
	return netv1.NetworkPolicyEgressRule{To: peers}
}

// fromOn is an ingress rule from peers on ports; no peers means from anywhere.
func fromOn(ports []netv1.NetworkPolicyPort, peers ...netv1.NetworkPolicyPeer) netv1.NetworkPolicyIngressRule {
	return netv1.NetworkPolicyIngressRule{From: peers, Ports: ports}
}

// toOn is an egress rule to peers on ports; no peers means to anywhere.
func toOn(ports []netv1.NetworkPolicyPort, peers ...netv1.NetworkPolicyPeer) netv1.NetworkPolicyEgressRule {
	return netv1.NetworkPolicyEgressRule{To: peers, Ports: ports}
}

func ports(p ...netv1.NetworkPolicyPort) []netv1.NetworkPolicyPort { return p }

// Selectors and peers.

func labels(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func matching(kv ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: labels(kv...)}
}

func expr(key string, op metav1.LabelSelectorOperator, values ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

func podPeer(sel *metav1.LabelSelector) netv1.NetworkPolicyPeer {
	return netv1.NetworkPolicyPeer{PodSelector: sel}
}

func nsPeer(sel *metav1.LabelSelector) netv1.NetworkPolicyPeer {
	return netv1.NetworkPolicyPeer{NamespaceSelector: sel}
}

func nsPodPeer(ns, pod *metav1.LabelSelector) netv1.NetworkPolicyPeer {
	return netv1.NetworkPolicyPeer{NamespaceSelector: ns, PodSelector: pod}
}

func blockPeer(cidr string, except ...string) netv1.NetworkPolicyPeer {
	return netv1.NetworkPolicyPeer{IPBlock: &netv1.IPBlock{CIDR: cidr, Except: except}}
}

// Ports.

var (
	tcp  = corev1.ProtocolTCP
	udp  = corev1.ProtocolUDP
	sctp = corev1.ProtocolSCTP
)

// port is a numbered port; protocol nil means the API's default, TCP.
func port(n int, proto *corev1.Protocol) netv1.NetworkPolicyPort {
	p := intstr.FromInt32(int32(n))
	return netv1.NetworkPolicyPort{Port: &p, Protocol: proto}
}

func portRange(n, end int, proto *corev1.Protocol) netv1.NetworkPolicyPort {
	p := port(n, proto)
	e := int32(end)
	p.EndPort = &e
	return p
}

func namedPort(name string, proto *corev1.Protocol) netv1.NetworkPolicyPort {
	p := intstr.FromString(name)
	return netv1.NetworkPolicyPort{Port: &p, Protocol: proto}
}

// anyPort is every port of a protocol.
func anyPort(proto *corev1.Protocol) netv1.NetworkPolicyPort {
	return netv1.NetworkPolicyPort{Protocol: proto}
}

// Using the environment.

// create creates a policy in namespace ns.
func create(ctx context.Context, ns string, np *netv1.NetworkPolicy) {
	GinkgoHelper()
	np.Namespace = ns
	Expect(env.Create(ctx, np)).To(Succeed())
}

// update replaces the spec of the policy ns/np.Name with np's.
func update(ctx context.Context, ns string, np *netv1.NetworkPolicy) {
	GinkgoHelper()
	var cur netv1.NetworkPolicy
	Expect(env.CP.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: np.Name}, &cur)).To(Succeed())
	cur.Spec = np.Spec
	Expect(env.Update(ctx, &cur)).To(Succeed())
}

// remove deletes the policy ns/name.
func remove(ctx context.Context, ns, name string) {
	GinkgoHelper()
	Expect(env.Delete(ctx, &netv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})).To(Succeed())
}

// pod returns a standard pod as a probe endpoint.
func pod(ns, name string) *cluster.Pod {
	GinkgoHelper()
	p := env.Pod(ns, name)
	Expect(p).NotTo(BeNil(), "pod %s/%s", ns, name)
	return p
}

// reach is an expectation over every standard pod, all connected or none.
func reach(connected bool) *framework.Expectation {
	return framework.NewExpectation(env.Peers(), connected)
}

// Peers of expectations: every endpoint, a namespace's pods, one pod.
func anyone() cluster.Peer              { return cluster.Peer{} }
func ns(name string) cluster.Peer       { return cluster.Peer{Namespace: name} }
func nsPod(name, p string) cluster.Peer { return cluster.Peer{Namespace: name, Pod: p} }

// hostCIDR is a's /32 or /128; largeCIDR the /4 around a, like upstream's
// makeLargeCIDRForIP.
func hostCIDR(a netip.Addr) string  { return netip.PrefixFrom(a, a.BitLen()).String() }
func largeCIDR(a netip.Addr) string { return netip.PrefixFrom(a, 4).Masked().String() }

// validate waits until every check holds and fails the spec otherwise.
func validate(ctx context.Context, checks ...framework.Check) {
	GinkgoHelper()
	res, err := env.WaitForMatrix(ctx, checks...)
	Expect(err).NotTo(HaveOccurred())
	By(res.String())
}
