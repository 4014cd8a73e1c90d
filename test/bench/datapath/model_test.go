package datapath

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
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
	cnps       []*cnpv1.ClusterNetworkPolicy
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

// withTiers adds to o the ClusterNetworkPolicies of B10's tiered scenario, a
// cluster operator's usual guard rails, and the two DNS pods one of them names
// (on other nodes). A new flow from the client to the server walks, with the
// typical scenario's NetworkPolicies:
//
//   - the client's Admin egress: `dns` (Accept to kube-system's named port dns:
//     a lookup of address . protocol . port, no match) and `no-smtp` (Deny to
//     every address on TCP 25: the peers match, then a protocol . port lookup,
//     no match);
//   - its Baseline egress (no NetworkPolicy isolates the client for egress):
//     `no-nodeports` (Deny to every address on TCP 30000-32767: a range, so an
//     interval set in every shape; no match);
//   - the server's Admin ingress: `bench-to-netpol` (Pass from every namespace on
//     the bench's ports, TCP 5001-5003 and UDP 5001: a protocol . port lookup
//     that matches), then NetworkPolicy, which allows it.
//
// So three of its port lookups are the ones the ClusterNetworkPolicy port split
// turned from interval sets (pipapo) into hashes, and one stays an interval set.
func withTiers(o objects) objects {
	o.namespaces = append(o.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "kube-system", Labels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}}})
	for i, ip := range []string{"10.99.0.10", "10.99.1.10"} {
		p := pod("kube-system", fmt.Sprintf("coredns-%d", i), fmt.Sprintf("node-%d", 10+i), netip.MustParseAddr(ip), map[string]string{"k8s-app": "kube-dns"})
		p.Spec.Containers[0].Ports = []corev1.ContainerPort{
			{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
			{Name: "dns-tcp", ContainerPort: 53, Protocol: corev1.ProtocolTCP},
		}
		o.pods = append(o.pods, p)
	}
	all := &metav1.LabelSelector{}
	everywhere := []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"0.0.0.0/0", "::/0"}}}
	tcp := func(p *cnpv1.Port) cnpv1.ClusterNetworkPolicyProtocol {
		return cnpv1.ClusterNetworkPolicyProtocol{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: p}}
	}
	udp := func(p *cnpv1.Port) cnpv1.ClusterNetworkPolicyProtocol {
		return cnpv1.ClusterNetworkPolicyProtocol{UDP: &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: p}}
	}
	guard := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "cluster-guard"}}
	guard.Spec.Tier, guard.Spec.Priority, guard.Spec.Subject.Namespaces = cnpv1.AdminTier, 10, all
	guard.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{
		{Name: "dns", Action: "Accept", To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Namespaces: &metav1.LabelSelector{
			MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}}}},
			Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "dns"}, {DestinationNamedPort: "dns-tcp"}}},
		{Name: "no-smtp", Action: "Deny", To: everywhere, Protocols: []cnpv1.ClusterNetworkPolicyProtocol{tcp(&cnpv1.Port{Number: 25})}},
	}
	bench := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "bench-to-netpol"}}
	bench.Spec.Tier, bench.Spec.Priority = cnpv1.AdminTier, 20
	bench.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": benchNS}}
	bench.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "bench-ports", Action: "Pass",
		From:      []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: all}},
		Protocols: []cnpv1.ClusterNetworkPolicyProtocol{tcp(&cnpv1.Port{Range: &cnpv1.PortRange{Start: benchPort, End: bulkPort}}), udp(&cnpv1.Port{Number: benchPort})}}}
	base := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "no-nodeports"}}
	base.Spec.Tier, base.Spec.Priority, base.Spec.Subject.Namespaces = cnpv1.BaselineTier, 10, all
	base.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Name: "nodeports", Action: "Deny", To: everywhere,
		Protocols: []cnpv1.ClusterNetworkPolicyProtocol{tcp(&cnpv1.Port{Range: &cnpv1.PortRange{Start: 30000, End: 32767}})}}}
	o.cnps = append(o.cnps, guard, bench, base)
	return o
}
