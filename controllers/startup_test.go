package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestFirstSyncNeedsNoNotes: at start the controller's handlers get every cached
// object (100,000 events at 100k pods) before the first sync, which reads the
// whole cache anyway; the reconciler notes none of them. The first sync still
// enforces them all, and a change after it is noted and served incrementally.
func TestFirstSyncNeedsNoNotes(t *testing.T) {
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "st", Labels: map[string]string{"kubernetes.io/metadata.name": "st"}}}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "st", Name: "from-peers"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "peer"}}}}}},
		},
	}
	pod := func(name, node, ip string, labels map[string]string) *cachedPod {
		p := testPod("st", name, ip, false)
		p.Spec.NodeName, p.Labels, p.Status.Phase = node, labels, corev1.PodRunning
		return (&podInterner{}).record(p)
	}
	store := toolscache.NewStore(toolscache.MetaNamespaceKeyFunc)
	replay := []*cachedPod{pod("target", "node-0", "10.50.0.2", map[string]string{"app": "target"})}
	for i := range 200 {
		replay = append(replay, pod(fmt.Sprintf("peer-%d", i), "node-1", fmt.Sprintf("10.50.1.%d", i+2), map[string]string{"role": "peer"}))
	}
	applier := nfttest.NewFake()
	r := &NodeReconciler{Reader: &memReader{nss: []*corev1.Namespace{ns}, nps: []*networkingv1.NetworkPolicy{np}},
		Pods: storePods{store}, NodeName: "node-0", Table: nft.DefaultTable, Applier: applier, Log: logr.Discard(),
		cnp: &clusterPolicyAPI{}}

	// The replay: the cache holds each object before its handler sees it.
	for _, p := range replay {
		if err := store.Add(p); err != nil {
			t.Fatal(err)
		}
		r.noteDirty(p)
	}
	if n := len(r.takeDirty()); n != 0 {
		t.Fatalf("%d objects noted before the first sync, want 0", n)
	}
	if _, err := r.Reconcile(ctx, r.request()); err != nil {
		t.Fatal(err)
	}
	rendered := nft.Render(applier.Last())
	for _, ip := range []string{"10.50.1.2", "10.50.1.201"} {
		if !strings.Contains(rendered, ip+" ") && !strings.Contains(rendered, ip+",") && !strings.Contains(rendered, ip+"\n") {
			t.Errorf("the first table does not hold peer %s", ip)
		}
	}

	// After the first sync, changes are noted and served by an incremental sync.
	late := pod("late-peer", "node-2", "10.50.2.9", map[string]string{"role": "peer"})
	if err := store.Add(late); err != nil {
		t.Fatal(err)
	}
	r.noteDirty(late)
	r.dirtyMu.Lock()
	noted := len(r.dirty)
	r.dirtyMu.Unlock()
	if noted != 1 {
		t.Fatalf("%d objects noted after the first sync, want 1", noted)
	}
	if _, err := r.Reconcile(ctx, r.request()); err != nil {
		t.Fatal(err)
	}
	if c := applier.Calls(); c.FullSync != 1 || c.Apply != 1 {
		t.Errorf("calls %+v, want one full sync and one incremental apply", c)
	}
	if !strings.Contains(nft.Render(applier.Last()), "10.50.2.9") {
		t.Error("the incremental sync did not add the late peer")
	}
}
