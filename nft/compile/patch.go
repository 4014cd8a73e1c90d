package compile

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"

	"github.com/nftpolicy/nftpolicy/nft"
	"go4.org/netipx"
)

// Patching a group's sets. A pod's change alters, in a group made of pod peers
// and every-address peers only (patchable), the elements of the pod's own
// addresses and no other: an address's elements depend on which rules' peers
// hold it and on nothing else (elements.go: "a pod's address joins or leaves
// elements of its own only"; an every-address peer is a range that no pod's
// change moves). So the Compiler keeps such a group through a pod change, notes
// the pod's addresses (pending), and the next pass replaces those addresses'
// elements (patch) instead of refilling the group. A group with an ipBlock peer
// (a pod address inside a block, or a /32 block, shares elements with the
// block) or an egress named port (resolved on the destination pods) is
// refilled, as any group is after a policy or namespace change.

// patchable reports whether a pod's change can be patched into g's sets.
func (g *group) patchable() bool {
	for _, r := range rulesOf(g.ingress, g.policies) {
		if (!g.ingress && r.hasNamedPort()) || slices.ContainsFunc(r.peers, func(pe *peer) bool { return pe.isBlk }) {
			return false
		}
	}
	return true
}

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
// family, as fill makes them: in the any set when a peer on every port holds
// it as a pod address and no every-address peer does; else, on the ports its
// pod peers allow and no every-address peer does, runs of ports, spelled out in
// the ports set when narrow, whole in the ranges set (splitPortElems).
func (ps *pass) addrElems(g *group, a netip.Addr) (anyE, portE, rangeE []nft.Element) {
	var anyPod, anyAll bool
	byPod, byAll := map[uint8][]interval{}, map[uint8][]interval{}
	for p, r := range rulesOf(g.ingress, g.policies) {
		all := r.allPeers
		pod := !all && slices.ContainsFunc(r.peers, func(pe *peer) bool {
			_, found := slices.BinarySearchFunc(ps.selectPeer(p, pe).addrs.pods, a, netip.Addr.Compare)
			return found
		})
		if !all && !pod {
			continue
		}
		if r.allPorts {
			anyAll, anyPod = anyAll || all, anyPod || pod
			continue
		}
		to := byPod
		if all {
			to = byAll
		}
		for _, pt := range r.ports {
			if pt.name == "" {
				to[pt.proto] = append(to[pt.proto], interval{int(pt.lo), int(pt.hi)})
				continue
			}
			for _, n := range g.rep.resolve(pt.name, pt.proto) { // ingress: patchable
				to[pt.proto] = append(to[pt.proto], interval{int(n), int(n)})
			}
		}
	}
	r := netipx.IPRangeFrom(a, a)
	if anyPod && !anyAll {
		anyE = []nft.Element{{Key: ps.keys.key(portElem{addrs: r})}}
	}
	if anyPod || anyAll {
		return anyE, nil, nil // on every port: the ports sets leave it out
	}
	for _, proto := range slices.Sorted(maps.Keys(byPod)) {
		// The ports where a is its own element: its pod peers' less the
		// every-address peers', as maximal runs.
		for _, run := range subtractIntervals(mergeIntervals(byPod[proto]), mergeIntervals(byAll[proto])) {
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
