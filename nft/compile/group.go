package compile

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go4.org/netipx"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/nft"
)

// compiler holds one compilation's state, over a Compiler's index and parsed
// policies. Peer selections and rule address sets are computed on first use and
// shared by every group filled in this compilation.
type compiler struct {
	ix     *index
	byNS   map[string][]*policy // by name
	groups []*group

	selections map[string]*podSelection // pod selections by peer key
	allPods    *podSelection            // every eligible pod (rules without peers)
	nsSels     map[string][]string      // namespace selections by selector text
	resolved   map[*rule]*addrSet       // rule peers' addresses
	named      map[*rule]map[portRef][]portAddrs
	keys       *keyTable
}

// podSelection is the pods a peer's selectors pick and their addresses.
type podSelection struct {
	pods  []*podInfo
	addrs *addrSet
	named map[portRef][]portAddrs // destinations by named port (egress)
}

// group is the local targets that share one chain for one direction: same selecting
// policies and, for ingress, same resolution of the named ports those policies use.
type group struct {
	ingress  bool
	key      string
	policies []*policy
	rep      *podInfo // one member, on which ingress named ports are resolved
	label    string
	chain    string
	setNames [4]string // any-v4, ports-v4, any-v6, ports-v6
	sets     []nft.Set
	chainV   nft.Chain
}

// filled is a group's sets and chain as a compilation left them, for the next
// compilation to reuse while nothing they depend on changes (see Compiler).
type filled struct {
	ingress  bool
	policies []*policy
	chain    string
	setNames [4]string
	sets     []nft.Set
	chainV   nft.Chain
}

func newCompiler(ix *index, byNS map[string][]*policy, keys *keyTable) *compiler {
	return &compiler{
		ix:         ix,
		byNS:       byNS,
		keys:       keys,
		selections: map[string]*podSelection{},
		nsSels:     map[string][]string{},
		resolved:   map[*rule]*addrSet{},
		named:      map[*rule]map[portRef][]portAddrs{},
	}
}

// build groups the local targets and fills each group's sets, reusing prev's fills
// (by group key) where the names agree; it returns the fills of this compilation.
func (c *compiler) build(prev map[string]*filled) map[string]*filled {
	byKey := map[string]*group{}
	var keys []string
	for _, pod := range c.ix.local.list() {
		pod.ingress, pod.egress = nil, nil
		var ing, eg []*policy
		for _, p := range c.byNS[pod.ns] {
			if p.podSel == nil || !p.podSel.Matches(pod.labels) {
				continue
			}
			if p.ingress {
				ing = append(ing, p)
			}
			if p.egress {
				eg = append(eg, p)
			}
		}
		for _, dir := range []struct {
			ingress bool
			pols    []*policy
			slot    **group
		}{{true, ing, &pod.ingress}, {false, eg, &pod.egress}} {
			if len(dir.pols) == 0 {
				continue
			}
			key := groupKey(dir.ingress, dir.pols, pod)
			g := byKey[key]
			if g == nil {
				g = &group{ingress: dir.ingress, key: key, policies: dir.pols, rep: pod}
				byKey[key] = g
				keys = append(keys, key)
			}
			*dir.slot = g
		}
	}
	slices.Sort(keys)
	names := map[string]bool{}
	next := make(map[string]*filled, len(keys))
	for _, key := range keys {
		g := byKey[key]
		g.name(names)
		f := prev[key]
		if f != nil && f.chain == g.chain && f.setNames == g.setNames {
			g.sets, g.chainV = f.sets, f.chainV
		} else {
			c.fill(g)
			g.chainV = g.chainValue()
			f = &filled{ingress: g.ingress, policies: g.policies, chain: g.chain, setNames: g.setNames, sets: g.sets, chainV: g.chainV}
		}
		next[key] = f
		c.groups = append(c.groups, g)
	}
	return next
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

// name sets the group's chain and set names, avoiding a hash collision with the names
// taken so far (groups are named in key order, so the outcome is deterministic).
func (g *group) name(taken map[string]bool) {
	prefix := "eg"
	if g.ingress {
		prefix = "ing"
	}
	g.label = g.policies[0].ref
	if n := len(g.policies) - 1; n > 0 {
		g.label += "_and_" + strconv.Itoa(n)
	}
	key := g.key
	for i := 1; ; i++ {
		g.chain = nft.ObjectName(prefix, key, g.label, "")
		if !taken[g.chain] {
			break
		}
		key = g.key + "\ncollision " + strconv.Itoa(i)
	}
	taken[g.chain] = true
	for i, suffix := range []string{"any-v4", "ports-v4", "any-v6", "ports-v6"} {
		g.setNames[i] = nft.ObjectName(prefix, key, g.label, suffix)
	}
}

// grant is "these addresses, this protocol, these ports" from one rule.
type grant struct {
	proto  uint8
	lo, hi uint16
	addrs  *addrSet
}

// fill computes the group's four sets: the union of its policies' rules.
func (c *compiler) fill(g *group) {
	var anys []*addrSet
	var grants []grant
	for _, p := range g.policies {
		rules := p.egRules
		if g.ingress {
			rules = p.ingRules
		}
		for _, r := range rules {
			if r.broken {
				continue // fail closed: reported as a problem, allows nothing
			}
			peers := c.rulePeers(p, r)
			if r.allPorts {
				anys = append(anys, peers)
				continue
			}
			for _, pt := range r.ports {
				switch {
				case pt.name == "":
					grants = append(grants, grant{pt.proto, pt.lo, pt.hi, peers})
				case g.ingress:
					for _, n := range g.rep.resolve(pt.name, pt.proto) {
						grants = append(grants, grant{pt.proto, n, n, peers})
					}
				default:
					for _, pa := range c.namedDestinations(p, r, portRef{pt.name, pt.proto}) {
						grants = append(grants, grant{pt.proto, pa.port, pa.port, pa.addrs})
					}
				}
			}
		}
	}
	anyAddrs := unionAddrs(anys)
	var cover *addrSet
	if !anyAddrs.empty() {
		cover = anyAddrs
	}
	refs := make([]string, len(g.policies))
	for i, p := range g.policies {
		refs[i] = p.ref
	}
	for fi, v6 := range []bool{false, true} {
		addrType := nft.TypeIPv4Addr
		if v6 {
			addrType = nft.TypeIPv6Addr
		}
		anySet := nft.Set{Name: g.setNames[2*fi], Type: []nft.DataType{addrType}, Interval: true,
			Comment: listComment("peers on every port, of", refs)}
		// Element keys come from the key table: the same peer on the same port
		// recurs in the sets of many groups.
		anyElems := anyAddrs.elems(v6, nil)
		anySet.Elements = make([]nft.Element, len(anyElems))
		for i, r := range anyElems {
			anySet.Elements[i].Key = c.keys.key(portElem{addrs: r})
		}
		portSet := nft.Set{Name: g.setNames[2*fi+1], Type: []nft.DataType{addrType, nft.TypeInetProto, nft.TypeInetService},
			Interval: true, Comment: listComment("peers by protocol and port, of", refs)}
		pes := portElems(grants, v6, cover)
		portSet.Elements = make([]nft.Element, len(pes))
		for i, e := range pes {
			portSet.Elements[i].Key = c.keys.key(e)
		}
		g.sets = append(g.sets, anySet, portSet)
	}
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

// rulePeers is the addresses a rule's peers stand for (before ports).
func (c *compiler) rulePeers(p *policy, r *rule) *addrSet {
	if s := c.resolved[r]; s != nil {
		return s
	}
	if r.allPeers {
		c.resolved[r] = allAddrs
		return allAddrs
	}
	parts := make([]*addrSet, 0, len(r.peers))
	for _, pe := range r.peers {
		if pe.isBlk {
			parts = append(parts, pe.block)
		} else {
			parts = append(parts, c.selectPeer(p, pe).addrs)
		}
	}
	s := unionAddrs(parts)
	c.resolved[r] = s
	return s
}

// selectPeer returns the pods (on any node) a selector peer of policy p picks.
func (c *compiler) selectPeer(p *policy, pe *peer) *podSelection {
	key := pe.key
	if pe.nsSel == nil {
		key = "in:" + p.ns + "\x00pod:" + pe.podSel.String()
	}
	if s := c.selections[key]; s != nil {
		return s
	}
	nss := []string{p.ns}
	if pe.nsSel != nil {
		nss = c.selectNamespaces(pe.nsSel)
	}
	s := &podSelection{pods: c.ix.selectPods(nss, pe.podSel)}
	var addrs []netip.Addr
	for _, pod := range s.pods {
		addrs = append(addrs, pod.addrs...)
	}
	s.addrs = podAddrs(addrs)
	c.selections[key] = s
	return s
}

func (c *compiler) selectNamespaces(sel labels.Selector) []string {
	key := sel.String()
	if nss, ok := c.nsSels[key]; ok {
		return nss
	}
	nss := c.ix.selectNamespaces(sel)
	c.nsSels[key] = nss
	return nss
}

// namedDestinations resolves a named port of an egress rule on its destinations: the
// peer pods (any node) that have a container port of that name and protocol, with
// their addresses (for an ipBlock peer, those inside the block; for no peers, every
// pod). An address that is no pod's never matches a named port.
func (c *compiler) namedDestinations(p *policy, r *rule, ref portRef) []portAddrs {
	if pa, ok := c.named[r][ref]; ok {
		return pa
	}
	var parts [][]portAddrs
	if r.allPeers {
		if c.allPods == nil {
			c.allPods = &podSelection{pods: c.ix.all.list()}
		}
		parts = append(parts, c.namedOf(c.allPods, ref))
	}
	for _, pe := range r.peers {
		if pe.isBlk {
			byPort := map[uint16][]netip.Addr{}
			for _, pa := range c.ix.podsIn(pe.block.cidrs) {
				for _, n := range pa.pod.resolve(ref.name, ref.proto) {
					byPort[n] = append(byPort[n], pa.addr)
				}
			}
			parts = append(parts, byPortList(byPort))
			continue
		}
		parts = append(parts, c.namedOf(c.selectPeer(p, pe), ref))
	}
	// Union per port number.
	byNum := map[uint16][]*addrSet{}
	for _, part := range parts {
		for _, pa := range part {
			byNum[pa.port] = append(byNum[pa.port], pa.addrs)
		}
	}
	out := make([]portAddrs, 0, len(byNum))
	for n, sets := range byNum {
		out = append(out, portAddrs{n, unionAddrs(sets)})
	}
	slices.SortFunc(out, func(a, b portAddrs) int { return cmp.Compare(a.port, b.port) })
	if c.named[r] == nil {
		c.named[r] = map[portRef][]portAddrs{}
	}
	c.named[r][ref] = out
	return out
}

// namedOf resolves a named port on the pods of a selection (cached per selection).
func (c *compiler) namedOf(s *podSelection, ref portRef) []portAddrs {
	if pa, ok := s.named[ref]; ok {
		return pa
	}
	byPort := map[uint16][]netip.Addr{}
	for _, pod := range s.pods {
		for _, n := range pod.resolve(ref.name, ref.proto) {
			byPort[n] = append(byPort[n], pod.addrs...)
		}
	}
	out := byPortList(byPort)
	if s.named == nil {
		s.named = map[portRef][]portAddrs{}
	}
	s.named[ref] = out
	return out
}

func byPortList(byPort map[uint16][]netip.Addr) []portAddrs {
	out := make([]portAddrs, 0, len(byPort))
	for n, addrs := range byPort {
		out = append(out, portAddrs{n, podAddrs(addrs)})
	}
	slices.SortFunc(out, func(a, b portAddrs) int { return cmp.Compare(a.port, b.port) })
	return out
}

// chainValue is the group's chain: see nft/doc.go.
func (g *group) chainValue() nft.Chain {
	refs := make([]string, len(g.policies))
	for i, p := range g.policies {
		refs[i] = p.ref
	}
	allow := nft.Verdict{Kind: nft.Return}
	v4, v6 := nft.KeyIPDaddr, nft.KeyIP6Daddr
	if g.ingress {
		allow = nft.Verdict{Kind: nft.Accept}
		v4, v6 = nft.KeyIPSaddr, nft.KeyIP6Saddr
	}
	allowed := listComment("allowed by", refs)
	return nft.Chain{Name: g.chain, Rules: []nft.Rule{
		{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtInvalid))}, Counter: true, Verdict: nft.Verdict{Kind: nft.Drop}},
		{Matches: []nft.Match{nft.InSet(g.setNames[0], v4)}, Counter: true, Verdict: allow, Comment: allowed},
		{Matches: []nft.Match{nft.InSet(g.setNames[1], v4, nft.KeyL4Proto, nft.KeyTHDport)}, Counter: true, Verdict: allow, Comment: allowed},
		{Matches: []nft.Match{nft.InSet(g.setNames[2], v6)}, Counter: true, Verdict: allow, Comment: allowed},
		{Matches: []nft.Match{nft.InSet(g.setNames[3], v6, nft.KeyL4Proto, nft.KeyTHDport)}, Counter: true, Verdict: allow, Comment: allowed},
		{Counter: true, Verdict: nft.Verdict{Kind: nft.Drop}, Comment: listComment("isolated by", refs)},
	}}
}

// keyTable hands out element keys, one shared slice per distinct key: in a big
// ruleset the same peer address and port recur in the sets of many groups (at the
// control-plane benchmark's scale, 33.6k elements have 10.5k distinct keys). The
// slices are never modified. A table outlives one compilation (Compiler keeps it)
// and is dropped for a new one when it holds far more keys than the ruleset uses,
// so churn cannot grow it without bound; keys already handed out stay valid.
type keyTable struct {
	keys map[portElem][]nft.Value
	buf  []nft.Value
}

func newKeyTable() *keyTable { return &keyTable{keys: map[portElem][]nft.Value{}} }

// key returns the key of an element of a ports set (proto != 0), or of an any set
// (proto 0: the address alone).
func (t *keyTable) key(e portElem) []nft.Value {
	if k, ok := t.keys[e]; ok {
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
	t.keys[e] = k
	return k
}
