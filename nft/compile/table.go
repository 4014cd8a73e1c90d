package compile

import (
	"fmt"
	"net/netip"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/nftpolicy/nftpolicy/nft"
)

// fixedChains are the chains that exist whatever the policies: see nft/doc.go.
func fixedChains() []nft.Chain {
	return []nft.Chain{
		{
			Name: nft.ChainForward,
			// Priority filter (0): after kube-proxy's DNAT (dstnat, -100), so policy sees
			// the endpoint pod, and before its masquerade (srcnat, 100), so it sees the
			// client; see nft/doc.go.
			Hook: &nft.Hook{Type: "filter", Hook: "forward", Priority: 0, Policy: nft.Accept},
			Rules: []nft.Rule{
				{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))}, Verdict: nft.Verdict{Kind: nft.Accept}},
				{Matches: []nft.Match{nft.Is(nft.KeyICMPv6Type, nft.Num(133), nft.Num(134), nft.Num(135), nft.Num(136))}, Verdict: nft.Verdict{Kind: nft.Accept}},
				{Verdict: nft.Verdict{Kind: nft.Jump, Chain: nft.ChainEgress}},
				{Verdict: nft.Verdict{Kind: nft.Jump, Chain: nft.ChainIngress}},
			},
		},
		{Name: nft.ChainEgress, Rules: []nft.Rule{
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPSaddr}, Map: nft.MapEgressV4}},
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIP6Saddr}, Map: nft.MapEgressV6}},
		}},
		{Name: nft.ChainIngress, Rules: []nft.Rule{
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPDaddr}, Map: nft.MapIngressV4}},
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIP6Daddr}, Map: nft.MapIngressV6}},
		}},
	}
}

// verdictMaps builds the four verdict maps from the local isolated pods (each with
// its groups set by pass.build) to their group chains. An address several of
// them claim is judged by the first one's chain a direction isolates, a pod it
// does not isolate being judged by that one's policies (narrower than none),
// unless judgeShared drops it: claimants isolated by different groups (neither's
// policies may judge the other's traffic), or one not isolated that a Baseline
// policy would judge (baseline: the chain decides before Baseline could).
func verdictMaps(local []*podInfo, shared map[netip.Addr][]*podInfo, baseline func(p *podInfo, ingress bool) bool) []nft.Set {
	type mapDef struct {
		name    string
		typ     nft.DataType
		v6      bool
		ingress bool
		comment string
	}
	defs := []mapDef{
		{nft.MapEgressV4, nft.TypeIPv4Addr, false, false, "local isolated pod IPv4 -> its egress chain"},
		{nft.MapEgressV6, nft.TypeIPv6Addr, true, false, "local isolated pod IPv6 -> its egress chain"},
		{nft.MapIngressV4, nft.TypeIPv4Addr, false, true, "local isolated pod IPv4 -> its ingress chain"},
		{nft.MapIngressV6, nft.TypeIPv6Addr, true, true, "local isolated pod IPv6 -> its ingress chain"},
	}
	out := make([]nft.Set, 0, len(defs))
	for _, d := range defs {
		s := nft.Set{Name: d.name, Type: []nft.DataType{d.typ}, Verdicts: true, Comment: d.comment}
		taken := map[netip.Addr]bool{}
		for _, p := range local {
			g := p.egress
			verdict := nft.Jump
			if d.ingress {
				g, verdict = p.ingress, nft.Goto
			}
			if g == nil {
				continue
			}
			for _, a := range p.addrs {
				if a.Is6() != d.v6 {
					continue
				}
				if taken[a] {
					continue // shared: judgeShared below
				}
				taken[a] = true
				s.Elements = append(s.Elements, nft.Element{
					Key:     []nft.Value{nft.Addr(a)},
					Verdict: nft.Verdict{Kind: verdict, Chain: g.chain},
					Comment: comment(p.ref),
				})
			}
		}
		ingress := d.ingress
		judgeShared(&s, shared, func(p *podInfo) string {
			g := p.egress
			if ingress {
				g = p.ingress
			}
			if g == nil {
				return ""
			}
			return g.chain
		}, func(p *podInfo) bool { return !baseline(p, ingress) })
		out = append(out, s)
	}
	return out
}

// judgeShared drops (sharedDrop) the element of each address of verdict map m
// that several local pods claim (shared: their pods) where its chain may not
// judge them all: a claimant that chainOf sends to another chain, or to none
// ("") where absentOK says it may not be left to the element's chain.
func judgeShared(m *nft.Set, shared map[netip.Addr][]*podInfo, chainOf func(*podInfo) string, absentOK func(*podInfo) bool) {
	if len(shared) == 0 {
		return
	}
	for i := range m.Elements {
		e := &m.Elements[i]
		claimants := shared[e.Key[0].Addr]
		for _, p := range claimants {
			if c := chainOf(p); (c != "" && c != e.Verdict.Chain) || (c == "" && !absentOK(p)) {
				sharedDrop(e, claimants)
				break
			}
		}
	}
}

// sharedDrop makes e, the verdict map element of an address whose traffic no
// single claimant's policies may judge, a drop, its comment naming the pods.
func sharedDrop(e *nft.Element, claimants []*podInfo) {
	refs := make([]string, len(claimants))
	for i, p := range claimants {
		refs[i] = p.ref
	}
	e.Verdict = nft.Verdict{Kind: nft.Drop}
	e.Comment = comment("address shared, dropped: " + strings.Join(refs, ", "))
}

// comment makes s acceptable as an nft comment (nft.Validate): quotes,
// backslashes and control characters (rule names are free text) become '_', as
// does what is not UTF-8, and a longer text is cut to nft.MaxCommentLen bytes on a
// character boundary, ending in cutMark.
func comment(s string) string {
	return cut(clean(s), nft.MaxCommentLen)
}

// clean replaces what an nft comment cannot hold with '_', byte for byte where
// s is UTF-8 (one '_' for each broken byte otherwise).
func clean(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			b.WriteByte('_') // a byte that is not UTF-8
		case r == '"', r == '\\', unicode.IsControl(r):
			b.WriteByte('_')
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// cutMark ends a text cut short, so that a reader knows there was more.
const cutMark = "..."

// cut shortens s to at most n bytes: the longest prefix that ends on a character
// boundary and leaves room for cutMark, then cutMark. s fitting is s.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	if n < len(cutMark) {
		return cutMark[:max(n, 0)]
	}
	i := n - len(cutMark)
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + cutMark
}

// listComment is prefix followed by as many of refs as fit in a comment, then
// "+N more" for the rest. The first ref is always there, cut (with cutMark) to
// leave room for the count when it is that long: a comment that names no policy
// ("isolated by +1 more") left a policy nowhere in the listing.
func listComment(prefix string, refs []string) string {
	out := prefix
	for i, r := range refs {
		sep := " "
		if i > 0 {
			sep = ", "
		}
		more := ""
		if i < len(refs)-1 {
			more = fmt.Sprintf(" +%d more", len(refs)-1-i)
		}
		if len(out)+len(sep)+len(r)+len(more) > nft.MaxCommentLen {
			if i == 0 {
				return comment(out + sep + cut(r, nft.MaxCommentLen-len(out)-len(sep)-len(more)) + more)
			}
			return comment(out + fmt.Sprintf(" +%d more", len(refs)-i))
		}
		out += sep + r
	}
	return comment(out)
}

// minRef is the fewest bytes of a policy's namespace/name that fitComment keeps
// before it cuts anything else.
const minRef = 24

// fitComment is lead + ref + mid + " (" + name + ")" + tail as a comment (no
// parentheses without a name). When that is too long the ref (a policy's
// namespace/name) is cut first, down to minRef bytes, then the name (a rule's,
// free text), each with cutMark; lead, mid and tail are kept whole. A rule's
// comment is "<ref> egress rule 2 (<name>): Accept": cutting its end made the
// rules of a long-named policy, a Deny and two Accepts, carry one comment.
func fitComment(lead, ref, mid, name, tail string) string {
	lead, ref, mid, name, tail = clean(lead), clean(ref), clean(mid), clean(name), clean(tail)
	fixed := len(lead) + len(mid) + len(tail)
	if name != "" {
		fixed += len(" ()")
	}
	if room := nft.MaxCommentLen - fixed - len(name); len(ref) > room {
		ref = cut(ref, max(room, minRef))
	}
	if room := nft.MaxCommentLen - fixed - len(ref); len(name) > room {
		name = cut(name, room)
	}
	if name != "" {
		name = " (" + name + ")"
	}
	return comment(lead + ref + mid + name + tail)
}
