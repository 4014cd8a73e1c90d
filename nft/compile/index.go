package compile

import (
	"cmp"
	"fmt"
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

// podList is a list of pods kept in namespace/name order lazily: additions append,
// and the list is sorted again on its next read.
type podList struct {
	items  []*podInfo
	sorted bool
}

func (l *podList) add(p *podInfo) {
	l.sorted = len(l.items) == 0 || (l.sorted && comparePods(l.items[len(l.items)-1], p) < 0)
	l.items = append(l.items, p)
}

func (l *podList) remove(p *podInfo) {
	i := -1
	if l.sorted {
		if j, found := slices.BinarySearchFunc(l.items, p, comparePods); found && l.items[j] == p {
			i = j
		}
	} else {
		i = slices.Index(l.items, p)
	}
	if i >= 0 {
		l.items = slices.Delete(l.items, i, i+1)
	}
}

// list returns the pods in namespace/name order; valid until the next change.
func (l *podList) list() []*podInfo {
	if l == nil {
		return nil
	}
	if !l.sorted {
		slices.SortFunc(l.items, comparePods)
		l.sorted = true
	}
	return l.items
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
	if old == nil && pi == nil {
		return nil, nil
	}
	if old != nil {
		ix.removePod(old)
	}
	if pi != nil {
		ix.insertPod(pi)
	}
	ix.byAddr = nil
	return old, pi
}

func (ix *index) insertPod(p *podInfo) {
	ix.pods[objKey{p.ns, p.name}] = p
	ix.all.add(p)
	l := ix.byNS[p.ns]
	if l == nil {
		l = &podList{}
		ix.byNS[p.ns] = l
	}
	l.add(p)
	if p.local {
		ix.local.add(p)
	}
	for k, v := range p.labels {
		kv := labelKV{k, v}
		if ix.byLabel[kv] == nil {
			ix.byLabel[kv] = &podList{}
		}
		ix.byLabel[kv].add(p)
		if ix.byKey[k] == nil {
			ix.byKey[k] = &podList{}
		}
		ix.byKey[k].add(p)
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
	if l := ix.byNS[p.ns]; l != nil {
		if l.remove(p); len(l.items) == 0 {
			delete(ix.byNS, p.ns)
		}
	}
	if p.local {
		ix.local.remove(p)
	}
	for k, v := range p.labels {
		kv := labelKV{k, v}
		if l := ix.byLabel[kv]; l != nil {
			if l.remove(p); len(l.items) == 0 {
				delete(ix.byLabel, kv)
			}
		}
		if l := ix.byKey[k]; l != nil {
			if l.remove(p); len(l.items) == 0 {
				delete(ix.byKey, k)
			}
		}
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
	var problems []Problem
	var owner map[netip.Addr]*podInfo
	for _, p := range ix.local.list() {
		for _, a := range p.addrs {
			if owner == nil {
				owner = map[netip.Addr]*podInfo{}
			}
			if first := owner[a]; first != nil {
				problems = append(problems, Problem{Reason: fmt.Sprintf(
					"pods %s and %s on this node share address %s; the first of them that a direction isolates keeps it", first.ref, p.ref, a)})
				continue
			}
			owner[a] = p
		}
	}
	return problems
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
