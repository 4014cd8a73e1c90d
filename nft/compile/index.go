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
// addresses, is not hostNetwork and has not finished.
type podInfo struct {
	ns, name string
	ref      string // "namespace/name", of local pods only
	labels   labels.Set
	addrs    []netip.Addr // unmapped, sorted, unique
	local    bool         // runs on the compiled node: a target
	pod      *corev1.Pod
	ports    []namedPort // named container ports, parsed on first use (resolve)

	ingress, egress *group // the target's groups, when isolated
}

type namedPort struct {
	name  string
	proto uint8
	port  uint16
}

// podAddr is one address of one pod, for lookups by address.
type podAddr struct {
	addr netip.Addr
	pod  *podInfo
}

type labelKV struct{ k, v string }

// index is the snapshot arranged for the questions the compiler asks: pods by
// namespace, by label and by address; namespace labels.
type index struct {
	pods     []*podInfo // eligible pods, by namespace/name
	byNS     map[string][]*podInfo
	local    []*podInfo // eligible pods on the compiled node, by namespace/name
	nsLabels map[string]labels.Set
	nsNames  []string               // every namespace known from namespaces or pods, sorted
	byLabel  map[labelKV][]*podInfo // built on first use, see labelIndex
	byKey    map[string][]*podInfo  // pods that have the label key
	byAddr   []podAddr              // sorted by address; built on first use

	problems []Problem
}

func newIndex(s Snapshot) *index {
	ix := &index{
		byNS:     map[string][]*podInfo{},
		nsLabels: map[string]labels.Set{},
	}
	for _, ns := range s.Namespaces {
		if ns == nil {
			continue
		}
		l := labels.Set{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		if _, ok := l[nsNameLabel]; !ok {
			l[nsNameLabel] = ns.Name
		}
		ix.nsLabels[ns.Name] = l
	}
	infos := make([]podInfo, len(s.Pods)) // one allocation for all
	ix.pods = make([]*podInfo, 0, len(s.Pods))
	for i, p := range s.Pods {
		if fillPodInfo(&infos[i], p, s.NodeName) {
			ix.pods = append(ix.pods, &infos[i])
		}
	}
	slices.SortStableFunc(ix.pods, func(a, b *podInfo) int {
		return cmp.Or(strings.Compare(a.ns, b.ns), strings.Compare(a.name, b.name))
	})
	ix.pods = slices.CompactFunc(ix.pods, func(a, b *podInfo) bool { // the same pod twice: the first counts
		return a.ns == b.ns && a.name == b.name
	})
	for _, p := range ix.pods {
		if p.local {
			p.ref = p.ns + "/" + p.name
		}
	}
	for _, p := range ix.pods {
		ix.byNS[p.ns] = append(ix.byNS[p.ns], p)
		if p.local {
			ix.local = append(ix.local, p)
		}
		if _, ok := ix.nsLabels[p.ns]; !ok {
			// A pod whose namespace is not (yet) in the snapshot: its namespace has
			// the one label the API server guarantees.
			ix.nsLabels[p.ns] = labels.Set{nsNameLabel: p.ns}
		}
	}
	for ns := range ix.nsLabels {
		ix.nsNames = append(ix.nsNames, ns)
	}
	slices.Sort(ix.nsNames)
	owner := map[netip.Addr]*podInfo{}
	for _, p := range ix.local {
		for _, a := range p.addrs {
			if first := owner[a]; first != nil {
				ix.problems = append(ix.problems, Problem{Reason: fmt.Sprintf(
					"pods %s and %s on this node share address %s; the first of them that a direction isolates keeps it", first.ref, p.ref, a)})
				continue
			}
			owner[a] = p
		}
	}
	return ix
}

// labelIndex builds byLabel and byKey on first use: only selectors reaching across
// namespaces need them.
func (ix *index) labelIndex() {
	if ix.byLabel != nil {
		return
	}
	ix.byLabel = map[labelKV][]*podInfo{}
	ix.byKey = map[string][]*podInfo{}
	for _, p := range ix.pods {
		for k, v := range p.labels {
			ix.byLabel[labelKV{k, v}] = append(ix.byLabel[labelKV{k, v}], p)
			ix.byKey[k] = append(ix.byKey[k], p)
		}
	}
}

// addrIndex builds byAddr on first use: only ipBlock peers with named ports need it.
func (ix *index) addrIndex() {
	if ix.byAddr != nil {
		return
	}
	ix.byAddr = []podAddr{}
	for _, p := range ix.pods {
		for _, a := range p.addrs {
			ix.byAddr = append(ix.byAddr, podAddr{a, p})
		}
	}
	slices.SortStableFunc(ix.byAddr, func(a, b podAddr) int { return a.addr.Compare(b.addr) })
}

// fillPodInfo fills pi from p and reports whether p takes part in policy: it is not
// hostNetwork, not finished (Succeeded or Failed) and has a valid address.
func fillPodInfo(pi *podInfo, p *corev1.Pod, node string) bool {
	if p == nil || p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return false
	}
	addrs := make([]netip.Addr, 0, max(1, len(p.Status.PodIPs)))
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			addrs = append(addrs, a.Unmap())
		}
	}
	if len(p.Status.PodIPs) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			addrs = append(addrs, a.Unmap())
		}
	}
	if len(addrs) == 0 {
		return false
	}
	if len(addrs) > 1 {
		slices.SortFunc(addrs, netip.Addr.Compare)
		addrs = slices.Compact(addrs)
	}
	*pi = podInfo{
		ns:     p.Namespace,
		name:   p.Name,
		labels: labels.Set(p.Labels),
		addrs:  addrs,
		local:  p.Spec.NodeName == node,
		pod:    p,
	}
	return true
}

// resolve returns the port numbers pod p gives the name for the protocol (normally
// zero or one: container port names are unique in a pod).
func (p *podInfo) resolve(name string, proto uint8) []uint16 {
	if p.ports == nil {
		p.ports = []namedPort{}
		for _, c := range p.pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
					continue
				}
				if proto, ok := protoNumber(cp.Protocol); ok {
					p.ports = append(p.ports, namedPort{cp.Name, proto, uint16(cp.ContainerPort)})
				}
			}
		}
	}
	var out []uint16
	for _, np := range p.ports {
		if np.name == name && np.proto == proto {
			out = append(out, np.port)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// selectNamespaces returns the namespaces sel matches, sorted.
func (ix *index) selectNamespaces(sel labels.Selector) []string {
	var out []string
	for _, ns := range ix.nsNames {
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
		inNS += len(ix.byNS[ns])
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
		for _, p := range ix.byNS[ns] {
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
	ix.labelIndex()
	var best []*podInfo
	found := false
	for _, r := range reqs {
		var c []*podInfo
		switch r.Operator() {
		case selection.Equals, selection.DoubleEquals, selection.In:
			vals := r.Values().UnsortedList()
			if len(vals) == 1 {
				c = ix.byLabel[labelKV{r.Key(), vals[0]}]
			} else {
				for _, v := range vals {
					c = append(c, ix.byLabel[labelKV{r.Key(), v}]...)
				}
				slices.SortFunc(c, func(a, b *podInfo) int {
					return cmp.Or(strings.Compare(a.ns, b.ns), strings.Compare(a.name, b.name))
				})
			}
		case selection.Exists:
			c = ix.byKey[r.Key()]
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
