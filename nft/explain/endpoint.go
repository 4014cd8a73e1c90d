package explain

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// Ref is one end of the question as the user wrote it: `namespace/pod`, an IP
// address, or `node/NAME`.
type Ref struct {
	Namespace, Pod string     // a pod
	Node           string     // node/NAME
	Addr           netip.Addr // an address
}

func (r Ref) String() string {
	switch {
	case r.Node != "":
		return "node/" + r.Node
	case r.Addr.IsValid():
		return r.Addr.String()
	}
	return r.Namespace + "/" + r.Pod
}

// ParseRef reads `namespace/pod`, an IP address or `node/NAME`. It checks syntax
// only: whether the pod or node exists is the cluster's to say.
func ParseRef(s string) (Ref, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.Zone() != "" {
			return Ref{}, fmt.Errorf("%q: an address with a zone is no pod's or node's", s)
		}
		return Ref{Addr: a.Unmap()}, nil
	}
	first, rest, ok := strings.Cut(s, "/")
	if !ok || first == "" || rest == "" || strings.Contains(rest, "/") {
		return Ref{}, fmt.Errorf("%q: want namespace/pod, an IP address or node/NAME", s)
	}
	if first == "node" {
		if errs := validation.IsDNS1123Subdomain(rest); len(errs) > 0 {
			return Ref{}, fmt.Errorf("%q: invalid node name: %s", s, errs[0])
		}
		return Ref{Node: rest}, nil
	}
	if errs := validation.IsDNS1123Label(first); len(errs) > 0 {
		return Ref{}, fmt.Errorf("%q: invalid namespace: %s", s, errs[0])
	}
	if errs := validation.IsDNS1123Subdomain(rest); len(errs) > 0 {
		return Ref{}, fmt.Errorf("%q: invalid pod name: %s", s, errs[0])
	}
	return Ref{Namespace: first, Pod: rest}, nil
}

// Kind of an end.
const (
	KindPod      = "pod"      // a running pod that takes part in policy
	KindNode     = "node"     // a node's address (or a hostNetwork pod's)
	KindExternal = "external" // an address of no pod and no node
)

// End is one end of the connection, resolved in the cluster.
type End struct {
	Ref     string `json:"ref"`            // as asked
	Kind    string `json:"kind"`           // pod, node or external
	Pod     string `json:"pod,omitempty"`  // namespace/name, for a pod (or a hostNetwork pod)
	Node    string `json:"node,omitempty"` // the pod's node, or the node itself
	Address string `json:"address"`        // the address the packet carries

	pod  *corev1.Pod // a pod that takes part in policy (Kind pod)
	addr netip.Addr
}

func (e End) String() string {
	switch {
	case e.Kind == KindPod:
		return fmt.Sprintf("pod %s (%s on %s)", e.Pod, e.Address, e.Node)
	case e.Kind == KindNode && e.Pod != "":
		return fmt.Sprintf("hostNetwork pod %s (node %s, %s)", e.Pod, e.Node, e.Address)
	case e.Kind == KindNode:
		return fmt.Sprintf("node %s (%s)", e.Node, e.Address)
	}
	return "external " + e.Address
}

// NotFoundError is a question about something the cluster does not have, or that
// has no address to ask about: an unknown pod or node, a pod without an address,
// an address several pods claim.
type NotFoundError struct{ msg string }

func (e *NotFoundError) Error() string { return e.msg }

func notFound(format string, args ...any) error { return &NotFoundError{fmt.Sprintf(format, args...)} }

func nodeAddrs(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	// InternalIP first: the address pods reach a node by.
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == t {
				out = append(out, ip.Unmap().WithZone(""))
			}
		}
	}
	return out
}

func pickFamily(addrs []netip.Addr, family int) (netip.Addr, bool) {
	for _, a := range addrs {
		if (family == 4) == a.Is4() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func families(addrs []netip.Addr) []int {
	var out []int
	for _, a := range addrs {
		f := 6
		if a.Is4() {
			f = 4
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out
}

// candidate is an end before its family is chosen.
type candidate struct {
	ref   Ref
	kind  string
	pod   *corev1.Pod // the pod named (active or hostNetwork)
	node  string
	addrs []netip.Addr
}

// resolve finds r in c. An address is a pod's when an active pod has it (the first
// by namespace/name), else a node's (a node address or a hostNetwork pod's), else
// external.
func (c *Cluster) resolve(r Ref) (candidate, error) {
	switch {
	case r.Node != "":
		for _, n := range c.Nodes {
			if n.Name == r.Node {
				addrs := nodeAddrs(n)
				if len(addrs) == 0 {
					return candidate{}, notFound("node %s has no address (status.addresses)", r.Node)
				}
				return candidate{ref: r, kind: KindNode, node: n.Name, addrs: addrs}, nil
			}
		}
		return candidate{}, notFound("node %s not found", r.Node)
	case r.Addr.IsValid():
		switch holders := c.matching(func(p *compile.Pod) bool { return p.Eligible() && slices.Contains(p.Addrs(), r.Addr) }); len(holders) {
		case 0:
		case 1:
			p := holders[0]
			return candidate{ref: r, kind: KindPod, pod: p.Object(), node: p.Node(), addrs: []netip.Addr{r.Addr}}, nil
		default:
			return candidate{}, notFound("address %s is claimed by pods %s (a problem the agents report): ask about one of them by name", r.Addr, strings.Join(refsOf(holders), ", "))
		}
		for _, n := range c.Nodes {
			if slices.Contains(nodeAddrs(n), r.Addr) {
				return candidate{ref: r, kind: KindNode, node: n.Name, addrs: []netip.Addr{r.Addr}}, nil
			}
		}
		if p := c.firstPod(func(p *compile.Pod) bool { return p.HostNetwork() && slices.Contains(p.Addrs(), r.Addr) }); p != nil {
			return candidate{ref: r, kind: KindNode, pod: p.Object(), node: p.Node(), addrs: []netip.Addr{r.Addr}}, nil
		}
		return candidate{ref: r, kind: KindExternal, addrs: []netip.Addr{r.Addr}}, nil
	}
	pod := c.firstPod(func(p *compile.Pod) bool { return p.Namespace() == r.Namespace && p.Name() == r.Pod })
	switch {
	case pod == nil:
		return candidate{}, notFound("pod %s/%s not found", r.Namespace, r.Pod)
	case pod.Finished():
		return candidate{}, notFound("pod %s/%s has finished (phase Succeeded or Failed): it has no address that policy applies to", r.Namespace, r.Pod)
	case len(pod.Addrs()) == 0:
		return candidate{}, notFound("pod %s/%s has no address yet (no valid IP in status.podIPs)", r.Namespace, r.Pod)
	case pod.HostNetwork():
		return candidate{ref: r, kind: KindNode, pod: pod.Object(), node: pod.Node(), addrs: pod.Addrs()}, nil
	}
	return candidate{ref: r, kind: KindPod, pod: pod.Object(), node: pod.Node(), addrs: pod.Addrs()}, nil
}

// firstPod is the first by namespace/name of the pods match accepts, among
// Pods and the PodRecords they do not shadow, as the compile reads them (the
// first of a key wins); nil when none. One pass, no copy: at 100,000 records
// a match is the rare case.
func (c *Cluster) firstPod(match func(*compile.Pod) bool) *compile.Pod {
	var best *compile.Pod
	c.eachPod(func(p *compile.Pod) {
		if match(p) && (best == nil ||
			strings.Compare(p.Namespace()+"/"+p.Name(), best.Namespace()+"/"+best.Name()) < 0) {
			best = p
		}
	})
	return best
}

// matching is every pod match accepts, in namespace/name order.
func (c *Cluster) matching(match func(*compile.Pod) bool) []*compile.Pod {
	var out []*compile.Pod
	c.eachPod(func(p *compile.Pod) {
		if match(p) {
			out = append(out, p)
		}
	})
	slices.SortFunc(out, func(a, b *compile.Pod) int {
		return cmp.Or(strings.Compare(a.Namespace(), b.Namespace()), strings.Compare(a.Name(), b.Name()))
	})
	return out
}

// refsOf is the pods' namespace/name.
func refsOf(pods []*compile.Pod) []string {
	out := make([]string, len(pods))
	for i, p := range pods {
		out[i] = p.Namespace() + "/" + p.Name()
	}
	return out
}

// sharers is the other pods of node that claim e's address (e a pod): the
// compile reports them, and the node's table judges the address, which is
// theirs as much as e's.
func (c *Cluster) sharers(e End) []string {
	if e.pod == nil || !e.addr.IsValid() {
		return nil
	}
	return refsOf(c.matching(func(p *compile.Pod) bool {
		return p.Eligible() && p.Node() == e.Node && (p.Namespace() != e.pod.Namespace || p.Name() != e.pod.Name) && slices.Contains(p.Addrs(), e.addr)
	}))
}

// eachPod calls fn for Pods and the PodRecords they do not shadow, as the
// compile reads them (the first of a key wins).
func (c *Cluster) eachPod(fn func(*compile.Pod)) {
	given := make(map[[2]string]bool, len(c.Pods))
	for _, p := range c.Pods {
		if key := [2]string{p.Namespace, p.Name}; !given[key] {
			given[key] = true
			rec := compile.PodOf(p)
			fn(&rec)
		}
	}
	for _, p := range c.PodRecords {
		if !given[[2]string{p.Namespace(), p.Name()}] {
			fn(p)
		}
	}
}

// chooseFamily picks the family both ends have: the one asked for, else IPv4, else IPv6.
func chooseFamily(from, to candidate, want int) (int, error) {
	ff, tf := families(from.addrs), families(to.addrs)
	if want != 0 {
		for _, e := range []candidate{from, to} {
			if !slices.Contains(families(e.addrs), want) {
				return 0, notFound("%s has no IPv%d address", e.ref, want)
			}
		}
		return want, nil
	}
	for _, f := range []int{4, 6} {
		if slices.Contains(ff, f) && slices.Contains(tf, f) {
			return f, nil
		}
	}
	return 0, notFound("%s (IPv%v) and %s (IPv%v) have no address family in common", from.ref, ff, to.ref, tf)
}

func (cd candidate) end(family int) End {
	a, _ := pickFamily(cd.addrs, family)
	e := End{Ref: cd.ref.String(), Kind: cd.kind, Node: cd.node, Address: a.String(), pod: nil, addr: a}
	if cd.pod != nil {
		e.Pod = cd.pod.Namespace + "/" + cd.pod.Name
		if cd.kind == KindPod {
			e.pod = cd.pod
		}
	}
	return e
}

// HasNode reports whether name is a Node of the cluster or the node of one of
// its pods.
func (c *Cluster) HasNode(name string) bool {
	for _, n := range c.Nodes {
		if n.Name == name {
			return true
		}
	}
	return c.firstPod(func(p *compile.Pod) bool { return p.Node() == name }) != nil
}
