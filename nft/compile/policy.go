package compile

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go4.org/netipx"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/nftpolicy/nftpolicy/nft"
)

// policy is a NetworkPolicy parsed and checked once, whatever the node.
type policy struct {
	ns, name string
	ref      string          // "namespace/name"
	podSel   labels.Selector // nil when invalid: selects no pod
	ingress  bool            // isolates the pods it selects for ingress (defaulted)
	egress   bool
	ingRules []*rule
	egRules  []*rule

	// ingNamed lists the named ports the ingress rules use, sorted: a target's
	// resolution of them is part of its ingress group key.
	ingNamed []portRef
}

type portRef struct {
	name  string
	proto uint8
}

// rule is one ingress or egress rule: peers × ports.
type rule struct {
	allPeers bool    // no from/to: every address of both families
	peers    []*peer // OR
	allPorts bool    // no ports: every protocol and port
	ports    []port  // OR
	broken   bool    // a problem was found: the rule allows nothing (fail closed)
}

// peer is one NetworkPolicyPeer: pods (nsSel and podSel) or an ipBlock.
type peer struct {
	isBlk  bool
	block  *addrSet        // ipBlock cidr minus except, when isBlk
	nsSel  labels.Selector // nil: the policy's namespace
	podSel labels.Selector // Everything when only nsSel is given
	key    string          // identity of the pod selection, for caching; "" when nsSel is nil
}

// port is one NetworkPolicyPort: a protocol and a port range, or a named port.
type port struct {
	proto  uint8
	lo, hi uint16
	name   string // named port: lo and hi unused
}

// portAddrs is the destinations of a named port that resolve to one number.
type portAddrs struct {
	port  uint16
	addrs *addrSet
}

func protoNumber(p corev1.Protocol) (uint8, bool) {
	switch p {
	case "", corev1.ProtocolTCP:
		return nft.ProtoTCP, true
	case corev1.ProtocolUDP:
		return nft.ProtoUDP, true
	case corev1.ProtocolSCTP:
		return nft.ProtoSCTP, true
	}
	return 0, false
}

// parsePolicy checks np and returns it parsed, with its problems.
func parsePolicy(np *networkingv1.NetworkPolicy) (*policy, []Problem) {
	p := &policy{ns: np.Namespace, name: np.Name, ref: np.Namespace + "/" + np.Name}
	var problems []Problem
	report := func(format string, args ...any) {
		problems = append(problems, Problem{
			Policy: types.NamespacedName{Namespace: np.Namespace, Name: np.Name},
			Reason: fmt.Sprintf(format, args...),
		})
	}
	if sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector); err != nil {
		report("invalid podSelector (%v): the policy selects no pod", err)
	} else {
		p.podSel = sel
	}
	if len(np.Spec.PolicyTypes) == 0 {
		// The API server's defaulting, which unit tests and trimmed objects lack.
		p.ingress = true
		p.egress = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.ingress = true
		case networkingv1.PolicyTypeEgress:
			p.egress = true
		default:
			report("unknown policyType %q ignored", t)
		}
	}
	named := map[portRef]bool{}
	for i, r := range np.Spec.Ingress {
		ru, reasons := parseRule(r.From, r.Ports)
		for _, why := range reasons {
			report("ingress rule %d: %s; the rule allows nothing", i, why)
		}
		p.ingRules = append(p.ingRules, ru)
		if !ru.broken {
			for _, pt := range ru.ports {
				if pt.name != "" {
					named[portRef{pt.name, pt.proto}] = true
				}
			}
		}
	}
	for i, r := range np.Spec.Egress {
		ru, reasons := parseRule(r.To, r.Ports)
		for _, why := range reasons {
			report("egress rule %d: %s; the rule allows nothing", i, why)
		}
		p.egRules = append(p.egRules, ru)
	}
	for ref := range named {
		p.ingNamed = append(p.ingNamed, ref)
	}
	sortPortRefs(p.ingNamed)
	return p, problems
}

func sortPortRefs(refs []portRef) {
	slices.SortFunc(refs, func(a, b portRef) int {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
		return int(a.proto) - int(b.proto)
	})
}

// parseRule parses one rule's peers and ports. Any reason returned marks it broken.
func parseRule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (*rule, []string) {
	r := &rule{allPeers: len(peers) == 0, allPorts: len(ports) == 0}
	var reasons []string
	for j := range peers {
		pe, why := parsePeer(&peers[j])
		if why != "" {
			reasons = append(reasons, fmt.Sprintf("peer %d: %s", j, why))
			continue
		}
		r.peers = append(r.peers, pe)
	}
	for j := range ports {
		pt, why := parsePort(&ports[j])
		if why != "" {
			reasons = append(reasons, fmt.Sprintf("port %d: %s", j, why))
			continue
		}
		r.ports = append(r.ports, pt)
	}
	r.broken = len(reasons) > 0
	return r, reasons
}

func parsePeer(pe *networkingv1.NetworkPolicyPeer) (*peer, string) {
	if pe.IPBlock != nil {
		if pe.PodSelector != nil || pe.NamespaceSelector != nil {
			return nil, "ipBlock cannot be combined with podSelector or namespaceSelector"
		}
		cidr, err := parseBlockCIDR(pe.IPBlock.CIDR)
		if err != nil {
			return nil, fmt.Sprintf("invalid ipBlock cidr %q", pe.IPBlock.CIDR)
		}
		var b netipx.IPSetBuilder
		b.AddPrefix(cidr)
		for _, ex := range pe.IPBlock.Except {
			e, err := parseBlockCIDR(ex)
			if err != nil {
				return nil, fmt.Sprintf("invalid ipBlock except %q", ex)
			}
			b.RemovePrefix(e)
		}
		set, _ := b.IPSet() // valid prefixes: no error
		return &peer{isBlk: true, block: &addrSet{cidrs: set.Ranges()}}, ""
	}
	if pe.PodSelector == nil && pe.NamespaceSelector == nil {
		return nil, "empty peer (no podSelector, namespaceSelector or ipBlock)"
	}
	out := &peer{podSel: labels.Everything()}
	if pe.PodSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(pe.PodSelector)
		if err != nil {
			return nil, fmt.Sprintf("invalid podSelector (%v)", err)
		}
		out.podSel = sel
	}
	if pe.NamespaceSelector != nil {
		sel, err := metav1.LabelSelectorAsSelector(pe.NamespaceSelector)
		if err != nil {
			return nil, fmt.Sprintf("invalid namespaceSelector (%v)", err)
		}
		out.nsSel = sel
		out.key = "ns:" + sel.String() + "\x00pod:" + out.podSel.String()
	}
	return out, ""
}

// parseBlockCIDR reads an ipBlock's cidr or except as the API server does
// (net.ParseCIDR): an IPv4-mapped IPv6 prefix of at least 96 bits is the IPv4
// prefix it maps (::ffff:10.0.0.0/104 is 10.0.0.0/8). Validation accepts such
// values where StrictIPCIDRValidation is off, and objects written before it
// keep them; read as IPv6 they would match nothing, and an except so written
// would leave its addresses in the block. The prefix returned is masked.
func parseBlockCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, err
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func parsePort(pp *networkingv1.NetworkPolicyPort) (port, string) {
	var out port
	var proto corev1.Protocol
	if pp.Protocol != nil {
		proto = *pp.Protocol
	}
	n, ok := protoNumber(proto)
	if !ok {
		return out, fmt.Sprintf("unknown protocol %q", proto)
	}
	out.proto = n
	if pp.Port == nil {
		if pp.EndPort != nil {
			return out, "endPort without port"
		}
		out.lo, out.hi = 0, 65535 // the protocol, every port
		return out, ""
	}
	num := int64(pp.Port.IntVal)
	if pp.Port.Type != 0 { // a string: a name, or (leniently) digits
		s := pp.Port.StrVal
		v, err := strconv.ParseInt(s, 10, 32)
		switch {
		case err == nil:
			num = v
		case len(validation.IsValidPortName(s)) == 0:
			if pp.EndPort != nil {
				return out, fmt.Sprintf("endPort with named port %q", s)
			}
			out.name = s
			return out, ""
		default:
			return out, fmt.Sprintf("port %q is neither a number nor a valid port name", s)
		}
	}
	if num < 1 || num > 65535 {
		return out, fmt.Sprintf("port %d out of range 1-65535", num)
	}
	out.lo, out.hi = uint16(num), uint16(num)
	if pp.EndPort != nil {
		end := int64(*pp.EndPort)
		switch {
		case end > 65535:
			return out, fmt.Sprintf("endPort %d out of range 1-65535", end)
		case end < num:
			return out, fmt.Sprintf("endPort %d below port %d", end, num)
		}
		out.hi = uint16(end)
	}
	return out, ""
}

func (r *rule) hasNamedPort() bool {
	return slices.ContainsFunc(r.ports, func(pt port) bool { return pt.name != "" })
}
