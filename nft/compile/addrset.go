package compile

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"go4.org/netipx"
)

// addrSetRanges is a normalized address set: sorted, disjoint, non-adjacent ranges,
// IPv4 before IPv6 (as netipx.IPSet.Ranges returns them).
type addrSetRanges []netipx.IPRange

// addrSet is a set of addresses kept in two parts, so that a pod's churn changes one
// set element and never reshapes a range:
//   - cidrs: ranges from ipBlocks (or everything), normalized by netipx, which merges
//     overlapping and adjacent ranges;
//   - pods: single pod addresses, which may lie inside cidrs.
//
// elems turns it into disjoint set elements.
type addrSet struct {
	cidrs addrSetRanges
	pods  []netip.Addr // sorted, unique
}

var (
	noAddrs  = &addrSet{}
	allAddrs = &addrSet{cidrs: addrSetRanges{
		netipx.IPRangeFrom(netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255})),
		netipx.IPRangeFrom(netip.IPv6Unspecified(), netip.AddrFrom16([16]byte{
			255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255})),
	}}
)

func (s *addrSet) empty() bool { return len(s.cidrs) == 0 && len(s.pods) == 0 }

// podAddrs is the set of the given single addresses (any order, duplicates
// allowed); it reorders addrs in place.
func podAddrs(addrs []netip.Addr) *addrSet {
	if len(addrs) == 0 {
		return noAddrs
	}
	sortAddrs(addrs)
	return &addrSet{pods: slices.Compact(addrs)}
}

// sortAddrs sorts addrs as netip.Addr.Compare does (IPv4 first). The IPv4
// addresses, most of a cluster's, are sorted as integers: a third of the time
// of a sort by Compare, which showed in every refill of a large selection.
func sortAddrs(addrs []netip.Addr) {
	var v4 []uint32
	var rest []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			b := a.As4()
			v4 = append(v4, binary.BigEndian.Uint32(b[:]))
		} else {
			rest = append(rest, a)
		}
	}
	if len(rest) == len(addrs) {
		slices.SortFunc(addrs, netip.Addr.Compare)
		return
	}
	slices.Sort(v4)
	slices.SortFunc(rest, netip.Addr.Compare)
	for i, u := range v4 {
		addrs[i] = netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
	}
	copy(addrs[len(v4):], rest)
}

// unionAddrs is the union of sets; it returns one of them when the others are empty
// or the same set.
func unionAddrs(sets []*addrSet) *addrSet {
	var nonEmpty []*addrSet
	for _, s := range sets {
		if !s.empty() && !slices.Contains(nonEmpty, s) {
			nonEmpty = append(nonEmpty, s)
		}
	}
	switch len(nonEmpty) {
	case 0:
		return noAddrs
	case 1:
		return nonEmpty[0]
	}
	out := &addrSet{}
	var b netipx.IPSetBuilder
	nCIDR, nPods := 0, 0
	var lastCIDR, lastPods *addrSet
	for _, s := range nonEmpty {
		if len(s.cidrs) > 0 {
			nCIDR++
			lastCIDR = s
			for _, r := range s.cidrs {
				b.AddRange(r)
			}
		}
		if len(s.pods) > 0 {
			nPods++
			lastPods = s
		}
	}
	switch nCIDR {
	case 0:
	case 1:
		out.cidrs = lastCIDR.cidrs
	default:
		set, _ := b.IPSet() // inputs are valid ranges: no error
		out.cidrs = set.Ranges()
	}
	switch nPods {
	case 0:
	case 1:
		out.pods = lastPods.pods
	default:
		lists := make([][]netip.Addr, 0, nPods)
		for _, s := range nonEmpty {
			if len(s.pods) > 0 {
				lists = append(lists, s.pods)
			}
		}
		out.pods = mergeAddrs(lists)
	}
	return out
}

// mergeAddrs merges sorted, duplicate-free lists into one, pairwise (balanced), in
// linear time per level.
func mergeAddrs(lists [][]netip.Addr) []netip.Addr {
	for len(lists) > 1 {
		next := lists[:0:0]
		for i := 0; i < len(lists); i += 2 {
			if i+1 == len(lists) {
				next = append(next, lists[i])
				continue
			}
			a, b := lists[i], lists[i+1]
			m := make([]netip.Addr, 0, len(a)+len(b))
			for len(a) > 0 && len(b) > 0 {
				switch c := a[0].Compare(b[0]); {
				case c < 0:
					m, a = append(m, a[0]), a[1:]
				case c > 0:
					m, b = append(m, b[0]), b[1:]
				default:
					m, a, b = append(m, a[0]), a[1:], b[1:]
				}
			}
			m = append(append(m, a...), b...)
			next = append(next, m)
		}
		lists = next
	}
	return lists[0]
}

// covers reports whether r (an element elems returned for another set) lies wholly
// inside one of s's ranges or is one of its pod addresses. It may miss a range that
// only several of s's elements cover together: it is used to leave out redundant
// elements, never to decide what is allowed.
func (s *addrSet) covers(r netipx.IPRange) bool {
	if s.cidrs.containsRange(r) {
		return true
	}
	if r.From() != r.To() {
		return false
	}
	_, found := slices.BinarySearchFunc(s.pods, r.From(), netip.Addr.Compare)
	return found
}

// elems returns the set elements of one family: the cidr ranges as they are, and each
// pod address not inside one of them as a single address; sorted and pairwise
// disjoint. Elements cover covers are left out (cover, when not nil, is what another
// rule of the same chain already lets through).
func (s *addrSet) elems(v6 bool, cover *addrSet) []netipx.IPRange {
	cr := family(s.cidrs, v6)
	pods := s.pods
	if i, _ := slices.BinarySearchFunc(pods, true, func(a netip.Addr, _ bool) int {
		if a.Is4() {
			return -1
		}
		return 1
	}); v6 {
		pods = pods[i:]
	} else {
		pods = pods[:i]
	}
	out := make([]netipx.IPRange, 0, len(cr)+len(pods))
	emit := func(r netipx.IPRange) {
		if cover == nil || !cover.covers(r) {
			out = append(out, r)
		}
	}
	j := 0
	for _, r := range cr {
		for ; j < len(pods) && pods[j].Less(r.From()); j++ {
			emit(netipx.IPRangeFrom(pods[j], pods[j]))
		}
		for ; j < len(pods) && pods[j].Compare(r.To()) <= 0; j++ {
		}
		emit(r)
	}
	for ; j < len(pods); j++ {
		emit(netipx.IPRangeFrom(pods[j], pods[j]))
	}
	return out
}

// family returns the ranges of one family of a normalized list.
func family(rs addrSetRanges, v6 bool) addrSetRanges {
	i, _ := slices.BinarySearchFunc(rs, true, func(r netipx.IPRange, _ bool) int {
		if r.From().Is4() {
			return -1
		}
		return 1
	})
	if v6 {
		return rs[i:]
	}
	return rs[:i]
}

// containsRange reports whether r lies wholly inside one range of rs (normalized).
func (rs addrSetRanges) containsRange(r netipx.IPRange) bool {
	if len(rs) == 0 {
		return false
	}
	i, _ := slices.BinarySearchFunc(rs, r.From(), func(x netipx.IPRange, a netip.Addr) int {
		if x.To().Less(a) {
			return -1
		}
		if a.Less(x.From()) {
			return 1
		}
		return 0
	})
	return i < len(rs) && rs[i].Contains(r.From()) && rs[i].Contains(r.To())
}
