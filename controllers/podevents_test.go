package controllers

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	fcache "k8s.io/client-go/tools/cache/testing"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// TestPodEventsSkipTheReplay: the pod informer replays its whole cache to the
// controller's handler at start; the controller's handler (informerEvents with
// skipInitial) drops that replay (no sync asked,
// nothing noted) and hands on what happens after it: a new pod, a relevant
// change (not an irrelevant one), a delete, and a delete the watch missed.
func TestPodEventsSkipTheReplay(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := &podInterner{}
	src := fcache.NewFakeControllerSource()
	pod := func(name, ip string) *corev1.Pod {
		p := testPod("ev", name, ip, false)
		p.Labels = map[string]string{"app": "a"}
		return p
	}
	const cached = 500
	for i := range cached {
		src.Add(pod(fmt.Sprintf("p-%d", i), fmt.Sprintf("10.90.%d.%d", i/200, i%200+1)))
	}
	inf := toolscache.NewSharedIndexInformer(src, &corev1.Pod{}, 0, toolscache.Indexers{})
	if err := inf.SetTransform(in.trimPod); err != nil {
		t.Fatal(err)
	}
	go inf.RunWithContext(ctx)
	if !toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("informer not synced")
	}

	r := &NodeReconciler{NodeName: "node-0", Log: logr.Discard()}
	r.mapAll = r.enqueue()
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
	defer q.ShutDown()
	reg, err := inf.AddEventHandler(informerEvents{pred: podChanged(), to: r.queue(ctx, q), skipInitial: true})
	if err != nil {
		t.Fatal(err)
	}
	if !toolscache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		t.Fatal("handler not synced")
	}
	if n := q.Len(); n != 0 {
		t.Fatalf("the replay of %d cached pods asked for %d syncs, want 0", cached, n)
	}
	if r.pending.Load() != 0 {
		t.Fatal("the replay left an event time pending")
	}

	// The first sync has begun: from here on, changes are noted.
	r.noting.Store(true)
	noted := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			r.dirtyMu.Lock()
			got := len(r.dirty)
			r.dirtyMu.Unlock()
			if got >= len(want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		d := r.takeDirty()
		if len(d) != len(want) {
			t.Fatalf("%d pods noted, want %v: %v", len(d), want, d)
		}
		for _, name := range want {
			if _, ok := d[objectRef{kind: kindPod, key: types.NamespacedName{Namespace: "ev", Name: name}}]; !ok {
				t.Fatalf("pod %s not noted: %v", name, d)
			}
		}
		if q.Len() != 1 {
			t.Fatalf("%d requests queued, want the node's one", q.Len())
		}
		item, _ := q.Get()
		q.Done(item)
		q.Forget(item)
	}
	src.Add(pod("new", "10.90.9.1"))
	noted("new")
	moved := pod("p-3", "10.90.0.4")
	moved.Labels = map[string]string{"app": "b"}
	src.Modify(moved)
	noted("p-3")
	annotated := pod("p-4", "10.90.0.5")
	annotated.Annotations = map[string]string{"note": "irrelevant"}
	src.Modify(annotated)
	src.Delete(pod("p-5", "10.90.0.6"))
	noted("p-5") // and not p-4
	informerEvents{pred: podChanged(), to: r.queue(ctx, q), skipInitial: true}.OnDelete(
		toolscache.DeletedFinalStateUnknown{Key: "ev/p-6", Obj: in.record(pod("p-6", "10.90.0.7"))})
	noted("p-6")
}
