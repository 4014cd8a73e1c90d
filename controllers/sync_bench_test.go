package controllers

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// benchCluster is test/bench/benchcluster's cluster (the control-plane
// benchmark's), as the agent's cache holds it: trimmed.
func benchCluster() ([]*corev1.Namespace, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	nss, pods, nps := benchcluster.Objects()
	for i, ns := range nss {
		obj, _ := trimNamespace(ns)
		nss[i] = obj.(*corev1.Namespace)
	}
	for i, p := range pods {
		obj, _ := trimPod(p)
		pods[i] = obj.(*corev1.Pod)
	}
	for i, np := range nps {
		obj, _ := trimPolicy(np)
		nps[i] = obj.(*networkingv1.NetworkPolicy)
	}
	return nss, pods, nps
}

// memReader is a client.Reader over fixed lists, standing in for the informer
// cache: List and Get copy the objects' structs, as the cache does with
// UnsafeDisableDeepCopy.
type memReader struct {
	nss  []*corev1.Namespace
	pods []*corev1.Pod
	nps  []*networkingv1.NetworkPolicy
	pod  map[client.ObjectKey]int // index in pods
}

func (m *memReader) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return fmt.Errorf("memReader: Get of %T not supported", obj)
	}
	if m.pod == nil {
		m.pod = map[client.ObjectKey]int{}
		for i, p := range m.pods {
			m.pod[client.ObjectKeyFromObject(p)] = i
		}
	}
	i, ok := m.pod[key]
	if !ok {
		return apierrors.NewNotFound(corev1.Resource("pods"), key.Name)
	}
	*p = *m.pods[i]
	return nil
}

func (m *memReader) List(_ context.Context, list client.ObjectList, _ ...client.ListOption) error {
	switch l := list.(type) {
	case *corev1.PodList:
		l.Items = make([]corev1.Pod, len(m.pods))
		for i, p := range m.pods {
			l.Items[i] = *p
		}
	case *corev1.NamespaceList:
		l.Items = make([]corev1.Namespace, len(m.nss))
		for i, ns := range m.nss {
			l.Items[i] = *ns
		}
	case *networkingv1.NetworkPolicyList:
		l.Items = make([]networkingv1.NetworkPolicy, len(m.nps))
		for i, np := range m.nps {
			l.Items[i] = *np
		}
	default:
		return fmt.Errorf("memReader: %T not supported", list)
	}
	return nil
}

// planApplier is the netlink Applier without a kernel: it plans each transaction
// against what it applied last and keeps that, as the real one does with
// Options.ShareDesired (cmd/nftpolicy sets it).
type planApplier struct{ last *nft.Ruleset }

func (a *planApplier) Apply(_ context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	tx := nft.Plan(a.last, desired)
	a.last = desired
	return tx.Stats(), nil
}

func (a *planApplier) FullSync(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	a.last = nil
	return a.Apply(ctx, desired)
}

func (a *planApplier) Delete(context.Context) error { a.last = nil; return nil }

// BenchmarkIncrementalSync is one incremental sync of node-0 at the control-plane
// benchmark's scale (10k pods, 1k policies, 100 namespaces) after one remote pod
// changed its labels: what each event costs the agent, apart from the kernel.
func BenchmarkIncrementalSync(b *testing.B) {
	nss, pods, nps := benchCluster()
	reader := &memReader{nss: nss, pods: pods, nps: nps}
	r := &NodeReconciler{Reader: reader, NodeName: "node-0", Table: nft.DefaultTable, Applier: &planApplier{}}
	ctx := context.Background()
	if _, err := r.Reconcile(ctx, r.request()); err != nil {
		b.Fatal(err)
	}
	// Alternate one remote pod (node-1) between two tiers: tier selectors of
	// policies of its namespace pick it, so their groups are refilled.
	i := 1
	orig := pods[i]
	changed := orig.DeepCopy()
	changed.Labels = map[string]string{"app": orig.Labels["app"], "tier": "tier-x"}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n%2 == 0 {
			reader.pods[i] = changed
		} else {
			reader.pods[i] = orig
		}
		r.noteDirty(reader.pods[i])
		n++
		if _, err := r.Reconcile(ctx, r.request()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFullSync is one full sync of node-0 at the same scale: list the cache,
// build the compiler, compile the whole table, plan it against the last one.
func BenchmarkFullSync(b *testing.B) {
	nss, pods, nps := benchCluster()
	reader := &memReader{nss: nss, pods: pods, nps: nps}
	r := &NodeReconciler{Reader: reader, NodeName: "node-0", Table: nft.DefaultTable, Applier: &planApplier{}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r.needFull = true
		if _, err := r.Reconcile(ctx, r.request()); err != nil {
			b.Fatal(err)
		}
	}
}
