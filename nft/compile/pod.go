package compile

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
)

// Pod is all the compiler reads of a pod, in the form it reads it: what an agent
// needs to keep of every pod of the cluster. PodOf makes one from a pod object;
// the agent's cache keeps these instead of the objects (controllers/podcache.go),
// and the Compiler keeps references to their strings, label map and slices, never
// copies of them.
//
// A Pod is never modified once made (a change to the pod makes a new one), so
// label maps and port lists can be shared between pods that have equal ones.
type Pod struct {
	Namespace, Name string
	Node            string
	Labels          map[string]string
	// Addrs are the pod's addresses: unmapped, sorted, unique, the invalid ones
	// left out. A pod without one takes no part in policy.
	Addrs []netip.Addr
	// Ports are the named container ports with a valid number and protocol, in
	// container order.
	Ports       []NamedPort
	HostNetwork bool
	// Finished: the pod has terminated (Succeeded or Failed); its address may
	// already belong to another pod.
	Finished bool
}

// NamedPort is a named container port.
type NamedPort struct {
	Name  string
	Proto uint8 // IPPROTO_TCP, _UDP or _SCTP
	Port  uint16
}

// PodOf returns what the compiler reads of p. Labels is p's map itself, not a copy.
func PodOf(p *corev1.Pod) Pod {
	out := Pod{
		Namespace:   p.Namespace,
		Name:        p.Name,
		Node:        p.Spec.NodeName,
		Labels:      p.Labels,
		HostNetwork: p.Spec.HostNetwork,
		Finished:    PodFinished(p),
	}
	if n := len(p.Status.PodIPs); n > 0 {
		out.Addrs = make([]netip.Addr, 0, n)
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				out.Addrs = append(out.Addrs, a.Unmap())
			}
		}
	} else if p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out.Addrs = []netip.Addr{a.Unmap()}
		}
	}
	if len(out.Addrs) > 1 {
		slices.SortFunc(out.Addrs, netip.Addr.Compare)
		out.Addrs = slices.Compact(out.Addrs)
	}
	if len(out.Addrs) == 0 {
		out.Addrs = nil
	}
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name == "" || cp.ContainerPort < 1 || cp.ContainerPort > 65535 {
				continue
			}
			if proto, ok := protoNumber(cp.Protocol); ok {
				out.Ports = append(out.Ports, NamedPort{cp.Name, proto, uint16(cp.ContainerPort)})
			}
		}
	}
	return out
}

// Eligible reports whether the pod takes part in policy: it is not hostNetwork,
// has not finished and has an address.
func (p *Pod) Eligible() bool {
	return !p.HostNetwork && !p.Finished && len(p.Addrs) > 0
}

// PodFinished reports whether p has terminated (Succeeded or Failed): such a pod
// takes no part in policy, and its address may already belong to another pod.
func PodFinished(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}
