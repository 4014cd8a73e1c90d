package compile

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"

	"github.com/nftpolicy/nftpolicy/nft"
	"go4.org/netipx"
)

// Patching a group's sets. A pod's change alters the elements of the pod's own
// addresses and no other. An address's elements are its own single-address
// elements, and which of them exist depends only on which rules hold that
// address: as a pod address of a selector peer (on a named port of an egress
// rule, one the destination pod resolves), or inside an ipBlock (or
// every-address) peer's range, and whether such a range is the address alone
// (a /32, not merged with a neighbour) or wider (elements.go: "a pod's address
// joins or leaves elements of its own only"; a range's elements depend on the
// blocks alone, which no pod's change moves). So the Compiler keeps a group
// through a pod change, notes the pod's addresses (pending), and the next pass
// replaces those addresses' elements (patch) instead of refilling the group;
// a namespace's label change likewise, with its pods' addresses. A policy
// change still drops the groups it affects, to be refilled.

// patch returns f, g's cached group, with the elements of f's pending addresses
// made anew (f itself, and the sets it shares with the tables handed out, are
// not modified).
func (ps *pass) patch(g *group, f *cachedGroup) *cachedGroup {
	pending := slices.Clone(f.pending)
	slices.SortFunc(pending, netip.Addr.Compare)
	pending = slices.Compact(pending)
	out := *f
	out.pending = nil
	out.sets = slices.Clone(f.sets)
	for fi, v6 := range []bool{false, true} {
		var fam []netip.Addr
		for _, a := range pending {
			if a.Is6() == v6 {
				fam = append(fam, a)
			}
		}
		if len(fam) == 0 {
			continue
		}
		var anyE, portE, rangeE []nft.Element
		for _, a := range fam {
			ae, pe, re := ps.addrElems(g, a)
			anyE, portE, rangeE = append(anyE, ae...), append(portE, pe...), append(rangeE, re...)
		}
		sets := out.sets[3*fi : 3*fi+3]
		sets[0].Elements = insertSorted(withoutAddrs(sets[0].Elements, fam, nil), anyE)
		sets[1].Elements = withoutAddrs(sets[1].Elements, fam, portE)
		sets[2].Elements = withoutAddrs(sets[2].Elements, fam, rangeE)
	}
	return &out
}

// addrElems returns the elements address a has in g's three sets of its
// family, as fill makes them. fill's sets are, per rule, the union of its
// peers: ipBlock ranges (merged where they overlap or touch) and pod addresses,
// each pod address outside every range its own element (addrSet.elems). So a
// is its own element wherever the rules there hold it as a range of its own
// (inside a block, and no block there holds a neighbour of a) or as a pod
// address outside every block there. In the any set that is over the rules on
// every port; on the ports, per protocol, over the rules on each port, as
// maximal runs, spelled out in the ports set when narrow and whole in the
// ranges set (splitPortElems), and none at all where the any set's peers hold a
// (they cover it on every port).
func (ps *pass) addrElems(g *group, a netip.Addr) (anyE, portE, rangeE []nft.Element) {
	next, prev := a.Next(), a.Prev()
	inBlock := func(r *rule, b netip.Addr) bool {
		return b.IsValid() && (r.allPeers || slices.ContainsFunc(r.peers, func(pe *peer) bool {
			return pe.isBlk && pe.block.cidrs.containsRange(netipx.IPRangeFrom(b, b))
		}))
	}
	// Where the rules hold a inside a block (blk), a neighbour of a inside a
	// block (nbr), a as a pod address (pod); per protocol, as port intervals.
	var anyBlk, anyNbr, anyPod bool
	blk, nbr, pod := map[uint8][]interval{}, map[uint8][]interval{}, map[uint8][]interval{}
	for p, r := range rulesOf(g.ingress, g.policies) {
		isBlk, isNbr := inBlock(r, a), inBlock(r, prev) || inBlock(r, next)
		isPod := !r.allPeers && slices.ContainsFunc(r.peers, func(pe *peer) bool {
			if pe.isBlk {
				return false
			}
			_, found := slices.BinarySearchFunc(ps.selectPeer(p, pe).addrs.pods, a, netip.Addr.Compare)
			return found
		})
		if !isBlk && !isNbr && !isPod {
			continue
		}
		if r.allPorts {
			anyBlk, anyNbr, anyPod = anyBlk || isBlk, anyNbr || isNbr, anyPod || isPod
			continue
		}
		for _, pt := range r.ports {
			if pt.name != "" && !g.ingress { // resolved on the destination pods: pod addresses only
				for _, pa := range ps.namedDestinations(p, r, portRef{pt.name, pt.proto}) {
					if _, found := slices.BinarySearchFunc(pa.addrs.pods, a, netip.Addr.Compare); found {
						pod[pt.proto] = append(pod[pt.proto], interval{int(pa.port), int(pa.port)})
					}
				}
				continue
			}
			ivs := []interval{{int(pt.lo), int(pt.hi)}}
			if pt.name != "" {
				ivs = ivs[:0]
				for _, n := range g.rep.resolve(pt.name, pt.proto) { // ingress: on the group's own members
					ivs = append(ivs, interval{int(n), int(n)})
				}
			}
			if isBlk {
				blk[pt.proto] = append(blk[pt.proto], ivs...)
			}
			if isNbr {
				nbr[pt.proto] = append(nbr[pt.proto], ivs...)
			}
			if isPod {
				pod[pt.proto] = append(pod[pt.proto], ivs...)
			}
		}
	}
	r := netipx.IPRangeFrom(a, a)
	if (anyBlk && !anyNbr) || (!anyBlk && anyPod) {
		anyE = []nft.Element{{Key: ps.keys.key(portElem{addrs: r})}}
	}
	if anyBlk || anyPod {
		return anyE, nil, nil // on every port: the ports sets leave it out
	}
	protos := slices.Collect(maps.Keys(blk))
	for proto := range pod {
		protos = append(protos, proto)
	}
	slices.Sort(protos)
	for _, proto := range slices.Compact(protos) {
		// a's own ports: in a block there and no neighbour, or a pod address
		// there outside every block.
		inBlk := mergeIntervals(blk[proto])
		own := mergeIntervals(append(subtractIntervals(inBlk, mergeIntervals(nbr[proto])),
			subtractIntervals(mergeIntervals(pod[proto]), inBlk)...))
		for _, run := range own {
			e := portElem{r, proto, uint16(run.lo), uint16(run.hi)}
			if !isExact(e) {
				rangeE = append(rangeE, nft.Element{Key: ps.keys.key(e)})
				continue
			}
			for p := run.lo; p <= run.hi; p++ {
				portE = append(portE, nft.Element{Key: ps.keys.key(portElem{r, proto, uint16(p), uint16(p)})})
			}
		}
	}
	return anyE, portE, rangeE
}

// withoutAddrs returns es without the elements of one address of addrs
// (sorted), with add where the first of them was (at the end if none was).
func withoutAddrs(es []nft.Element, addrs []netip.Addr, add []nft.Element) []nft.Element {
	out := make([]nft.Element, 0, len(es)+len(add))
	added := false
	for _, e := range es {
		if k := &e.Key[0]; !k.Range {
			if _, found := slices.BinarySearchFunc(addrs, k.Addr, netip.Addr.Compare); found {
				if !added {
					out, added = append(out, add...), true
				}
				continue
			}
		}
		out = append(out, e)
	}
	if !added {
		out = append(out, add...)
	}
	return out
}

// insertSorted inserts add into es, both in address order (an any set's).
func insertSorted(es, add []nft.Element) []nft.Element {
	for _, e := range add {
		i, _ := slices.BinarySearchFunc(es, e.Key[0].Addr, func(x nft.Element, a netip.Addr) int { return x.Key[0].Addr.Compare(a) })
		es = slices.Insert(es, i, e)
	}
	return es
}

// interval is a range of ports, lo to hi.
type interval struct{ lo, hi int }

// mergeIntervals returns ivs' union as sorted, disjoint, non-adjacent intervals.
func mergeIntervals(ivs []interval) []interval {
	ivs = slices.Clone(ivs)
	slices.SortFunc(ivs, func(a, b interval) int { return cmp.Compare(a.lo, b.lo) })
	var out []interval
	for _, iv := range ivs {
		if n := len(out); n > 0 && iv.lo <= out[n-1].hi+1 {
			out[n-1].hi = max(out[n-1].hi, iv.hi)
			continue
		}
		out = append(out, iv)
	}
	return out
}

// subtractIntervals returns the ports of ivs not in cut, both merged
// (mergeIntervals), as maximal runs.
func subtractIntervals(ivs, cut []interval) []interval {
	var out []interval
	j := 0
	for _, iv := range ivs {
		lo := iv.lo
		for lo <= iv.hi {
			for j < len(cut) && cut[j].hi < lo {
				j++
			}
			if j == len(cut) || cut[j].lo > iv.hi {
				out = append(out, interval{lo, iv.hi})
				break
			}
			if cut[j].lo > lo {
				out = append(out, interval{lo, cut[j].lo - 1})
			}
			lo = cut[j].hi + 1
		}
	}
	return out
}
