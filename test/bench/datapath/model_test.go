package datapath

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The synthetic cluster every scenario shares: 10,000 pods in 100 namespaces on
// 100 nodes (so ~100 local pods per node) and 1,000 policies in all.
const (
	numPods       = 10_000
	numPolicies   = 1_000
	numNamespaces = 100
	numNodes      = 100
	numGroups     = 1_000 // label grp=g-N: ten synthetic pods per group
	benchNS       = "bench"
	benchPort     = 5001 // the connection server; see load_test.go
	rrPort        = 5002
	bulkPort      = 5003
)

// scenario is one policy mix around the server pod. selecting policies in the
// server's namespace select it; policy k admits pods labelled grp=g-k, and the
// clients carry the last one's group, so the allowing policy comes last in
// name order. cidrs > 0 adds one more policy selecting the server, named to
// come first, that admits that many disjoint ipBlock CIDRs (none of which holds
// a client). The other policies (1,000 in all) live in the synthetic
// namespaces and never select the server.
type scenario struct {
	name      string
	selecting int
	cidrs     int
}

func (s scenario) clientGroup() string { return fmt.Sprintf("g-%d", s.selecting-1) }

// realPod is a pod that exists as a network namespace (see the cluster package);
// every other pod exists only in the snapshot.
type realPod struct {
	name   string
	node   int
	ip     netip.Addr
	labels map[string]string
}

// objects is the cluster one scenario describes, as the apiserver would hold it.
type objects struct {
	namespaces []*corev1.Namespace
	pods       []*corev1.Pod
	policies   []*networkingv1.NetworkPolicy
}

// build returns the objects of scenario s, with the real pods in it. The
// clients (labels role=client) get the allowing group's label; the stranger
// (role=stranger) gets none, so every scenario denies it.
func build(s scenario, real []realPod) objects {
	var o objects
	teams := []string{"red", "green", "blue", "gold", "grey"}
	for i := range numNamespaces {
		o.namespaces = append(o.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name:   fmt.Sprintf("ns-%03d", i),
			Labels: map[string]string{"kubernetes.io/metadata.name": fmt.Sprintf("ns-%03d", i), "team": teams[i%len(teams)]},
		}})
	}
	o.namespaces = append(o.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: benchNS, Labels: map[string]string{"kubernetes.io/metadata.name": benchNS, "team": "bench"},
	}})
	for i := range numPods {
		ns, j := i%numNamespaces, i/numNamespaces
		o.pods = append(o.pods, pod(fmt.Sprintf("ns-%03d", ns), fmt.Sprintf("pod-%d", j), fmt.Sprintf("node-%d", j%numNodes),
			// 10.100.0.0/14: clear of the cluster's 10.244.0.0/16.
			netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}),
			map[string]string{
				"app":  fmt.Sprintf("app-%d", j%10),
				"tier": []string{"web", "api", "db"}[j%3],
				"grp":  fmt.Sprintf("g-%d", i%numGroups),
			}))
	}
	for _, r := range real {
		labels := map[string]string{}
		for k, v := range r.labels {
			labels[k] = v
		}
		if labels["role"] == "client" {
			labels["grp"] = s.clientGroup()
		}
		o.pods = append(o.pods, pod(benchNS, r.name, fmt.Sprintf("node-%d", r.node), r.ip, labels))
	}

	tcp := corev1.ProtocolTCP
	ports := func(p int) []networkingv1.NetworkPolicyPort {
		v := intstr.FromInt(p)
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &v}}
	}
	portRange := func(first, last int32) []networkingv1.NetworkPolicyPort {
		v := intstr.FromInt32(first)
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &v, EndPort: &last}}
	}
	udp := corev1.ProtocolUDP
	udpPort := func(p int) []networkingv1.NetworkPolicyPort {
		v := intstr.FromInt(p)
		return []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &v}}
	}
	ingress := []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	server := metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}
	all := &metav1.LabelSelector{}
	for k := range s.selecting {
		o.policies = append(o.policies, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: fmt.Sprintf("sel-%04d", k)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: server,
				PolicyTypes: ingress,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: all,
						PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"grp": fmt.Sprintf("g-%d", k)}},
					}},
					// One rule: the connection, rr and bulk servers, and the
					// datagrams of the new-flow measurement.
					Ports: append(portRange(benchPort, bulkPort), udpPort(benchPort)...),
				}},
			},
		})
	}
	if s.cidrs > 0 {
		var from []networkingv1.NetworkPolicyPeer
		for k := range s.cidrs {
			// /28 blocks 32 addresses apart in 100.64.0.0/10: disjoint and not
			// adjacent, so no compiler can merge them into fewer ranges.
			a := 100<<24 | 64<<16 | uint32(k*32)
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), 28)
			from = append(from, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: p.String()}})
		}
		o.policies = append(o.policies, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: "cidr"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: server,
				PolicyTypes: ingress,
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: from, Ports: append(ports(benchPort), udpPort(benchPort)...)}},
			},
		})
	}
	for i := 0; len(o.policies) < numPolicies; i++ {
		ns := fmt.Sprintf("ns-%03d", i%numNamespaces)
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pol-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", i%10)}},
				PolicyTypes: ingress,
			},
		}
		if i%2 == 0 { // from one tier of the same namespace
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": []string{"web", "api", "db"}[i%3]}}}},
				Ports: ports(8080),
			}}
		} else { // from one team's namespaces
			np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": teams[i%len(teams)]}}}},
				Ports: ports(9090),
			}}
		}
		o.policies = append(o.policies, np)
	}
	return o
}

func pod(ns, name, node string, ip netip.Addr, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(),
			PodIPs: []corev1.PodIP{{IP: ip.String()}}},
	}
}
