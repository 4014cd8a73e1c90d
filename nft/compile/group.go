package compile

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go4.org/netipx"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/nft"
)

// compiler holds one Compile call's state. Peer selections and rule address sets are
// computed on first use and shared by every group that needs them.
type compiler struct {
	ix       *index
	policies []*policy            // by namespace/name
	byNS     map[string][]*policy // by namespace/name
	problems []Problem
	groups   []*group

	selections map[string]*podSelection // pod selections by peer key
	allPods    *podSelection            // every eligible pod (rules without peers)
	nsSels     map[string][]string      // namespace selections by selector text
	values     valueArena
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
}

func newCompiler(s Snapshot) *compiler {
	c := &compiler{
		ix:         newIndex(s),
		byNS:       map[string][]*policy{},
		selections: map[string]*podSelection{},
		nsSels:     map[string][]string{},
	}
	c.problems = append(c.problems, c.ix.problems...)
	c.allPods = &podSelection{pods: c.ix.pods}
	nps := slices.Clone(s.Policies)
	nps = slices.DeleteFunc(nps, func(np *networkingv1.NetworkPolicy) bool { return np == nil })
	slices.SortStableFunc(nps, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	for i, np := range nps {
		if i > 0 && np.Namespace == nps[i-1].Namespace && np.Name == nps[i-1].Name {
			continue // the same policy twice: the first one counts
		}
		p, problems := parsePolicy(np)
		c.problems = append(c.problems, problems...)
		c.policies = append(c.policies, p)
		c.byNS[p.ns] = append(c.byNS[p.ns], p)
	}
	return c
}

// build groups the local targets and fills each group's sets.
func (c *compiler) build() {
	byKey := map[string]*group{}
	var keys []string
	for _, pod := range c.ix.local {
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
	for _, key := range keys {
		g := byKey[key]
		g.name(names)
		c.fill(g)
		c.groups = append(c.groups, g)
	}
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
		anyElems := anyAddrs.elems(v6, nil)
		anySet.Elements = make([]nft.Element, len(anyElems))
		for i, r := range anyElems {
			k := c.values.take(1)
			k[0] = addrValue(r)
			anySet.Elements[i].Key = k
		}
		portSet := nft.Set{Name: g.setNames[2*fi+1], Type: []nft.DataType{addrType, nft.TypeInetProto, nft.TypeInetService},
			Interval: true, Comment: listComment("peers by protocol and port, of", refs)}
		pes := portElems(grants, v6, cover)
		portSet.Elements = make([]nft.Element, len(pes))
		for i, e := range pes {
			k := c.values.take(3)
			k[0], k[1], k[2] = addrValue(e.addrs), nft.Num(uint32(e.proto)), nft.NumRange(uint32(e.lo), uint32(e.hi))
			portSet.Elements[i].Key = k
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
	if r.resolved != nil {
		return r.resolved
	}
	if r.allPeers {
		r.resolved = allAddrs
		return r.resolved
	}
	parts := make([]*addrSet, 0, len(r.peers))
	for _, pe := range r.peers {
		if pe.isBlk {
			parts = append(parts, pe.block)
		} else {
			parts = append(parts, c.selectPeer(p, pe).addrs)
		}
	}
	r.resolved = unionAddrs(parts)
	return r.resolved
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
	if pa, ok := r.named[ref]; ok {
		return pa
	}
	var parts [][]portAddrs
	if r.allPeers {
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
	if r.named == nil {
		r.named = map[portRef][]portAddrs{}
	}
	r.named[ref] = out
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

// valueArena hands out key slices from large blocks: a big ruleset has one key per
// element, and one allocation per element would dominate Compile.
type valueArena struct{ buf []nft.Value }

func (a *valueArena) take(n int) []nft.Value {
	if len(a.buf) < n {
		a.buf = make([]nft.Value, 4096)
	}
	v := a.buf[:n:n]
	a.buf = a.buf[n:]
	return v
}
