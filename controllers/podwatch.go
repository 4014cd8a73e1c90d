package controllers

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
)

// The pod watch, decoded pruned.
//
// After its first list (podlist.go) the agent hears of every pod change in the
// cluster, and at 5,000 nodes almost none of them is about its own table. What
// such an event costs it is receiving it, and client-go decodes every event's
// pod whole: managed fields, annotations, volumes, conditions and container
// statuses, all allocated, to be thrown away by the informer's transform at
// once (17 µs and 9 KB for a Deployment's pod of 1.7 KB, BenchmarkPodWatchDecode;
// docs/scale.md, "Receiving an event"). The pod watch's client decodes a pod as
// the list does: the protobuf bytes pruned to what the record reads
// (podFields) and the resourceVersion the reflector resumes from, then
// unmarshalled. Anything else the watch carries (a Status in an ERROR event, an
// object in another encoding) is decoded as client-go would.

// podWatchFields are podFields and the pod's metadata.resourceVersion (field 6):
// the reflector resumes its watch from the last event's.
var podWatchFields = func() keep {
	k := maps.Clone(podFields)
	meta := maps.Clone(k[1])
	meta[6] = nil
	k[1] = meta
	return k
}()

// newPodClient is a core/v1 REST client whose watches decode pods pruned
// (prunedDecoder); podLister lists and watches pods with it.
func newPodClient(cfg *rest.Config) (rest.Interface, error) {
	return newPrunedClient(cfg, newPodDecoder)
}

// newPodDecoder decodes a protobuf-encoded v1 Pod keeping podWatchFields.
func newPodDecoder(s runtime.Serializer) runtime.Serializer {
	return prunedDecoder[corev1.Pod, *corev1.Pod]{Serializer: s, fields: podWatchFields, gvk: podGVK}
}

// newPrunedClient is a core/v1 REST client whose protobuf decoding is wrap's.
func newPrunedClient(cfg *rest.Config, wrap func(runtime.Serializer) runtime.Serializer) (rest.Interface, error) {
	c := rest.CopyConfig(cfg)
	gv := corev1.SchemeGroupVersion
	c.GroupVersion = &gv
	c.APIPath = "/api"
	c.NegotiatedSerializer = prunedCodecs{rest.CodecFactoryForGeneratedClient(scheme.Scheme, scheme.Codecs).WithoutConversion(), wrap}
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	return rest.RESTClientFor(c)
}

// watch is a ListerWatcher's watch of pods for opts, as the reflector asks for
// it (client-go's typed PodInterface.Watch, through the pruning client).
func (pl *podLister) watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return watchPruned(ctx, pl.rc, "pods", opts)
}

// watchPruned watches resource through rc (a pruning client) for opts.
func watchPruned(ctx context.Context, rc rest.Interface, resource string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	var timeout time.Duration
	if opts.TimeoutSeconds != nil {
		timeout = time.Duration(*opts.TimeoutSeconds) * time.Second
	}
	return rc.Get().
		Resource(resource).
		VersionedParams(&opts, scheme.ParameterCodec).
		Timeout(timeout).
		Watch(ctx)
}

// prunedCodecs is a client's serializers with the protobuf one's decoding
// wrapped (prunedDecoder).
type prunedCodecs struct {
	runtime.NegotiatedSerializer
	wrap func(runtime.Serializer) runtime.Serializer
}

func (c prunedCodecs) SupportedMediaTypes() []runtime.SerializerInfo {
	infos := slices.Clone(c.NegotiatedSerializer.SupportedMediaTypes())
	for i := range infos {
		if infos[i].MediaType == runtime.ContentTypeProtobuf {
			infos[i].Serializer = c.wrap(infos[i].Serializer)
		}
	}
	return infos
}

// prunedDecoder decodes a protobuf-encoded object of gvk (a v1 Pod, a v1 Node)
// keeping fields, and everything else as its Serializer does. Encoding is the
// Serializer's.
type prunedDecoder[T any, PT interface {
	*T
	runtime.Object
	Unmarshal([]byte) error
}] struct {
	runtime.Serializer
	fields keep
	gvk    schema.GroupVersionKind
}

var podGVK = corev1.SchemeGroupVersion.WithKind("Pod")

// prunedBufs holds the buffers objects are pruned into: Unmarshal copies what
// it keeps out of them.
var prunedBufs = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

func (d prunedDecoder[T, PT]) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	raw, ok := protobufObject(data, d.gvk)
	if !ok {
		return d.Serializer.Decode(data, defaults, into)
	}
	obj, isT := into.(PT)
	if into != nil && !isT {
		return d.Serializer.Decode(data, defaults, into)
	}
	buf := prunedBufs.Get().(*[]byte)
	defer prunedBufs.Put(buf)
	pruned, err := prune((*buf)[:0], raw, d.fields)
	*buf = pruned[:0]
	if err != nil {
		return nil, nil, err
	}
	if obj == nil {
		obj = PT(new(T))
	} else {
		var zero T
		*obj = zero
	}
	if err := obj.Unmarshal(pruned); err != nil {
		return nil, nil, err
	}
	obj.GetObjectKind().SetGroupVersionKind(d.gvk)
	gvk := d.gvk
	return obj, &gvk, nil
}

// protobufObject returns the bytes of the object in data, an apiserver
// protobuf object (protobufPrefix, then a runtime.Unknown: 1 typeMeta
// {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding, 4 contentType), if it
// holds an unencoded object of gvk (core group).
func protobufObject(data []byte, gvk schema.GroupVersionKind) ([]byte, bool) {
	b, ok := bytes.CutPrefix(data, protobufPrefix)
	if !ok {
		return nil, false
	}
	var raw []byte
	var apiVersion, kind []byte
	sawRaw := false
	err := eachField(b, func(field uint64, v []byte) error {
		switch field {
		case 1:
			return eachField(v, func(field uint64, v []byte) error {
				switch field {
				case 1:
					apiVersion = v
				case 2:
					kind = v
				}
				return nil
			})
		case 2:
			raw, sawRaw = v, true
		case 3:
			if len(v) > 0 {
				return errors.New("an encoded object")
			}
		}
		return nil
	})
	if err != nil || !sawRaw || string(apiVersion) != gvk.GroupVersion().String() || string(kind) != gvk.Kind {
		return nil, false
	}
	return raw, true
}

// eachField calls fn with the number and bytes of every length-delimited
// field of the message b; it fails on any other wire type (the fields it
// reads are all length-delimited) or a corrupt message.
func eachField(b []byte, fn func(field uint64, v []byte) error) error {
	for len(b) > 0 {
		t, n := binary.Uvarint(b)
		if n <= 0 || t&7 != wireBytes {
			return errors.New("not a message of length-delimited fields")
		}
		l, m := binary.Uvarint(b[n:])
		if m <= 0 || l > uint64(len(b)-n-m) {
			return errors.New("a corrupt length")
		}
		if err := fn(t>>3, b[n+m:n+m+int(l)]); err != nil {
			return err
		}
		b = b[n+m+int(l):]
	}
	return nil
}
