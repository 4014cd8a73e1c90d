package controllers

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// The all-node watch (nodewatch.go), decoded pruned.
//
// A ClusterNetworkPolicy with a nodes peer makes every agent list and watch
// every Node. A kubelet's Node is ~10 KB in protobuf, mostly images,
// conditions and managed fields, and client-go decodes the whole list at once
// before the informer's transform (trimNode) keeps ~200 B of each: on the 100k
// bench cluster with 5,000 Nodes the agent went from 189 to 318 MiB of its
// 384 MiB limit when such a policy appeared (docs/scale.md, "A nodes peer at
// 5,000 nodes"). nodeLister lists them as the pods are listed (decoded as they
// arrive, each pruned to what trimNode keeps before it is decoded) and watches
// them through a client whose protobuf decoding prunes each Node likewise.

// nodeWatchFields are the fields of a Node that trimNode keeps, by their
// numbers in k8s.io/api/core/v1/generated.proto and apimachinery's meta/v1:
// trimMeta's metadata (name, namespace, uid, resourceVersion,
// deletionTimestamp, labels); the spec's podCIDR, taints and podCIDRs; the
// status's addresses. TestPrunedNodes fails when trimNode comes to read
// another.
var nodeWatchFields = keep{
	1: {1: nil, 3: nil, 5: nil, 6: nil, 9: nil, 11: nil},
	2: {1: nil, 5: nil, 7: nil},
	3: {5: nil},
}

var nodeGVK = corev1.SchemeGroupVersion.WithKind("Node")

// nodeLister lists and watches Nodes pruned to nodeWatchFields.
type nodeLister struct{ rc rest.Interface }

// newNodeLister needs cfg to ask for protobuf: its list fails with
// ErrNotProtobuf otherwise.
func newNodeLister(cfg *rest.Config) (*nodeLister, error) {
	rc, err := newPrunedClient(cfg, func(s runtime.Serializer) runtime.Serializer {
		return prunedDecoder[corev1.Node, *corev1.Node]{Serializer: s, fields: nodeWatchFields, gvk: nodeGVK}
	})
	if err != nil {
		return nil, err
	}
	return &nodeLister{rc: rc}, nil
}

// list lists every Node as the reflector asks for it (apiLink.nodeList: a
// list, not a watch-list, whose bookmark would lose its annotations to the
// pruning), decoding each as it arrives, pruned (as podLister.list does pods).
func (nl *nodeLister) list(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
	body, err := streamList(ctx, nl.rc, "nodes", opts)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	return decodeRecordList(body, "NodeList", nodeWatchFields, func(n *corev1.Node) runtime.Object { return n })
}

func (nl *nodeLister) watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return watchPruned(ctx, nl.rc, "nodes", opts)
}
