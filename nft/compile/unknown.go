package compile

import (
	"net/netip"
	"slices"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Unknown local addresses (Options.UnknownLocalPods): a new pod can send before
// its address reaches the agent, so a pod that a policy isolates would talk freely
// for its first moments. With the node's pod CIDRs given, the forward chain drops
// what comes from an address of those CIDRs that no known local pod has: unknown
// means isolated. See nft/doc.go, "Unknown local pods".

// SetUnknownLocalPods replaces Options.UnknownLocalPods: the node's pod CIDRs can
// come from its Node object (the agent's --unknown-pod-cidrs=node), which may gain
// them after the Compiler was made. Empty turns the drops off. The next Compile
// applies it; no group depends on it, so nothing is recompiled but the fixed chains
// and the local pod sets.
func (c *Compiler) SetUnknownLocalPods(cidrs []netip.Prefix) {
	c.opts.UnknownLocalPods = slices.Clone(cidrs)
	c.changed = true
}

// UnknownLocalPods returns the pod CIDRs in force (Options.UnknownLocalPods or the
// last SetUnknownLocalPods).
func (c *Compiler) UnknownLocalPods() []netip.Prefix {
	return slices.Clone(c.opts.UnknownLocalPods)
}

// UnknownPodDenyLogPrefix is the deny log prefix of the drops of unknown local
// sources (Attribution.Groups maps it to a Group with UnknownPod set).
const UnknownPodDenyLogPrefix = nft.DenyLogPrefix + " unknown-pod"

// unknownRules are the forward chain's drops of unknown local sources, one per
// family with a CIDR: `ip saddr <cidrs> ip saddr != @local-pods-v4 counter drop`,
// with the deny log on after a rule of the same matches that logs through the
// node's deny-log limit (which never gates the drop), as a group chain's drop.
func unknownRules(cidrs []netip.Prefix, denyLog DenyLog) []nft.Rule {
	var out []nft.Rule
	for _, fam := range []struct {
		v6   bool
		key  nft.Key
		set  string
		name string
	}{{false, nft.KeyIPSaddr, nft.SetLocalPodsV4, "IPv4"}, {true, nft.KeyIP6Saddr, nft.SetLocalPodsV6, "IPv6"}} {
		var vals []nft.Value
		for _, p := range cidrs {
			if p.Addr().Unmap().Is6() == fam.v6 {
				vals = append(vals, nft.Prefix(netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapShift(p))))
			}
		}
		if len(vals) == 0 {
			continue
		}
		matches := []nft.Match{nft.Is(fam.key, vals...), nft.Not(nft.InSet(fam.set, fam.key))}
		if denyLog.enabled() {
			out = append(out, nft.Rule{
				Matches:    matches,
				Statements: []nft.Statement{nft.LimitRef{Name: nft.ObjDenyLog}},
				Log:        &nft.Log{Group: denyLog.Group, Prefix: UnknownPodDenyLogPrefix},
			})
		}
		out = append(out, nft.Rule{
			Matches: matches,
			Counter: true,
			Verdict: nft.Verdict{Kind: nft.Drop},
			Comment: "from a local pod address the agent does not know yet",
		})
	}
	return out
}

// unmapShift is how many bits an IPv4-mapped IPv6 prefix loses when unmapped.
func unmapShift(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}

// localPodSets are the addresses of every eligible local pod, isolated or not.
func localPodSets(local []*podInfo) []nft.Set {
	v4 := nft.Set{Name: nft.SetLocalPodsV4, Type: []nft.DataType{nft.TypeIPv4Addr}, Comment: "addresses of the local pods the agent knows"}
	v6 := nft.Set{Name: nft.SetLocalPodsV6, Type: []nft.DataType{nft.TypeIPv6Addr}, Comment: "addresses of the local pods the agent knows"}
	seen := map[netip.Addr]bool{}
	for _, p := range local {
		for _, a := range p.addrs {
			if seen[a] {
				continue
			}
			seen[a] = true
			e := nft.Element{Key: []nft.Value{nft.Addr(a)}, Comment: comment(p.ref)}
			if a.Is4() {
				v4.Elements = append(v4.Elements, e)
			} else {
				v6.Elements = append(v6.Elements, e)
			}
		}
	}
	return []nft.Set{v4, v6}
}

// withUnknownRules inserts rules into the forward chain right after its
// neighbour-discovery rule (the second), before any dispatch.
func withUnknownRules(chains []nft.Chain, rules []nft.Rule) {
	if len(rules) == 0 {
		return
	}
	for i := range chains {
		if chains[i].Name == nft.ChainForward {
			c := &chains[i]
			c.Rules = slices.Insert(slices.Clone(c.Rules), 2, rules...)
		}
	}
}
