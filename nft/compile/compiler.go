package compile

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Compiler compiles one node's table again and again as the cluster changes, one
// object at a time: Set and Delete record a change, Compile returns the table for
// everything recorded so far, exactly what Compile(Snapshot) returns for the same
// objects (compiler_test.go checks this over random change sequences).
//
// It keeps the index of every pod, the parsed policies, and each group's sets and
// chain from the previous Compile. A change drops only the groups it can affect: a
// pod change those with a peer that selects the pod (before or after the change), or
// an egress named port resolved over every pod or an ipBlock; a namespace change
// those with a namespaceSelector whose verdict on it changed; a policy change those
// that the policy is part of. Compile refills the dropped and new groups, and rebuilds
// only what is proportional to this node's pods (grouping and the verdict maps).
// When no change since the last Compile dropped a group or touched this node's pods,
// policies, namespaces' labels or nodes, Unchanged says so and Compile would return
// the same table: the agent skips that sync.
//
// The Set methods keep no reference to the object itself, only to its strings,
// label map and, for policies, the parsed spec: the caller must not modify them
// afterwards (objects from an informer cache are replaced, never modified). Rulesets
// returned by Compile share memory with each other: do not modify them.
//
// A Compiler is not safe for concurrent use.
type Compiler struct {
	table  string
	opts   Options
	attrib *Attribution // of the last Compile
	ix     *index
	pols   map[objKey]*policyEntry
	byNS   map[string][]*policy // by name
	// polProblems is the policies' problems in key order while polKnown:
	// until a policy changes.
	polProblems []Problem
	polKnown    bool
	cached      map[string]*cachedGroup // by group key, from the last Compile
	names       map[string]groupNames   // every group's, by group key, from the last Compile
	keys        *keyTable
	sels        map[string]*podSelection // peer selections, by peer key, kept between passes
	strict      *strictMode              // nil: keep mode
	// changed is false when nothing recorded since the last Compile can change
	// its result (Unchanged): a pod no peer's verdict and no node-local rule
	// depends on, or a version of an object alike to the compiler.
	changed bool

	// ClusterNetworkPolicy tiers (cnp_compiler.go).
	cnps      map[string]*clusterEntry
	cnpOrder  []*clusterPolicy     // evaluation order; nil when stale
	cnpCached map[string][]nft.Set // rule sets by policy name, from the last Compile
	nodes     map[string]*nodeInfo
}

type policyEntry struct {
	p        *policy
	problems []Problem
}

// NewCompiler returns a Compiler for node with no objects.
func NewCompiler(node string, opts Options) *Compiler {
	table := opts.Table
	if table == "" {
		table = nft.DefaultTable
	}
	return &Compiler{
		changed: true,
		table:   table,
		opts:    opts,
		ix:      newIndex(node),
		pols:    map[objKey]*policyEntry{},
		byNS:    map[string][]*policy{},
		cached:  map[string]*cachedGroup{},
		keys:    newKeyTable(),
		sels:    map[string]*podSelection{},
		strict:  newStrict(opts),

		cnps:      map[string]*clusterEntry{},
		cnpCached: map[string][]nft.Set{},
		nodes:     map[string]*nodeInfo{},
	}
}

// SetPodRecords records many pods at once, as SetPodRecord does each (a full
// read of the cluster). It sorts pods in place to namespace/name order and grows
// the index once, so that every index list is built in order: no update or read
// sorts one afterwards (at 100,000 pods the first update after a full read
// sorted the largest: 0.6 s), and the map does not double its way up (a seventh
// of a 100,000-pod load in BenchmarkFullSync's profile).
func (c *Compiler) SetPodRecords(pods []*Pod) {
	sortPods(pods)
	c.ix.grow(len(pods))
	for _, p := range pods {
		c.SetPodRecord(p)
	}
}

// SetPod records pod p, added or changed.
func (c *Compiler) SetPod(p *corev1.Pod) {
	pod := PodOf(p)
	c.setPod(objKey{p.Namespace, p.Name}, &pod)
}

// SetPodRecord records the pod p describes, added or changed. The Compiler keeps
// p itself: see Pod.
func (c *Compiler) SetPodRecord(p *Pod) {
	c.setPod(objKey{p.ns, p.name}, p)
}

// DeletePod records that the pod namespace/name is gone.
func (c *Compiler) DeletePod(namespace, name string) {
	c.setPod(objKey{namespace, name}, nil)
}

func (c *Compiler) setPod(key objKey, p *Pod) {
	old, cur := c.ix.setPod(key, p)
	if samePod(old, cur) {
		return
	}
	var dropped bool
	if old != nil && cur != nil && sameButLabels(old, cur) {
		// A group's sets hold the pod's addresses (and ports) for the peers that
		// select it: with those unchanged, only a peer whose verdict on the pod
		// changed changes them. A label no peer reads drops nothing.
		dropped = c.touch(func(f *cachedGroup) bool {
			return f.anyPeer(func(pol *policy, pe *peer) bool {
				return peerSelects(c.ix, pol, pe, old) != peerSelects(c.ix, pol, pe, cur)
			})
		}, addrsOf(old, cur))
		for k, s := range c.sels {
			if was, is := s.picks(c.ix, old), s.picks(c.ix, cur); was != is {
				c.sels[k] = s.relabeled(old, cur, is)
			}
		}
	} else {
		dropped = c.touch(func(f *cachedGroup) bool { return f.selects(c.ix, old) || f.selects(c.ix, cur) }, addrsOf(old, cur))
		maps.DeleteFunc(c.sels, func(_ string, s *podSelection) bool { return s.picks(c.ix, old) || s.picks(c.ix, cur) })
	}
	dropped = c.podChangedTiers(old, cur) || dropped
	// Beyond the cached sets, a compilation reads only the node's own pods
	// (grouping, verdict maps, address problems, tier subjects): another node's
	// pod that no cached set depends on changes nothing.
	if dropped || (old != nil && old.local) || (cur != nil && cur.local) {
		c.changed = true
	}
}

// sameButLabels reports whether two versions of a pod differ at most in labels.
func sameButLabels(a, b *podInfo) bool {
	return a.local == b.local && slices.Equal(a.addrs, b.addrs) && slices.Equal(a.ports, b.ports)
}

// samePod reports whether two versions of a pod are alike to the compiler.
func samePod(a, b *podInfo) bool {
	if a == nil || b == nil {
		return a == b
	}
	return sameButLabels(a, b) && maps.Equal(a.labels, b.labels)
}

// SetNamespace records namespace ns, added or changed.
func (c *Compiler) SetNamespace(ns *corev1.Namespace) {
	before, after := c.ix.setNamespace(ns.Name, ns)
	c.namespaceChanged(ns.Name, before, after)
}

// DeleteNamespace records that namespace name is gone (its pods, if any remain,
// keep the name label alone).
func (c *Compiler) DeleteNamespace(name string) {
	before, after := c.ix.setNamespace(name, nil)
	c.namespaceChanged(name, before, after)
}

func (c *Compiler) namespaceChanged(name string, before, after labels.Set) {
	if maps.Equal(before, after) {
		return
	}
	// The tiers' subjects are matched on namespace labels at every compilation.
	c.changed = true
	// A group's sets change where a peer's verdict on the namespace changed:
	// in the elements of its pods' addresses.
	c.touch(func(f *cachedGroup) bool {
		return f.anyPeer(func(_ *policy, pe *peer) bool {
			return pe.nsSel != nil && pe.nsSel.Matches(before) != pe.nsSel.Matches(after)
		})
	}, func() []netip.Addr {
		var addrs []netip.Addr
		for _, p := range c.ix.byNS[name].list() {
			addrs = append(addrs, p.addrs...)
		}
		return addrs
	})
	maps.DeleteFunc(c.sels, func(_ string, s *podSelection) bool {
		return s.nsSel != nil && s.nsSel.Matches(before) != s.nsSel.Matches(after)
	})
	c.namespaceChangedTiers(before, after)
}

// SetPolicy records policy np, added or changed.
func (c *Compiler) SetPolicy(np *networkingv1.NetworkPolicy) {
	key := objKey{np.Namespace, np.Name}
	c.removePolicy(key)
	p, problems := parsePolicy(np)
	c.pols[key] = &policyEntry{p: p, problems: problems}
	c.polKnown = false
	c.changed = true
	list := c.byNS[p.ns]
	i, _ := slices.BinarySearchFunc(list, p.name, func(q *policy, name string) int { return strings.Compare(q.name, name) })
	c.byNS[p.ns] = slices.Insert(list, i, p)
}

// DeletePolicy records that the policy namespace/name is gone.
func (c *Compiler) DeletePolicy(namespace, name string) {
	c.removePolicy(objKey{namespace, name})
}

func (c *Compiler) removePolicy(key objKey) {
	old := c.pols[key]
	if old == nil {
		return
	}
	delete(c.pols, key)
	c.polKnown = false
	c.changed = true
	c.byNS[key.ns] = slices.DeleteFunc(c.byNS[key.ns], func(q *policy) bool { return q == old.p })
	if len(c.byNS[key.ns]) == 0 {
		delete(c.byNS, key.ns)
	}
	c.drop(func(f *cachedGroup) bool { return slices.Contains(f.policies, old.p) })
}

// Attribution maps the deny log prefixes and counter names of the table the last
// Compile returned to their policies; nil before the first Compile. The value is
// never modified: callers may keep it and share it between goroutines.
func (c *Compiler) Attribution() *Attribution { return c.attrib }

// touch is what drop is for a change that moves the elements of some addresses
// only (a pod's, a namespace's pods'): a group it affects is kept, with addrs()
// to patch (patch.go) at the next Compile. It reports whether any group was
// affected.
func (c *Compiler) touch(affected func(*cachedGroup) bool, addrs func() []netip.Addr) bool {
	var pending []netip.Addr
	n := 0
	for _, f := range c.cached {
		if !affected(f) {
			continue
		}
		if n++; n == 1 {
			pending = addrs()
		}
		f.pending = append(f.pending, pending...)
	}
	return n > 0
}

// addrsOf returns the addresses of two versions of a pod (either may be nil).
func addrsOf(old, cur *podInfo) func() []netip.Addr {
	return func() []netip.Addr {
		var addrs []netip.Addr
		for _, p := range []*podInfo{old, cur} {
			if p != nil {
				addrs = append(addrs, p.addrs...)
			}
		}
		return addrs
	}
}

// drop forgets the groups for which affected is true, and reports whether there
// were any.
func (c *Compiler) drop(affected func(*cachedGroup) bool) bool {
	n := len(c.cached)
	maps.DeleteFunc(c.cached, func(_ string, f *cachedGroup) bool { return affected(f) })
	return len(c.cached) < n
}

// Unchanged reports whether Compile would return what it returned last, table
// and problems alike: nothing recorded since then can change them. False before
// the first Compile. The agent skips a sync on it (an event no table depends on).
func (c *Compiler) Unchanged() bool { return !c.changed }

// Compile returns the table for every object recorded so far, and the problems
// found, as Compile(Snapshot) does.
func (c *Compiler) Compile() (*nft.Ruleset, []Problem) {
	// Both lists are kept between compilations: this is a copy.
	problems := slices.Clone(c.ix.addressProblems())
	if !c.polKnown {
		c.polProblems = nil
		for _, k := range slices.SortedFunc(maps.Keys(c.pols), compareKeys) {
			c.polProblems = append(c.polProblems, c.pols[k].problems...)
		}
		c.polKnown = true
	}
	problems = append(problems, c.polProblems...)
	problems = append(problems, c.cnpProblems()...)
	p := newPass(c.ix, c.byNS, c.keys, c.sels, c.opts)
	p.strict = c.strict
	c.cached, c.names = p.build(c.cached, c.names)
	if tp := c.tierPass(); tp != nil {
		c.cnpCached = p.buildTiers(tp, c.cnpCached)
	}
	rs, at := p.ruleset(c.table)
	c.attrib = at
	c.changed = false
	// Bound the selections the same way: those of peers no longer in any
	// policy, or whose groups went, are not read again.
	if n := len(c.sels); n > 64 && n > 2*len(p.selUsed) {
		maps.DeleteFunc(c.sels, func(k string, _ *podSelection) bool { return !p.selUsed[k] })
	}
	// Bound the key table: drop it when it holds more than twice the keys the
	// ruleset uses (plus slack); the next fills start a new one.
	if n := c.keys.len(); n > 4096 && n > 2*rs.Counts().Elements {
		c.keys = newKeyTable()
	}
	return rs, problems
}
