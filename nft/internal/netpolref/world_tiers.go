package netpolref

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ModelNodes are node-1 and node-2 of the models: dual-stack addresses (node-2's
// IPv4 is the random worlds' hostNetwork pod's), a hostname address, and labels.
func ModelNodes() []*corev1.Node {
	var out []*corev1.Node
	for i, zone := range []string{"a", "b"} {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%d", i+1),
			Labels: map[string]string{"zone": zone, "kubernetes.io/hostname": fmt.Sprintf("node-%d", i+1)}}}
		n.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.18.0.%d", i+1)},
			{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("fd00:172:18::%d", i+1)},
			{Type: corev1.NodeHostName, Address: n.Name},
		}
		out = append(out, n)
	}
	return out
}

var nodeLabels = map[string][]string{"zone": {"a", "b"}, "kubernetes.io/hostname": {"node-1", "node-2"}}

// RandomTieredWorld is RandomWorld (sometimes without its NetworkPolicies) with the
// model nodes and one to four random ClusterNetworkPolicies of both tiers, with
// colliding priorities, every kind of peer and protocol, and now and then a rule
// that must fail closed.
func RandomTieredWorld(rng *rand.Rand) World {
	w := RandomWorld(rng)
	if rng.IntN(4) == 0 {
		w.Policies = nil
	}
	w.Nodes = ModelNodes()
	for i := range 1 + rng.IntN(4) {
		w.ClusterPolicies = append(w.ClusterPolicies, RandomClusterPolicy(rng, fmt.Sprintf("c%d", i), w.Pods))
	}
	return w
}

// RandomClusterPolicy is a random ClusterNetworkPolicy over the random worlds'
// labels and addresses.
func RandomClusterPolicy(rng *rand.Rand, name string, pods []*corev1.Pod) *cnpv1.ClusterNetworkPolicy {
	c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	c.Spec.Tier = []cnpv1.Tier{cnpv1.AdminTier, cnpv1.BaselineTier}[rng.IntN(2)]
	c.Spec.Priority = []int32{0, 5, 5, 10, 1000}[rng.IntN(5)]
	if rng.IntN(2) == 0 {
		c.Spec.Subject.Namespaces = randomSelector(rng, nsLabels)
	} else {
		c.Spec.Subject.Pods = &cnpv1.NamespacedPod{NamespaceSelector: *randomSelector(rng, nsLabels), PodSelector: *randomSelector(rng, podLabels)}
	}
	for range rng.IntN(4) {
		r := cnpv1.ClusterNetworkPolicyIngressRule{Action: randomAction(rng)}
		for _, pe := range randomCNPPeers(rng, pods, true) {
			r.From = append(r.From, cnpv1.ClusterNetworkPolicyIngressPeer{Namespaces: pe.Namespaces, Pods: pe.Pods})
		}
		r.Protocols = randomProtocols(rng, true)
		c.Spec.Ingress = append(c.Spec.Ingress, r)
	}
	for range rng.IntN(4) {
		peers := randomCNPPeers(rng, pods, false)
		named := true
		for _, pe := range peers {
			if pe.Nodes != nil || len(pe.Networks) > 0 {
				named = false
			}
		}
		c.Spec.Egress = append(c.Spec.Egress, cnpv1.ClusterNetworkPolicyEgressRule{Action: randomAction(rng), To: peers, Protocols: randomProtocols(rng, named)})
	}
	return c
}

func randomAction(rng *rand.Rand) cnpv1.ClusterNetworkPolicyRuleAction {
	return []cnpv1.ClusterNetworkPolicyRuleAction{"Accept", "Accept", "Deny", "Pass"}[rng.IntN(4)]
}

func randomCNPPeers(rng *rand.Rand, pods []*corev1.Pod, ingress bool) []cnpv1.ClusterNetworkPolicyEgressPeer {
	var out []cnpv1.ClusterNetworkPolicyEgressPeer
	kinds := 2
	if !ingress {
		kinds = 4
	}
	for range 1 + rng.IntN(2) {
		var pe cnpv1.ClusterNetworkPolicyEgressPeer
		switch rng.IntN(kinds) {
		case 0:
			pe.Namespaces = randomSelector(rng, nsLabels)
		case 1:
			pe.Pods = &cnpv1.NamespacedPod{NamespaceSelector: *randomSelector(rng, nsLabels), PodSelector: *randomSelector(rng, podLabels)}
		case 2:
			pe.Nodes = randomSelector(rng, nodeLabels)
		default:
			for range 1 + rng.IntN(2) {
				pe.Networks = append(pe.Networks, randomNetwork(rng, pods))
			}
		}
		switch rng.IntN(50) {
		case 0: // unsupported: the rule fails closed
			pe = cnpv1.ClusterNetworkPolicyEgressPeer{DomainNames: []cnpv1.DomainName{"example.com"}}
		case 1:
			pe = cnpv1.ClusterNetworkPolicyEgressPeer{}
		}
		out = append(out, pe)
	}
	return out
}

// randomNetwork is a CIDR around a pod, an external or a node address.
func randomNetwork(rng *rand.Rand, pods []*corev1.Pod) cnpv1.CIDR {
	var addr netip.Addr
	switch rng.IntN(3) {
	case 0:
		addr = UpstreamExternals[rng.IntN(len(UpstreamExternals))]
	case 1:
		addr = []netip.Addr{netip.MustParseAddr("172.18.0.1"), netip.MustParseAddr("172.18.0.2"),
			netip.MustParseAddr("fd00:172:18::1"), netip.MustParseAddr("fd00:172:18::2")}[rng.IntN(4)]
	default:
		ips := PodIPs(pods[rng.IntN(len(pods))])
		addr = ips[rng.IntN(len(ips))]
	}
	lens := []int{0, 8, 16, 24, 32}
	if addr.Is6() {
		lens = []int{0, 8, 48, 64, 128}
	}
	p := netip.PrefixFrom(addr, lens[rng.IntN(len(lens))]).Masked()
	if addr.Is4() && rng.IntN(30) == 0 { // IPv4-mapped: the CRD refuses it, the rule fails closed
		return cnpv1.CIDR(netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96).String())
	}
	return cnpv1.CIDR(p.String())
}

func randomProtocols(rng *rand.Rand, named bool) []cnpv1.ClusterNetworkPolicyProtocol {
	if rng.IntN(3) == 0 {
		return nil
	}
	var out []cnpv1.ClusterNetworkPolicyProtocol
	for range 1 + rng.IntN(3) {
		var pp cnpv1.ClusterNetworkPolicyProtocol
		port := &cnpv1.Port{Number: []int32{53, 80, 81, 8080}[rng.IntN(4)]}
		if rng.IntN(3) == 0 {
			port = &cnpv1.Port{Range: &cnpv1.PortRange{Start: port.Number, End: port.Number + []int32{1, 2, 8000}[rng.IntN(3)]}}
		}
		switch n := rng.IntN(4); {
		case n == 3 && named:
			pp.DestinationNamedPort = []string{"serve-80-tcp", "serve-81-udp", "serve-80-sctp", "http", "missing"}[rng.IntN(5)]
		case n == 0 || n == 3:
			pp.TCP = &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}
		case n == 1:
			pp.UDP = &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}
		default:
			pp.SCTP = &cnpv1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port}
		}
		if rng.IntN(60) == 0 { // invalid: the rule fails closed
			pp.TCP = &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: 70000}}
		}
		out = append(out, pp)
	}
	return out
}
