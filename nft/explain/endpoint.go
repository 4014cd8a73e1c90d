package explain

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"
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
// has no address to ask about: an unknown pod or node, a pod without an address.
type NotFoundError struct{ msg string }

func (e *NotFoundError) Error() string { return e.msg }

func notFound(format string, args ...any) error { return &NotFoundError{fmt.Sprintf(format, args...)} }

// active: the compiler's reading of who takes part in policy (nft/compile's doc).
func active(p *corev1.Pod) bool {
	return !p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && len(podAddrs(p)) > 0
}

func podAddrs(p *corev1.Pod) []netip.Addr {
	var ips []string
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = append(ips, p.Status.PodIP)
	}
	var out []netip.Addr
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func nodeAddrs(n *corev1.Node) []netip.Addr {
	var out []netip.Addr
	// InternalIP first: the address pods reach a node by.
	for _, t := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil && a.Type == t {
				out = append(out, ip.Unmap())
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
		for _, p := range c.sortedPods() {
			if active(p) && slices.Contains(podAddrs(p), r.Addr) {
				return candidate{ref: r, kind: KindPod, pod: p, node: p.Spec.NodeName, addrs: []netip.Addr{r.Addr}}, nil
			}
		}
		for _, n := range c.Nodes {
			if slices.Contains(nodeAddrs(n), r.Addr) {
				return candidate{ref: r, kind: KindNode, node: n.Name, addrs: []netip.Addr{r.Addr}}, nil
			}
		}
		for _, p := range c.sortedPods() {
			if p.Spec.HostNetwork && slices.Contains(podAddrs(p), r.Addr) {
				return candidate{ref: r, kind: KindNode, pod: p, node: p.Spec.NodeName, addrs: []netip.Addr{r.Addr}}, nil
			}
		}
		return candidate{ref: r, kind: KindExternal, addrs: []netip.Addr{r.Addr}}, nil
	}
	var pod *corev1.Pod
	for _, p := range c.Pods {
		if p.Namespace == r.Namespace && p.Name == r.Pod {
			pod = p
			break
		}
	}
	switch {
	case pod == nil:
		return candidate{}, notFound("pod %s/%s not found", r.Namespace, r.Pod)
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return candidate{}, notFound("pod %s/%s has finished (phase %s): it has no address that policy applies to", r.Namespace, r.Pod, pod.Status.Phase)
	case len(podAddrs(pod)) == 0:
		return candidate{}, notFound("pod %s/%s has no address yet (status.podIPs is empty)", r.Namespace, r.Pod)
	case pod.Spec.HostNetwork:
		return candidate{ref: r, kind: KindNode, pod: pod, node: pod.Spec.NodeName, addrs: podAddrs(pod)}, nil
	}
	return candidate{ref: r, kind: KindPod, pod: pod, node: pod.Spec.NodeName, addrs: podAddrs(pod)}, nil
}

func (c *Cluster) sortedPods() []*corev1.Pod {
	out := slices.Clone(c.Pods)
	slices.SortFunc(out, func(a, b *corev1.Pod) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	return out
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
