package compile

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go4.org/netipx"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/nftpolicy/nftpolicy/nft"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// tier is where a ClusterNetworkPolicy is judged: before NetworkPolicy (Admin) or
// after it (Baseline).
type tier uint8

const (
	tierAdmin tier = iota
	tierBaseline
)

func (t tier) String() string {
	if t == tierAdmin {
		return "Admin"
	}
	return "Baseline"
}

// action is what a ClusterNetworkPolicy rule does to the traffic it matches.
type action uint8

const (
	actAccept action = iota + 1
	actDeny
	actPass
)

// clusterPolicy is a ClusterNetworkPolicy parsed and checked once, whatever the node.
type clusterPolicy struct {
	name string
	ref  string // "cnp/<name>": how names and comments show it
	// key is what the names of the policy's own objects (sets, counters, drop
	// chains) hash: its name, unless another policy's name has the same hash
	// (nft.UniqueKey; set by the Compiler's tierPass, in name order).
	key      string
	tier     tier
	priority int32
	// The subject: pods whose namespace matches subjNS and whose labels match
	// subjPod. nil subjNS: invalid, selects no pod.
	subjNS, subjPod labels.Selector
	ingress         []*cnpRule
	egress          []*cnpRule
}

// cnpRule is one rule of a ClusterNetworkPolicy: action, peers × protocols.
type cnpRule struct {
	index   int
	ingress bool
	// key is the rule's id in the names of its objects (sets, counter, drop
	// chains): in-<hash> or eg-<hash> of its peers and protocols (ruleKeys), so
	// that a rule's objects follow the rule, not its place in the policy.
	key    string
	name   string
	action action
	// none: an Accept that fails closed (its peers are all unsupported, or a part
	// is invalid): it matches nothing. denyAll: a Deny or Pass that fails closed:
	// it drops whatever reaches it.
	none, denyAll bool
	peers         []*cnpPeer // OR; unsupported peers left out
	allPorts      bool       // no protocols: every protocol and port
	// networks: some peer is networks (CIDRs), so the peer sets are interval
	// sets. everyAddr[fi]: the networks cover every address of family fi (0
	// IPv4, 1 IPv6), so that family needs no peer lookup nor set. Both derive
	// from the peers, once (networksOfPeers).
	networks  bool
	everyAddr [2]bool
	ports     []port    // numbered ports (lo-hi), name ""
	named     []portRef // destinationNamedPort, each with TCP, UDP and SCTP
}

// cnpPeer is one peer: pods (sel.nsSel and sel.podSel; namespaces has podSel
// Everything), networks (cidrs) or nodes (nodeSel).
type cnpPeer struct {
	sel     *peer           // pods or namespaces; nsSel is never nil
	cidrs   *addrSet        // networks
	nodeSel labels.Selector // nodes
}

// cnpOrder is the evaluation order: tier, then priority, then name (equal
// priorities all apply; the name breaks the tie deterministically).
func cnpOrder(a, b *clusterPolicy) int {
	if a.tier != b.tier {
		return int(a.tier) - int(b.tier)
	}
	if a.priority != b.priority {
		if a.priority < b.priority {
			return -1
		}
		return 1
	}
	return strings.Compare(a.name, b.name)
}

// parseClusterPolicy checks c and returns it parsed (nil when it cannot be placed
// in a tier), with its problems.
func parseClusterPolicy(c *cnpv1.ClusterNetworkPolicy) (*clusterPolicy, []Problem) {
	p := &clusterPolicy{name: c.Name, key: c.Name, ref: "cnp/" + c.Name, priority: c.Spec.Priority}
	var problems []Problem
	report := func(format string, args ...any) {
		problems = append(problems, Problem{Cluster: c.Name, Reason: fmt.Sprintf(format, args...)})
	}
	switch c.Spec.Tier {
	case cnpv1.AdminTier:
		p.tier = tierAdmin
	case cnpv1.BaselineTier:
		p.tier = tierBaseline
	default:
		report("unknown tier %q: the policy is not enforced", c.Spec.Tier)
		return nil, problems
	}
	subj := c.Spec.Subject
	switch {
	case subj.Namespaces != nil && subj.Pods == nil:
		if sel, err := metav1.LabelSelectorAsSelector(subj.Namespaces); err != nil {
			report("invalid subject namespaces selector (%v): the policy selects no pod", err)
		} else {
			p.subjNS, p.subjPod = sel, labels.Everything()
		}
	case subj.Pods != nil && subj.Namespaces == nil:
		ns, err1 := metav1.LabelSelectorAsSelector(&subj.Pods.NamespaceSelector)
		pod, err2 := metav1.LabelSelectorAsSelector(&subj.Pods.PodSelector)
		if err := cmpErr(err1, err2); err != nil {
			report("invalid subject pods selector (%v): the policy selects no pod", err)
		} else {
			p.subjNS, p.subjPod = ns, pod
		}
	default:
		report("subject must set exactly one of namespaces and pods: the policy selects no pod")
	}
	for i, r := range c.Spec.Ingress {
		peers := make([]cnpv1.ClusterNetworkPolicyEgressPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = cnpv1.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}
		}
		ru := parseCNPRule(i, true, r.Name, r.Action, peers, r.Protocols, func(why string) {
			report("ingress rule %d%s: %s", i, ruleName(r.Name), why)
		})
		p.ingress = append(p.ingress, ru)
	}
	for i, r := range c.Spec.Egress {
		ru := parseCNPRule(i, false, r.Name, r.Action, r.To, r.Protocols, func(why string) {
			report("egress rule %d%s: %s", i, ruleName(r.Name), why)
		})
		p.egress = append(p.egress, ru)
	}
	in := make([]string, len(c.Spec.Ingress))
	for i, r := range c.Spec.Ingress {
		in[i] = ruleContent(r.From, r.Protocols)
	}
	eg := make([]string, len(c.Spec.Egress))
	for i, r := range c.Spec.Egress {
		eg[i] = ruleContent(r.To, r.Protocols)
	}
	ruleKeys(p.ingress, in, "in")
	ruleKeys(p.egress, eg, "eg")
	return p, problems
}

// ruleContent is what a rule's sets are made of, its peers and protocols, as
// text: what ruleKeys hashes. Neither its action nor its name: a rule whose
// action changes keeps its sets (its counter and drop chain are named by the
// action too).
func ruleContent(peers, protocols any) string {
	b, err := json.Marshal([]any{peers, protocols})
	if err != nil {
		return fmt.Sprint(peers, protocols) // the API types always marshal
	}
	return string(b)
}

// ruleKeys gives each rule of one direction its key: dir, then the hash of its
// content, then -2, -3, ... for a later rule whose hash an earlier one has (the
// same peers and protocols, or a hash collision). A key depends on the rule's
// content and not on its index, so a rule inserted or removed before others
// leaves their objects (and counts) alone, where names by index moved every
// later rule's elements under the names of the rules before it, in the
// transaction that rewrote their rules: the kernel shows a transaction's new
// rules to packets before the new contents of its interval sets (nft/doc.go,
// "strict mode"), so a packet in between was judged by one rule's rules and
// another's networks. A new or changed rule gets new sets, which the applier
// fills a batch ahead of the rules that use them (nft/netlink sendAhead).
func ruleKeys(rules []*cnpRule, contents []string, dir string) {
	taken := map[string]bool{}
	for i, r := range rules {
		base := dir + "-" + nft.ShortHash(contents[i])
		k := base
		for n := 2; taken[k]; n++ {
			k = base + "-" + strconv.Itoa(n)
		}
		taken[k] = true
		r.key = k
	}
}

func cmpErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func ruleName(name string) string {
	if name == "" {
		return ""
	}
	return " (" + name + ")"
}

// parseCNPRule parses one rule. Ingress peers come as egress peers with only
// namespaces and pods set. report is called once per problem, with the
// consequence stated.
func parseCNPRule(index int, ingress bool, name string, act cnpv1.ClusterNetworkPolicyRuleAction,
	peers []cnpv1.ClusterNetworkPolicyEgressPeer, protos []cnpv1.ClusterNetworkPolicyProtocol, report func(string)) *cnpRule {
	r := &cnpRule{index: index, ingress: ingress, name: name, allPorts: len(protos) == 0}
	var invalid, unsupported []string
	switch act {
	case cnpv1.ClusterNetworkPolicyRuleActionAccept:
		r.action = actAccept
	case cnpv1.ClusterNetworkPolicyRuleActionDeny:
		r.action = actDeny
	case cnpv1.ClusterNetworkPolicyRuleActionPass:
		r.action = actPass
	default:
		r.action = actDeny
		invalid = append(invalid, fmt.Sprintf("unknown action %q", act))
	}
	hasAddrPeer := false
	for j := range peers {
		pe, kind, why := parseCNPPeer(&peers[j])
		switch {
		case kind == "unsupported":
			unsupported = append(unsupported, fmt.Sprintf("peer %d: %s", j, why))
		case why != "":
			invalid = append(invalid, fmt.Sprintf("peer %d: %s", j, why))
		default:
			r.peers = append(r.peers, pe)
			hasAddrPeer = hasAddrPeer || pe.sel == nil
		}
	}
	if len(peers) == 0 {
		invalid = append(invalid, "no peers (the API requires at least one)")
	}
	for j := range protos {
		pp := &protos[j]
		set := 0
		for _, b := range []bool{pp.TCP != nil, pp.UDP != nil, pp.SCTP != nil, pp.DestinationNamedPort != ""} {
			if b {
				set++
			}
		}
		if set != 1 {
			invalid = append(invalid, fmt.Sprintf("protocol %d: exactly one of tcp, udp, sctp and destinationNamedPort must be set", j))
			continue
		}
		if pp.DestinationNamedPort != "" {
			if errs := validation.IsValidPortName(pp.DestinationNamedPort); len(errs) > 0 {
				invalid = append(invalid, fmt.Sprintf("protocol %d: invalid destinationNamedPort %q", j, pp.DestinationNamedPort))
				continue
			}
			if hasAddrPeer {
				invalid = append(invalid, fmt.Sprintf("protocol %d: destinationNamedPort with networks or nodes peers", j))
				continue
			}
			for _, proto := range []uint8{6, 17, 132} {
				r.named = append(r.named, portRef{pp.DestinationNamedPort, proto})
			}
			continue
		}
		var proto uint8
		var dp *cnpv1.Port
		switch {
		case pp.TCP != nil:
			proto, dp = 6, pp.TCP.DestinationPort
		case pp.UDP != nil:
			proto, dp = 17, pp.UDP.DestinationPort
		default:
			proto, dp = 132, pp.SCTP.DestinationPort
		}
		pt := port{proto: proto, lo: 0, hi: 65535}
		switch {
		case dp == nil: // the CRD forbids it: read as the whole protocol
		case dp.Range != nil && dp.Number != 0:
			invalid = append(invalid, fmt.Sprintf("protocol %d: both number and range", j))
			continue
		case dp.Range != nil:
			s, e := dp.Range.Start, dp.Range.End
			if s < 1 || e > 65535 || s > e {
				invalid = append(invalid, fmt.Sprintf("protocol %d: invalid port range %d-%d", j, s, e))
				continue
			}
			pt.lo, pt.hi = uint16(s), uint16(e)
		default:
			if dp.Number < 1 || dp.Number > 65535 {
				invalid = append(invalid, fmt.Sprintf("protocol %d: port %d out of range 1-65535", j, dp.Number))
				continue
			}
			pt.lo, pt.hi = uint16(dp.Number), uint16(dp.Number)
		}
		r.ports = append(r.ports, pt)
	}
	sortPortRefs(r.named)
	r.named = slices.Compact(r.named)
	fails := "matches nothing"
	if r.action != actAccept {
		fails = "denies all"
	}
	switch {
	case len(invalid) > 0:
		r.none, r.denyAll = r.action == actAccept, r.action != actAccept
		for _, why := range append(invalid, unsupported...) {
			report(why + "; the rule " + fails)
		}
	case len(unsupported) > 0 && (r.action != actAccept || len(r.peers) == 0):
		r.none, r.denyAll = r.action == actAccept, r.action != actAccept
		for _, why := range unsupported {
			report(why + "; the rule " + fails)
		}
	default:
		for _, why := range unsupported {
			report(why + "; the rule matches through its other peers only")
		}
	}
	if r.none || r.denyAll {
		r.peers, r.ports, r.named = nil, nil, nil
	}
	r.networksOfPeers()
	return r
}

// parseCNPPeer parses one peer; kind "unsupported" marks a domainNames peer, which
// nftpolicy does not implement (an Accept rule matches through its other peers, a
// Deny or Pass rule denies all); a peer with no field set is invalid, which fails
// the whole rule closed.
func parseCNPPeer(pe *cnpv1.ClusterNetworkPolicyEgressPeer) (out *cnpPeer, kind, why string) {
	set := 0
	for _, b := range []bool{pe.Namespaces != nil, pe.Pods != nil, pe.Nodes != nil, len(pe.Networks) > 0, len(pe.DomainNames) > 0} {
		if b {
			set++
		}
	}
	switch {
	case set == 0:
		// The API: "If an implementation sees no fields are set then it can
		// infer that the deployed CRD is of an incompatible version with an
		// unknown field. In that case it should fail closed. For "Accept"
		// rules, "fail closed" means: "treat the rule as matching no
		// traffic"": the rule, not only the peer, as for any invalid part.
		return nil, "", "no field set (an unknown field of a newer API version?)"
	case set > 1:
		return nil, "", "more than one field set"
	case len(pe.DomainNames) > 0:
		return nil, "unsupported", "domainNames peers are not implemented by nftpolicy"
	case pe.Namespaces != nil:
		sel, err := metav1.LabelSelectorAsSelector(pe.Namespaces)
		if err != nil {
			return nil, "", fmt.Sprintf("invalid namespaces selector (%v)", err)
		}
		return &cnpPeer{sel: selPeer(sel, labels.Everything())}, "", ""
	case pe.Pods != nil:
		ns, err1 := metav1.LabelSelectorAsSelector(&pe.Pods.NamespaceSelector)
		pod, err2 := metav1.LabelSelectorAsSelector(&pe.Pods.PodSelector)
		if err := cmpErr(err1, err2); err != nil {
			return nil, "", fmt.Sprintf("invalid pods selector (%v)", err)
		}
		return &cnpPeer{sel: selPeer(ns, pod)}, "", ""
	case pe.Nodes != nil:
		sel, err := metav1.LabelSelectorAsSelector(pe.Nodes)
		if err != nil {
			return nil, "", fmt.Sprintf("invalid nodes selector (%v)", err)
		}
		return &cnpPeer{nodeSel: sel}, "", ""
	}
	var b netipx.IPSetBuilder
	for _, c := range pe.Networks {
		pfx, err := netip.ParsePrefix(string(c))
		if err != nil || pfx.Addr().Is4In6() {
			// The CRD's isCIDR() refuses IPv4-mapped addresses too.
			return nil, "", fmt.Sprintf("invalid network %q", c)
		}
		b.AddPrefix(pfx.Masked())
	}
	set2, _ := b.IPSet() // valid prefixes: no error
	return &cnpPeer{cidrs: &addrSet{cidrs: set2.Ranges()}}, "", ""
}

// selPeer is a pod selection as NetworkPolicy peers make them, so that the pass
// shares selections between both kinds of policy.
func selPeer(ns, pod labels.Selector) *peer {
	return &peer{nsSel: ns, podSel: pod, key: "ns:" + ns.String() + "\x00pod:" + pod.String()}
}

// selects reports whether the policy's subject is pod p (namespace labels nsl).
func (p *clusterPolicy) selects(nsl labels.Set, pod *podInfo) bool {
	return p.subjNS != nil && p.subjNS.Matches(nsl) && p.subjPod.Matches(pod.labels)
}

func (p *clusterPolicy) rules(ingress bool) []*cnpRule {
	if ingress {
		return p.ingress
	}
	return p.egress
}
