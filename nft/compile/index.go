package compile

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// nsNameLabel is the label the API server puts on every namespace (immutable, equal
// to its name). The index adds it when a trimmed or hand-written object lacks it.
const nsNameLabel = "kubernetes.io/metadata.name"

// podInfo is what the compiler keeps of a pod that can take part in policy: it has
// addresses, is not hostNetwork and has not finished. Its ns, name, labels, addrs
// and ports are the Pod's it was given (a pointer: at 100,000 pods, a copy of
// those five would be 8 MB).
type podInfo struct {
	*Pod
	ref   string // "namespace/name", of local pods only
	local bool   // runs on the compiled node: a target

	ingress, egress *group // the target's groups, when isolated (set by each build)
}

// podAddr is one address of one pod, for lookups by address.
type podAddr struct {
	addr netip.Addr
	pod  *podInfo
}

type labelKV struct{ k, v string }

// objKey is a namespace/name.
type objKey struct{ ns, name string }

// compareKeys orders keys by namespace, then name.
func compareKeys(a, b objKey) int {
	return cmp.Or(strings.Compare(a.ns, b.ns), strings.Compare(a.name, b.name))
}

func comparePods(a, b *podInfo) int {
	return cmp.Or(strings.Compare(a.ns, b.ns), strings.Compare(a.name, b.name))
}

// podList is a list of pods in namespace/name order, kept so lazily that a bulk
// load appends and an update or removal never scans it: items[:sorted] is in
// order, items[sorted:] holds the pods added since the last read, in arrival
// order. A read puts the tail in place (sorting only the tail and merging it when
// it is small).
type podList struct {
	items  []*podInfo
	sorted int
}

func (l *podList) add(p *podInfo) {
	if l.sorted == len(l.items) && (l.sorted == 0 || comparePods(l.items[l.sorted-1], p) < 0) {
		l.sorted++
	}
	l.items = append(l.items, p)
}

// find returns p's position, or -1: a binary search of the ordered part, a scan
// of the tail. A long tail (a bulk load no read has ordered yet) is put in place
// first, once.
func (l *podList) find(p *podInfo) int {
	if len(l.items)-l.sorted > 32 {
		l.list()
	}
	if i, found := slices.BinarySearchFunc(l.items[:l.sorted], p, comparePods); found && l.items[i] == p {
		return i
	}
	for i := l.sorted; i < len(l.items); i++ {
		if l.items[i] == p {
			return i
		}
	}
	return -1
}

func (l *podList) remove(p *podInfo) {
	if i := l.find(p); i >= 0 {
		l.items = slices.Delete(l.items, i, i+1)
		if i < l.sorted {
			l.sorted--
		}
	}
}

// replace puts cur where old is: both are versions of one pod (one namespace and
// name), so the order holds. It reports whether old was there.
func (l *podList) replace(old, cur *podInfo) bool {
	if i := l.find(old); i >= 0 {
		l.items[i] = cur
		return true
	}
	return false
}

// list returns the pods in namespace/name order; valid until the next change.
func (l *podList) list() []*podInfo {
	if l == nil {
		return nil
	}
	if n := len(l.items) - l.sorted; n > 0 {
		if n > len(l.items)/8 {
			slices.SortFunc(l.items, comparePods)
		} else {
			l.mergeTail()
		}
		l.sorted = len(l.items)
	}
	return l.items
}

// mergeTail sorts the short unordered tail and merges it into the ordered part,
// from the back, in place: each tail pod's place found by a binary search, the
// ordered pods after it moved up as one block. A comparison reads two pods
// (cache misses at 100k), a move does not: comparing every ordered pod, as a
// plain merge does, was half the agent's CPU in the 100k bench's tier churn.
func (l *podList) mergeTail() {
	tail := slices.Clone(l.items[l.sorted:])
	slices.SortFunc(tail, comparePods)
	end, hi := len(l.items), l.sorted // items[end:] is merged; items[:hi] is still in place
	for j := len(tail) - 1; j >= 0; j-- {
		at, _ := slices.BinarySearchFunc(l.items[:hi], tail[j], comparePods)
		n := hi - at
		copy(l.items[end-n:end], l.items[at:hi])
		end -= n + 1
		l.items[end] = tail[j]
		hi = at
	}
}

func (l *podList) len() int {
	if l == nil {
		return 0
	}
	return len(l.items)
}

// index is the cluster arranged for the questions the compiler asks: pods by
// namespace, by label and by address; namespace labels. It is kept up to date one
// object at a time (setPod, deletePod, setNamespace, deleteNamespace).
type index struct {
	node     string
	pods     map[objKey]*podInfo // eligible pods
	all      podList             // eligible pods
	byNS     map[string]*podList
	local    podList // eligible pods on the compiled node
	nsObj    map[string]labels.Set
	nsLabels map[string]labels.Set // of every namespace known from namespaces or pods
	nsPods   map[string]int        // eligible pods per namespace
	nsNames  []string              // sorted keys of nsLabels; nil when stale
	byLabel  map[labelKV]*podList  // pods by label
	byKey    map[string]*podList   // pods that have the label key
	byAddr   []podAddr             // sorted by address; nil when stale, built on use
	// addrProblems and shared are addresses()' results while addrKnown: until
	// a local pod changes.
	addrProblems []Problem
	shared       map[netip.Addr][]*podInfo
	addrKnown    bool
}

func newIndex(node string) *index {
	return &index{
		node:     node,
		pods:     map[objKey]*podInfo{},
		byNS:     map[string]*podList{},
		nsObj:    map[string]labels.Set{},
		nsLabels: map[string]labels.Set{},
		nsPods:   map[string]int{},
		byLabel:  map[labelKV]*podList{},
		byKey:    map[string]*podList{},
	}
}

// grow makes room for n more pods in the map and lists every pod is in.
func (ix *index) grow(n int) {
	if n <= 0 {
		return
	}
	pods := make(map[objKey]*podInfo, len(ix.pods)+n)
	maps.Copy(pods, ix.pods)
	ix.pods = pods
	ix.all.items = slices.Grow(ix.all.items, n)
}

// setPod records p (nil or ineligible: no such pod) under key and returns the pod
// info it replaced and the new one (either may be nil).
func (ix *index) setPod(key objKey, p *Pod) (old, cur *podInfo) {
	old = ix.pods[key]
	var pi *podInfo
	if p != nil && p.Eligible() {
		pi = &podInfo{Pod: p, local: p.node == ix.node}
		if pi.local {
			pi.ref = key.ns + "/" + key.name
		}
	}
	switch {
	case old == nil && pi == nil:
		return nil, nil
	case old != nil && pi != nil:
		ix.replacePod(old, pi)
	case old != nil:
		ix.removePod(old)
	default:
		ix.insertPod(pi)
	}
	ix.byAddr = nil
	if (old != nil && old.local) || (pi != nil && pi.local) {
		ix.addrKnown = false
	}
	return old, pi
}

// replacePod puts cur, a new version of old, in old's place in every list that
// holds both, and moves it only in the label lists its label changes concern: a
// pod's update costs its labels, not the lists' lengths.
func (ix *index) replacePod(old, cur *podInfo) {
	ix.pods[objKey{cur.ns, cur.name}] = cur
	ix.all.replace(old, cur)
	ix.byNS[cur.ns].replace(old, cur)
	switch {
	case old.local && cur.local:
		ix.local.replace(old, cur)
	case old.local:
		ix.local.remove(old)
	case cur.local:
		ix.local.add(cur)
	}
	for k, v := range old.labels {
		if w, ok := cur.labels[k]; ok {
			ix.byKey[k].replace(old, cur)
			if w == v {
				ix.byLabel[labelKV{k, v}].replace(old, cur)
				continue
			}
		} else {
			removeFrom(ix.byKey, k, old)
		}
		removeFrom(ix.byLabel, labelKV{k, v}, old)
	}
	for k, v := range cur.labels {
		if w, ok := old.labels[k]; ok && w == v {
			continue
		}
		addTo(ix.byLabel, labelKV{k, v}, cur)
		if _, ok := old.labels[k]; !ok {
			addTo(ix.byKey, k, cur)
		}
	}
}

// addTo adds p to the list at m[k], making the list if need be.
func addTo[K comparable](m map[K]*podList, k K, p *podInfo) {
	l := m[k]
	if l == nil {
		l = &podList{}
		m[k] = l
	}
	l.add(p)
}

// removeFrom removes p from the list at m[k], and the list when it empties.
func removeFrom[K comparable](m map[K]*podList, k K, p *podInfo) {
	if l := m[k]; l != nil {
		if l.remove(p); len(l.items) == 0 {
			delete(m, k)
		}
	}
}

func (ix *index) insertPod(p *podInfo) {
	ix.pods[objKey{p.ns, p.name}] = p
	ix.all.add(p)
	addTo(ix.byNS, p.ns, p)
	if p.local {
		ix.local.add(p)
	}
	for k, v := range p.labels {
		addTo(ix.byLabel, labelKV{k, v}, p)
		addTo(ix.byKey, k, p)
	}
	ix.nsPods[p.ns]++
	if _, ok := ix.nsLabels[p.ns]; !ok {
		// A pod whose namespace is not (yet) known: its namespace has the one label
		// the API server guarantees.
		ix.nsLabels[p.ns] = labels.Set{nsNameLabel: p.ns}
		ix.nsNames = nil
	}
}

func (ix *index) removePod(p *podInfo) {
	delete(ix.pods, objKey{p.ns, p.name})
	ix.all.remove(p)
	removeFrom(ix.byNS, p.ns, p)
	if p.local {
		ix.local.remove(p)
	}
	for k, v := range p.labels {
		removeFrom(ix.byLabel, labelKV{k, v}, p)
		removeFrom(ix.byKey, k, p)
	}
	if ix.nsPods[p.ns]--; ix.nsPods[p.ns] <= 0 {
		delete(ix.nsPods, p.ns)
		if _, ok := ix.nsObj[p.ns]; !ok {
			delete(ix.nsLabels, p.ns)
			ix.nsNames = nil
		}
	}
}

// setNamespace records the labels of namespace name (ns nil: deleted) and returns
// its labels before and after, as selectors see them.
func (ix *index) setNamespace(name string, ns *corev1.Namespace) (before, after labels.Set) {
	before = ix.labelsOf(name)
	_, known := ix.nsLabels[name]
	if ns == nil {
		delete(ix.nsObj, name)
		if ix.nsPods[name] > 0 {
			ix.nsLabels[name] = labels.Set{nsNameLabel: name}
		} else if known {
			delete(ix.nsLabels, name)
			ix.nsNames = nil
		}
		return before, ix.labelsOf(name)
	}
	l := make(labels.Set, len(ns.Labels)+1)
	for k, v := range ns.Labels {
		l[k] = v
	}
	if _, ok := l[nsNameLabel]; !ok {
		l[nsNameLabel] = name
	}
	ix.nsObj[name] = l
	ix.nsLabels[name] = l
	if !known {
		ix.nsNames = nil
	}
	return before, l
}

// labelsOf returns namespace ns's labels as selectors see them (a namespace known
// from nothing has the name label alone).
func (ix *index) labelsOf(ns string) labels.Set {
	if l, ok := ix.nsLabels[ns]; ok {
		return l
	}
	return labels.Set{nsNameLabel: ns}
}

// namespaces returns the names of the namespaces known from namespaces or pods, sorted.
func (ix *index) namespaces() []string {
	if ix.nsNames == nil {
		ix.nsNames = make([]string, 0, len(ix.nsLabels))
		for ns := range ix.nsLabels {
			ix.nsNames = append(ix.nsNames, ns)
		}
		slices.Sort(ix.nsNames)
	}
	return ix.nsNames
}

// addressProblems reports local pods that share an address, in namespace/name order.
func (ix *index) addressProblems() []Problem {
	ix.addresses()
	return ix.addrProblems
}

// sharedAddrs is, for each address several local pods claim, those pods in
// namespace/name order (judgeShared); nil when none is shared.
func (ix *index) sharedAddrs() map[netip.Addr][]*podInfo {
	ix.addresses()
	return ix.shared
}

// addresses finds the local pods that share an address, once until a local pod
// changes.
func (ix *index) addresses() {
	if ix.addrKnown {
		return
	}
	ix.addrProblems, ix.shared, ix.addrKnown = nil, nil, true
	var owner map[netip.Addr]*podInfo
	for _, p := range ix.local.list() {
		for _, a := range p.addrs {
			if owner == nil {
				owner = map[netip.Addr]*podInfo{}
			}
			first := owner[a]
			if first == nil {
				owner[a] = p
				continue
			}
			ix.addrProblems = append(ix.addrProblems, Problem{Reason: fmt.Sprintf(
				"pods %s and %s on this node share address %s: a direction that isolates one of them judges the address by its policies; "+
					"one that isolates both by different policies, or in which different ClusterNetworkPolicies select them, drops its traffic", first.ref, p.ref, a)})
			if ix.shared == nil {
				ix.shared = map[netip.Addr][]*podInfo{}
			}
			if ix.shared[a] == nil {
				ix.shared[a] = []*podInfo{first}
			}
			ix.shared[a] = append(ix.shared[a], p)
		}
	}
}

// addrIndex builds byAddr on first use: only ipBlock peers with named ports need it.
func (ix *index) addrIndex() {
	if ix.byAddr != nil {
		return
	}
	ix.byAddr = []podAddr{}
	for _, p := range ix.all.list() {
		for _, a := range p.addrs {
			ix.byAddr = append(ix.byAddr, podAddr{a, p})
		}
	}
	slices.SortStableFunc(ix.byAddr, func(a, b podAddr) int { return a.addr.Compare(b.addr) })
}

// resolve returns the port numbers pod p gives the name for the protocol (normally
// zero or one: container port names are unique in a pod).
func (p *podInfo) resolve(name string, proto uint8) []uint16 {
	var out []uint16
	for _, np := range p.ports {
		if np.Name == name && np.Proto == proto {
			out = append(out, np.Port)
		}
	}
	if len(out) > 1 {
		slices.Sort(out)
		out = slices.Compact(out)
	}
	return out
}

// selectNamespaces returns the namespaces sel matches, sorted.
func (ix *index) selectNamespaces(sel labels.Selector) []string {
	var out []string
	for _, ns := range ix.namespaces() {
		if sel.Matches(ix.nsLabels[ns]) {
			out = append(out, ns)
		}
	}
	return out
}

// selectPods returns the eligible pods in the namespaces nss whose labels match sel,
// in index order; nss must be sorted. It starts from the smallest label posting list sel requires (an
// equality, In or Exists requirement) when that is smaller than the namespaces' pods.
func (ix *index) selectPods(nss []string, sel labels.Selector) []*podInfo {
	inNS := 0
	for _, ns := range nss {
		inNS += ix.byNS[ns].len()
	}
	var cands []*podInfo
	ok := false
	if len(nss) > 1 {
		cands, ok = ix.candidates(sel)
	}
	var out []*podInfo
	if ok && len(cands) < inNS {
		want := make(map[string]bool, len(nss))
		for _, ns := range nss {
			want[ns] = true
		}
		for _, p := range cands {
			if want[p.ns] && sel.Matches(p.labels) {
				out = append(out, p)
			}
		}
		return out
	}
	for _, ns := range nss { // sorted, so the result is in index order
		for _, p := range ix.byNS[ns].list() {
			if sel.Matches(p.labels) {
				out = append(out, p)
			}
		}
	}
	return out
}

// candidates returns a superset of the pods sel matches, in index order, taken from
// the label index; false when sel has no requirement the index can answer.
func (ix *index) candidates(sel labels.Selector) ([]*podInfo, bool) {
	reqs, ok := sel.Requirements()
	if !ok {
		return nil, false
	}
	var best []*podInfo
	found := false
	for _, r := range reqs {
		var c []*podInfo
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			vals := r.Values().UnsortedList()
			if len(vals) == 1 {
				c = ix.byLabel[labelKV{r.Key(), vals[0]}].list()
			} else {
				for _, v := range vals {
					c = append(c, ix.byLabel[labelKV{r.Key(), v}].list()...)
				}
				slices.SortFunc(c, comparePods)
			}
		case selection.Exists:
			c = ix.byKey[r.Key()].list()
		default:
			continue
		}
		if !found || len(c) < len(best) {
			best, found = c, true
		}
	}
	return best, found
}

// podsIn returns the pods with an address in the set, each with those of its
// addresses that are in it, in address order.
func (ix *index) podsIn(set addrSetRanges) []podAddr {
	ix.addrIndex()
	var out []podAddr
	for _, r := range set {
		i, _ := slices.BinarySearchFunc(ix.byAddr, r.From(), func(pa podAddr, a netip.Addr) int { return pa.addr.Compare(a) })
		for ; i < len(ix.byAddr) && ix.byAddr[i].addr.Compare(r.To()) <= 0; i++ {
			out = append(out, ix.byAddr[i])
		}
	}
	return out
}
