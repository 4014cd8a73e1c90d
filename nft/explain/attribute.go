package explain

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// RuleRef names the rule of a policy that allows the connection, and the peer and
// port of the rule that matched it.
type RuleRef struct {
	Policy string `json:"policy"` // namespace/name
	Rule   int    `json:"rule"`   // index in spec.ingress or spec.egress
	Peer   string `json:"peer"`   // "peer N: ..." or "every peer (no from/to)"
	Port   string `json:"port"`   // "port N: ..." or "every port (no ports)"
}

func (r RuleRef) String() string {
	return fmt.Sprintf("%s rule %d (%s; %s)", r.Policy, r.Rule, r.Peer, r.Port)
}

// attribution is what the policies say about one direction.
type attribution struct {
	isolatedBy []string
	allowedBy  []RuleRef
	// exempt: the connection is one NetworkPolicy never judges (a pod and its
	// own node, or its own address), and why; isolating are the policies that
	// isolate the pod for its other traffic (isolatedBy is then empty).
	exempt    string
	isolating []string
}

func (a attribution) allows() bool { return len(a.isolatedBy) == 0 || len(a.allowedBy) > 0 }

// attributor names the policies behind a verdict: which isolate a pod, which of
// their rules allow a connection. It reads the spec through nft/internal/netpolref,
// the plain evaluator the compiler is cross-checked against, so there is one such
// reading; the verdict itself always comes from the walk of the compiled table, and
// tests check that the two agree.
type attributor struct {
	c        *Cluster
	ref      *netpolref.Cluster
	policies []*networkingv1.NetworkPolicy // first of each namespace/name, sorted
}

func newAttributor(c *Cluster) *attributor {
	a := &attributor{c: c}
	var nss []*corev1.Namespace
	for _, ns := range c.Namespaces {
		if ns != nil {
			nss = append(nss, ns)
		}
	}
	seen := map[string]bool{}
	for _, np := range c.Policies {
		if np == nil || seen[np.Namespace+"/"+np.Name] {
			continue
		}
		seen[np.Namespace+"/"+np.Name] = true
		a.policies = append(a.policies, np)
	}
	slices.SortFunc(a.policies, func(x, y *networkingv1.NetworkPolicy) int {
		return strings.Compare(x.Namespace+"/"+x.Name, y.Namespace+"/"+y.Name)
	})
	var cnps []*cnpv1.ClusterNetworkPolicy
	seenC := map[string]bool{}
	for _, p := range c.ClusterPolicies {
		if p != nil && !seenC[p.Name] {
			seenC[p.Name] = true
			cnps = append(cnps, p)
		}
	}
	var nodes []*corev1.Node
	for _, n := range c.Nodes {
		if n != nil {
			nodes = append(nodes, n)
		}
	}
	a.ref = netpolref.New(nil, nss, a.policies).WithTiers(cnps, nodes)
	return a
}

// judge is the tiers' reading of one direction (netpolref's, the one the
// compiler is cross-checked against): which tier decided, and by which rule.
func (a *attributor) judge(egress bool, src, dst End, proto corev1.Protocol, port int) netpolref.Judgement {
	if egress {
		return a.ref.Egress(endpoint(src), endpoint(dst), proto, port)
	}
	return a.ref.Ingress(endpoint(src), endpoint(dst), proto, port)
}

// direction attributes egress (of src) or ingress (of dst) for a connection to the
// destination port (0: a protocol without ports).
func (a *attributor) direction(egress bool, src, dst End, proto corev1.Protocol, port int) attribution {
	var out attribution
	target, other := dst, src
	t := networkingv1.PolicyTypeIngress
	if egress {
		target, other, t = src, dst, networkingv1.PolicyTypeEgress
	}
	if target.pod == nil {
		return out
	}
	node := target.pod.Spec.NodeName
	switch {
	case src.addr == dst.addr:
		out.exempt = "to its own address, which never leaves the pod"
	case other.Kind == KindNode && other.Node == node:
		out.exempt = map[bool]string{true: "to", false: "from"}[egress] + " its own node, which NetworkPolicy always allows"
	}
	for _, np := range a.policies {
		if np.Namespace != target.pod.Namespace || !a.ref.PolicyHasType(np, t) || !a.ref.PolicySelects(np, target.pod) {
			continue
		}
		ref := np.Namespace + "/" + np.Name
		if out.exempt != "" {
			out.isolating = append(out.isolating, ref)
			continue
		}
		out.isolatedBy = append(out.isolatedBy, ref)
		if egress {
			for i, r := range np.Spec.Egress {
				if peer, pt, ok := a.rule(np, r.To, r.Ports, other, dst, proto, port); ok {
					out.allowedBy = append(out.allowedBy, RuleRef{ref, i, peer, pt})
				}
			}
		} else {
			for i, r := range np.Spec.Ingress {
				if peer, pt, ok := a.rule(np, r.From, r.Ports, other, dst, proto, port); ok {
					out.allowedBy = append(out.allowedBy, RuleRef{ref, i, peer, pt})
				}
			}
		}
	}
	return out
}

// rule: a valid rule allows the connection when some peer is other (or it has no
// peers) and some port is the destination's (or it has no ports). Named ports are
// resolved on the destination pod.
func (a *attributor) rule(np *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort,
	other, dst End, proto corev1.Protocol, port int) (peerText, portText string, ok bool) {
	if !a.ref.RuleValid(peers, ports) {
		return "", "", false
	}
	if len(peers) == 0 {
		peerText = "every peer (no from/to)"
	}
	for i, pe := range peers {
		if a.ref.PeerIs(np, pe, endpoint(other)) {
			peerText = fmt.Sprintf("peer %d: %s", i, describePeer(pe))
			break
		}
	}
	if peerText == "" {
		return "", "", false
	}
	if len(ports) == 0 {
		return peerText, "every port (no ports)", true
	}
	for i, pp := range ports {
		if netpolref.PortIs(pp, endpoint(dst), proto, port) {
			return peerText, fmt.Sprintf("port %d: %s", i, describePort(pp)), true
		}
	}
	return "", "", false
}

// valid: every peer and port is well formed; a rule with any invalid part allows
// nothing (nft/compile fails closed and reports it as a Problem).
func describePeer(pe networkingv1.NetworkPolicyPeer) string {
	if b := pe.IPBlock; b != nil {
		if len(b.Except) == 0 {
			return "ipBlock " + b.CIDR
		}
		return "ipBlock " + b.CIDR + " except " + strings.Join(b.Except, ", ")
	}
	var parts []string
	if pe.PodSelector != nil {
		parts = append(parts, "pods "+selectorText(pe.PodSelector))
	} else {
		parts = append(parts, "every pod")
	}
	if pe.NamespaceSelector != nil {
		parts = append(parts, "in namespaces "+selectorText(pe.NamespaceSelector))
	} else {
		parts = append(parts, "of the policy's namespace")
	}
	return strings.Join(parts, " ")
}

func selectorText(ls *metav1.LabelSelector) string {
	s := metav1.FormatLabelSelector(ls)
	if s == "<none>" {
		return "{} (all)"
	}
	return s
}

func describePort(pp networkingv1.NetworkPolicyPort) string {
	proto := "TCP"
	if pp.Protocol != nil {
		proto = string(*pp.Protocol)
	}
	switch {
	case pp.Port == nil:
		return proto + " (every port)"
	case pp.EndPort != nil:
		return fmt.Sprintf("%s/%s-%d", proto, pp.Port.String(), *pp.EndPort)
	}
	return proto + "/" + pp.Port.String()
}

// endpoint is e as the reference evaluator takes it.
func endpoint(e End) netpolref.Endpoint {
	ep := netpolref.Endpoint{Pod: e.pod, IP: e.addr}
	if e.Kind == KindNode {
		ep.Node = e.Node
	}
	return ep
}
