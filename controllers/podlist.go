package controllers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"

	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// The agent's first list of pods, decoded as it arrives.
//
// Every agent must know every pod, so at 100,000 pods its first list is the
// largest thing it ever reads. client-go offers two ways, both measured at
// 100k (docs/scale.md, "Watch-list or list"): a watch that streams every pod as
// an event of its own (watch-list, its default), which costs the apiserver
// ~8 s of CPU per agent start because it copies, converts and frames each pod
// as an event; or one list served whole from the watch cache, a third of that
// CPU, which client-go decodes whole, 130 MB of protobuf into full Pod objects:
// a ~1 GiB peak in the agent. podLister takes the list and decodes it item by
// item as the bytes arrive, turning each pod into the informer's record at once
// (podInterner.record), so the agent never holds more than one full Pod: the
// list's apiserver price with the stream's memory. The watch that follows
// starts from the list's resourceVersion, as the reflector does after any list.
//
// The response is the apiserver's protobuf envelope (k8s.io/apimachinery
// runtime/serializer/protobuf): the 4-byte prefix "k8s\x00", then a
// runtime.Unknown whose field 2 (raw) holds the PodList, whose field 1 is its
// ListMeta and whose field 2, repeated, its items. The apiserver writes lists in
// that order as it encodes them (StreamingCollectionEncodingToProtobuf); the
// decoder accepts fields in any order and skips the ones it does not know.

// protobufPrefix starts every protobuf-encoded apiserver response.
var protobufPrefix = []byte{0x6b, 0x38, 0x73, 0x00}

// ErrNotProtobuf is returned when the apiserver answers a list in another
// encoding than protobuf (a proxy rewrote it, or it was asked for JSON).
var ErrNotProtobuf = errors.New("the apiserver's list is not protobuf (something between us and the apiserver re-encodes it?); the agent's --pod-watch-list lists pods through client-go instead")

// podLister lists pods through rc (a core/v1 REST client) and hands each pod to
// record, keeping what record returns.
type podLister struct {
	rc     rest.Interface
	record func(*corev1.Pod) runtime.Object
}

// list is a ListerWatcher's list of pods for opts, as the reflector asks for
// it. It asks for the whole list, without a page limit: the reflector pages
// by default to bound the memory of decoding a page whole, which this decoder
// does not do, and the watch cache ignores the limit at resourceVersion 0
// anyway. A continue token in opts is passed on (the reflector's pager sends
// one only if an answer had one).
func (pl *podLister) list(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	body, err := streamList(ctx, pl.rc, "pods", opts)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	return decodePodList(body, pl.record)
}

// streamList asks rc for the whole list of resource for opts (no page limit),
// in protobuf, and returns the answer's body as it arrives.
func streamList(ctx context.Context, rc rest.Interface, resource string, opts metav1.ListOptions) (io.ReadCloser, error) {
	opts.Limit = 0
	return rc.Get().
		Resource(resource).
		VersionedParams(&opts, scheme.ParameterCodec).
		SetHeader("Accept", runtime.ContentTypeProtobuf).
		Stream(ctx)
}

// ListPodRecords lists every pod of the cluster once, the way the agent's
// first list does: one protobuf list decoded as it arrives, each pod pruned to
// the fields the compiler reads (podFields) before it is decoded and kept as
// the compiler's record (compile.Pod, label maps and port lists shared), so
// that at 100,000 pods the caller never holds the list's bytes or the pods as
// objects (`nftpolicy explain`, which compiles tables as the agent does). cfg's
// content types are overridden; timeout bounds the whole list (0: none).
// ErrNotProtobuf when something between the caller and the apiserver answers
// in another encoding.
func ListPodRecords(ctx context.Context, cfg *rest.Config, timeout time.Duration) ([]*compile.Pod, error) {
	rc, err := newPodClient(protobufOnly(cfg, timeout))
	if err != nil {
		return nil, err
	}
	var pods []*compile.Pod
	in := &podInterner{}
	pl := &podLister{rc: rc, record: func(p *corev1.Pod) runtime.Object {
		rec := in.record(p)
		pods = append(pods, &rec.Pod) // rec holds the interned entries
		return nil
	}}
	if _, err := pl.list(ctx, metav1.ListOptions{}); err != nil {
		return nil, err
	}
	return pods, nil
}

// protobufOnly is cfg asking for protobuf alone, each request bounded by
// timeout (0: none).
func protobufOnly(cfg *rest.Config, timeout time.Duration) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.ContentType, c.AcceptContentTypes = runtime.ContentTypeProtobuf, runtime.ContentTypeProtobuf
	c.Timeout = timeout
	return c
}

// ListNodes lists every Node of the cluster once, as the all-node watch does
// (nodeLister): one protobuf list decoded as it arrives, each Node pruned to
// what trimNode keeps (name, labels, addresses, pod CIDRs, taints) before it
// is decoded. A kubelet's Node is mostly its images (50 by default),
// conditions and managed fields: ~10 KB in protobuf, of which these are ~200 B.
func ListNodes(ctx context.Context, cfg *rest.Config, timeout time.Duration) ([]*corev1.Node, error) {
	nl, err := newNodeLister(protobufOnly(cfg, timeout))
	if err != nil {
		return nil, err
	}
	l, err := nl.list(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	items := l.(*recordList).Items
	nodes := make([]*corev1.Node, 0, len(items))
	for _, o := range items {
		nodes = append(nodes, o.(*corev1.Node))
	}
	return nodes, nil
}

// recordList is the list podLister returns: the list's metadata, and the
// records of its pods, which the reflector hands to the informer's store (the
// pod transform passes records through unchanged).
type recordList struct {
	metav1.TypeMeta
	metav1.ListMeta
	Items []runtime.Object
}

// DeepCopyObject copies the list, sharing its (immutable) records.
func (l *recordList) DeepCopyObject() runtime.Object {
	c := *l
	c.Items = append([]runtime.Object(nil), l.Items...)
	return &c
}

// decodePodList reads one protobuf PodList from r, calling record for each pod
// as soon as it is decoded. It fails on a truncated or malformed answer rather
// than returning part of a list: the reflector then lists again.
func decodePodList(r io.Reader, record func(*corev1.Pod) runtime.Object) (*recordList, error) {
	return decodePodListKeeping(r, record, podFields)
}

// decodePodListKeeping is decodePodList decoding the fields of each pod that
// k names; nil decodes every field.
func decodePodListKeeping(r io.Reader, record func(*corev1.Pod) runtime.Object, k keep) (*recordList, error) {
	return decodeRecordList(r, "PodList", k, record)
}

// decodeRecordList reads one protobuf v1 list of kind (PodList, NodeList) from
// r (decodeList), each item decoded with the fields k names and kept as what
// record makes of it.
func decodeRecordList[T any, PT interface {
	*T
	Unmarshal([]byte) error
}](r io.Reader, kind string, k keep, record func(PT) runtime.Object) (*recordList, error) {
	list := &recordList{}
	meta, err := decodeList(r, kind, k, func(b []byte) error {
		obj := PT(new(T))
		if err := obj.Unmarshal(b); err != nil {
			return err
		}
		list.Items = append(list.Items, record(obj))
		return nil
	})
	if err != nil {
		return nil, err
	}
	list.ListMeta = meta
	list.Kind, list.APIVersion = kind, "v1"
	return list, nil
}

// decodeList reads one protobuf list of kind (PodList, NodeList) from r and
// calls item with each item's bytes, pruned to the fields k names (nil: whole),
// as soon as they are read; the bytes are reused once item returns. It fails
// on a truncated or malformed answer rather than returning part of a list.
func decodeList(r io.Reader, kind string, k keep, item func([]byte) error) (metav1.ListMeta, error) {
	var meta metav1.ListMeta
	what := strings.ToLower(strings.TrimSuffix(kind, "List")) + " list" // "pod list"
	d := &pbReader{r: bufio.NewReaderSize(r, 256<<10), keep: k}
	var prefix [4]byte
	if _, err := io.ReadFull(d.r, prefix[:]); err != nil {
		return meta, fmt.Errorf("%s: %w", what, noEOF(err))
	}
	if !bytes.Equal(prefix[:], protobufPrefix) {
		return meta, ErrNotProtobuf
	}
	sawList := false
	// The envelope: runtime.Unknown, up to the end of the body.
	for {
		field, wire, err := d.tag()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return meta, fmt.Errorf("%s: %w", what, err)
		}
		switch {
		case field == 1 && wire == wireBytes: // typeMeta
			b, err := d.bytes()
			if err != nil {
				return meta, fmt.Errorf("%s: type: %w", what, err)
			}
			var tm runtime.TypeMeta
			if err := tm.Unmarshal(b); err != nil {
				return meta, fmt.Errorf("%s: type: %w", what, err)
			}
			if tm.Kind != kind {
				return meta, fmt.Errorf("%s: the apiserver answered a %q, not a %s", what, tm.Kind, kind)
			}
		case field == 2 && wire == wireBytes: // raw: the list
			n, err := d.uvarint()
			if err != nil {
				return meta, fmt.Errorf("%s: %w", what, noEOF(err))
			}
			if err := d.list(d.n+int64(n), &meta, item); err != nil {
				return meta, fmt.Errorf("%s: %w", what, err)
			}
			sawList = true
		default:
			if err := d.skip(wire); err != nil {
				return meta, fmt.Errorf("%s: %w", what, err)
			}
		}
	}
	if !sawList {
		return meta, fmt.Errorf("%s: the answer holds no list", what)
	}
	return meta, nil
}

// list reads a list's fields up to offset end: its metadata into meta, each
// item to item.
func (d *pbReader) list(end int64, meta *metav1.ListMeta, item func([]byte) error) error {
	items := 0
	for d.n < end {
		field, wire, err := d.tag()
		if err != nil {
			return noEOF(err)
		}
		switch {
		case field == 1 && wire == wireBytes: // metadata
			b, err := d.bytes()
			if err != nil {
				return fmt.Errorf("metadata: %w", err)
			}
			if err := meta.Unmarshal(b); err != nil {
				return fmt.Errorf("metadata: %w", err)
			}
		case field == 2 && wire == wireBytes: // items
			b, err := d.bytes()
			if err != nil {
				return fmt.Errorf("item %d: %w", items, err)
			}
			// Only what the caller reads is decoded (podFields, nodeWatchFields); Unmarshal
			// copies what it keeps out of the buffers, which the next item reuses.
			if d.keep != nil {
				if d.pruned, err = prune(d.pruned[:0], b, d.keep); err != nil {
					return fmt.Errorf("item %d: %w", items, err)
				}
				b = d.pruned
			}
			if err := item(b); err != nil {
				return fmt.Errorf("item %d: %w", items, err)
			}
			items++
		default:
			if err := d.skip(wire); err != nil {
				return err
			}
		}
	}
	if d.n != end {
		return fmt.Errorf("the list's last field overruns it by %d bytes", d.n-end)
	}
	return nil
}

// keep is a tree of protobuf field numbers: the fields of a message to keep,
// each with the fields to keep of its own message, or nil to keep it whole.
type keep map[uint64]keep

// podFields are the fields of a Pod that podInterner.record (compile.PodOf)
// reads, by their numbers in k8s.io/api/core/v1/generated.proto and
// apimachinery's meta/v1: a pod's managed fields, annotations, volumes,
// environment, conditions and container statuses, most of its bytes, are never
// decoded. TestPrunedPodRecords fills every field of a Pod at random and fails
// if a record made from the pruned pod differs from one made from the whole.
var podFields = keep{
	1: {1: nil, 3: nil, 11: nil}, // metadata: name, namespace, labels
	2: { // spec
		2:  {6: nil},          // containers: ports
		10: nil,               // nodeName
		11: nil,               // hostNetwork
		20: {6: nil, 24: nil}, // initContainers: ports, restartPolicy (sidecars)
	},
	3: {1: nil, 6: nil, 12: nil}, // status: phase, podIP, podIPs
}

// prune appends to dst the fields of the message b that k names, recursively;
// the rest is dropped. Field order is kept.
func prune(dst, b []byte, k keep) ([]byte, error) {
	for len(b) > 0 {
		t, n := binary.Uvarint(b)
		if n <= 0 {
			return dst, errors.New("a corrupt field tag")
		}
		field, wire := t>>3, t&7
		var size int
		switch wire {
		case wireVarint:
			_, m := binary.Uvarint(b[n:])
			if m <= 0 {
				return dst, errors.New("a corrupt varint")
			}
			size = n + m
		case wireFixed64:
			size = n + 8
		case wireFixed32:
			size = n + 4
		case wireBytes:
			l, m := binary.Uvarint(b[n:])
			if m <= 0 || l > uint64(len(b)-n-m) {
				return dst, errors.New("a corrupt length")
			}
			if sub, ok := k[field]; ok && sub != nil {
				// A kept message with fields of its own to prune: its length
				// is known only once pruned, so it is pruned after room for
				// the longest length, and moved up to its actual length.
				dst = binary.AppendUvarint(dst, t)
				at := len(dst)
				dst = append(dst, make([]byte, binary.MaxVarintLen64)...)
				var err error
				if dst, err = prune(dst, b[n+m:n+m+int(l)], sub); err != nil {
					return dst, err
				}
				inner := len(dst) - at - binary.MaxVarintLen64
				w := binary.PutUvarint(dst[at:], uint64(inner))
				copy(dst[at+w:], dst[at+binary.MaxVarintLen64:])
				dst = dst[:at+w+inner]
				b = b[n+m+int(l):]
				continue
			}
			size = n + m + int(l)
		default:
			return dst, fmt.Errorf("unknown protobuf wire type %d", wire)
		}
		if size > len(b) {
			return dst, errors.New("a field overruns its message")
		}
		if _, ok := k[field]; ok {
			dst = append(dst, b[:size]...)
		}
		b = b[size:]
	}
	return dst, nil
}

// Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
const (
	wireVarint  = 0
	wireFixed64 = 1
	wireBytes   = 2
	wireFixed32 = 5
)

// maxPodBytes bounds one item's length: a pod is at most the apiserver's
// 1.5 MiB object limit (etcd's request size) and some framing; anything larger
// is a corrupt length, not a pod to allocate for.
const maxPodBytes = 16 << 20

// pbReader reads protobuf fields from a stream, counting the bytes it consumed.
type pbReader struct {
	r      *bufio.Reader
	n      int64
	buf    []byte
	pruned []byte
	keep   keep
}

func (d *pbReader) ReadByte() (byte, error) {
	b, err := d.r.ReadByte()
	if err == nil {
		d.n++
	}
	return b, err
}

func (d *pbReader) uvarint() (uint64, error) {
	return binary.ReadUvarint(d)
}

// tag reads a field's tag; io.EOF means the stream ended cleanly before it.
func (d *pbReader) tag() (field uint64, wire uint64, err error) {
	start := d.n
	t, err := d.uvarint()
	if err != nil {
		if errors.Is(err, io.EOF) && d.n != start {
			err = io.ErrUnexpectedEOF
		}
		return 0, 0, err
	}
	return t >> 3, t & 7, nil
}

// bytes reads a length-delimited field's value into a buffer that the next
// call reuses.
func (d *pbReader) bytes() ([]byte, error) {
	n, err := d.uvarint()
	if err != nil {
		return nil, noEOF(err)
	}
	if n > maxPodBytes {
		return nil, fmt.Errorf("a field of %d bytes", n)
	}
	if uint64(cap(d.buf)) < n {
		d.buf = make([]byte, n)
	}
	b := d.buf[:n]
	if _, err := io.ReadFull(d.r, b); err != nil {
		return nil, noEOF(err)
	}
	d.n += int64(n)
	return b, nil
}

func (d *pbReader) skip(wire uint64) error {
	var n uint64
	switch wire {
	case wireVarint:
		_, err := d.uvarint()
		return noEOF(err)
	case wireFixed64:
		n = 8
	case wireFixed32:
		n = 4
	case wireBytes:
		var err error
		if n, err = d.uvarint(); err != nil {
			return noEOF(err)
		}
	default:
		return fmt.Errorf("unknown protobuf wire type %d", wire)
	}
	m, err := d.r.Discard(int(n))
	d.n += int64(m)
	return noEOF(err)
}

// noEOF turns a clean end of stream inside a field into an unexpected one.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
