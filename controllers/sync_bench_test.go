package controllers

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft"
)

// benchCluster is test/bench/controlplane's cluster, as trimmed objects: 100
// namespaces (labels ns, team a..e), 10,000 pods (100 per namespace, pod i on
// node-(i%100), labels app (of 50) and tier (of 5), named port serve-80-tcp/80) and
// 1,000 policies in four shapes in rotation. Seeded: the same cluster every run.
func benchCluster() ([]*corev1.Namespace, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	const nNS, podsPerNS, nNodes, polsPerNS, nApps, nTiers, teams = 100, 100, 100, 10, 50, 5, "abcde"
	rng := rand.New(rand.NewPCG(5, 1))
	var nss []*corev1.Namespace
	for n := range nNS {
		name := fmt.Sprintf("ns-%d", n)
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{"ns": name, "team": string(teams[n%len(teams)])}}}
		obj, _ := trimNamespace(ns)
		nss = append(nss, obj.(*corev1.Namespace))
	}
	appsIn := make([][]int, nNS)
	var pods []*corev1.Pod
	for i := range nNS * podsPerNS {
		n := i / podsPerNS
		app := rng.IntN(nApps)
		appsIn[n] = append(appsIn[n], app)
		ip := fmt.Sprintf("10.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255)
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("pod-%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": fmt.Sprintf("tier-%d", rng.IntN(nTiers))}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%nNodes), Containers: []corev1.Container{{
				Name: "serve", Image: "agnhost",
				Ports: []corev1.ContainerPort{{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP}},
			}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
		obj, _ := trimPod(p)
		pods = append(pods, obj.(*corev1.Pod))
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	var nps []*networkingv1.NetworkPolicy
	for n := range nNS {
		for j := range polsPerNS {
			app := appsIn[n][rng.IntN(len(appsIn[n]))]
			tier := func() *metav1.LabelSelector {
				return &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprintf("tier-%d", rng.IntN(nTiers))}}
			}
			team := func() *metav1.LabelSelector {
				return &metav1.LabelSelector{MatchLabels: map[string]string{"team": string(teams[rng.IntN(len(teams))])}}
			}
			port80 := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr.To(intstr.FromInt32(80))}}
			named := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr.To(intstr.FromString("serve-80-tcp"))}}
			np := &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("np-%d", j)},
				Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", app)}}},
			}
			switch j % 4 {
			case 0:
				np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: port80}}
			case 1:
				np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: team()}}, Ports: named}}
			case 2:
				np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
					From:  []networkingv1.NetworkPolicyPeer{{PodSelector: tier(), NamespaceSelector: team()}, {PodSelector: tier()}},
					Ports: port80,
				}}
			case 3:
				np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
				np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: named}}
				np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
					{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: team()}},
						Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: ptr.To(intstr.FromInt32(53))}}},
					{To: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: port80},
				}
			}
			obj, _ := trimPolicy(np)
			nps = append(nps, obj.(*networkingv1.NetworkPolicy))
		}
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
