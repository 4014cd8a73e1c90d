package controllers

import (
	"bytes"
	"math/rand"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/apitesting/fuzzer"
	"k8s.io/apimachinery/pkg/api/resource"
	metafuzzer "k8s.io/apimachinery/pkg/apis/meta/fuzzer"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/randfill"

	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// TestPrunedNodes: for Nodes with every field filled at random, what trimNode
// keeps of the pruned Node is what it keeps of the whole one, through the list
// decoder and the watch's decoder alike. A field trimNode comes to read that
// nodeWatchFields does not keep fails it.
func TestPrunedNodes(t *testing.T) {
	f := fuzzer.FuzzerFor(metafuzzer.Funcs, rand.NewSource(11), scheme.Codecs).
		NilChance(0.2).NumElements(1, 3).
		Funcs(func(q *resource.Quantity, c randfill.Continue) {
			*q = *resource.NewQuantity(c.Int63n(1000), resource.DecimalSI)
		})
	d := prunedDecoder[corev1.Node, *corev1.Node]{Serializer: protobuf.NewSerializer(scheme.Scheme, scheme.Scheme),
		fields: nodeWatchFields, gvk: nodeGVK}
	list := &corev1.NodeList{}
	for range 200 {
		var n corev1.Node
		f.Fill(&n)
		list.Items = append(list.Items, n)
	}
	list.Items = append(list.Items, *benchcluster.NodeObject(7))
	// The nodes as the apiserver would send them: an empty list, say, comes
	// back as none.
	for i := range list.Items {
		b, err := list.Items[i].Marshal()
		if err != nil {
			t.Fatal(err)
		}
		list.Items[i] = corev1.Node{}
		if err := list.Items[i].Unmarshal(b); err != nil {
			t.Fatal(err)
		}
	}
	decoded := 0
	got, err := decodeList(bytes.NewReader(encodeProtobuf(t, list)), "NodeList", nodeWatchFields, func(b []byte) error {
		var n corev1.Node
		if err := n.Unmarshal(b); err != nil {
			return err
		}
		want, _ := trimNode(&list.Items[decoded])
		if pruned, _ := trimNode(&n); !reflect.DeepEqual(pruned, want) {
			t.Errorf("node %d listed: trimmed %+v, from the whole node %+v", decoded, pruned, want)
		}
		decoded++
		return nil
	})
	if err != nil || decoded != len(list.Items) || got.ResourceVersion != list.ResourceVersion {
		t.Fatalf("list: %d of %d nodes, %v", decoded, len(list.Items), err)
	}
	for i := range list.Items {
		whole := &list.Items[i]
		obj, gvk, err := d.Decode(encodeProtobuf(t, whole), nil, nil)
		if err != nil || *gvk != nodeGVK {
			t.Fatalf("node %d watched: %v, %v", i, gvk, err)
		}
		n := obj.(*corev1.Node)
		if len(n.Status.Images) != 0 || len(n.ManagedFields) != 0 {
			t.Errorf("node %d watched: not pruned", i)
		}
		n.SetGroupVersionKind(nodeGVK.GroupVersion().WithKind(""))
		want, _ := trimNode(whole)
		if pruned, _ := trimNode(n); !reflect.DeepEqual(pruned, want) {
			t.Errorf("node %d watched: trimmed %+v, from the whole node %+v", i, pruned, want)
		}
	}
}
