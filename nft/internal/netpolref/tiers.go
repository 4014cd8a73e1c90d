package netpolref

// The ClusterNetworkPolicy tiers, read from the doc comments of
// sigs.k8s.io/network-policy-api/apis/v1beta1 (quoted where they decide):
//
//   - "Policy tiers are evaluated in the following order: Admin tier, NetworkPolicy
//     tier, Baseline tier." "If Admin tier has made a final decision (Accept or Deny)
//     on a connection, then no further evaluation is done." "v1.NetworkPolicy always
//     makes a final decision for selected pods. Further evaluation only happens for
//     Pods not selected by a v1.NetworkPolicy." "If a given connection wasn't allowed
//     or denied by any of the tiers, the default kubernetes policy is applied, which
//     says that all pods can communicate with each other."
//   - "Policies with lower priority values have higher precedence"; equal priorities:
//     "the implementation can apply any of the matching policies" (here, by name).
//   - Rules: "a rule that appears at the top of the ingress rules would take the
//     highest precedence." Accept: "No further egress ClusterNetworkPolicy or
//     NetworkPolicy rules will be processed but any ingress rules at the destination
//     do apply." Deny: "Drops the selected traffic." Pass: "Skips all further
//     ClusterNetworkPolicy rules in the current tier ... passes evaluation to the next
//     tier."
//   - Peers: "If any element matches ... then the specified action is applied."
//     Networks "match both regular IP traffic and ICMP", "cluster-internal traffic will
//     be checked against the rule as well". Nodes: "the IPs present in the
//     node.Status.Addresses field". "host-networked pods are not included".
//   - "If an implementation sees no fields are set ... it should fail closed. For
//     Accept rules, fail closed means: treat the rule as matching no traffic. For Deny
//     and Pass rules, fail closed means: treat the rule as a 'Deny all' rule."
//
// nft/compile's documented decisions added to that: domainNames peers are
// unsupported (a Deny or Pass rule with one denies all, an Accept rule matches
// through its other peers); any other invalid part of a rule fails the whole
// rule closed the same way; an invalid subject selects no pod; traffic between a node
// and its own pods is judged only in the pod-to-node direction (by the tiers; for
// NetworkPolicy it is always allowed), because a node's own traffic to its pods never
// crosses a hook nftpolicy filters.

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// WithTiers adds the cluster's ClusterNetworkPolicies and Nodes to the reference.
func (c *Cluster) WithTiers(cnps []*cnpv1.ClusterNetworkPolicy, nodes []*corev1.Node) *Cluster {
	c.cnps, c.nodes = cnps, nodes
	return c
}

// Decision is what a tier decides for a connection.
type Decision int

const (
	NoDecision Decision = iota // no rule of the tier matched
	Accepted
	Denied
	Passed
)

func (d Decision) String() string {
	return [...]string{"none", "Accept", "Deny", "Pass"}[d]
}

// TierVerdict is one tier's decision for one direction of a connection, and the
// rule that made it.
type TierVerdict struct {
	Decision Decision
	Policy   *cnpv1.ClusterNetworkPolicy // the policy whose rule decided; nil with NoDecision
	Rule     int                         // that rule's index in spec.ingress or spec.egress
	// FailClosed: the rule could not be enforced as written and denies all.
	FailClosed bool
	// Selecting are the tier's policies that select the pod and have rules in
	// this direction, in evaluation order (priority, then name).
	Selecting []*cnpv1.ClusterNetworkPolicy
}

// TierDecision: the first matching rule of the tier's policies that select
// subject, in priority (then name) order. other is the connection's other end,
// dst its destination (for ports).
func (c *Cluster) TierDecision(tier cnpv1.Tier, ingress bool, subject *corev1.Pod, other, dst Endpoint, proto corev1.Protocol, port int) TierVerdict {
	var v TierVerdict
	for _, p := range c.cnps {
		if p.Spec.Tier == tier && c.subjectSelects(p, subject) && (ingress && len(p.Spec.Ingress) > 0 || !ingress && len(p.Spec.Egress) > 0) {
			v.Selecting = append(v.Selecting, p)
		}
	}
	slices.SortFunc(v.Selecting, func(a, b *cnpv1.ClusterNetworkPolicy) int {
		if a.Spec.Priority != b.Spec.Priority {
			return int(a.Spec.Priority) - int(b.Spec.Priority)
		}
		return strings.Compare(a.Name, b.Name)
	})
	for _, p := range v.Selecting {
		if ingress {
			for i, r := range p.Spec.Ingress {
				peers := make([]cnpv1.ClusterNetworkPolicyEgressPeer, len(r.From))
				for i, f := range r.From {
					peers[i] = cnpv1.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}
				}
				if d, fc := c.cnpRule(r.Action, peers, r.Protocols, other, dst, proto, port); d != NoDecision {
					v.Decision, v.Policy, v.Rule, v.FailClosed = d, p, i, fc
					return v
				}
			}
			continue
		}
		for i, r := range p.Spec.Egress {
			if d, fc := c.cnpRule(r.Action, r.To, r.Protocols, other, dst, proto, port); d != NoDecision {
				v.Decision, v.Policy, v.Rule, v.FailClosed = d, p, i, fc
				return v
			}
		}
	}
	return v
}

func (c *Cluster) subjectSelects(p *cnpv1.ClusterNetworkPolicy, pod *corev1.Pod) bool {
	s := p.Spec.Subject
	switch {
	case s.Namespaces != nil && s.Pods == nil:
		return c.nsMatches(s.Namespaces, pod.Namespace)
	case s.Pods != nil && s.Namespaces == nil:
		return c.nsMatches(&s.Pods.NamespaceSelector, pod.Namespace) && c.labelsMatch(&s.Pods.PodSelector, pod.Labels)
	}
	return false
}

func (c *Cluster) nsMatches(ls *metav1.LabelSelector, ns string) bool {
	return c.labelsMatch(ls, c.namespaceLabels(ns))
}

func (c *Cluster) labelsMatch(ls *metav1.LabelSelector, l map[string]string) bool {
	sel := c.selector(ls)
	return sel != nil && sel.Matches(labels.Set(l))
}

// cnpRule: what one rule decides for the connection, and whether it does so
// because it fails closed (deny all).
func (c *Cluster) cnpRule(act cnpv1.ClusterNetworkPolicyRuleAction, peers []cnpv1.ClusterNetworkPolicyEgressPeer,
	protos []cnpv1.ClusterNetworkPolicyProtocol, other, dst Endpoint, proto corev1.Protocol, port int) (Decision, bool) {
	d := map[cnpv1.ClusterNetworkPolicyRuleAction]Decision{"Accept": Accepted, "Deny": Denied, "Pass": Passed}[act]
	failClosed := func() (Decision, bool) {
		if d == Accepted {
			return NoDecision, false // matches no traffic
		}
		return Denied, true // deny all
	}
	if d == NoDecision || len(peers) == 0 || !c.cnpRuleValid(peers, protos) {
		return failClosed()
	}
	peerOK := false
	for _, pe := range peers {
		switch c.cnpPeerIs(pe, other) {
		case peerUnknown:
			return failClosed() // the whole rule, as the API says
		case peerUnsupported:
			if d != Accepted {
				return Denied, true
			}
		case peerMatches:
			peerOK = true
		}
	}
	if !peerOK {
		return NoDecision, false
	}
	if len(protos) == 0 {
		return d, false
	}
	for _, pp := range protos {
		if cnpProtoIs(pp, dst, proto, port) {
			return d, false
		}
	}
	return NoDecision, false
}

const (
	peerNo = iota
	peerMatches
	peerUnsupported // domainNames
	peerUnknown     // no field set: an unknown field of a newer API version
)

func (c *Cluster) cnpPeerIs(pe cnpv1.ClusterNetworkPolicyEgressPeer, e Endpoint) int {
	n := 0
	for _, set := range []bool{pe.Namespaces != nil, pe.Pods != nil, pe.Nodes != nil, len(pe.Networks) > 0, len(pe.DomainNames) > 0} {
		if set {
			n++
		}
	}
	if n == 0 {
		return peerUnknown
	}
	if len(pe.DomainNames) > 0 {
		return peerUnsupported
	}
	yes := func(b bool) int {
		if b {
			return peerMatches
		}
		return peerNo
	}
	switch {
	case pe.Namespaces != nil:
		return yes(e.Pod != nil && c.nsMatches(pe.Namespaces, e.Pod.Namespace))
	case pe.Pods != nil:
		return yes(e.Pod != nil && c.nsMatches(&pe.Pods.NamespaceSelector, e.Pod.Namespace) && c.labelsMatch(&pe.Pods.PodSelector, e.Pod.Labels))
	case pe.Nodes != nil:
		for _, node := range c.nodes {
			if !c.labelsMatch(pe.Nodes, node.Labels) {
				continue
			}
			for _, a := range node.Status.Addresses {
				if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Unmap().WithZone("") == e.IP {
					return peerMatches
				}
			}
		}
		return peerNo
	}
	for _, cidr := range pe.Networks {
		if netip.MustParsePrefix(string(cidr)).Masked().Contains(e.IP) {
			return peerMatches
		}
	}
	return peerNo
}

func cnpProtoIs(pp cnpv1.ClusterNetworkPolicyProtocol, dst Endpoint, proto corev1.Protocol, port int) bool {
	if pp.DestinationNamedPort != "" {
		if dst.Pod == nil {
			return false
		}
		for _, cp := range ServingPorts(dst.Pod) {
			cproto := cp.Protocol
			if cproto == "" {
				cproto = corev1.ProtocolTCP
			}
			if cp.Name == pp.DestinationNamedPort && cproto == proto && int(cp.ContainerPort) == port {
				return true
			}
		}
		return false
	}
	want, dp := CNPPort(pp)
	if want != proto {
		return false
	}
	switch {
	case dp == nil:
		return true
	case dp.Range != nil:
		return int(dp.Range.Start) <= port && port <= int(dp.Range.End)
	}
	return int(dp.Number) == port
}

// cnpRuleValid: every selector and CIDR parses, every protocol entry sets one field
// with a valid port, and named ports do not come with networks or nodes peers.
func (c *Cluster) cnpRuleValid(peers []cnpv1.ClusterNetworkPolicyEgressPeer, protos []cnpv1.ClusterNetworkPolicyProtocol) bool {
	addrPeer := false
	for _, pe := range peers {
		n := 0
		for _, set := range []bool{pe.Namespaces != nil, pe.Pods != nil, pe.Nodes != nil, len(pe.Networks) > 0, len(pe.DomainNames) > 0} {
			if set {
				n++
			}
		}
		if n > 1 {
			return false
		}
		for _, ls := range []*metav1.LabelSelector{pe.Namespaces, pe.Nodes} {
			if ls != nil && c.selector(ls) == nil {
				return false
			}
		}
		if pe.Pods != nil && (c.selector(&pe.Pods.NamespaceSelector) == nil || c.selector(&pe.Pods.PodSelector) == nil) {
			return false
		}
		for _, cidr := range pe.Networks {
			// The CRD's isCIDR() refuses IPv4-mapped addresses.
			if p, err := netip.ParsePrefix(string(cidr)); err != nil || p.Addr().Is4In6() {
				return false
			}
		}
		addrPeer = addrPeer || pe.Nodes != nil || len(pe.Networks) > 0
	}
	for _, pp := range protos {
		n := 0
		for _, set := range []bool{pp.TCP != nil, pp.UDP != nil, pp.SCTP != nil, pp.DestinationNamedPort != ""} {
			if set {
				n++
			}
		}
		if n != 1 {
			return false
		}
		if pp.DestinationNamedPort != "" {
			if len(validation.IsValidPortName(pp.DestinationNamedPort)) > 0 || addrPeer {
				return false
			}
			continue
		}
		_, dp := CNPPort(pp)
		switch {
		case dp == nil:
		case dp.Range != nil:
			if dp.Number != 0 || dp.Range.Start < 1 || dp.Range.End > 65535 || dp.Range.Start > dp.Range.End {
				return false
			}
		case dp.Number < 1 || dp.Number > 65535:
			return false
		}
	}
	return true
}

// CNPPort returns the protocol a ClusterNetworkPolicy protocol entry names and
// its destination port (nil: every port of it); "" for a destinationNamedPort
// entry (the API sets exactly one of the four).
func CNPPort(pp cnpv1.ClusterNetworkPolicyProtocol) (corev1.Protocol, *cnpv1.Port) {
	switch {
	case pp.TCP != nil:
		return corev1.ProtocolTCP, pp.TCP.DestinationPort
	case pp.UDP != nil:
		return corev1.ProtocolUDP, pp.UDP.DestinationPort
	case pp.SCTP != nil:
		return corev1.ProtocolSCTP, pp.SCTP.DestinationPort
	}
	return "", nil
}
