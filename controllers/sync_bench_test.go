package controllers

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/util/intstr"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// benchCluster is test/bench/benchcluster's cluster (the control-plane
// benchmark's), as the agent's cache holds it: trimmed, pods as the pod cache's
// records (in a store, as the informer's).
func benchCluster(shape benchcluster.Shape) ([]*corev1.Namespace, toolscache.Store, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	nss, pods, nps := shape.Objects()
	for i, ns := range nss {
		obj, _ := trimNamespace(ns)
		nss[i] = obj.(*corev1.Namespace)
	}
	store := toolscache.NewStore(toolscache.MetaNamespaceKeyFunc)
	in := &podInterner{}
	for _, p := range pods {
		if err := store.Add(in.record(p)); err != nil {
			panic(err)
		}
	}
	for i, np := range nps {
		obj, _ := trimPolicy(np)
		nps[i] = obj.(*networkingv1.NetworkPolicy)
	}
	return nss, store, pods, nps
}

// memReader is a client.Reader over fixed lists of namespaces and policies,
// standing in for the informer cache: List copies the objects' structs, as the
// cache does with UnsafeDisableDeepCopy. (Pods are read from the pod store.)
type memReader struct {
	nss []*corev1.Namespace
	nps []*networkingv1.NetworkPolicy
}

func (m *memReader) Get(_ context.Context, key client.ObjectKey, obj client.Object, _ ...client.GetOption) error {
	switch o := obj.(type) {
	case *corev1.Namespace:
		for _, ns := range m.nss {
			if ns.Name == key.Name {
				*o = *ns
				return nil
			}
		}
		return apierrors.NewNotFound(corev1.Resource("namespaces"), key.Name)
	case *networkingv1.NetworkPolicy:
		for _, np := range m.nps {
			if np.Namespace == key.Namespace && np.Name == key.Name {
				*o = *np
				return nil
			}
		}
		return apierrors.NewNotFound(networkingv1.Resource("networkpolicies"), key.Name)
	}
	return fmt.Errorf("memReader: Get of %T not supported", obj)
}

func (m *memReader) List(_ context.Context, list client.ObjectList, _ ...client.ListOption) error {
	switch l := list.(type) {
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
	case *corev1.NodeList:
		l.Items = nil // the benchmark cluster has no Node objects
	default:
		return fmt.Errorf("memReader: %T not supported", list)
	}
	return nil
}

// planApplier is the netlink Applier without a kernel: it plans each transaction
// against what it applied last and keeps that, as the real one does with
// Options.ShareDesired (cmd/nftpolicy sets it).
type planApplier struct {
	last    *nft.Ruleset
	applies int
	// plansFrom counts PlanFrom's plans, planned the applies that sent one.
	plansFrom, planned int
}

func (a *planApplier) Apply(_ context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	tx := nft.Plan(a.last, desired)
	a.last = desired
	a.applies++
	return tx.Stats(), nil
}

// onlyApplier hides every method of an Applier but nft.Applier's.
type onlyApplier struct{ nft.Applier }

// PlanFrom and ApplyPlanned: nft.PlansAhead, as the real one.
func (a *planApplier) PlanFrom(from, desired *nft.Ruleset) (nft.Planned, bool) {
	if from == nil || from != a.last {
		return nft.Planned{}, false
	}
	a.plansFrom++
	return nft.Planned{From: from, Desired: desired, Tx: nft.Plan(from, desired)}, true
}

func (a *planApplier) ApplyPlanned(ctx context.Context, p nft.Planned) (nft.Stats, error) {
	if p.From != a.last {
		return a.Apply(ctx, p.Desired)
	}
	a.last = p.Desired
	a.applies++
	a.planned++
	return p.Tx.Stats(), nil
}

func (a *planApplier) FullSync(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	a.last = nil
	return a.Apply(ctx, desired)
}

func (a *planApplier) Delete(context.Context) error { a.last = nil; return nil }

// benchShapes are the control-plane benchmark's two cluster sizes.
var benchShapes = []struct {
	name  string
	shape benchcluster.Shape
}{{"10k", benchcluster.Shape10k}, {"100k", benchcluster.Shape100k}}

// BenchmarkIncrementalSync is one incremental sync of node-0 at the control-plane
// benchmark's scales (10k pods, 1k policies, 100 namespaces; 100k pods, 5k
// policies, 2,000 namespaces) after one remote pod changed its labels: what each
// event costs the agent, apart from the kernel. tier: the pod alternates between
// two tiers, which a tier selector of a policy on node-0 reads, so its groups are
// refilled and the table changes; unread: it gains and loses a label no policy
// reads, so the sync finds nothing to change (kind "unchanged"). tier-strict is
// tier in strict mode (--established=recheck), where every other change moves
// the epoch (the pod leaves a set); tier-strict-plan-twice is the same with an
// Applier that does not plan ahead, so that strict mode plans each change
// once to weigh it and once more to apply it. tier-blocks is tier with every
// policy also admitting an ipBlock (withIPBlocks), so that the groups the
// change touches have ipBlock peers next to their pod peers.
func BenchmarkIncrementalSync(b *testing.B) {
	for _, sh := range benchShapes {
		nss, store, pods, nps := benchCluster(sh.shape)
		withBlocks := withIPBlocks(nps)
		for _, kind := range []string{"tier", "tier-blocks", "tier-strict", "tier-strict-plan-twice", "unread"} {
			b.Run(sh.name+"/"+kind, func(b *testing.B) {
				reader := &memReader{nss: nss, nps: nps}
				if kind == "tier-blocks" {
					reader.nps = withBlocks
				}
				applier := &planApplier{}
				r := &NodeReconciler{Reader: reader, Pods: storePods{store}, NodeName: "node-0", Table: nft.DefaultTable, Applier: applier}
				if strings.HasPrefix(kind, "tier-strict") {
					r.Established = compile.EstablishedRecheck
				}
				if kind == "tier-strict-plan-twice" {
					r.Applier = onlyApplier{applier}
				}
				tier := strings.HasPrefix(kind, "tier")
				ctx := context.Background()
				if _, err := r.Reconcile(ctx, r.request()); err != nil {
					b.Fatal(err)
				}
				in := &podInterner{}
				// sync sets the pod's record and reports whether the table changed.
				sync := func(rec *cachedPod) bool {
					if err := store.Update(rec); err != nil {
						b.Fatal(err)
					}
					r.noteDirty(rec)
					before := applier.applies
					if _, err := r.Reconcile(ctx, r.request()); err != nil {
						b.Fatal(err)
					}
					return applier.applies > before
				}
				var recs []*cachedPod
				var first time.Duration     // the first sync after the full one
				for _, orig := range pods { // the first remote pod that does what kind says
					if orig.Spec.NodeName == "node-0" {
						continue
					}
					changed := orig.DeepCopy()
					if tier {
						changed.Labels = map[string]string{"app": orig.Labels["app"], "tier": "tier-x"}
					} else {
						changed.Labels["churn"] = "c1"
					}
					recs = []*cachedPod{in.record(changed), in.record(orig)}
					start := time.Now()
					changedTable := sync(recs[0])
					if first == 0 {
						first = time.Since(start)
					}
					if changedTable == tier && sync(recs[1]) == tier {
						break
					}
					recs = nil
				}
				if recs == nil {
					b.Fatalf("no remote pod whose %s change does what the benchmark says", kind)
				}
				b.ReportAllocs()
				n := 0
				applier.planned = 0
				for b.Loop() {
					sync(recs[n%2])
					n++
				}
				sync(recs[1])
				if kind == "tier-strict" {
					// Half the changes widen the table: those send the plan
					// that weighed them.
					b.ReportMetric(float64(applier.planned)/float64(n+1), "planned-once/op")
				}
				// An update must not pay for ordering what a full sync built.
				b.ReportMetric(float64(first.Microseconds())/1000, "first-sync-ms")
			})
		}
	}
}

// withIPBlocks returns copies of nps in which every policy with ingress rules
// also admits 192.168.0.0/16 on TCP 80 (a load balancer's addresses), and
// every policy with egress rules also lets out to everything but 10.0.0.0/8 on
// TCP 443 (the internet): the ipBlock rules real policies carry next to their
// pod peers.
func withIPBlocks(nps []*networkingv1.NetworkPolicy) []*networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := func(n int32) []networkingv1.NetworkPolicyPort {
		p := intstr.FromInt32(n)
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}}
	}
	out := make([]*networkingv1.NetworkPolicy, len(nps))
	for i, np := range nps {
		np = np.DeepCopy()
		if len(np.Spec.Ingress) > 0 {
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{Ports: port(80),
				From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16"}}}})
		}
		if len(np.Spec.Egress) > 0 {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{Ports: port(443),
				To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/8"}}}}})
		}
		out[i] = np
	}
	return out
}

// BenchmarkFullSync is one full sync of node-0 at the same scales: read the
// cache, build the compiler, compile the whole table, plan it against the last one.
func BenchmarkFullSync(b *testing.B) {
	for _, sh := range benchShapes {
		b.Run(sh.name, func(b *testing.B) {
			nss, store, _, nps := benchCluster(sh.shape)
			reader := &memReader{nss: nss, nps: nps}
			r := &NodeReconciler{Reader: reader, Pods: storePods{store}, NodeName: "node-0", Table: nft.DefaultTable, Applier: &planApplier{}}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				r.needFull = true
				if _, err := r.Reconcile(ctx, r.request()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPodMemory reports what the agent keeps per cluster pod at the two
// benchmark shapes, load-independent: the heap in use after a GC with the pod
// store (as the informer's, without its event buffers) and a Compiler that has
// compiled node-0's table, less the heap before; policies and namespaces are
// in both readings. bytes/pod divides by the pods; it includes the node's
// ruleset, which grows with the cluster too.
func BenchmarkPodMemory(b *testing.B) {
	for _, sh := range benchShapes {
		b.Run(sh.name, func(b *testing.B) {
			for b.Loop() {
				nss, _, nps := sh.shape.Objects()
				for i, ns := range nss {
					obj, _ := trimNamespace(ns)
					nss[i] = obj.(*corev1.Namespace)
				}
				for i, np := range nps {
					obj, _ := trimPolicy(np)
					nps[i] = obj.(*networkingv1.NetworkPolicy)
				}
				before := heapInUse()
				_, raw, _ := sh.shape.Objects()
				store := toolscache.NewStore(toolscache.MetaNamespaceKeyFunc)
				in := &podInterner{}
				for i, p := range raw {
					if err := store.Add(in.record(p)); err != nil {
						b.Fatal(err)
					}
					raw[i] = nil // as the informer drops the decoded object
				}
				r := &NodeReconciler{Reader: &memReader{nss: nss, nps: nps}, Pods: storePods{store}, NodeName: "node-0",
					Table: nft.DefaultTable, Applier: &planApplier{}}
				if _, err := r.Reconcile(context.Background(), r.request()); err != nil {
					b.Fatal(err)
				}
				after := heapInUse()
				b.ReportMetric(float64(after-before)/float64(sh.shape.Pods()), "bytes/pod")
				runtime.KeepAlive(r)
				runtime.KeepAlive(store)
				runtime.KeepAlive(nss)
				runtime.KeepAlive(nps)
			}
		})
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
