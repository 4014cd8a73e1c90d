package compile

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft"
)

// slot is one tier and direction of a local subject: the index of its group in
// tierPass.member.
type slot struct {
	tier    tier
	ingress bool
}

func (s slot) index() int {
	i := 2 * int(s.tier)
	if s.ingress {
		i++
	}
	return i
}

var slots = []slot{{tierAdmin, false}, {tierAdmin, true}, {tierBaseline, false}, {tierBaseline, true}}

// tierGroup is the local subjects that run the same ClusterNetworkPolicies, in the
// same order, for one tier and direction: one chain per family holding those
// policies' rules for that family (fam[0] IPv4, fam[1] IPv6).
type tierGroup struct {
	slot
	key  string
	pols []*clusterPolicy // evaluation order
	fam  [2]famChain
}

// famChain is a tier group's chain for one family: its tier map of that family
// sends the group's subjects there, so a packet walks only its own family's rules.
type famChain struct {
	// present: some subject of the group has an address of the family; a
	// family no subject has gets no chain (its map has no element to send there).
	present bool
	chain   string
	chainV  nft.Chain
	// Strict mode: the chain's twin for replies of an older epoch.
	replyChain string
	replyV     nft.Chain
	// The policy rule of each rule of chainV and replyV (Attribution.Tiers).
	ruleOf, replyRuleOf []*ClusterRule
}

// tierPass is the tiers' part of one compilation (pass.tiers): ClusterNetworkPolicy
// groups, their chains, the tier verdict maps and the per-rule sets.
type tierPass struct {
	cnps   []*clusterPolicy // evaluation order
	nodes  []*nodeInfo
	groups []*tierGroup
	member map[*podInfo]*[4]*tierGroup
	sets   []nft.Set
	strict bool // EstablishedRecheck: allowed packets are stamped, replies rechecked
	obs    tierObserve
}

// buildTiers groups the local subjects per tier and direction and fills the sets of
// every policy some group runs, reusing cache (by policy name) and returning what
// the next pass can reuse. It runs after build, which decides which pods
// NetworkPolicy isolates (the Baseline maps leave those out).
func (ps *pass) buildTiers(tp *tierPass, cache map[string][]nft.Set) map[string][]nft.Set {
	ps.tiers = tp
	tp.strict = ps.strict != nil
	tp.obs = newTierObserve(ps.opts)
	tp.member = map[*podInfo]*[4]*tierGroup{}
	byKey := map[string]*tierGroup{}
	var keys []string
	used := map[*clusterPolicy]bool{}
	for _, pod := range ps.ix.local.list() {
		nsl := ps.ix.labelsOf(pod.ns)
		var sel []*clusterPolicy
		for _, p := range tp.cnps {
			if p.selects(nsl, pod) {
				sel = append(sel, p)
			}
		}
		if len(sel) == 0 {
			continue
		}
		var mine [4]*tierGroup
		for _, s := range slots {
			if s.tier == tierBaseline && ((s.ingress && pod.ingress != nil) || (!s.ingress && pod.egress != nil)) {
				// NetworkPolicy isolates the pod in this direction and always
				// decides: no Baseline group (its chain would be reached by no
				// map element, and tell a reader Baseline judges the pod).
				continue
			}
			var pols []*clusterPolicy
			for _, p := range sel {
				if p.tier == s.tier && len(p.rules(s.ingress)) > 0 {
					pols = append(pols, p)
				}
			}
			if len(pols) == 0 {
				continue
			}
			var b strings.Builder
			b.WriteString(s.tier.String())
			b.WriteString(map[bool]string{false: " egress", true: " ingress"}[s.ingress])
			for _, p := range pols {
				b.WriteString("\n" + p.name)
			}
			key := b.String()
			g := byKey[key]
			if g == nil {
				g = &tierGroup{slot: s, key: key, pols: pols}
				byKey[key] = g
				keys = append(keys, key)
				for _, p := range pols {
					used[p] = true
				}
			}
			for _, a := range pod.addrs {
				g.fam[famIndex(a.Is6())].present = true
			}
			mine[s.index()] = g
		}
		tp.member[pod] = &mine
	}
	slices.Sort(keys)
	taken := map[string]bool{}
	for _, key := range keys {
		g := byKey[key]
		g.name(taken)
		for fi := range g.fam {
			if g.fam[fi].present {
				g.chainValue(fi == 1, tp.strict, tp.obs)
			}
		}
		tp.groups = append(tp.groups, g)
	}
	next := map[string][]nft.Set{}
	for _, p := range tp.cnps {
		if !used[p] {
			continue
		}
		sets, ok := cache[p.name]
		if !ok {
			sets = ps.cnpSets(p)
		}
		next[p.name] = sets
		tp.sets = append(tp.sets, sets...)
	}
	return next
}

// name sets the group's chain names (`<prefix>-<hash>-<label>-v4` and `-v6`, with
// `-reply` twins), avoiding a hash collision with the heads taken.
func (g *tierGroup) name(taken map[string]bool) {
	prefix := map[slot]string{
		{tierAdmin, false}: "adm-eg", {tierAdmin, true}: "adm-in",
		{tierBaseline, false}: "bl-eg", {tierBaseline, true}: "bl-in",
	}[g.slot]
	more := ""
	if n := len(g.pols) - 1; n > 0 {
		more = "_and_" + strconv.Itoa(n)
	}
	key := nft.UniqueKey(taken, prefix, g.key)
	reply := "-" + nft.SuffixReply
	names := nft.ObjectNames(prefix, key, g.pols[0].ref, more, "v4", "v6", "v4"+reply, "v6"+reply)
	for fi := range g.fam {
		g.fam[fi].chain, g.fam[fi].replyChain = names[fi], names[2+fi]
	}
}

// chainValue builds the group's chain of one family: its policies' rules for that
// family, policy after policy in evaluation order, rules in written order. Nothing
// matched: the chain ends and returns to the caller of the tier's dispatch chain
// (the tier map's verdict is a goto), and the next tier judges.
//
// In strict mode the chain first sends replies (of connections of an older epoch)
// to its twin, which judges them as their connection: the same rules with source
// and destination swapped (addresses, and the destination port read as the reply's
// source port), and an Admin egress Accept going on to ingress-tiers-reply.
func (g *tierGroup) chainValue(v6 bool, strict bool, obs tierObserve) {
	f := &g.fam[famIndex(v6)]
	c := nft.Chain{Name: f.chain}
	var reply nft.Chain
	f.ruleOf, f.replyRuleOf = nil, nil
	if strict {
		c.Rules = append(c.Rules, nft.Rule{Matches: []nft.Match{nft.Is(nft.KeyCtDirection, nft.Num(nft.CtReply))},
			Verdict: nft.Verdict{Kind: nft.Goto, Chain: f.replyChain}})
		f.ruleOf = append(f.ruleOf, nil)
		reply.Name = f.replyChain
	}
	for _, p := range g.pols {
		for _, r := range p.rules(g.ingress) {
			rules := g.ruleRules(p, r, v6, strict, obs)
			c.Rules = append(c.Rules, rules...)
			cr := clusterRule(p, r)
			for range rules {
				f.ruleOf = append(f.ruleOf, cr)
			}
			if strict {
				for _, ru := range rules {
					rr := reversed(ru)
					if r.denies() {
						rr.Verdict = obs.verdict(p, r, nft.Verdict{Kind: nft.Drop}, true) // the reply's own drop chain
					}
					reply.Rules = append(reply.Rules, rr)
					f.replyRuleOf = append(f.replyRuleOf, cr)
				}
			}
		}
	}
	f.chainV, f.replyV = c, reply
}

// reversed is rule r for a reply: source and destination swapped.
func reversed(r nft.Rule) nft.Rule {
	swap := map[nft.Key]nft.Key{
		nft.KeyIPSaddr: nft.KeyIPDaddr, nft.KeyIPDaddr: nft.KeyIPSaddr,
		nft.KeyIP6Saddr: nft.KeyIP6Daddr, nft.KeyIP6Daddr: nft.KeyIP6Saddr,
		nft.KeyTHDport: nft.KeyTHSport,
	}
	out := r
	out.Matches = make([]nft.Match, len(r.Matches))
	for i, m := range r.Matches {
		m.Keys = slices.Clone(m.Keys)
		for j, k := range m.Keys {
			if to, ok := swap[k]; ok {
				m.Keys[j] = to
			}
		}
		out.Matches[i] = m
	}
	if out.Verdict == (nft.Verdict{Kind: nft.Goto, Chain: nft.ChainIngressTiers}) {
		out.Verdict.Chain = nft.ChainIngressTiersReply
	}
	return out
}

// verdict is what a matching rule does, by tier and direction (see nft/doc.go):
// returning hands the packet to the next tier, because the tier's dispatch chain
// was jumped to (and went on to the group chain by goto).
func (g *tierGroup) verdict(a action, strict bool) nft.Verdict {
	switch {
	case a == actDeny:
		return nft.Verdict{Kind: nft.Drop}
	case a == actPass:
		return nft.Verdict{Kind: nft.Return}
	case g.ingress && strict:
		return nft.Verdict{Kind: nft.Goto, Chain: nft.ChainStamp} // allowed: stamp the epoch
	case g.ingress:
		return nft.Verdict{Kind: nft.Accept}
	case g.tier == tierAdmin:
		// An Admin egress Accept skips NetworkPolicy and Baseline egress, but the
		// destination's ingress is still judged: ingress-tiers always decides, so
		// a goto never comes back here.
		return nft.Verdict{Kind: nft.Goto, Chain: nft.ChainIngressTiers}
	default:
		return nft.Verdict{Kind: nft.Return} // Baseline egress: egress is done
	}
}

// ruleRules is one ClusterNetworkPolicy rule as nft rules of one family, one per
// kind of protocol match (every port; exact ports; port ranges; named ports), all
// with the rule's verdict and named counter, so any of them matching is the rule
// matching, counted once (the other family's chain has the same rules for its
// addresses, counting into the same counter).
//
// The protocol and port lookup comes before the peers': the conjunction means the
// same in either order, and most new flows fail on the port (a hash of a few
// elements) before the peers' set, which may hold every pod of the
// cluster. Peers that are every address of the family (a networks peer
// 0.0.0.0/0, ::/0) are no lookup at all: the family's chain only sees that
// family. Which rules and matches a rule has depends on the policy alone, never
// on pods.
func (g *tierGroup) ruleRules(p *clusterPolicy, r *cnpRule, v6 bool, strict bool, obs tierObserve) []nft.Rule {
	cr := clusterRule(p, r)
	v := obs.verdict(p, r, g.verdict(r.action, strict), false)
	st := obs.statements(p, r)
	switch {
	case r.none:
		return nil // fails closed: matches nothing (reported)
	case r.denyAll:
		return []nft.Rule{{Statements: st, Counter: true, Verdict: obs.verdict(p, r, nft.Verdict{Kind: nft.Drop}, false), Comment: cr.comment("")}}
	}
	exact, ranges := splitPorts(r.ports)
	peerKey, local := nft.KeyIPDaddr, nft.KeyIPDaddr
	switch {
	case r.ingress && v6:
		peerKey, local = nft.KeyIP6Saddr, nft.KeyIP6Daddr
	case r.ingress:
		peerKey = nft.KeyIPSaddr
	case v6:
		peerKey, local = nft.KeyIP6Daddr, nft.KeyIP6Daddr
	}
	var peers []nft.Match
	if !r.everyAddr[famIndex(v6)] {
		peers = []nft.Match{nft.InSet(p.peerSetName(r, v6), peerKey)}
	}
	rule := func(ms []nft.Match, more string) nft.Rule {
		return nft.Rule{Matches: ms, Statements: st, Counter: true, Verdict: v, Comment: cr.comment(more)}
	}
	var out []nft.Rule
	if r.allPorts {
		out = append(out, rule(peers, ""))
	}
	// Exact ports (a hash) and wide ranges (an interval set) are two sets and so
	// two rules, each present only when its set is (splitPorts); both count into
	// the rule's one named counter.
	if len(exact) > 0 {
		out = append(out, rule(append([]nft.Match{nft.InSet(p.setName(r, "ports"), nft.KeyL4Proto, nft.KeyTHDport)}, peers...), ""))
	}
	if len(ranges) > 0 {
		out = append(out, rule(append([]nft.Match{nft.InSet(p.setName(r, "ranges"), nft.KeyL4Proto, nft.KeyTHDport)}, peers...), ", port ranges"))
	}
	if len(r.named) > 0 {
		ms := []nft.Match{nft.InSet(p.setName(r, famSuffix("named-", v6)), local, nft.KeyL4Proto, nft.KeyTHDport)}
		if r.ingress {
			ms = append(ms, peers...)
		}
		out = append(out, rule(ms, ", named ports"))
	}
	return out
}

// famIndex is a family's index in per-family pairs: 0 IPv4, 1 IPv6.
func famIndex(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

func famSuffix(prefix string, v6 bool) string {
	if v6 {
		return prefix + "v6"
	}
	return prefix + "v4"
}

// peerSetName names the rule's peer set of one family. A set of peers with
// networks is an interval set, one without a hash: the two types have two names,
// so that a rule whose peers gain or lose networks gets a new set, which the
// applier creates ahead of the change (nft/netlink sendAhead), rather than one
// re-created under its name, whose lookups miss for a moment at the commit.
func (p *clusterPolicy) peerSetName(r *cnpRule, v6 bool) string {
	if r.networks {
		return p.setName(r, famSuffix("net-", v6))
	}
	return p.setName(r, famSuffix("", v6))
}

// setName names one of the rule's sets: `cnp-<hash>-cnp/<name>-<rule key>-<what>`
// (ruleKeys: in-<hash> or eg-<hash>).
func (p *clusterPolicy) setName(r *cnpRule, what string) string {
	return nft.ObjectName("cnp", p.key, p.ref, r.key+"-"+what)
}

// tierMaps builds the eight tier verdict maps: each local subject's addresses to its
// group's chain of the address's family, by goto: the dispatch chain's only other
// rule is the other family's lookup, so the group chain's return (nothing
// decided, or a Pass) goes straight back to the dispatch chain's caller. A Baseline map leaves out the pods NetworkPolicy isolates in that
// direction: NetworkPolicy always decides for them.
func (tp *tierPass) tierMaps(local []*podInfo, shared map[netip.Addr][]*podInfo) []nft.Set {
	names := map[slot][2]string{
		{tierAdmin, false}:    {nft.MapAdminEgressV4, nft.MapAdminEgressV6},
		{tierAdmin, true}:     {nft.MapAdminIngressV4, nft.MapAdminIngressV6},
		{tierBaseline, false}: {nft.MapBaselineEgressV4, nft.MapBaselineEgressV6},
		{tierBaseline, true}:  {nft.MapBaselineIngressV4, nft.MapBaselineIngressV6},
	}
	var out []nft.Set
	for _, s := range slots {
		for fi, v6 := range []bool{false, true} {
			typ := nft.TypeIPv4Addr
			if v6 {
				typ = nft.TypeIPv6Addr
			}
			dir := "egress"
			if s.ingress {
				dir = "ingress"
			}
			m := nft.Set{Name: names[s][fi], Type: []nft.DataType{typ}, Verdicts: true,
				Comment: fmt.Sprintf("local %s subject %s -> its %s chain", s.tier, famName(v6), dir)}
			taken := map[netip.Addr]bool{}
			for _, pod := range local {
				mine := tp.member[pod]
				if mine == nil || mine[s.index()] == nil {
					continue // no group: not selected, or (Baseline) NetworkPolicy isolates it
				}
				chain := mine[s.index()].fam[fi].chain
				for _, a := range pod.addrs {
					if a.Is6() != v6 {
						continue
					}
					if taken[a] {
						continue // shared: judgeShared below
					}
					taken[a] = true
					m.Elements = append(m.Elements, nft.Element{Key: []nft.Value{nft.Addr(a)},
						Verdict: nft.Verdict{Kind: nft.Goto, Chain: chain}, Comment: comment(pod.ref)})
				}
			}
			// A shared address (reported) goes to one claimant's group, unless
			// another claimant has another group; or, in the Admin tier, none:
			// the group's Accept would widen its traffic, and no element would
			// lose the others' Deny. Baseline can leave such a claimant to the
			// group: a Baseline Accept allows what no policy isolating it
			// denies anyway.
			slot, fi := s, fi
			judgeShared(&m, shared, func(p *podInfo) string {
				if mine := tp.member[p]; mine != nil && mine[slot.index()] != nil {
					return mine[slot.index()].fam[fi].chain
				}
				return ""
			}, func(*podInfo) bool { return slot.tier == tierBaseline })
			out = append(out, m)
		}
	}
	return out
}

func famName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// tierNarrowingSets is the sets of rs that tier rules look up to deny or pass
// (Narrows): a new element there may deny a packet that was allowed. A Deny rule
// drops (or goes to its drop chain, with the deny log); an Admin Pass returns,
// skipping the tier's later rules, an Accept among them, for NetworkPolicy or
// Baseline to judge. A Baseline return is an Accept or a Pass, both "allowed";
// an Accept of either tier only allows more. Group chains and their reply twins
// are named adm-... and bl-... (tierGroup.name).
func tierNarrowingSets(rs *nft.Ruleset) map[string]bool {
	out := map[string]bool{}
	for _, c := range rs.Chains {
		admin := strings.HasPrefix(c.Name, "adm-")
		if !admin && !strings.HasPrefix(c.Name, "bl-") {
			continue
		}
		for _, r := range c.Rules {
			v := r.Verdict
			drops := v.Kind == nft.Drop || (v.Kind == nft.Goto && strings.HasPrefix(v.Chain, "cnp-") &&
				(strings.HasSuffix(v.Chain, "-drop") || strings.HasSuffix(v.Chain, "-drop-"+nft.SuffixReply)))
			if !drops && (!admin || v.Kind != nft.Return) {
				continue
			}
			for _, m := range r.Matches {
				if m.Set != "" {
					out[m.Set] = true
				}
			}
		}
	}
	return out
}

// baselineJudges says whether a Baseline ClusterNetworkPolicy judges pod's
// traffic in the direction (it has a Baseline group there: NetworkPolicy does
// not isolate it in that direction, buildTiers).
func (tp *tierPass) baselineJudges(pod *podInfo, ingress bool) bool {
	if tp == nil {
		return false
	}
	mine := tp.member[pod]
	return mine != nil && mine[slot{tierBaseline, ingress}.index()] != nil
}
