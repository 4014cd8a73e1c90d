package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"weak"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// The pod cache. Every agent must know every pod of the cluster, so what it keeps
// per pod is what its memory is made of (docs/scale.md, "One agent at 100,000
// pods"). The informer's transform turns each pod into a cachedPod: a compile.Pod
// (namespace, name, node, labels, addresses as netip.Addr, named ports, two flags;
// 112 bytes, against 1,240 for the corev1.Pod struct alone), with its label map
// and port list interned so that the pods of one workload share one of each. The
// Compiler keeps a pointer to the record's Pod rather than a copy, and a full
// sync walks the informer's store rather than listing copies of it.

// cachedPod is what the pod cache holds of a pod. It is a client.Object only so
// that the informer and controller-runtime's event handlers carry it: apart from
// namespace, name and labels its metadata reads as empty and writes to it are
// dropped. Records are never modified once made.
type cachedPod struct {
	compile.Pod
	// The interned label map and port list (Pod.Labels and Pod.Ports are theirs):
	// held here so that the interner's entries live as long as a pod uses them.
	labels *labelSet
	ports  *portList
}

type labelSet struct{ m map[string]string }
type portList struct{ p []compile.NamedPort }

var _ client.Object = &cachedPod{}

func (p *cachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject returns a copy sharing the record's (immutable) map and slices.
func (p *cachedPod) DeepCopyObject() runtime.Object { c := *p; return &c }

func (p *cachedPod) GetNamespace() string                          { return p.Namespace() }
func (p *cachedPod) SetNamespace(string)                           {}
func (p *cachedPod) GetName() string                               { return p.Name() }
func (p *cachedPod) SetName(string)                                {}
func (p *cachedPod) GetGenerateName() string                       { return "" }
func (p *cachedPod) SetGenerateName(string)                        {}
func (p *cachedPod) GetUID() types.UID                             { return "" }
func (p *cachedPod) SetUID(types.UID)                              {}
func (p *cachedPod) GetResourceVersion() string                    { return "" }
func (p *cachedPod) SetResourceVersion(string)                     {}
func (p *cachedPod) GetGeneration() int64                          { return 0 }
func (p *cachedPod) SetGeneration(int64)                           {}
func (p *cachedPod) GetSelfLink() string                           { return "" }
func (p *cachedPod) SetSelfLink(string)                            {}
func (p *cachedPod) GetCreationTimestamp() metav1.Time             { return metav1.Time{} }
func (p *cachedPod) SetCreationTimestamp(metav1.Time)              {}
func (p *cachedPod) GetDeletionTimestamp() *metav1.Time            { return nil }
func (p *cachedPod) SetDeletionTimestamp(*metav1.Time)             {}
func (p *cachedPod) GetDeletionGracePeriodSeconds() *int64         { return nil }
func (p *cachedPod) SetDeletionGracePeriodSeconds(*int64)          {}
func (p *cachedPod) GetLabels() map[string]string                  { return p.Labels() }
func (p *cachedPod) SetLabels(map[string]string)                   {}
func (p *cachedPod) GetAnnotations() map[string]string             { return nil }
func (p *cachedPod) SetAnnotations(map[string]string)              {}
func (p *cachedPod) GetFinalizers() []string                       { return nil }
func (p *cachedPod) SetFinalizers([]string)                        {}
func (p *cachedPod) GetOwnerReferences() []metav1.OwnerReference   { return nil }
func (p *cachedPod) SetOwnerReferences([]metav1.OwnerReference)    {}
func (p *cachedPod) GetManagedFields() []metav1.ManagedFieldsEntry { return nil }
func (p *cachedPod) SetManagedFields([]metav1.ManagedFieldsEntry)  {}

// podInterner shares equal label maps and port lists between cached pods. Its
// tables hold weak pointers: an entry goes when the last pod using it does (dead
// entries are swept as a table grows), so label values that churn (a
// pod-template-hash per rollout) cost nothing once their pods are gone.
type podInterner struct {
	mu     sync.Mutex
	buf    []byte
	labels internTable[labelSet]
	ports  internTable[portList]
}

// internTable maps a canonical encoding to a weak pointer to the shared value.
type internTable[T any] struct {
	m       map[string]weak.Pointer[T]
	sweepAt int
}

// get returns the live value for key, or the one mk makes (then remembered).
func (t *internTable[T]) get(key []byte, mk func() *T) *T {
	if wp, ok := t.m[string(key)]; ok {
		if v := wp.Value(); v != nil {
			return v
		}
	}
	if t.m == nil {
		t.m = map[string]weak.Pointer[T]{}
	}
	if len(t.m) >= t.sweepAt {
		for k, wp := range t.m {
			if wp.Value() == nil {
				delete(t.m, k)
			}
		}
		t.sweepAt = max(1024, 2*len(t.m))
	}
	v := mk()
	t.m[string(key)] = weak.Make(v)
	return v
}

// record turns a pod into its cache record.
func (in *podInterner) record(p *corev1.Pod) *cachedPod {
	rec := &cachedPod{Pod: compile.PodOf(p)}
	labels, ports := rec.Labels(), rec.Ports()
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(labels) > 0 {
		in.buf = in.buf[:0]
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			in.buf = append(append(append(append(in.buf, k...), 0), labels[k]...), 0)
		}
		rec.labels = in.labels.get(in.buf, func() *labelSet { return &labelSet{maps.Clone(labels)} })
		labels = rec.labels.m
	}
	if len(ports) > 0 {
		in.buf = in.buf[:0]
		for _, np := range ports {
			in.buf = append(append(in.buf, np.Name...), 0, np.Proto)
			in.buf = strconv.AppendUint(append(in.buf, 0), uint64(np.Port), 10)
			in.buf = append(in.buf, 0)
		}
		rec.ports = in.ports.get(in.buf, func() *portList { return &portList{ports} })
		ports = rec.ports.p
	}
	rec.Share(labels, ports)
	return rec
}

// trimPod is the pod informer's transform: see cachedPod. Anything else (a
// record already made) passes unchanged.
func (in *podInterner) trimPod(obj any) (any, error) {
	if p, ok := obj.(*corev1.Pod); ok {
		return in.record(p), nil
	}
	return obj, nil
}

// podSource is how the node reconciler reads pods: one by key, or all of them.
type podSource interface {
	// get returns the pod namespace/name, or false when there is none.
	get(ctx context.Context, key types.NamespacedName) (*compile.Pod, bool, error)
	// each calls fn for every pod, in no particular order. fn must not keep p
	// (it may keep p's strings, map and slices).
	each(ctx context.Context, fn func(p *compile.Pod)) error
}

// storePods reads the pod informer's store of cachedPods, without copies.
type storePods struct{ store toolscache.Store }

func (s storePods) get(_ context.Context, key types.NamespacedName) (*compile.Pod, bool, error) {
	obj, ok, err := s.store.GetByKey(key.Namespace + "/" + key.Name)
	if err != nil || !ok {
		return nil, false, err
	}
	rec, isRec := obj.(*cachedPod)
	if !isRec {
		return nil, false, errUnexpectedPod(obj)
	}
	return &rec.Pod, true, nil
}

func (s storePods) each(_ context.Context, fn func(*compile.Pod)) error {
	for _, obj := range s.store.List() {
		rec, ok := obj.(*cachedPod)
		if !ok {
			return errUnexpectedPod(obj)
		}
		fn(&rec.Pod)
	}
	return nil
}

func errUnexpectedPod(obj any) error {
	return fmt.Errorf("the pod cache holds a %T, not a cachedPod: is the pod transform installed?", obj)
}

// readerPods reads corev1.Pods through a client.Reader (tests' fake caches).
type readerPods struct{ rd client.Reader }

func (r readerPods) get(ctx context.Context, key types.NamespacedName) (*compile.Pod, bool, error) {
	var p corev1.Pod
	err := r.rd.Get(ctx, key, &p, client.UnsafeDisableDeepCopy)
	if err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil, false, nil
		}
		return nil, false, err
	}
	pod := compile.PodOf(&p)
	return &pod, true, nil
}

func (r readerPods) each(ctx context.Context, fn func(*compile.Pod)) error {
	var pods corev1.PodList
	if err := r.rd.List(ctx, &pods, client.UnsafeDisableDeepCopy); err != nil {
		return err
	}
	for i := range pods.Items {
		pod := compile.PodOf(&pods.Items[i])
		fn(&pod)
	}
	return nil
}

// podIPIndex on the pod informer: the pods with an address (not hostNetwork,
// not finished: a terminal pod's address is released, maybe another pod's).
func indexRecordIPs(obj any) ([]string, error) {
	rec, ok := obj.(*cachedPod)
	if !ok || rec.HostNetwork() || rec.Finished() {
		return nil, nil // a node address names no pod
	}
	out := make([]string, len(rec.Addrs()))
	for i, a := range rec.Addrs() {
		out[i] = a.String()
	}
	return out, nil
}

// podIPReader answers the deny logger's one question, a List of the pods with an
// address (client.MatchingFields{podIPIndex: addr}), from the pod informer's
// index of cachedPods: the items carry namespace, name and labels.
type podIPReader struct{ idx toolscache.Indexer }

func (r podIPReader) Get(context.Context, client.ObjectKey, client.Object, ...client.GetOption) error {
	return errors.New("podIPReader: only List by podIPIndex is served")
}

func (r podIPReader) List(_ context.Context, list client.ObjectList, opts ...client.ListOption) error {
	pl, ok := list.(*corev1.PodList)
	var lo client.ListOptions
	lo.ApplyOptions(opts)
	if !ok || lo.FieldSelector == nil {
		return errors.New("podIPReader: only List of pods by podIPIndex is served")
	}
	addr, ok := lo.FieldSelector.RequiresExactMatch(podIPIndex)
	if !ok {
		return errors.New("podIPReader: only List of pods by podIPIndex is served")
	}
	objs, err := r.idx.ByIndex(podIPIndex, addr)
	if err != nil {
		return err
	}
	pl.Items = pl.Items[:0]
	for _, obj := range objs {
		if rec, ok := obj.(*cachedPod); ok {
			pl.Items = append(pl.Items, corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: rec.Namespace(), Name: rec.Name(), Labels: rec.Labels()}})
		}
	}
	return nil
}
