package compile

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft"
	"k8s.io/apimachinery/pkg/labels"
)

// pass is one compilation: Compiler.Compile makes one, over the Compiler's index and
// parsed policies, and drops it when the ruleset is assembled. It groups the local
// targets, fills the groups that the Compiler's cache cannot supply, and builds the
// verdict maps. Peer selections and rule address sets are computed on first use and
// shared by every group filled in this pass.
type pass struct {
	ix     *index
	byNS   map[string][]*policy // by name
	groups []*group

	selections map[string]*podSelection // pod selections by peer key (the Compiler's)
	selUsed    map[string]bool          // the selections this pass read
	allPods    *podSelection            // every eligible pod (rules without peers)
	nsSels     map[string][]string      // namespace selections by selector text
	resolved   map[*rule]*addrSet       // rule peers' addresses
	named      map[*rule]map[portRef][]portAddrs
	keys       *keyTable
	opts       Options
	strict     *strictMode // nil: keep mode
	tiers      *tierPass   // ClusterNetworkPolicy (cnp_tier.go); nil without any
}

// podSelection is the pods a peer's selectors pick and their addresses. The
// Compiler keeps selections between passes (its sels), and drops those a change
// may alter (picks). A label change is applied instead (relabeled), and one that
// leaves a pod picked or not keeps them, with the pod's older version in pods,
// alike in all they are read for (addresses and ports).
type podSelection struct {
	pods  []*podInfo
	addrs *addrSet
	named map[portRef][]portAddrs // destinations by named port (egress)

	ns            string          // the policy's namespace, when nsSel is nil
	nsSel, podSel labels.Selector // the peer's
}

// relabeled returns the selection after a pod's labels changed from old's to
// cur's (addresses and ports alike: sameButLabels), which took the pod in
// (joined) or out; a new selection: s, which a pass may hold, stays as it is.
// The selection may hold an older version of the pod than old: it goes by name.
func (s *podSelection) relabeled(old, cur *podInfo, joined bool) *podSelection {
	out := &podSelection{ns: s.ns, nsSel: s.nsSel, podSel: s.podSel} // named: made again on use
	addrs := slices.Clone(s.addrs.pods)
	if joined {
		out.pods = append(slices.Clip(s.pods), cur)
		for _, a := range cur.addrs {
			if i, found := slices.BinarySearchFunc(addrs, a, netip.Addr.Compare); !found {
				addrs = slices.Insert(addrs, i, a)
			}
		}
	} else {
		out.pods = slices.DeleteFunc(slices.Clone(s.pods), func(p *podInfo) bool { return p.ns == old.ns && p.name == old.name })
		for _, a := range old.addrs {
			if slices.ContainsFunc(out.pods, func(p *podInfo) bool { return slices.Contains(p.addrs, a) }) {
				continue // another pod's too (a finished pod's, reused)
			}
			if i, found := slices.BinarySearchFunc(addrs, a, netip.Addr.Compare); found {
				addrs = slices.Delete(addrs, i, i+1)
			}
		}
	}
	out.addrs = noAddrs
	if len(addrs) > 0 {
		out.addrs = &addrSet{pods: addrs}
	}
	return out
}

// picks reports whether the selection's selectors pick pod p (nil: none), with the
// namespaces' labels as they are now.
func (s *podSelection) picks(ix *index, p *podInfo) bool {
	return p != nil && selectorsPick(ix, s.ns, s.nsSel, s.podSel, p)
}

// newPass returns a pass over the Compiler's state; sels is its selections, which
// the pass reads and adds to.
func newPass(ix *index, byNS map[string][]*policy, keys *keyTable, sels map[string]*podSelection, opts Options) *pass {
	return &pass{
		ix:         ix,
		opts:       opts,
		byNS:       byNS,
		keys:       keys,
		selections: sels,
		selUsed:    map[string]bool{},
		nsSels:     map[string][]string{},
		resolved:   map[*rule]*addrSet{},
		named:      map[*rule]map[portRef][]portAddrs{},
	}
}

// build groups the local targets and fills each group's sets, reusing prev's cached
// groups (by group key) where the names agree, and prevNames' names; it returns
// this pass's groups and names for the next pass to reuse.
func (ps *pass) build(prev map[string]*cachedGroup, prevNames map[string]groupNames) (map[string]*cachedGroup, map[string]groupNames) {
	byKey := map[string]*group{}
	var keys []string
	for _, pod := range ps.ix.local.list() {
		pod.ingress, pod.egress = nil, nil
		var ing, eg []*policy
		for _, p := range ps.byNS[pod.ns] {
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
	next := make(map[string]*cachedGroup, len(keys))
	nextNames := make(map[string]groupNames, len(keys))
	for _, key := range keys {
		g := byKey[key]
		var known *groupNames
		if n, ok := prevNames[key]; ok {
			known = &n
		}
		g.name(names, known)
		nextNames[key] = g.groupNames
		f := prev[key]
		if f != nil && f.chain == g.chain && f.setNames == g.setNames {
			if len(f.pending) > 0 {
				f = ps.patch(g, f)
			}
			g.sets, g.chainV, g.replyV = f.sets, f.chainV, f.replyV
		} else {
			ps.fill(g)
			g.chainV = g.chainValue(ps.opts, ps.strict)
			if ps.strict != nil {
				g.replyV = g.replyValue(ps.opts, ps.strict)
			}
			f = &cachedGroup{ingress: g.ingress, policies: g.policies, chain: g.chain, setNames: g.setNames, sets: g.sets, chainV: g.chainV, replyV: g.replyV}
		}
		next[key] = f
		ps.groups = append(ps.groups, g)
	}
	return next, nextNames
}

// fill computes the group's six sets: the union of its policies' rules. Per family:
// any (peers on every port), ports (exact peer . protocol . port, a hash) and ranges
// (the port elements a hash cannot hold; see splitPortElems).
func (ps *pass) fill(g *group) {
	var anys []*addrSet
	var grants []grant
	for p, r := range rulesOf(g.ingress, g.policies) {
		peers := ps.rulePeers(p, r)
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
				for _, pa := range ps.namedDestinations(p, r, portRef{pt.name, pt.proto}) {
					grants = append(grants, grant{pt.proto, pa.port, pa.port, pa.addrs})
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
		anySet := nft.Set{Name: g.setNames[3*fi], Type: []nft.DataType{addrType}, Interval: true,
			Comment: listComment("peers on every port, of", refs)}
		// Element keys come from the key table: the same peer on the same port
		// recurs in the sets of many groups.
		anyElems := anyAddrs.elems(v6, nil)
		anySet.Elements = make([]nft.Element, len(anyElems))
		for i, r := range anyElems {
			anySet.Elements[i].Key = ps.keys.key(portElem{addrs: r})
		}
		portType := []nft.DataType{addrType, nft.TypeInetProto, nft.TypeInetService}
		portSet := nft.Set{Name: g.setNames[3*fi+1], Type: portType, Comment: listComment("peers by protocol and port, of", refs)}
		rangeSet := nft.Set{Name: g.setNames[3*fi+2], Type: slices.Clone(portType), Interval: true,
			Comment: listComment("peer ranges by protocol and port range, of", refs)}
		portSet.Elements, rangeSet.Elements = splitPortElems(portElems(grants, v6, cover), ps.keys.key)
		g.sets = append(g.sets, anySet, portSet, rangeSet)
	}
}

// rulePeers is the addresses a rule's peers stand for (before ports).
func (ps *pass) rulePeers(p *policy, r *rule) *addrSet {
	if s := ps.resolved[r]; s != nil {
		return s
	}
	if r.allPeers {
		ps.resolved[r] = allAddrs
		return allAddrs
	}
	parts := make([]*addrSet, 0, len(r.peers))
	for _, pe := range r.peers {
		if pe.isBlk {
			parts = append(parts, pe.block)
		} else {
			parts = append(parts, ps.selectPeer(p, pe).addrs)
		}
	}
	s := unionAddrs(parts)
	ps.resolved[r] = s
	return s
}

// selectPeer returns the pods (on any node) a selector peer of policy p picks (p may
// be nil for a peer with a namespace selector: ClusterNetworkPolicy peers).
func (ps *pass) selectPeer(p *policy, pe *peer) *podSelection {
	key := pe.key
	if pe.nsSel == nil {
		key = "in:" + p.ns + "\x00pod:" + pe.podSel.String()
	}
	ps.selUsed[key] = true
	if s := ps.selections[key]; s != nil {
		return s
	}
	s := &podSelection{nsSel: pe.nsSel, podSel: pe.podSel}
	var nss []string
	if pe.nsSel != nil {
		nss = ps.selectNamespaces(pe.nsSel)
	} else {
		s.ns = p.ns
		nss = []string{p.ns}
	}
	s.pods = ps.ix.selectPods(nss, pe.podSel)
	n := 0
	for _, pod := range s.pods {
		n += len(pod.addrs)
	}
	addrs := make([]netip.Addr, 0, n)
	for _, pod := range s.pods {
		addrs = append(addrs, pod.addrs...)
	}
	s.addrs = podAddrs(addrs)
	ps.selections[key] = s
	return s
}

func (ps *pass) selectNamespaces(sel labels.Selector) []string {
	key := sel.String()
	if nss, ok := ps.nsSels[key]; ok {
		return nss
	}
	nss := ps.ix.selectNamespaces(sel)
	ps.nsSels[key] = nss
	return nss
}

// namedDestinations resolves a named port of an egress rule on its destinations: the
// peer pods (any node) that have a container port of that name and protocol, with
// their addresses (for an ipBlock peer, those inside the block; for no peers, every
// pod). An address that is no pod's never matches a named port.
func (ps *pass) namedDestinations(p *policy, r *rule, ref portRef) []portAddrs {
	if pa, ok := ps.named[r][ref]; ok {
		return pa
	}
	var parts [][]portAddrs
	if r.allPeers {
		if ps.allPods == nil {
			ps.allPods = &podSelection{pods: ps.ix.all.list()}
		}
		parts = append(parts, ps.namedOf(ps.allPods, ref))
	}
	for _, pe := range r.peers {
		if pe.isBlk {
			byPort := map[uint16][]netip.Addr{}
			for _, pa := range ps.ix.podsIn(pe.block.cidrs) {
				for _, n := range pa.pod.resolve(ref.name, ref.proto) {
					byPort[n] = append(byPort[n], pa.addr)
				}
			}
			parts = append(parts, byPortList(byPort))
			continue
		}
		parts = append(parts, ps.namedOf(ps.selectPeer(p, pe), ref))
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
	if ps.named[r] == nil {
		ps.named[r] = map[portRef][]portAddrs{}
	}
	ps.named[r][ref] = out
	return out
}

// namedOf resolves a named port on the pods of a selection (cached per selection).
func (ps *pass) namedOf(s *podSelection, ref portRef) []portAddrs {
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

// syncedBootSet is the empty set that marks the table as in force in the boot
// bootID (Options.SyncedBoot). Its type is of no use but to be a set's.
func syncedBootSet(bootID string) nft.Set {
	return nft.Set{Name: nft.SyncedBootSet(bootID), Type: []nft.DataType{nft.TypeInetProto},
		Comment: "in force since the agent's first full sync in this boot of the node: the CNI gate admits new pods while this set is here"}
}

// ruleset assembles the table from the pass's groups: the fixed chains, the verdict
// maps, each group's chain and sets, and the named objects they use; and the
// attribution of deny log prefixes and counters to policies.
func (ps *pass) ruleset(table string) (*nft.Ruleset, *Attribution) {
	rs := &nft.Ruleset{Table: table}
	rs.Sets = append(rs.Sets, verdictMaps(ps.ix.local.list(), ps.ix.sharedAddrs(), ps.tiers.baselineJudges)...)
	fixed := fixedChains()
	if ps.strict != nil {
		fixed = ps.strict.fixedChains()
	}
	if len(ps.opts.UnknownLocalPods) > 0 {
		withUnknownRules(fixed, unknownRules(ps.opts.UnknownLocalPods, ps.opts.DenyLog))
		rs.Sets = append(rs.Sets, localPodSets(ps.ix.local.list())...)
	}
	if ps.opts.SyncedBoot != "" {
		rs.Sets = append(rs.Sets, syncedBootSet(ps.opts.SyncedBoot))
	}
	rs.Chains = append(rs.Chains, fixed...)
	slices.SortFunc(ps.groups, func(a, b *group) int { return strings.Compare(a.chain, b.chain) })
	for _, g := range ps.groups {
		rs.Sets = append(rs.Sets, g.sets...)
		rs.Chains = append(rs.Chains, g.chainV)
		if g.replyV.Name != "" {
			rs.Chains = append(rs.Chains, g.replyV)
		}
	}
	slices.SortFunc(rs.Sets, func(a, b nft.Set) int { return strings.Compare(a.Name, b.Name) })
	objs, at := observeObjects(ps.opts, ps.groups)
	rs.Objects = objs
	ps.tiers.tiersInto(rs, ps.ix.local.list(), ps.ix.sharedAddrs())
	ps.tiers.observeInto(rs, at, ps.opts)
	slices.SortFunc(rs.Objects, func(a, b nft.Object) int { return strings.Compare(a.Name, b.Name) })
	return rs, at
}
