package main

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// TestListWhole: explain's fallback when the pruned lists cannot be read
// (something between it and the apiserver re-encodes them) lists whole
// objects and hands back every item, as its own type.
func TestListWhole(t *testing.T) {
	cl := fake.NewClientBuilder().WithScheme(scheme.Scheme).WithObjects(
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p1"}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "b", Name: "p2"}},
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}).Build()
	pods, err := listWhole[*corev1.Pod](t.Context(), cl, &corev1.PodList{})
	if err != nil || len(pods) != 2 || pods[0].Name == pods[1].Name {
		t.Fatalf("pods: %v, %v", pods, err)
	}
	nodes, err := listWhole[*corev1.Node](t.Context(), cl, &corev1.NodeList{})
	if err != nil || len(nodes) != 1 || nodes[0].Name != "n1" {
		t.Fatalf("nodes: %v, %v", nodes, err)
	}
	if _, err := listWhole[*corev1.Pod](t.Context(), cl, &corev1.NodeList{}); err == nil {
		t.Error("nodes handed back as pods")
	}
}
