package controllers

import (
	"context"
	"fmt"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// The agent's first pod list, decoded as it arrives (podlist.go), against the
// real apiserver: the informer's store holds what the apiserver holds, the
// first request is one list (no watch-list), and the watch that follows
// resumes from the list's resourceVersion, its pods decoded pruned
// (podwatch.go), carrying later changes without a second list.
var _ = Describe("the pod list decoded as it arrives", func() {
	It("fills the pod cache from one list and resumes the watch from it", func(ctx SpecContext) {
		const ns, n = "podlist", 120
		Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(Succeed())
		DeferCleanup(func(ctx context.Context) {
			Expect(k8sClient.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(ns), client.GracePeriodSeconds(0))).To(Succeed())
		})
		for i := range n {
			p := &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("p-%d", i), Labels: map[string]string{"app": fmt.Sprintf("a%d", i%4)}},
				Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", i%5), Containers: []corev1.Container{{Name: "c", Image: "img",
					Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(8080 + i%2)}}}}},
			}
			Expect(k8sClient.Create(ctx, p)).To(Succeed())
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.70.0.%d", i+1),
				PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.70.0.%d", i+1)}, {IP: fmt.Sprintf("fd00:70::%x", i+1)}}}
			Expect(k8sClient.Status().Update(ctx, p)).To(Succeed())
		}

		pc := rest.CopyConfig(cfg)
		pc.ContentType = runtime.ContentTypeProtobuf
		core, err := corev1client.NewForConfig(pc)
		Expect(err).NotTo(HaveOccurred())
		in := &podInterner{}
		link := newAPILink(logr.Discard())
		rc, err := newPodClient(pc)
		Expect(err).NotTo(HaveOccurred())
		pl := &podLister{rc: rc, record: func(p *corev1.Pod) runtime.Object { return in.record(p) }}
		var prunedWatches atomic.Int32
		link.podList = pl.list
		link.podWatch = func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			prunedWatches.Add(1)
			return pl.watch(ctx, opts)
		}
		const kind = "pod-podlist-spec"
		// Every pod, as the agent lists them: the pod list takes no selector.
		lw := toolscache.NewListWatchFromClient(core.RESTClient(), "pods", "", fields.Everything())
		inf := link.newInformerAs(kind, lw, &corev1.Pod{}, 0, toolscache.Indexers{})
		Expect(inf.SetTransform(in.trimPod)).To(Succeed())
		ictx, cancel := context.WithCancel(ctx)
		DeferCleanup(cancel)
		go inf.RunWithContext(ictx)
		Eventually(inf.HasSynced, 30*time.Second).Should(BeTrue())

		// What the apiserver holds, made into records the ordinary way.
		want := func(ctx context.Context) map[string]*cachedPod {
			var pods corev1.PodList
			Expect(k8sClient.List(ctx, &pods)).To(Succeed())
			m := map[string]*cachedPod{}
			for i := range pods.Items {
				m[pods.Items[i].Namespace+"/"+pods.Items[i].Name] = (&podInterner{}).record(&pods.Items[i])
			}
			return m
		}
		same := func(ctx context.Context) error {
			w := want(ctx)
			got := inf.GetStore().List()
			if len(got) != len(w) {
				return fmt.Errorf("the store holds %d pods, the apiserver %d", len(got), len(w))
			}
			for _, obj := range got {
				rec, ok := obj.(*cachedPod)
				if !ok {
					return fmt.Errorf("the store holds a %T", obj)
				}
				if wr := w[rec.GetNamespace()+"/"+rec.GetName()]; wr == nil || !reflect.DeepEqual(rec.Pod, wr.Pod) {
					return fmt.Errorf("pod %s: %+v, the apiserver's %+v", rec.GetName(), rec.Pod, wr)
				}
			}
			return nil
		}
		Expect(same(ctx)).To(Succeed())
		requests := func(r string) float64 { return testutil.ToFloat64(apiRequests.WithLabelValues(kind, r)) }
		Expect(requests("list")).To(Equal(1.0))
		Expect(requests("watch-list")).To(Equal(0.0))

		// Later changes come through the watch begun at the list's version.
		var p corev1.Pod
		Expect(k8sClient.Get(ctx, client.ObjectKey{Namespace: ns, Name: "p-7"}, &p)).To(Succeed())
		p.Labels["app"] = "moved"
		Expect(k8sClient.Update(ctx, &p)).To(Succeed())
		Expect(k8sClient.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p-8"}}, client.GracePeriodSeconds(0))).To(Succeed())
		Eventually(same).WithContext(ctx).WithTimeout(30 * time.Second).Should(Succeed())
		Expect(requests("list")).To(Equal(1.0), "a change after the list cost a second list")
		Expect(requests("watch")).To(BeNumerically(">=", 1))
		Expect(prunedWatches.Load()).To(BeNumerically(">=", 1), "the watch was not the pruning one (podwatch.go)")

		// ListPodRecords (nftpolicy explain's list): every pod, as the
		// compiler's record, whatever content type the caller's config asks for.
		jc := rest.CopyConfig(cfg)
		jc.ContentType, jc.AcceptContentTypes = runtime.ContentTypeJSON, runtime.ContentTypeJSON
		listed, err := ListPodRecords(ctx, jc, time.Minute)
		Expect(err).NotTo(HaveOccurred())
		w := want(ctx)
		Expect(listed).To(HaveLen(len(w)))
		for _, p := range listed {
			wr := w[p.Namespace()+"/"+p.Name()]
			Expect(wr).NotTo(BeNil(), "pod %s/%s", p.Namespace(), p.Name())
			Expect(*p).To(Equal(wr.Pod), "pod %s/%s", p.Namespace(), p.Name())
		}
	})

	It("lists Nodes pruned to what trimNode keeps (ListNodes, the all-node watch's list)", func(ctx SpecContext) {
		var made []*corev1.Node
		for i := range 3 {
			n := benchcluster.NodeObject(900 + i)
			status := n.Status
			Expect(k8sClient.Create(ctx, n)).To(Succeed())
			n.Status = status
			Expect(k8sClient.Status().Update(ctx, n)).To(Succeed())
			made = append(made, n)
			DeferCleanup(func(ctx context.Context) { Expect(k8sClient.Delete(ctx, n)).To(Succeed()) })
		}
		listed, err := ListNodes(ctx, cfg, time.Minute)
		Expect(err).NotTo(HaveOccurred())
		byName := map[string]*corev1.Node{}
		for _, n := range listed {
			byName[n.Name] = n
		}
		for _, n := range made {
			got := byName[n.Name]
			Expect(got).NotTo(BeNil(), "node %s", n.Name)
			var whole corev1.Node
			Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(n), &whole)).To(Succeed())
			Expect(whole.Status.Images).NotTo(BeEmpty())
			want, _ := trimNode(&whole)
			got.SetGroupVersionKind(schema.GroupVersionKind{}) // trimNode's has none
			Expect(got).To(Equal(want), "node %s: not pruned to what trimNode keeps", n.Name)
		}
	})
})
