package controllers

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Cache transforms: each kind's cache keeps only what the compiler reads, and drops
// the rest (managedFields, annotations, status...) before the object enters the
// cache. Pods, which are most of the agent's memory, become compact records of
// their own (podcache.go).

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
