package controllers

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
)

// TestOrderedPods: the pod store's pods come out in namespace/name order,
// whatever order the store holds them in.
func TestOrderedPods(t *testing.T) {
	store := toolscache.NewStore(toolscache.MetaNamespaceKeyFunc)
	in := &podInterner{}
	var want []string
	for _, i := range rand.Perm(300) {
		ns, name := fmt.Sprintf("ns-%d", i%7), fmt.Sprintf("p-%d", i)
		want = append(want, ns+"/"+name)
		if err := store.Add(in.record(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(want)
	pods, err := storePods{store}.ordered(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range pods {
		got = append(got, p.Namespace()+"/"+p.Name())
	}
	if !slices.Equal(got, want) {
		t.Errorf("ordered pods:\n%v\nwant\n%v", got, want)
	}
}
