// Package netpolref is a plain reading of the NetworkPolicy v1 API reference, written
// apart from the compiler and sharing none of its code: for one connection's first
// packet, is it allowed? It answers from the whole cluster, one question at a time,
// with no indexing, caching of results or set arithmetic. Tests hold against it the
// compiled rulesets walked by the packet tracer (nft/compile's crosscheck) and the
// answers of nft/explain. It also builds the clusters those tests use (world.go).
//
// Beyond the API reference it encodes two of nft/compile's documented decisions: a
// rule with an invalid part allows nothing (its policy still isolates), and an
// invalid podSelector of a policy selects no pod.
//
// Besides the tests, nft/explain uses its rule-level pieces (PolicyHasType,
// PolicySelects, RuleValid, PeerIs, PortIs) and, for the ClusterNetworkPolicy
// tiers, Egress, Ingress and TierDecision (which tier decided, by which rule) to
// name the policy and rule behind a verdict, so the spec is read once; explain's
// verdict still comes from walking the compiled table, which this package never
// sees.
package netpolref

import (
	"net"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Cluster is a whole cluster, as the reference sees it.
type Cluster struct {
	pods       []*corev1.Pod
	namespaces []*corev1.Namespace
	policies   []*networkingv1.NetworkPolicy
	selectors  map[*metav1.LabelSelector]labels.Selector // parse once; nil value: invalid

	// The ClusterNetworkPolicy tiers (tiers.go); none: NetworkPolicy alone.
	cnps  []*cnpv1.ClusterNetworkPolicy
	nodes []*corev1.Node
}

// Endpoint is one end of a connection: an address, and the pod that has it when
// a running, non-hostNetwork pod does, or the node when it is a node's address.
type Endpoint struct {
	Pod  *corev1.Pod
	IP   netip.Addr
	Node string // the node whose address IP is (Pod nil)
}

// New returns the reference evaluator of a cluster.
func New(pods []*corev1.Pod, nss []*corev1.Namespace, pols []*networkingv1.NetworkPolicy) *Cluster {
	return &Cluster{pods: pods, namespaces: nss, policies: pols, selectors: map[*metav1.LabelSelector]labels.Selector{}}
}

// Active: a pod takes part in policy when it has an address, is not hostNetwork
// and has not finished.
func Active(p *corev1.Pod) bool {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return false
	}
	return len(PodIPs(p)) > 0
}

// PodIPs are the pod's addresses (status.podIPs, else status.podIP).
func PodIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	ips := []string{}
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = append(ips, p.Status.PodIP)
	}
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// Allowed: the source's egress allows it and the destination's ingress allows it.
// proto is TCP, UDP, SCTP or anything else (e.g. "ICMP"), which has no ports.
func (c *Cluster) Allowed(src, dst Endpoint, proto corev1.Protocol, port int) bool {
	return c.EgressAllows(src, dst, proto, port) && c.IngressAllows(src, dst, proto, port)
}

// EgressAllows: the source's egress allows the connection: the Admin tier, then
// NetworkPolicy, then (for a source no NetworkPolicy isolates) the Baseline tier.
func (c *Cluster) EgressAllows(src, dst Endpoint, proto corev1.Protocol, port int) bool {
	return c.Egress(src, dst, proto, port).Allowed
}

// IngressAllows: the destination's ingress allows the connection, tier by tier as
// for egress. A node's own traffic to its pods is not judged.
func (c *Cluster) IngressAllows(src, dst Endpoint, proto corev1.Protocol, port int) bool {
	return c.Ingress(src, dst, proto, port).Allowed
}

// Tiers in a Judgement.
const (
	ByAdmin         = "Admin"
	ByNetworkPolicy = "NetworkPolicy"
	ByBaseline      = "Baseline"
)

// Judgement is how one direction of a connection is decided, tier by tier.
type Judgement struct {
	Allowed bool
	// By is the tier that decided: ByAdmin, ByNetworkPolicy (it isolates the
	// pod), ByBaseline; "" when none did (the default: allowed) or the end is no
	// pod.
	By    string
	Admin TierVerdict // the Admin tier (NoDecision when nothing matched)
	// Baseline is the Baseline tier, when it was consulted (Admin did not
	// decide and no NetworkPolicy isolates the pod in this direction).
	Baseline *TierVerdict
	// OwnNode: NetworkPolicy decided by allowing a pod's traffic to its own node.
	OwnNode bool
}

// Egress judges the source's egress: Admin, then NetworkPolicy, then (for a
// source no NetworkPolicy isolates) Baseline.
func (c *Cluster) Egress(src, dst Endpoint, proto corev1.Protocol, port int) Judgement {
	if src.Pod == nil {
		return Judgement{Allowed: true}
	}
	j := Judgement{Admin: c.TierDecision(cnpv1.AdminTier, false, src.Pod, dst, dst, proto, port)}
	if d := j.Admin.Decision; d == Accepted || d == Denied {
		j.Allowed, j.By = d == Accepted, ByAdmin
		return j
	}
	if c.npIsolates(src.Pod, networkingv1.PolicyTypeEgress) {
		j.By = ByNetworkPolicy
		if dst.Node != "" && dst.Node == src.Pod.Spec.NodeName {
			j.Allowed, j.OwnNode = true, true // NetworkPolicy: traffic to the pod's own node is always allowed
			return j
		}
		j.Allowed = c.npEgressAllows(src, dst, proto, port)
		return j
	}
	b := c.TierDecision(cnpv1.BaselineTier, false, src.Pod, dst, dst, proto, port)
	j.Baseline, j.Allowed = &b, b.Decision != Denied
	if b.Decision == Accepted || b.Decision == Denied {
		j.By = ByBaseline
	}
	return j
}

// Ingress judges the destination's ingress, tier by tier as Egress. A node's own
// traffic to its pods is not judged.
func (c *Cluster) Ingress(src, dst Endpoint, proto corev1.Protocol, port int) Judgement {
	if dst.Pod == nil || (src.Node != "" && src.Node == dst.Pod.Spec.NodeName) {
		return Judgement{Allowed: true}
	}
	j := Judgement{Admin: c.TierDecision(cnpv1.AdminTier, true, dst.Pod, src, dst, proto, port)}
	if d := j.Admin.Decision; d == Accepted || d == Denied {
		j.Allowed, j.By = d == Accepted, ByAdmin
		return j
	}
	if c.npIsolates(dst.Pod, networkingv1.PolicyTypeIngress) {
		j.By = ByNetworkPolicy
		j.Allowed = c.npIngressAllows(src, dst, proto, port)
		return j
	}
	b := c.TierDecision(cnpv1.BaselineTier, true, dst.Pod, src, dst, proto, port)
	j.Baseline, j.Allowed = &b, b.Decision != Denied
	if b.Decision == Accepted || b.Decision == Denied {
		j.By = ByBaseline
	}
	return j
}

// npIsolates: some NetworkPolicy of the pod's namespace selects it for t.
func (c *Cluster) npIsolates(pod *corev1.Pod, t networkingv1.PolicyType) bool {
	for _, pol := range c.policies {
		if pol.Namespace == pod.Namespace && c.PolicyHasType(pol, t) && c.PolicySelects(pol, pod) {
			return true
		}
	}
	return false
}

// npEgressAllows: NetworkPolicy alone allows the source's egress.
func (c *Cluster) npEgressAllows(src, dst Endpoint, proto corev1.Protocol, port int) bool {
	if src.Pod == nil {
		return true
	}
	isolated := false
	for _, pol := range c.policies {
		if pol.Namespace != src.Pod.Namespace || !c.PolicyHasType(pol, networkingv1.PolicyTypeEgress) || !c.PolicySelects(pol, src.Pod) {
			continue
		}
		isolated = true
		for _, r := range pol.Spec.Egress {
			if c.ruleAllows(pol, r.To, r.Ports, dst, dst, proto, port) {
				return true
			}
		}
	}
	return !isolated
}

// npIngressAllows: NetworkPolicy alone allows the destination's ingress.
func (c *Cluster) npIngressAllows(src, dst Endpoint, proto corev1.Protocol, port int) bool {
	if dst.Pod == nil {
		return true
	}
	isolated := false
	for _, pol := range c.policies {
		if pol.Namespace != dst.Pod.Namespace || !c.PolicyHasType(pol, networkingv1.PolicyTypeIngress) || !c.PolicySelects(pol, dst.Pod) {
			continue
		}
		isolated = true
		for _, r := range pol.Spec.Ingress {
			if c.ruleAllows(pol, r.From, r.Ports, src, dst, proto, port) {
				return true
			}
		}
	}
	return !isolated
}

// policyHasType applies the API server's defaulting of policyTypes.
func (c *Cluster) PolicyHasType(pol *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	types := pol.Spec.PolicyTypes
	if len(types) == 0 {
		types = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(pol.Spec.Egress) > 0 {
			types = append(types, networkingv1.PolicyTypeEgress)
		}
	}
	for _, have := range types {
		if have == t {
			return true
		}
	}
	return false
}

func (c *Cluster) PolicySelects(pol *networkingv1.NetworkPolicy, pod *corev1.Pod) bool {
	sel := c.selector(&pol.Spec.PodSelector)
	return sel != nil && sel.Matches(labels.Set(pod.Labels))
}

func (c *Cluster) selector(ls *metav1.LabelSelector) labels.Selector {
	if s, ok := c.selectors[ls]; ok {
		return s
	}
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		s = nil
	}
	c.selectors[ls] = s
	return s
}

// ruleAllows: some peer is other (or there are no peers) and some port is the
// destination's (or there are no ports). Named ports are looked up on dst.
func (c *Cluster) ruleAllows(pol *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort,
	other, dst Endpoint, proto corev1.Protocol, port int) bool {
	if !c.RuleValid(peers, ports) {
		return false
	}
	peerOK := len(peers) == 0
	for _, pe := range peers {
		if c.PeerIs(pol, pe, other) {
			peerOK = true
		}
	}
	if !peerOK {
		return false
	}
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		if PortIs(pp, dst, proto, port) {
			return true
		}
	}
	return false
}

func (c *Cluster) PeerIs(pol *networkingv1.NetworkPolicy, pe networkingv1.NetworkPolicyPeer, e Endpoint) bool {
	if pe.IPBlock != nil {
		// As the API server reads them (net.ParseCIDR): an IPv4-mapped
		// prefix (::ffff:10.0.0.0/104) holds IPv4 addresses.
		ip := net.IP(e.IP.AsSlice())
		if _, cidr, _ := net.ParseCIDR(pe.IPBlock.CIDR); !cidr.Contains(ip) {
			return false
		}
		for _, ex := range pe.IPBlock.Except {
			if _, n, _ := net.ParseCIDR(ex); n.Contains(ip) {
				return false
			}
		}
		return true
	}
	if e.Pod == nil {
		return false
	}
	if pe.NamespaceSelector == nil {
		if e.Pod.Namespace != pol.Namespace {
			return false
		}
	} else if !c.selector(pe.NamespaceSelector).Matches(labels.Set(c.namespaceLabels(e.Pod.Namespace))) {
		return false
	}
	return pe.PodSelector == nil || c.selector(pe.PodSelector).Matches(labels.Set(e.Pod.Labels))
}

// namespaceLabels: the namespace's labels, with the name label the API server adds.
func (c *Cluster) namespaceLabels(name string) map[string]string {
	out := map[string]string{"kubernetes.io/metadata.name": name}
	for _, ns := range c.namespaces {
		if ns.Name == name {
			for k, v := range ns.Labels {
				out[k] = v
			}
		}
	}
	return out
}

func PortIs(pp networkingv1.NetworkPolicyPort, dst Endpoint, proto corev1.Protocol, port int) bool {
	want := corev1.ProtocolTCP
	if pp.Protocol != nil {
		want = *pp.Protocol
	}
	if want != proto {
		return false
	}
	if pp.Port == nil {
		return true
	}
	if n, ok := PortNumber(pp); ok {
		end := n
		if pp.EndPort != nil {
			end = int(*pp.EndPort)
		}
		return n <= port && port <= end
	}
	if dst.Pod == nil {
		return false
	}
	for _, cp := range ServingPorts(dst.Pod) {
		cproto := cp.Protocol
		if cproto == "" {
			cproto = corev1.ProtocolTCP
		}
		if cp.Name == pp.Port.StrVal && cproto == proto && int(cp.ContainerPort) == port {
			return true
		}
	}
	return false
}

// ServingPorts is every container port of p's containers and of its sidecars,
// the init containers whose restartPolicy is Always (they run beside the
// containers; k8s.io/endpointslice FindPort resolves Service ports on them).
func ServingPorts(p *corev1.Pod) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, c := range p.Spec.Containers {
		out = append(out, c.Ports...)
	}
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			out = append(out, c.Ports...)
		}
	}
	return out
}

func PortNumber(pp networkingv1.NetworkPolicyPort) (int, bool) {
	if pp.Port.Type == 0 {
		return int(pp.Port.IntVal), true
	}
	if n, err := strconv.Atoi(pp.Port.StrVal); err == nil {
		return n, true
	}
	return 0, false
}

// ruleValid: every peer and port is well formed.
func (c *Cluster) RuleValid(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) bool {
	for _, pe := range peers {
		if pe.IPBlock != nil {
			if pe.PodSelector != nil || pe.NamespaceSelector != nil {
				return false
			}
			if _, _, err := net.ParseCIDR(pe.IPBlock.CIDR); err != nil {
				return false
			}
			for _, ex := range pe.IPBlock.Except {
				if _, _, err := net.ParseCIDR(ex); err != nil {
					return false
				}
			}
			continue
		}
		if pe.PodSelector == nil && pe.NamespaceSelector == nil {
			return false
		}
		if pe.PodSelector != nil && c.selector(pe.PodSelector) == nil {
			return false
		}
		if pe.NamespaceSelector != nil && c.selector(pe.NamespaceSelector) == nil {
			return false
		}
	}
	for _, pp := range ports {
		if pp.Protocol != nil && *pp.Protocol != corev1.ProtocolTCP && *pp.Protocol != corev1.ProtocolUDP && *pp.Protocol != corev1.ProtocolSCTP {
			return false
		}
		if pp.Port == nil {
			if pp.EndPort != nil {
				return false
			}
			continue
		}
		n, numeric := PortNumber(pp)
		if !numeric {
			if pp.EndPort != nil || len(validation.IsValidPortName(pp.Port.StrVal)) > 0 {
				return false
			}
			continue
		}
		if n < 1 || n > 65535 {
			return false
		}
		if pp.EndPort != nil && (int(*pp.EndPort) < n || *pp.EndPort > 65535) {
			return false
		}
	}
	return true
}
