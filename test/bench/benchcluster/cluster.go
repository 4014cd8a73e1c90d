// Package benchcluster is the cluster the control-plane benchmarks measure
// against, built the same way for the API server (test/bench/controlplane) and
// for the in-process sync benchmarks (controllers): 100 namespaces (labels ns,
// team a..e), 10,000 pods (100 per namespace, pod i on node-(i % 100), labels app
// of 50 and tier of 5, named port serve-80-tcp/80, an address each) and 1,000
// policies in four shapes in rotation. Seeded: the same cluster every run.
// Shape100k is the same recipe at 100,000 pods in 2,000 namespaces on 2,000
// nodes with 5,000 policies.
package benchcluster

import (
	"fmt"
	"math/rand/v2"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// The cluster's shape.
const (
	Namespaces    = 100
	PodsPerNS     = 100 // 10,000 pods
	Nodes         = 100 // pod i runs on node-(i % Nodes): 100 pods per node
	PoliciesPerNS = 10  // 1,000 policies
	Apps          = 50
	Tiers         = 5
	Teams         = "abcde"
	NamedPort     = "serve-80-tcp"
)

// Shape is a cluster's size; the rest (labels, policy shapes, addresses) is
// the same at every size.
type Shape struct {
	Namespaces, PodsPerNS, Nodes int
	// Policies is spread over the namespaces, namespace n getting one more
	// than Policies/Namespaces when n < Policies%Namespaces.
	Policies int
}

// Shapes: the 10k point (Objects) and the 100k point of a 2,000-5,000 node
// cluster (the agent's node holds 50 pods).
var (
	Shape10k  = Shape{Namespaces: Namespaces, PodsPerNS: PodsPerNS, Nodes: Nodes, Policies: Namespaces * PoliciesPerNS}
	Shape100k = Shape{Namespaces: 2000, PodsPerNS: 50, Nodes: 2000, Policies: 5000}
)

// Pods is the number of pods of the shape.
func (s Shape) Pods() int { return s.Namespaces * s.PodsPerNS }

// Objects returns the 10k cluster's objects, pods with their status (phase and
// address) filled in, in creation order.
func Objects() ([]*corev1.Namespace, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	return Shape10k.Objects()
}

// Objects returns the cluster's objects, pods with their status (phase and
// address) filled in, in creation order. The 10k shape gives the same objects
// as before shapes existed.
func (s Shape) Objects() ([]*corev1.Namespace, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	rng := rand.New(rand.NewPCG(5, 1))
	var nss []*corev1.Namespace
	for n := range s.Namespaces {
		name := fmt.Sprintf("ns-%d", n)
		nss = append(nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{"ns": name, "team": string(Teams[n%len(Teams)])}}})
	}
	// Policies select apps that exist in their namespace.
	appsIn := make([][]int, s.Namespaces)
	pods := make([]*corev1.Pod, 0, s.Pods())
	for i := range s.Pods() {
		n := i / s.PodsPerNS
		app := rng.IntN(Apps)
		appsIn[n] = append(appsIn[n], app)
		ip := fmt.Sprintf("10.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255)
		pods = append(pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("pod-%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": fmt.Sprintf("tier-%d", rng.IntN(Tiers))}},
			Spec:   PodSpecOn(fmt.Sprintf("node-%d", i%s.Nodes)),
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		})
	}
	var nps []*networkingv1.NetworkPolicy
	for n := range s.Namespaces {
		count := s.Policies / s.Namespaces
		if n < s.Policies%s.Namespaces {
			count++
		}
		for j := range count {
			app := appsIn[n][rng.IntN(len(appsIn[n]))]
			nps = append(nps, mixedPolicy(fmt.Sprintf("ns-%d", n), j, fmt.Sprintf("app-%d", app), rng))
		}
	}
	return nss, pods, nps
}

// PodSpecOn is the spec of every pod of the cluster, on node.
func PodSpecOn(node string) corev1.PodSpec {
	return corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
		Name: "serve", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53",
		Ports: []corev1.ContainerPort{{Name: NamedPort, ContainerPort: 80, Protocol: corev1.ProtocolTCP}},
	}}}
}

// mixedPolicy is policy j of a namespace: four shapes in rotation, from a plain
// same-namespace tier peer on a numbered port to ingress plus egress.
func mixedPolicy(ns string, j int, app string, rng *rand.Rand) *networkingv1.NetworkPolicy {
	tier := func() *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprintf("tier-%d", rng.IntN(Tiers))}}
	}
	team := func() *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"team": string(Teams[rng.IntN(len(Teams))])}}
	}
	tcp := corev1.ProtocolTCP
	udp := corev1.ProtocolUDP
	port80 := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr.To(intstr.FromInt32(80))}}
	named := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr.To(intstr.FromString(NamedPort))}}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np-%d", j)},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}},
	}
	switch j % 4 {
	case 0:
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: port80}}
	case 1:
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: team()}}, Ports: named}}
	case 2:
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: tier(), NamespaceSelector: team()}, {PodSelector: tier()}},
			Ports: port80,
		}}
	case 3:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: named}}
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
			{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: team()}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: ptr.To(intstr.FromInt32(53))}}},
			{To: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: port80},
		}
	}
	return np
}
