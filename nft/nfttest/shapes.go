package nfttest

import (
	"cmp"
	"slices"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft"
)

// ClusterPortsAsIntervals reshapes a compiled table, in place, to the
// ClusterNetworkPolicy port sets of the agent before issue 16 §4 split them: each
// rule's -ports (exact, a hash) and -ranges (an interval set) one interval set
// named -ports, with adjacent ports of a protocol merged into ranges, looked up by
// one rule per family; and the named port sets (-named-v4, -named-v6) with flags
// interval. Upgrade tests load it as the table an older agent left; the datapath
// benchmark (B10) measures it against the current shape.
//
// A rule with wide ranges only gets its set renamed from -ranges to -ports: for a
// policy name long enough to be truncated in object names, one character shorter
// than the older agent's name would have been. That is still a table of the older
// shape.
func ClusterPortsAsIntervals(rs *nft.Ruleset) *nft.Ruleset {
	// A rule's sets share the name's hash head and the rule id before the suffix.
	ruleKey := func(name, suffix string) string {
		base := strings.TrimSuffix(name, suffix)
		return name[:min(len(name), len("cnp-")+8)] + base[strings.LastIndexByte(base, '-')+1:]
	}
	isPorts := func(s *nft.Set) bool {
		return strings.HasPrefix(s.Name, "cnp-") && len(s.Type) == 2 && !s.Verdicts
	}
	ports := map[string]*nft.Set{}
	for i := range rs.Sets {
		if s := &rs.Sets[i]; isPorts(s) && strings.HasSuffix(s.Name, "-ports") {
			ports[ruleKey(s.Name, "-ports")] = s
		}
	}
	renamed := map[string]string{} // -ranges set -> its -ports set ("" when merged)
	for i := range rs.Sets {
		s := &rs.Sets[i]
		switch {
		case strings.HasPrefix(s.Name, "cnp-") && strings.Contains(s.Name, "-named-v"):
			s.Interval = true
		case isPorts(s) && strings.HasSuffix(s.Name, "-ranges"):
			if p := ports[ruleKey(s.Name, "-ranges")]; p != nil {
				p.Elements = append(p.Elements, s.Elements...)
				renamed[s.Name] = ""
				continue
			}
			renamed[s.Name] = strings.TrimSuffix(s.Name, "-ranges") + "-ports"
			s.Name = renamed[s.Name]
			s.Comment = strings.Replace(s.Comment, "protocols and port ranges of", "protocols and ports of", 1)
			ports[ruleKey(s.Name, "-ports")] = s
		}
	}
	rs.Sets = slices.DeleteFunc(rs.Sets, func(s nft.Set) bool { n, ok := renamed[s.Name]; return ok && n == "" })
	for i := range rs.Sets {
		if s := &rs.Sets[i]; isPorts(s) && strings.HasSuffix(s.Name, "-ports") {
			s.Interval, s.Elements = true, mergeServices(s.Elements)
		}
	}
	for i := range rs.Chains {
		c := &rs.Chains[i]
		c.Rules = slices.DeleteFunc(c.Rules, func(r nft.Rule) bool {
			return slices.ContainsFunc(r.Matches, func(m nft.Match) bool { n, ok := renamed[m.Set]; return ok && n == "" })
		})
		for j := range c.Rules {
			r := &c.Rules[j]
			for k := range r.Matches {
				if n := renamed[r.Matches[k].Set]; n != "" {
					r.Matches = slices.Clone(r.Matches)
					r.Matches[k].Set = n
					r.Comment = strings.TrimSuffix(r.Comment, ", port ranges")
				}
			}
		}
	}
	return rs
}

// mergeServices sorts protocol . port elements and merges those of one protocol
// that overlap or touch into ranges, as the older agent wrote them.
func mergeServices(in []nft.Element) []nft.Element {
	type pr struct{ proto, lo, hi uint32 }
	var ps []pr
	for _, e := range in {
		hi := e.Key[1].Num
		if e.Key[1].Range {
			hi = e.Key[1].NumEnd
		}
		ps = append(ps, pr{e.Key[0].Num, e.Key[1].Num, hi})
	}
	slices.SortFunc(ps, func(a, b pr) int { return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.lo, b.lo)) })
	var out []pr
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].proto == p.proto && p.lo <= out[n-1].hi+1 {
			out[n-1].hi = max(out[n-1].hi, p.hi)
			continue
		}
		out = append(out, p)
	}
	elems := make([]nft.Element, len(out))
	for i, p := range out {
		v := nft.Num(p.hi)
		if p.lo != p.hi {
			v = nft.NumRange(p.lo, p.hi)
		}
		elems[i].Key = []nft.Value{nft.Num(p.proto), v}
	}
	return elems
}

// ClusterTiersMixedFamily reshapes a compiled table, in place, to the
// ClusterNetworkPolicy tier chains of the agent before they were split by family:
// one chain per tier group (`adm-eg-<hash>-<label>`, and its `-reply` twin in
// strict mode) holding each policy rule's IPv4 rules then its IPv6 rules, peers
// looked up before ports, reached from the tier maps by jump; every rule's peer
// sets (`-v4`, `-v6`) interval sets, also where the peers are pods and nodes only. Upgrade tests load
// it as the table an older agent left; the datapath benchmark (B10) measures it
// against the current shape.
//
// A rule whose networks cover every address of a family has no peer lookup in
// that family's chain now; here it gets `meta nfproto` instead of the older
// agent's lookup in a set of 0.0.0.0/0 (or ::/0): a table of the older shape,
// one lookup cheaper for those rules.
func ClusterTiersMixedFamily(rs *nft.Ruleset) *nft.Ruleset {
	isGroup := func(name string) bool { return strings.HasPrefix(name, "adm-") || strings.HasPrefix(name, "bl-") }
	base := func(name string) (string, int, bool) { // X-v4[-reply] -> X[-reply], family
		reply := strings.HasSuffix(name, "-reply")
		n := strings.TrimSuffix(name, "-reply")
		fam := 4
		switch {
		case strings.HasSuffix(n, "-v4"):
		case strings.HasSuffix(n, "-v6"):
			fam = 6
		default:
			return "", 0, false
		}
		n = n[:len(n)-len("-v4")]
		if reply {
			n += "-reply"
		}
		return n, fam, true
	}
	addrFamily := func(r nft.Rule) int {
		for _, m := range r.Matches {
			for _, k := range m.Keys {
				switch k {
				case nft.KeyIPSaddr, nft.KeyIPDaddr:
					return 4
				case nft.KeyIP6Saddr, nft.KeyIP6Daddr:
					return 6
				}
			}
		}
		return 0
	}
	// A policy rule's nft rules are consecutive and share its comment, but for
	// what says which kind of port they look up.
	ruleKey := func(r nft.Rule) string {
		c := r.Comment
		for _, s := range []string{", port ranges", ", named ports"} {
			c = strings.TrimSuffix(c, s)
		}
		return c
	}
	type run struct {
		key   string
		rules []nft.Rule
	}
	runs := func(c nft.Chain, fam int) (head []nft.Rule, out []run) {
		for _, r := range c.Rules {
			if len(r.Matches) == 1 && r.Matches[0].Keys[0] == nft.KeyCtDirection {
				head = append(head, r)
				continue
			}
			switch {
			case addrFamily(r) != 0:
				// Peers first, as the older agent wrote them.
				r.Matches = slices.Clone(r.Matches)
				slices.SortStableFunc(r.Matches, func(a, b nft.Match) int {
					return cmp.Compare(len(a.Keys), len(b.Keys))
				})
			case len(r.Matches) == 0 && strings.Contains(r.Comment, "fails closed"):
				// Deny all: one rule for both families.
			default:
				p := nft.NFProtoIPv4
				if fam == 6 {
					p = nft.NFProtoIPv6
				}
				r.Matches = append([]nft.Match{nft.Is(nft.KeyNFProto, nft.Num(uint32(p)))}, r.Matches...)
			}
			if n := len(out); n > 0 && out[n-1].key == ruleKey(r) {
				out[n-1].rules = append(out[n-1].rules, r)
				continue
			}
			out = append(out, run{ruleKey(r), []nft.Rule{r}})
		}
		return head, out
	}
	pairs := map[string]*[2]*nft.Chain{}
	var order []string
	var out []nft.Chain
	for i := range rs.Chains {
		c := &rs.Chains[i]
		b, fam, ok := base(c.Name)
		if !isGroup(c.Name) || !ok {
			out = append(out, *c)
			continue
		}
		if pairs[b] == nil {
			pairs[b] = &[2]*nft.Chain{}
			order = append(order, b)
		}
		pairs[b][fam/6] = c
	}
	for _, b := range order {
		p := pairs[b]
		merged := nft.Chain{Name: b}
		for fi := range p {
			if p[fi] == nil {
				p[fi] = &nft.Chain{} // a family no subject of the group has
			}
		}
		head4, r4 := runs(*p[0], 4)
		head6, r6 := runs(*p[1], 6)
		if len(head4) == 0 {
			head4 = head6
		}
		for _, h := range head4 {
			h.Verdict.Chain = b + "-reply"
			merged.Rules = append(merged.Rules, h)
		}
		for i := range r4 {
			merged.Rules = append(merged.Rules, r4[i].rules...)
			if i < len(r6) && (len(r6[i].rules) != 1 || len(r6[i].rules[0].Matches) != 0) {
				merged.Rules = append(merged.Rules, r6[i].rules...)
			}
		}
		if len(r4) == 0 {
			for i := range r6 {
				merged.Rules = append(merged.Rules, r6[i].rules...)
			}
		}
		out = append(out, merged)
	}
	rs.Chains = out
	for i := range rs.Sets {
		s := &rs.Sets[i]
		if strings.HasPrefix(s.Name, "cnp-") && len(s.Type) == 1 && (s.Type[0] == nft.TypeIPv4Addr || s.Type[0] == nft.TypeIPv6Addr) {
			s.Interval = true
		}
		if !s.Verdicts || !strings.HasPrefix(s.Name, "admin-") && !strings.HasPrefix(s.Name, "baseline-") {
			continue
		}
		for j := range s.Elements {
			e := &s.Elements[j]
			if b, _, ok := base(e.Verdict.Chain); ok && e.Verdict.Kind == nft.Goto {
				e.Verdict = nft.Verdict{Kind: nft.Jump, Chain: b}
			}
		}
	}
	return rs
}
