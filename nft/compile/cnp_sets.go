package compile

import (
	"cmp"
	"net/netip"
	"slices"

	"github.com/nftpolicy/nftpolicy/nft"
)

// cnpSets computes the named sets of every rule of p, both directions: the peers'
// addresses per family (`-v4`, `-v6`: interval sets with networks peers, hashes
// without (networksOfPeers); none for a family whose every address the rule's
// networks cover: ruleRules looks nothing up then), the exact protocols and ports (`-ports`, a
// hash) and the wide port ranges (`-ranges`, an interval set) as splitPorts divides
// them, each only when it has elements, and the destinations of named ports
// (address . protocol . port, a hash) per family (`-named-v4`, `-named-v6`). They
// depend on the pods, namespaces and nodes the rules select (and, for ingress named
// ports, on the policy's local subjects), never on which group runs them: every
// group shares them.
func (ps *pass) cnpSets(p *clusterPolicy) []nft.Set {
	var out []nft.Set
	for _, rules := range [][]*cnpRule{p.egress, p.ingress} {
		for _, r := range rules {
			if r.none || r.denyAll {
				continue
			}
			dir := "egress"
			if r.ingress {
				dir = "ingress"
			}
			// Not the rule's index: a set's comment is part of its definition,
			// and a rule that moves keeps its sets (ruleKeys).
			// Cut, the policy's name goes first: "egress rule eg-<hash>" tells
			// one rule's sets from another's.
			what := func(lead string) string { return fitComment(lead, p.ref, " "+dir+" rule "+r.key, "", "") }
			needPeers := r.allPorts || len(r.ports) > 0 || (r.ingress && len(r.named) > 0)
			var peers *addrSet
			if needPeers {
				peers = ps.cnpPeers(r)
			}
			var named []namedElem
			if len(r.named) > 0 {
				named = ps.cnpNamed(p, r)
			}
			for _, v6 := range []bool{false, true} {
				typ := nft.TypeIPv4Addr
				if v6 {
					typ = nft.TypeIPv6Addr
				}
				if needPeers && !r.everyAddr[famIndex(v6)] {
					s := nft.Set{Name: p.peerSetName(r, v6), Type: []nft.DataType{typ}, Interval: r.networks,
						Comment: what("peers of ")}
					for _, rg := range peers.elems(v6, nil) {
						s.Elements = append(s.Elements, nft.Element{Key: []nft.Value{addrValue(rg)}})
					}
					out = append(out, s)
				}
				if len(r.named) > 0 {
					// A hash: a named port resolves to one number per pod, so
					// every element is exact.
					s := nft.Set{Name: p.setName(r, famSuffix("named-", v6)), Type: []nft.DataType{typ, nft.TypeInetProto, nft.TypeInetService},
						Comment: what("named port destinations of ")}
					for _, e := range named {
						if e.addr.Is6() == v6 {
							s.Elements = append(s.Elements, nft.Element{Key: []nft.Value{nft.Addr(e.addr), nft.Num(uint32(e.proto)), nft.Num(uint32(e.port))}})
						}
					}
					out = append(out, s)
				}
			}
			exact, ranges := splitPorts(r.ports)
			if len(exact) > 0 {
				s := nft.Set{Name: p.setName(r, "ports"), Type: []nft.DataType{nft.TypeInetProto, nft.TypeInetService},
					Comment: what("protocols and ports of ")}
				for _, pt := range exact {
					s.Elements = append(s.Elements, nft.Element{Key: []nft.Value{nft.Num(uint32(pt.proto)), nft.Num(uint32(pt.lo))}})
				}
				out = append(out, s)
			}
			if len(ranges) > 0 {
				s := nft.Set{Name: p.setName(r, "ranges"), Type: []nft.DataType{nft.TypeInetProto, nft.TypeInetService}, Interval: true,
					Comment: what("protocols and port ranges of ")}
				for _, pt := range ranges {
					s.Elements = append(s.Elements, nft.Element{Key: []nft.Value{nft.Num(uint32(pt.proto)), nft.NumRange(uint32(pt.lo), uint32(pt.hi))}})
				}
				out = append(out, s)
			}
		}
	}
	return out
}

// networksOfPeers derives the rule's networks and everyAddr from its peers.
// With networks the peer sets are interval sets; without, every peer address is
// a pod's or a node's, a single address, and the sets are hashes: a lookup that
// does not grow with the peers, where an interval set's is a binary search over
// them (a peer of every namespace holds every pod of the cluster; perf, B10's
// tiered scenario: about 0.6 µs per new flow for that one lookup at 10,000 pods,
// 0.04 µs as a hash). A policy property, never a pod's: a rule's sets change type
// only when its peers change kind. A family whose every address the networks
// cover needs no lookup at all (a networks peer 0.0.0.0/0, ::/0).
func (r *cnpRule) networksOfPeers() {
	var nets []*addrSet
	for _, pe := range r.peers {
		if pe.cidrs != nil {
			nets = append(nets, pe.cidrs)
		}
	}
	r.networks = len(nets) > 0
	if !r.networks {
		return
	}
	u := unionAddrs(nets)
	for fi := range r.everyAddr {
		r.everyAddr[fi] = u.covers(allAddrs.cidrs[fi])
	}
}

// cnpPeers is the addresses of a rule's peers: selected pods, networks, and the
// addresses of selected nodes.
func (ps *pass) cnpPeers(r *cnpRule) *addrSet {
	parts := make([]*addrSet, 0, len(r.peers))
	for _, pe := range r.peers {
		switch {
		case pe.sel != nil:
			parts = append(parts, ps.selectPeer(nil, pe.sel).addrs)
		case pe.cidrs != nil:
			parts = append(parts, pe.cidrs)
		default:
			var addrs []netip.Addr
			for _, n := range ps.tiers.nodes {
				if pe.nodeSel.Matches(n.labels) {
					addrs = append(addrs, n.addrs...)
				}
			}
			parts = append(parts, podAddrs(addrs))
		}
	}
	return unionAddrs(parts)
}

// namedElem is one destination of a named port.
type namedElem struct {
	addr  netip.Addr
	proto uint8
	port  uint16
}

// cnpNamed resolves a rule's named ports on the destinations: for egress, the pods
// its peers select (on any node); for ingress, the policy's local subjects.
func (ps *pass) cnpNamed(p *clusterPolicy, r *cnpRule) []namedElem {
	seen := map[namedElem]bool{}
	var out []namedElem
	add := func(e namedElem) {
		if !seen[e] {
			seen[e] = true
			out = append(out, e)
		}
	}
	if r.ingress {
		for _, pod := range ps.ix.local.list() {
			if !p.selects(ps.ix.labelsOf(pod.ns), pod) {
				continue
			}
			for _, ref := range r.named {
				for _, n := range pod.resolve(ref.name, ref.proto) {
					for _, a := range pod.addrs {
						add(namedElem{a, ref.proto, n})
					}
				}
			}
		}
	} else {
		for _, pe := range r.peers {
			sel := ps.selectPeer(nil, pe.sel)
			for _, ref := range r.named {
				for _, pa := range ps.namedOf(sel, ref) {
					for _, a := range pa.addrs.pods {
						add(namedElem{a, ref.proto, pa.port})
					}
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b namedElem) int {
		return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.proto, b.proto), cmp.Compare(a.port, b.port))
	})
	return out
}

// mergePorts sorts port ranges by protocol and start and merges those that overlap
// or touch, so that set elements are disjoint.
func mergePorts(in []port) []port {
	ps := slices.Clone(in)
	slices.SortFunc(ps, func(a, b port) int { return cmp.Or(cmp.Compare(a.proto, b.proto), cmp.Compare(a.lo, b.lo)) })
	var out []port
	for _, pt := range ps {
		if n := len(out); n > 0 && out[n-1].proto == pt.proto && uint32(pt.lo) <= uint32(out[n-1].hi)+1 {
			out[n-1].hi = max(out[n-1].hi, pt.hi)
			continue
		}
		out = append(out, pt)
	}
	return out
}

// splitPorts divides a rule's numbered ports between its two port sets, as
// splitPortElems does a group's: exact holds one element per protocol and port,
// every range of at most maxExactPorts ports spelled out (a hash, `-ports`);
// ranges holds the wider ranges (an interval set, `-ranges`). An interval set of
// concatenated fields is the kernel's pipapo, a lookup that costs more than a
// hash's even with a handful of elements; most rules name single ports and so
// have no ranges set, and no rule to look it up. Which sets a rule has depends on
// its ports alone, never on pods: its nft rules change only with the policy.
func splitPorts(in []port) (exact, ranges []port) {
	for _, pt := range mergePorts(in) {
		if int(pt.hi)-int(pt.lo) >= maxExactPorts {
			ranges = append(ranges, pt)
			continue
		}
		for n := int(pt.lo); n <= int(pt.hi); n++ {
			exact = append(exact, port{proto: pt.proto, lo: uint16(n), hi: uint16(n)})
		}
	}
	return exact, ranges
}
