package main

import (
	"fmt"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// TestCountPods: explain learns the cluster's size from one pod's list (what
// it refuses by, in a cgroup short of room), against the real apiserver.
func TestCountPods(t *testing.T) {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("needs envtest's control plane: KUBEBUILDER_ASSETS is unset")
	}
	cp, c := benchcluster.StartControlPlane(t, t.TempDir())
	for _, ns := range []string{"a", "b"} {
		if err := c.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p-%d", i)}, Spec: benchcluster.PodSpecOn("node-0")}
			if err := c.Create(t.Context(), p); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n, ok := countPods(t.Context(), cp.Config); !ok || n != 6 {
		t.Errorf("countPods: %d, %v; want 6", n, ok)
	}
}
