package compile

import (
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Pod is all the compiler reads of a pod, in the form it reads it: what an agent
// needs to keep of every pod of the cluster. PodOf makes one from a pod object;
// the agent's cache keeps these instead of the objects (controllers/podcache.go),
// and the Compiler keeps a pointer to the Pod it was given, never a copy.
//
// A Pod is never modified once handed to a Compiler (a change to the pod makes a
// new one), so label maps and port lists can be shared between pods that have
// equal ones (Share).
type Pod struct {
	ns, name string
	node     string
	labels   labels.Set
	addrs    []netip.Addr // unmapped, sorted, unique; the invalid ones left out
	ports    []NamedPort  // named container ports with a valid number and protocol
	hostNet  bool
	finished bool
}

// NamedPort is a named container port.
type NamedPort struct {
	Name  string
	Proto uint8 // IPPROTO_TCP, _UDP or _SCTP
	Port  uint16
}

// PodOf returns what the compiler reads of p. Its labels are p's map itself,
// not a copy.
func PodOf(p *corev1.Pod) Pod {
	out := Pod{
		ns:       p.Namespace,
		name:     p.Name,
		node:     p.Spec.NodeName,
		labels:   p.Labels,
		hostNet:  p.Spec.HostNetwork,
		finished: PodFinished(p),
	}
	if n := len(p.Status.PodIPs); n > 0 {
		out.addrs = make([]netip.Addr, 0, n)
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				out.addrs = append(out.addrs, a.Unmap())
			}
		}
	} else if p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out.addrs = []netip.Addr{a.Unmap()}
		}
	}
	if len(out.addrs) > 1 {
		slices.SortFunc(out.addrs, netip.Addr.Compare)
		out.addrs = slices.Compact(out.addrs)
	}
	if len(out.addrs) == 0 {
		out.addrs = nil
	}
	addPorts := func(c *corev1.Container) {
		for _, cp := range c.Ports {
			if cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			if proto, ok := protoNumber(cp.Protocol); ok {
				out.ports = append(out.ports, NamedPort{cp.Name, proto, uint16(cp.ContainerPort)})
			}
		}
	}
	for i := range p.Spec.Containers {
		addPorts(&p.Spec.Containers[i])
	}
	// Sidecars (init containers that restart always) serve for the pod's
	// life, and a named port resolves on them as a Service's does
	// (k8s.io/endpointslice FindPort: the containers first, then the
	// sidecars); a plain init container has ended before the pod serves.
	for i := range p.Spec.InitContainers {
		if IsSidecar(&p.Spec.InitContainers[i]) {
			addPorts(&p.Spec.InitContainers[i])
		}
	}
	return out
}

// IsSidecar reports whether the init container c is a sidecar: it restarts
// always, and runs beside the pod's containers.
func IsSidecar(c *corev1.Container) bool {
	return c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways
}

// Object is a pod object of which p is what the compiler reads: PodOf(p.Object())
// equals p. Its phase is Running, or Succeeded when p has finished; its named
// ports are on one container; it shares p's label map.
func (p *Pod) Object() *corev1.Pod {
	o := &corev1.Pod{}
	o.Namespace, o.Name, o.Labels = p.ns, p.name, p.labels
	o.Spec.NodeName, o.Spec.HostNetwork = p.node, p.hostNet
	o.Status.Phase = corev1.PodRunning
	if p.finished {
		o.Status.Phase = corev1.PodSucceeded
	}
	for _, a := range p.addrs {
		o.Status.PodIPs = append(o.Status.PodIPs, corev1.PodIP{IP: a.String()})
	}
	if len(o.Status.PodIPs) > 0 {
		o.Status.PodIP = o.Status.PodIPs[0].IP
	}
	if len(p.ports) > 0 {
		c := corev1.Container{Name: "ports"}
		for _, np := range p.ports {
			c.Ports = append(c.Ports, corev1.ContainerPort{Name: np.Name, ContainerPort: int32(np.Port), Protocol: protoName(np.Proto)})
		}
		o.Spec.Containers = []corev1.Container{c}
	}
	return o
}

// protoName is protoNumber's inverse.
func protoName(p uint8) corev1.Protocol {
	switch p {
	case nft.ProtoUDP:
		return corev1.ProtocolUDP
	case nft.ProtoSCTP:
		return corev1.ProtocolSCTP
	}
	return corev1.ProtocolTCP
}

// Share replaces the pod's label map and port list with equal ones shared with
// other pods (an interner's); only before the Pod is handed to anyone. It
// panics when they are not equal.
func (p *Pod) Share(l map[string]string, ports []NamedPort) {
	if !maps.Equal(l, p.labels) || !slices.Equal(ports, p.ports) {
		panic("compile.Pod.Share: not equal")
	}
	p.labels, p.ports = l, ports
}

func (p *Pod) Namespace() string         { return p.ns }
func (p *Pod) Name() string              { return p.name }
func (p *Pod) Node() string              { return p.node }
func (p *Pod) Labels() map[string]string { return p.labels }

// Addrs are the pod's addresses: unmapped, sorted, unique, the invalid ones
// left out. A pod without one takes no part in policy. Do not modify them.
func (p *Pod) Addrs() []netip.Addr { return p.addrs }

// Ports are the named container ports with a valid number and protocol, in
// container order. Do not modify them.
func (p *Pod) Ports() []NamedPort { return p.ports }

func (p *Pod) HostNetwork() bool { return p.hostNet }

// Finished: the pod has terminated (Succeeded or Failed); its address may
// already belong to another pod.
func (p *Pod) Finished() bool { return p.finished }

// Eligible reports whether the pod takes part in policy: it is not hostNetwork,
// has not finished and has an address.
func (p *Pod) Eligible() bool {
	return !p.hostNet && !p.finished && len(p.addrs) > 0
}

// PodFinished reports whether p has terminated (Succeeded or Failed): such a pod
// takes no part in policy, and its address may already belong to another pod.
func PodFinished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// sortPods sorts pods by namespace, then name: grouped by namespace first,
// which takes a third of the comparisons of one sort of them all (each a cache
// miss, at 100,000 pods).
func sortPods(pods []*Pod) {
	byNS := map[string][]*Pod{}
	for _, p := range pods {
		byNS[p.ns] = append(byNS[p.ns], p)
	}
	out := pods[:0]
	for _, ns := range slices.Sorted(maps.Keys(byNS)) {
		in := byNS[ns]
		slices.SortFunc(in, func(a, b *Pod) int { return strings.Compare(a.name, b.name) })
		out = append(out, in...)
	}
}
