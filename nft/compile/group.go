package compile

import (
	"iter"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/nft"
)

// group is the local targets that share one chain for one direction: same selecting
// policies and, for ingress, same resolution of the named ports those policies use.
type group struct {
	ingress  bool
	key      string
	policies []*policy
	rep      *podInfo // one member, on which ingress named ports are resolved
	groupNames
	sets   []nft.Set
	chainV nft.Chain
	replyV nft.Chain // strict mode: the chain judging replies (name "" in keep mode)
}

// groupNames is what a group's chain, sets and counters are called (name).
type groupNames struct {
	label    string
	chain    string
	setNames [6]string // any-v4, ports-v4, ranges-v4, any-v6, ports-v6, ranges-v6
	counters [2]string // allow, deny (observe.go)
	collided bool      // the chain's name was another group's first: named after another key
}

// cachedGroup is a group's sets and chain as a pass left them, for the next pass to
// reuse while nothing they depend on changes. The Compiler drops the cached groups a
// change can affect (anyPeer, selects).
type cachedGroup struct {
	ingress  bool
	policies []*policy
	chain    string
	setNames [6]string
	sets     []nft.Set
	chainV   nft.Chain
	replyV   nft.Chain
	// pending are the addresses of pods that changed since, whose elements the
	// next pass makes anew (patch.go) rather than refilling the group.
	pending []netip.Addr
}

// groupKey identifies a group: direction, selecting policies and, for ingress, what
// the named ports of those policies resolve to on the pod.
func groupKey(ingress bool, pols []*policy, pod *podInfo) string {
	var b strings.Builder
	if ingress {
		b.WriteString("ingress")
	} else {
		b.WriteString("egress")
	}
	for _, p := range pols {
		b.WriteString("\n")
		b.WriteString(p.ref)
	}
	if !ingress {
		return b.String()
	}
	var refs []portRef
	for _, p := range pols {
		refs = append(refs, p.ingNamed...)
	}
	sortPortRefs(refs)
	refs = slices.Compact(refs)
	for i, ref := range refs {
		if i == 0 {
			b.WriteString("\nnamed ports")
		}
		b.WriteString("\n" + ref.name + "/" + strconv.Itoa(int(ref.proto)) + "=")
		for j, n := range pod.resolve(ref.name, ref.proto) {
			if j > 0 {
				b.WriteString(",")
			}
			b.WriteString(strconv.Itoa(int(n)))
		}
	}
	return b.String()
}

// name sets the group's chain and set names, avoiding a hash collision with the heads
// taken so far (groups are named in key order, so the outcome is deterministic).
//
// known, when not nil, is what the group was called by the pass before, which
// the Compiler keeps even when it drops the group's sets: the names depend on
// the key alone (the label too: the key lists the policies), so when known is
// a first choice that no group took in this pass, it is what naming again
// would give. Hashing nine names per group on every pass was a twentieth of
// an event that changes the table.
func (g *group) name(taken map[string]bool, known *groupNames) {
	prefix := "eg"
	if g.ingress {
		prefix = "ing"
	}
	if head := nft.ObjectHead(prefix, g.key); known != nil && !known.collided && !taken[head] {
		g.groupNames = *known
		taken[head] = true
		return
	}
	more := ""
	if n := len(g.policies) - 1; n > 0 {
		more = "_and_" + strconv.Itoa(n)
	}
	// Unique by head, not by whole name: two keys of one hash have different
	// labels as a rule, but the deny log names a chain by its head.
	key := nft.UniqueKey(taken, prefix, g.key)
	// One label for all: the reply chain (strict mode) is <chain>-reply.
	names := nft.ObjectNames(prefix, key, g.policies[0].ref, more,
		"", "any-v4", "ports-v4", "ranges-v4", "any-v6", "ports-v6", "ranges-v6", VerdictAllow, VerdictDeny, nft.SuffixReply)
	g.chain, g.label = names[0], g.policies[0].ref+more
	copy(g.setNames[:], names[1:7])
	g.counters = [2]string{names[7], names[8]}
	g.collided = key != g.key
}

// chainValue is the group's chain: see nft/doc.go. opts add the deny log rule and
// the policy counters (observe.go). In strict mode (s non-nil) an ingress allow
// stamps the connection with the current epoch (goto ct-stamp), and replies of
// connections of an older epoch go to the group's reply chain.
func (g *group) chainValue(opts Options, s *strictMode) nft.Chain {
	refs := make([]string, len(g.policies))
	for i, p := range g.policies {
		refs[i] = p.ref
	}
	allow := nft.Verdict{Kind: nft.Return}
	v4, v6 := nft.KeyIPDaddr, nft.KeyIP6Daddr
	if g.ingress {
		allow = nft.Verdict{Kind: nft.Accept}
		if s != nil {
			allow = nft.Verdict{Kind: nft.Goto, Chain: nft.ChainStamp}
		}
		v4, v6 = nft.KeyIPSaddr, nft.KeyIP6Saddr
	}
	allowed := listComment("allowed by", refs)
	counted, dropCounted, denyLog := g.observeRules(opts)
	rules := []nft.Rule{
		{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtInvalid))}, Counter: true, Verdict: nft.Verdict{Kind: nft.Drop}},
	}
	if s != nil {
		rules = append(rules, nft.Rule{
			Matches: []nft.Match{nft.Is(nft.KeyCtDirection, nft.Num(nft.CtReply))},
			Verdict: nft.Verdict{Kind: nft.Goto, Chain: g.replyName()},
		})
	}
	rules = append(rules, g.allowRules(v4, v6, nft.KeyTHDport, allow, counted, allowed)...)
	if denyLog != nil {
		rules = append(rules, *denyLog) // a rule of its own: its limit must not gate the drop
	}
	rules = append(rules, nft.Rule{Statements: dropCounted, Counter: true, Verdict: nft.Verdict{Kind: nft.Drop}, Comment: listComment("isolated by", refs)})
	return nft.Chain{Name: g.chain, Rules: rules}
}

// allowRules are the six lookups of the group's sets (per family: any, ports,
// ranges; see fill), with the peer address in v4 or v6 and the port in port, each
// with the statements counted and verdict allow.
func (g *group) allowRules(v4, v6, port nft.Key, allow nft.Verdict, counted []nft.Statement, comment string) []nft.Rule {
	var rules []nft.Rule
	for fi, addr := range []nft.Key{v4, v6} {
		for si, keys := range [][]nft.Key{{addr}, {addr, nft.KeyL4Proto, port}, {addr, nft.KeyL4Proto, port}} {
			rules = append(rules, nft.Rule{Matches: []nft.Match{nft.InSet(g.setNames[3*fi+si], keys...)}, Statements: counted, Counter: true, Verdict: allow, Comment: comment})
		}
	}
	return rules
}

// replyName is the name of the group's reply chain (strict mode).
func (g *group) replyName() string {
	return g.chain + "-" + nft.SuffixReply
}

// replyValue is the group's reply chain (strict mode): a reply packet of a
// connection that was allowed in an older epoch, judged as the connection it
// belongs to. The peer is the reply's destination for ingress (the original
// source), its source for egress (the original destination), and the port is the
// reply's source port (the original destination port); the sets are the group's.
// Its verdicts are counted and logged as the group chain's (opts): a reply
// re-judged is a packet the group's policies allow or drop, like the
// connection's own next packet would be.
func (g *group) replyValue(opts Options, s *strictMode) nft.Chain {
	refs := make([]string, len(g.policies))
	for i, p := range g.policies {
		refs[i] = p.ref
	}
	allow := nft.Verdict{Kind: nft.Return}
	v4, v6 := nft.KeyIPSaddr, nft.KeyIP6Saddr
	if g.ingress {
		allow = nft.Verdict{Kind: nft.Goto, Chain: nft.ChainStamp}
		v4, v6 = nft.KeyIPDaddr, nft.KeyIP6Daddr
	}
	counted, dropCounted, _ := g.observeRules(opts)
	rules := g.allowRules(v4, v6, nft.KeyTHSport, allow, counted, listComment("replies allowed by", refs))
	if denyLog := g.replyDenyLog(opts); denyLog != nil {
		rules = append(rules, *denyLog)
	}
	rules = append(rules, nft.Rule{Statements: dropCounted, Counter: true, Verdict: nft.Verdict{Kind: nft.Drop}, Comment: listComment("replies isolated by", refs)})
	return nft.Chain{Name: g.replyName(), Rules: rules}
}

// anyPeer reports whether match is true for a peer of a rule the group's sets are
// made of.
func (f *cachedGroup) anyPeer(match func(*policy, *peer) bool) bool {
	for p, r := range rulesOf(f.ingress, f.policies) {
		for _, pe := range r.peers {
			if match(p, pe) {
				return true
			}
		}
	}
	return false
}

// rulesOf yields the rules of one direction of the policies, each with its
// policy, but the broken ones: a rule with a problem allows nothing (it is
// reported; fail closed).
func rulesOf(ingress bool, pols []*policy) iter.Seq2[*policy, *rule] {
	return func(yield func(*policy, *rule) bool) {
		for _, p := range pols {
			rules := p.egRules
			if ingress {
				rules = p.ingRules
			}
			for _, r := range rules {
				if !r.broken && !yield(p, r) {
					return
				}
			}
		}
	}
}

// selects reports whether the group's sets may depend on pod p: a selector peer of
// one of its rules picks p, or an egress rule resolves a named port on every pod or
// on the pods of an ipBlock. It uses the namespaces' labels as they are now.
func (f *cachedGroup) selects(ix *index, p *podInfo) bool {
	if p == nil {
		return false
	}
	if !f.ingress {
		for _, pol := range f.policies {
			for _, r := range pol.egRules {
				if r.broken || !r.hasNamedPort() {
					continue
				}
				if r.allPeers || slices.ContainsFunc(r.peers, func(pe *peer) bool { return pe.isBlk }) {
					return true
				}
			}
		}
	}
	return f.anyPeer(func(pol *policy, pe *peer) bool { return peerSelects(ix, pol, pe, p) })
}

// peerSelects reports whether selector peer pe of policy pol picks pod p, with
// the namespaces' labels as they are now (an ipBlock peer picks no pod).
func peerSelects(ix *index, pol *policy, pe *peer, p *podInfo) bool {
	return !pe.isBlk && selectorsPick(ix, pol.ns, pe.nsSel, pe.podSel, p)
}

// selectorsPick reports whether a peer's selectors pick pod p: nsSel on the
// namespaces' labels as they are now, or with nsSel nil namespace ns alone, and
// podSel on p's labels.
func selectorsPick(ix *index, ns string, nsSel, podSel labels.Selector, p *podInfo) bool {
	if nsSel == nil {
		if p.ns != ns {
			return false
		}
	} else if !nsSel.Matches(ix.labelsOf(p.ns)) {
		return false
	}
	return podSel.Matches(p.labels)
}
