package compile

import (
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/nft"
)

// tierChains turns the NetworkPolicy table's fixed chains into the tiered layout of
// nft/doc.go, in place, and returns the chains the tiers add. The NetworkPolicy
// chains stay as they are: forward's `jump pod-egress` gains the Admin tier before it
// and the Baseline tier after it, and its `jump pod-ingress` becomes `goto
// ingress-tiers`, which runs Admin, pod-ingress and Baseline for the destination. In
// strict mode (strict) reply-recheck is spliced alike, with reply twins of the
// dispatch chains, and an allowed packet ends in ct-stamp instead of accept.
func tierChains(chains []nft.Chain, strict bool) []nft.Chain {
	jump := func(c string) nft.Rule { return nft.Rule{Verdict: nft.Verdict{Kind: nft.Jump, Chain: c}} }
	gotoV := func(c string) nft.Rule { return nft.Rule{Verdict: nft.Verdict{Kind: nft.Goto, Chain: c}} }
	splice := func(c *nft.Chain, egress, ingress string, before, after, tiers string) {
		var rules []nft.Rule
	walk:
		for _, r := range c.Rules {
			switch r.Verdict {
			case nft.Verdict{Kind: nft.Jump, Chain: egress}:
				rules = append(rules, jump(before), r, jump(after))
			case nft.Verdict{Kind: nft.Jump, Chain: ingress}:
				// The tiers decide from here on: what followed (strict mode's
				// goto ct-stamp) is ingress-tiers' own last rule now.
				rules = append(rules, gotoV(tiers))
				break walk
			default:
				rules = append(rules, r)
			}
		}
		c.Rules = rules
	}
	for i := range chains {
		switch chains[i].Name {
		case nft.ChainForward:
			splice(&chains[i], nft.ChainEgress, nft.ChainIngress, nft.ChainAdminEgress, nft.ChainBaselineEgress, nft.ChainIngressTiers)
		case nft.ChainReplyRecheck:
			splice(&chains[i], nft.ChainEgressReply, nft.ChainIngressReply, nft.ChainAdminEgressReply, nft.ChainBaselineEgressReply, nft.ChainIngressTiersReply)
		}
	}
	dispatch := func(name, v4map, v6map string, k4, k6 nft.Key) nft.Chain {
		return nft.Chain{Name: name, Rules: []nft.Rule{
			{VMap: &nft.VMap{Keys: []nft.Key{k4}, Map: v4map}},
			{VMap: &nft.VMap{Keys: []nft.Key{k6}, Map: v6map}},
		}}
	}
	allowed := nft.Rule{Verdict: nft.Verdict{Kind: nft.Accept}, Comment: "no tier decided: allowed"}
	if strict {
		allowed.Verdict = nft.Verdict{Kind: nft.Goto, Chain: nft.ChainStamp}
	}
	// The established fast path is forward's own first rule: in strict mode it
	// accepts only connections of the current epoch (StampEpoch moves both).
	established := nft.Rule{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))}, Verdict: nft.Verdict{Kind: nft.Accept}}
	for _, c := range chains {
		if c.Name == nft.ChainForward && len(c.Rules) > 0 {
			established = c.Rules[0]
		}
	}
	input := nft.Chain{
		Name: nft.ChainInput,
		// A pod's traffic to its own node (and to hostNetwork pods and Service
		// endpoints there) arrives here, never in forward. NetworkPolicy always
		// allows it, so only the tiers judge it: Admin, then Baseline for pods
		// no NetworkPolicy isolates for egress. An Admin egress Accept goes to
		// ingress-tiers, which finds no pod at a node address and allows it.
		Hook: &nft.Hook{Type: "filter", Hook: "input", Priority: 0, Policy: nft.Accept},
		Rules: []nft.Rule{
			established,
			{Matches: []nft.Match{nft.Is(nft.KeyICMPv6Type, nft.Num(133), nft.Num(134), nft.Num(135), nft.Num(136))}, Verdict: nft.Verdict{Kind: nft.Accept}},
		},
	}
	if strict {
		// Strict mode: a pod's open connection to its own node of an older epoch
		// is judged again like a first packet (and stamped, or dropped). A reply
		// arriving here belongs to a connection the node itself opened (output,
		// which no policy judges): it passes.
		input.Rules = append(input.Rules, nft.Rule{Matches: []nft.Match{nft.Is(nft.KeyCtDirection, nft.Num(nft.CtReply))},
			Verdict: nft.Verdict{Kind: nft.Accept}, Comment: "a reply to the node's own connection: not judged"})
	}
	input.Rules = append(input.Rules, jump(nft.ChainAdminEgress), jump(nft.ChainBaselineEgress))
	if strict {
		input.Rules = append(input.Rules, nft.Rule{Verdict: nft.Verdict{Kind: nft.Goto, Chain: nft.ChainStamp}})
	}
	out := []nft.Chain{
		input,
		dispatch(nft.ChainAdminEgress, nft.MapAdminEgressV4, nft.MapAdminEgressV6, nft.KeyIPSaddr, nft.KeyIP6Saddr),
		dispatch(nft.ChainBaselineEgress, nft.MapBaselineEgressV4, nft.MapBaselineEgressV6, nft.KeyIPSaddr, nft.KeyIP6Saddr),
		dispatch(nft.ChainAdminIngress, nft.MapAdminIngressV4, nft.MapAdminIngressV6, nft.KeyIPDaddr, nft.KeyIP6Daddr),
		dispatch(nft.ChainBaselineIngress, nft.MapBaselineIngressV4, nft.MapBaselineIngressV6, nft.KeyIPDaddr, nft.KeyIP6Daddr),
		{
			// Reached by goto, from forward or from an Admin egress Accept deep in
			// the egress walk: it must decide, never return.
			Name:  nft.ChainIngressTiers,
			Rules: []nft.Rule{jump(nft.ChainAdminIngress), jump(nft.ChainIngress), jump(nft.ChainBaselineIngress), allowed},
		},
	}
	if strict {
		out = append(out,
			dispatch(nft.ChainAdminEgressReply, nft.MapAdminEgressV4, nft.MapAdminEgressV6, nft.KeyIPDaddr, nft.KeyIP6Daddr),
			dispatch(nft.ChainBaselineEgressReply, nft.MapBaselineEgressV4, nft.MapBaselineEgressV6, nft.KeyIPDaddr, nft.KeyIP6Daddr),
			dispatch(nft.ChainAdminIngressReply, nft.MapAdminIngressV4, nft.MapAdminIngressV6, nft.KeyIPSaddr, nft.KeyIP6Saddr),
			dispatch(nft.ChainBaselineIngressReply, nft.MapBaselineIngressV4, nft.MapBaselineIngressV6, nft.KeyIPSaddr, nft.KeyIP6Saddr),
			nft.Chain{Name: nft.ChainIngressTiersReply, Rules: []nft.Rule{
				jump(nft.ChainAdminIngressReply), jump(nft.ChainIngressReply), jump(nft.ChainBaselineIngressReply), allowed}},
		)
	}
	return out
}

// tiersInto adds the tiers' chains, maps and sets to rs (the NetworkPolicy table);
// without any ClusterNetworkPolicy it leaves rs as it is.
func (tp *tierPass) tiersInto(rs *nft.Ruleset, local []*podInfo, shared map[netip.Addr][]*podInfo) {
	if tp == nil || len(tp.cnps) == 0 {
		return
	}
	rs.Chains = append(rs.Chains, tierChains(rs.Chains, tp.strict)...)
	slices.SortFunc(tp.groups, func(a, b *tierGroup) int { return strings.Compare(a.fam[0].chain, b.fam[0].chain) })
	for _, g := range tp.groups {
		for _, f := range g.fam {
			if !f.present {
				continue
			}
			rs.Chains = append(rs.Chains, f.chainV)
			if tp.strict {
				rs.Chains = append(rs.Chains, f.replyV)
			}
		}
	}
	rs.Sets = append(rs.Sets, tp.tierMaps(local, shared)...)
	rs.Sets = append(rs.Sets, tp.sets...)
	slices.SortFunc(rs.Sets, func(a, b nft.Set) int { return strings.Compare(a.Name, b.Name) })
}

// nodeInfo is what the compiler keeps of a node: its labels and its addresses
// (status.addresses that are IPs), for nodes peers.
type nodeInfo struct {
	name   string
	labels labels.Set
	addrs  []netip.Addr // unmapped, sorted, unique
}

func newNodeInfo(n *corev1.Node) *nodeInfo {
	ni := &nodeInfo{name: n.Name, labels: labels.Set(n.Labels)}
	for _, a := range n.Status.Addresses {
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			// Without its zone (the API does not check addresses:
			// "fd00::1%eth0" is fd00::1 to a packet), so that duplicates
			// go and no set holds an element twice.
			ni.addrs = append(ni.addrs, ip.Unmap().WithZone(""))
		}
	}
	slices.SortFunc(ni.addrs, netip.Addr.Compare)
	ni.addrs = slices.Compact(ni.addrs)
	return ni
}
