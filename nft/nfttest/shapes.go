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
