package fanout

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// churnNS holds the pods the churn creates and deletes.
const churnNS = "churn"

// churn writes pod changes at a steady rate: slots pods in flight, each slot
// going round create -> status (Running, an address: what a kubelet writes
// once the sandbox is up) -> label change -> delete (no grace: there is no
// kubelet to finish a graceful one). Every write is one watch event for a pod
// watcher. With slices, each status write and delete also rewrites the
// EndpointSlice of the pod's service, as the EndpointSlice controller would
// (one slice per service, as many endpoints as it has ready pods).
type churn struct {
	c      client.Client
	rate   float64 // pod writes per second, all slots together
	slots  int
	slices *sliceSim
	gen    atomic.Int64 // pod name generation, so names never repeat
	next   atomic.Int64 // one's slot
	state  []int        // per slot: the next step
	names  []string     // per slot: the pod in flight
	ips    []string
	// writes counts pod writes done; sliceWrites EndpointSlice writes.
	writes, sliceWrites atomic.Int64
}

func newChurn(c client.Client, rate float64, slots int) *churn {
	return &churn{c: c, rate: rate, slots: slots, state: make([]int, slots), names: make([]string, slots), ips: make([]string, slots)}
}

// run makes n pod writes and returns when all are done: n/slots per slot
// (the first n%slots slots one more), so that a run of whole cycles per slot
// is always the same mix of writes. Pods left half-way stay for the next run,
// which goes on with them.
func (ch *churn) run(ctx context.Context, n int) error {
	per := time.Duration(float64(time.Second) * float64(ch.slots) / ch.rate)
	var wg sync.WaitGroup
	errs := make(chan error, ch.slots)
	start := time.Now()
	for s := range ch.slots {
		steps := n / ch.slots
		if s < n%ch.slots {
			steps++
		}
		wg.Go(func() {
			// Slots start spread over one period, so writes come evenly.
			next := start.Add(per * time.Duration(s) / time.Duration(ch.slots))
			for range steps {
				if d := time.Until(next); d > 0 {
					select {
					case <-ctx.Done():
						errs <- ctx.Err()
						return
					case <-time.After(d):
					}
				}
				next = next.Add(per)
				if err := ch.step(ctx, s); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// one makes a single pod write at once, on the next slot in turn (no run in
// progress).
func (ch *churn) one(ctx context.Context) error {
	s := int(ch.next.Add(1)) % ch.slots
	return ch.step(ctx, s)
}

func (ch *churn) step(ctx context.Context, s int) error {
	switch ch.state[s] {
	case 0:
		g := ch.gen.Add(1)
		ch.names[s] = fmt.Sprintf("churn-%d", g)
		ch.ips[s] = fmt.Sprintf("10.200.%d.%d", (g>>8)&255, g&255)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: churnNS, Name: ch.names[s],
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", s%benchcluster.Apps), "tier": "tier-0"}},
			Spec: benchcluster.PodSpecOn(fmt.Sprintf("node-%d", g%benchcluster.Nodes)),
		}
		if err := ch.c.Create(ctx, pod); err != nil {
			return fmt.Errorf("churn create: %w", err)
		}
	case 1:
		pod := &corev1.Pod{}
		if err := ch.c.Get(ctx, client.ObjectKey{Namespace: churnNS, Name: ch.names[s]}, pod); err != nil {
			return fmt.Errorf("churn get: %w", err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ch.ips[s], PodIPs: []corev1.PodIP{{IP: ch.ips[s]}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}}
		if err := ch.c.Status().Update(ctx, pod); err != nil {
			return fmt.Errorf("churn status: %w", err)
		}
		if ch.slices != nil {
			if err := ch.slices.set(ctx, s, ch.ips[s]); err != nil {
				return err
			}
			ch.sliceWrites.Add(1)
		}
	case 2:
		patch := []byte(`{"metadata":{"labels":{"tier":"tier-1"}}}`)
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: churnNS, Name: ch.names[s]}}
		if err := ch.c.Patch(ctx, pod, client.RawPatch(types.MergePatchType, patch)); err != nil {
			return fmt.Errorf("churn label: %w", err)
		}
	case 3:
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: churnNS, Name: ch.names[s]}}
		if err := ch.c.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("churn delete: %w", err)
		}
		if ch.slices != nil {
			if err := ch.slices.set(ctx, s, ""); err != nil {
				return err
			}
			ch.sliceWrites.Add(1)
		}
	}
	ch.state[s] = (ch.state[s] + 1) % 4
	ch.writes.Add(1)
	return nil
}

// sliceSim stands in for the EndpointSlice controller for the churn's pods: one
// service per churn slot group, whose slice holds base ready endpoints that
// never change plus the slot pods that are up.
type sliceSim struct {
	c        client.Client
	services int
	base     int
	mu       sync.Mutex
	live     []map[int]string // per service: slot -> address
}

func (sl *sliceSim) name(svc int) string { return fmt.Sprintf("svc-%d-abcde", svc) }

// create makes the services' slices, each with its base endpoints.
func (sl *sliceSim) create(ctx context.Context) error {
	sl.live = make([]map[int]string, sl.services)
	for i := range sl.services {
		sl.live[i] = map[int]string{}
		if err := sl.c.Create(ctx, sl.object(i)); err != nil {
			return fmt.Errorf("endpointslice: %w", err)
		}
	}
	return nil
}

func (sl *sliceSim) object(svc int) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: churnNS, Name: sl.name(svc), Labels: map[string]string{
			discoveryv1.LabelServiceName: fmt.Sprintf("svc-%d", svc),
			discoveryv1.LabelManagedBy:   "endpointslice-controller.k8s.io",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To(int32(80)), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	add := func(ip, pod string, node int) {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(fmt.Sprintf("node-%d", node)),
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: churnNS, Name: pod, UID: types.UID(fmt.Sprintf("00000000-0000-0000-0000-%012d", node))},
		})
	}
	for j := range sl.base {
		add(fmt.Sprintf("10.201.%d.%d", svc, j+1), fmt.Sprintf("base-%d-%d", svc, j), j%benchcluster.Nodes)
	}
	for slot, ip := range sl.live[svc] {
		add(ip, fmt.Sprintf("slot-%d", slot), slot%benchcluster.Nodes)
	}
	return es
}

// set records slot's address ("" when its pod is gone) and rewrites its
// service's slice.
func (sl *sliceSim) set(ctx context.Context, slot int, ip string) error {
	svc := slot % sl.services
	// One writer at a time: two slots of a service would conflict.
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if ip == "" {
		delete(sl.live[svc], slot)
	} else {
		sl.live[svc][slot] = ip
	}
	want := sl.object(svc)
	cur := &discoveryv1.EndpointSlice{}
	if err := sl.c.Get(ctx, client.ObjectKeyFromObject(want), cur); err != nil {
		return fmt.Errorf("endpointslice get: %w", err)
	}
	cur.Endpoints = want.Endpoints
	if err := sl.c.Update(ctx, cur); err != nil {
		return fmt.Errorf("endpointslice update: %w", err)
	}
	return nil
}
