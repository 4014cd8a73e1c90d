package explain

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
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
}

func (a attribution) allows() bool { return len(a.isolatedBy) == 0 || len(a.allowedBy) > 0 }

// attributor reads the policies the way nft/compile does (its doc.go), on its own:
// which policies isolate a pod, which of their rules allow a connection.
type attributor struct {
	c          *Cluster
	policies   []*networkingv1.NetworkPolicy // first of each namespace/name, sorted
	nsLabels   map[string]labels.Set
	selCache   map[*metav1.LabelSelector]labels.Selector
	invalidSel map[*metav1.LabelSelector]bool
}

func newAttributor(c *Cluster) *attributor {
	a := &attributor{c: c, nsLabels: map[string]labels.Set{}, selCache: map[*metav1.LabelSelector]labels.Selector{}, invalidSel: map[*metav1.LabelSelector]bool{}}
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
	for _, ns := range c.Namespaces {
		if ns == nil {
			continue
		}
		l := labels.Set{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		l["kubernetes.io/metadata.name"] = ns.Name // the API server's label
		a.nsLabels[ns.Name] = l
	}
	return a
}

func (a *attributor) namespaceLabels(ns string) labels.Set {
	if l, ok := a.nsLabels[ns]; ok {
		return l
	}
	return labels.Set{"kubernetes.io/metadata.name": ns} // known only from its pods
}

// selector parses ls once; nil when invalid.
func (a *attributor) selector(ls *metav1.LabelSelector) labels.Selector {
	if s, ok := a.selCache[ls]; ok {
		return s
	}
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		s = nil
	}
	a.selCache[ls] = s
	return s
}

func hasType(np *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	if len(np.Spec.PolicyTypes) == 0 { // the API server's defaulting
		return t == networkingv1.PolicyTypeIngress || (t == networkingv1.PolicyTypeEgress && len(np.Spec.Egress) > 0)
	}
	return slices.Contains(np.Spec.PolicyTypes, t)
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
	for _, np := range a.policies {
		if np.Namespace != target.pod.Namespace || !hasType(np, t) {
			continue
		}
		sel := a.selector(&np.Spec.PodSelector)
		if sel == nil || !sel.Matches(labels.Set(target.pod.Labels)) {
			continue
		}
		ref := np.Namespace + "/" + np.Name
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
	if !a.valid(peers, ports) {
		return "", "", false
	}
	if len(peers) == 0 {
		peerText = "every peer (no from/to)"
	}
	for i, pe := range peers {
		if a.peerIs(np, pe, other) {
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
		if portIs(pp, dst, proto, port) {
			return peerText, fmt.Sprintf("port %d: %s", i, describePort(pp)), true
		}
	}
	return "", "", false
}

func (a *attributor) peerIs(np *networkingv1.NetworkPolicy, pe networkingv1.NetworkPolicyPeer, e End) bool {
	if pe.IPBlock != nil {
		cidr := netip.MustParsePrefix(pe.IPBlock.CIDR).Masked() // valid: checked
		if !cidr.Contains(e.addr) {
			return false
		}
		for _, ex := range pe.IPBlock.Except {
			if netip.MustParsePrefix(ex).Masked().Contains(e.addr) {
				return false
			}
		}
		return true
	}
	if e.pod == nil { // selectors pick pods only
		return false
	}
	if pe.NamespaceSelector == nil {
		if e.pod.Namespace != np.Namespace {
			return false
		}
	} else if !a.selector(pe.NamespaceSelector).Matches(a.namespaceLabels(e.pod.Namespace)) {
		return false
	}
	return pe.PodSelector == nil || a.selector(pe.PodSelector).Matches(labels.Set(e.pod.Labels))
}

func portIs(pp networkingv1.NetworkPolicyPort, dst End, proto corev1.Protocol, port int) bool {
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
	if n, ok := portNumber(pp); ok {
		end := n
		if pp.EndPort != nil {
			end = int(*pp.EndPort)
		}
		return n <= port && port <= end
	}
	if dst.pod == nil { // a named port is a pod's
		return false
	}
	for _, ctr := range dst.pod.Spec.Containers {
		for _, cp := range ctr.Ports {
			cproto := cp.Protocol
			if cproto == "" {
				cproto = corev1.ProtocolTCP
			}
			if cp.Name == pp.Port.StrVal && cproto == proto && int(cp.ContainerPort) == port {
				return true
			}
		}
	}
	return false
}

func portNumber(pp networkingv1.NetworkPolicyPort) (int, bool) {
	if pp.Port.Type == 0 {
		return int(pp.Port.IntVal), true
	}
	if n, err := strconv.Atoi(pp.Port.StrVal); err == nil {
		return n, true
	}
	return 0, false
}

// valid: every peer and port is well formed; a rule with any invalid part allows
// nothing (nft/compile fails closed and reports it as a Problem).
func (a *attributor) valid(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) bool {
	for _, pe := range peers {
		if pe.IPBlock != nil {
			if pe.PodSelector != nil || pe.NamespaceSelector != nil {
				return false
			}
			if _, err := netip.ParsePrefix(pe.IPBlock.CIDR); err != nil {
				return false
			}
			for _, ex := range pe.IPBlock.Except {
				if _, err := netip.ParsePrefix(ex); err != nil {
					return false
				}
			}
			continue
		}
		if pe.PodSelector == nil && pe.NamespaceSelector == nil {
			return false
		}
		if pe.PodSelector != nil && a.selector(pe.PodSelector) == nil {
			return false
		}
		if pe.NamespaceSelector != nil && a.selector(pe.NamespaceSelector) == nil {
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
		n, numeric := portNumber(pp)
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
