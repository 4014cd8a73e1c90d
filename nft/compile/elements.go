package compile

import (
	"slices"

	"github.com/nftpolicy/nftpolicy/nft"
	"go4.org/netipx"
)

// grant is "these addresses, this protocol, these ports" from one rule.
type grant struct {
	proto  uint8
	lo, hi uint16
	addrs  *addrSet
}

func addrValue(r netipx.IPRange) nft.Value {
	return nft.Value{Addr: r.From(), AddrEnd: r.To(), Range: r.From() != r.To()}
}

// portElem is one element of a ports set: an address range, a protocol, a port range.
type portElem struct {
	addrs  netipx.IPRange
	proto  uint8
	lo, hi uint16
}

// portElems turns overlapping grants into disjoint elements for one family. Per
// protocol, the port axis is cut at every grant's bounds; each piece gets the union of
// the addresses of the grants covering it, as disjoint address elements (see
// addrSet.elems), leaving out those wholly inside cover; then each address element
// that recurs unchanged in the next piece has its port range extended instead of
// starting a new element. Two elements sharing a port come from the same piece, whose
// address elements are disjoint: no two elements overlap. A pod's address joins or
// leaves elements of its own only.
func portElems(grants []grant, v6 bool, cover *addrSet) []portElem {
	var protos []uint8
	for _, g := range grants {
		protos = append(protos, g.proto)
	}
	slices.Sort(protos)
	protos = slices.Compact(protos)
	var out []portElem
	for _, proto := range protos {
		var gs []grant
		var cuts []uint32
		for _, g := range grants {
			if g.proto == proto {
				gs = append(gs, g)
				cuts = append(cuts, uint32(g.lo), uint32(g.hi)+1)
			}
		}
		slices.Sort(cuts)
		cuts = slices.Compact(cuts)
		// The previous piece's elements (indexes in out), in address order: each
		// piece's address elements are sorted, so one merge walk finds the recurring.
		var open, next []int
		var covering []*addrSet
		for i := 0; i+1 < len(cuts); i++ {
			lo, hi := uint16(cuts[i]), uint16(cuts[i+1]-1)
			covering = covering[:0]
			for _, g := range gs {
				if g.lo <= lo && g.hi >= hi {
					covering = append(covering, g.addrs)
				}
			}
			next = next[:0]
			j := 0
			addrs := unionAddrs(covering).elems(v6, cover)
			if len(open) == 0 {
				out = slices.Grow(out, len(addrs))
			}
			for _, r := range addrs {
				for j < len(open) && out[open[j]].addrs.From().Less(r.From()) {
					j++
				}
				if j < len(open) && out[open[j]].addrs == r && out[open[j]].hi+1 == lo {
					out[open[j]].hi = hi
					next = append(next, open[j])
					continue
				}
				out = append(out, portElem{r, proto, lo, hi})
				next = append(next, len(out)-1)
			}
			open, next = next, open
		}
	}
	return out
}

// maxExactPorts is the widest port range of one peer address that splitPortElems
// spells out port by port in a group's hash set (ports-v4/v6). A NetworkPolicy port
// is one port or an endPort range; the narrow ranges are few ports, the wide ones
// (a whole protocol is 0-65535) stay ranges.
const maxExactPorts = 16

// splitPortElems splits a group's port elements between its two port sets, which
// allow the same thing and are looked up one after the other, as the sets'
// elements with the keys key gives. exact holds one
// element per peer address, protocol and port: every element of one address and at
// most maxExactPorts ports, spelled out. ranges holds the rest (ipBlock address
// ranges, wide port ranges), which need an interval set.
//
// Why two sets: an interval set of concatenated fields is the kernel's pipapo
// backend, whose lookup walks bitmaps as long as the set has elements, so it grows
// with the number of peers (issue 16: about 0.4 µs per new flow at the benchmark's
// typical 100 elements, 1.5 µs at its adversarial 20,000); a hash lookup does not.
// Pod peers on single ports, the common case, all go to the hash, and the pipapo
// set is usually empty. Each element still comes from one piece of portElems, so a
// pod's address joins or leaves elements of its own only.
func splitPortElems(pes []portElem, key func(portElem) []nft.Value) (exact, ranges []nft.Element) {
	nExact, nRanges := 0, 0
	for _, e := range pes {
		if isExact(e) {
			nExact += int(e.hi) - int(e.lo) + 1
		} else {
			nRanges++
		}
	}
	exact = make([]nft.Element, 0, nExact)
	ranges = make([]nft.Element, 0, nRanges)
	for _, e := range pes {
		if !isExact(e) {
			ranges = append(ranges, nft.Element{Key: key(e)})
			continue
		}
		for p := int(e.lo); p <= int(e.hi); p++ {
			exact = append(exact, nft.Element{Key: key(portElem{e.addrs, e.proto, uint16(p), uint16(p)})})
		}
	}
	return exact, ranges
}

// isExact reports whether splitPortElems spells e out port by port.
func isExact(e portElem) bool {
	return e.addrs.From() == e.addrs.To() && int(e.hi)-int(e.lo) < maxExactPorts
}

// keyTable hands out element keys, one shared slice per distinct key: in a big
// ruleset the same peer address and port recur in the sets of many groups (at the
// control-plane benchmark's scale, 33.6k elements have 10.5k distinct keys). The
// slices are never modified. A table outlives one compilation (Compiler keeps it)
// and is dropped for a new one when it holds far more keys than the ruleset uses,
// so churn cannot grow it without bound; keys already handed out stay valid.
type keyTable struct {
	// v4 holds the keys of one IPv4 address on one port (or alone), most of
	// a cluster's, by packed4: a map with an integer key hashes in a fraction
	// of the time that one with a portElem does. keys holds the rest.
	v4   map[uint64][]nft.Value
	keys map[portElem][]nft.Value
	buf  []nft.Value
}

func newKeyTable() *keyTable {
	return &keyTable{v4: map[uint64][]nft.Value{}, keys: map[portElem][]nft.Value{}}
}

// len is the number of keys the table holds.
func (t *keyTable) len() int { return len(t.v4) + len(t.keys) }

// packed4 packs an element of one IPv4 address and one port (or none) into an
// integer; false for any other element.
func packed4(e portElem) (uint64, bool) {
	a := e.addrs.From()
	if !a.Is4() || a != e.addrs.To() || e.lo != e.hi {
		return 0, false
	}
	b := a.As4()
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(e.proto)<<16 | uint64(e.lo), true
}

// key returns the key of an element of a ports set (proto != 0), or of an any set
// (proto 0: the address alone).
func (t *keyTable) key(e portElem) []nft.Value {
	p, is4 := packed4(e)
	if is4 {
		if k, ok := t.v4[p]; ok {
			return k
		}
	} else if k, ok := t.keys[e]; ok {
		return k
	}
	n := 1
	if e.proto != 0 {
		n = 3
	}
	if len(t.buf) < n {
		t.buf = make([]nft.Value, 3*256)
	}
	k := t.buf[:n:n]
	t.buf = t.buf[n:]
	k[0] = addrValue(e.addrs)
	if e.proto != 0 {
		k[1], k[2] = nft.Num(uint32(e.proto)), nft.NumRange(uint32(e.lo), uint32(e.hi))
	}
	if is4 {
		t.v4[p] = k
	} else {
		t.keys[e] = k
	}
	return k
}
