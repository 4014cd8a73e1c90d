package controllers

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Cache transforms. Every node must know every pod of the cluster (peers are selected
// cluster-wide), so the agent's memory is dominated by the pod cache: it keeps only
// what the compiler reads — identity, labels, node, hostNetwork, container ports,
// phase and IPs — and drops the rest (managedFields, annotations, images, env, volumes,
// conditions, container statuses...) before the object enters the cache.

// trimPod keeps only the fields the compiler reads. podRelevantChange compares
// trimmed pods, so a change to an unnamed port is (rightly) no event.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	out := &corev1.Pod{
		ObjectMeta: trimMeta(p.ObjectMeta),
		Spec: corev1.PodSpec{
			NodeName:    p.Spec.NodeName,
			HostNetwork: p.Spec.HostNetwork,
		},
		Status: corev1.PodStatus{
			Phase:  p.Status.Phase,
			PodIP:  p.Status.PodIP,
			PodIPs: p.Status.PodIPs,
		},
	}
	// The compiler reads container ports only to resolve port names, over all the
	// pod's containers: keep the named ones, in one container (a Container is 408
	// bytes), and none at all for the many pods without named ports.
	var ports []corev1.ContainerPort
	for _, c := range p.Spec.Containers {
		for _, cp := range c.Ports {
			if cp.Name != "" {
				ports = append(ports, corev1.ContainerPort{Name: cp.Name, ContainerPort: cp.ContainerPort, Protocol: cp.Protocol})
			}
		}
	}
	if len(ports) > 0 {
		out.Spec.Containers = []corev1.Container{{Ports: ports}}
	}
	return out, nil
}

// trimNamespace keeps identity and labels.
func trimNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: trimMeta(ns.ObjectMeta)}, nil
}

// trimPolicy keeps identity, generation and the spec (annotations such as
// last-applied-configuration can be larger than the spec itself).
func trimPolicy(obj any) (any, error) {
	np, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok {
		return obj, nil
	}
	meta := trimMeta(np.ObjectMeta)
	meta.Generation = np.Generation
	return &networkingv1.NetworkPolicy{ObjectMeta: meta, Spec: np.Spec}, nil
}

func trimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		Labels:            m.Labels,
		DeletionTimestamp: m.DeletionTimestamp,
	}
}
