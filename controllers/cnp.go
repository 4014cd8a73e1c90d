package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/discovery"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	cnpv1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// ClusterNetworkPolicy is a CRD (sigs.k8s.io/network-policy-api): a cluster may
// serve v1beta1 (the storage version), only v1alpha2 (same schema), or neither.
// The agent reads v1beta1 when served, else v1alpha2 (converted to v1beta1 for the
// compiler). Without the CRD it enforces NetworkPolicy exactly as before and says
// so once; it watches the one CustomResourceDefinition object, and when the CRD
// appears it starts the informer and the watch without a restart, and stops them
// when the CRD goes (crdwatch.go). NetworkPolicy enforcement never stops meanwhile.
//
// +kubebuilder:rbac:groups=policy.networking.k8s.io,resources=clusternetworkpolicies,verbs=list;watch
// Nodes, for nodes peers (their labels and status.addresses).
// +kubebuilder:rbac:groups="",resources=nodes,verbs=list;watch

const (
	cnpGroup    = "policy.networking.k8s.io"
	cnpResource = "clusternetworkpolicies"
)

// clusterPolicyAPI is the ClusterNetworkPolicy version the agent reads: "v1beta1",
// "v1alpha2", or "" while neither is watched.
type clusterPolicyAPI struct {
	version atomic.Value // string
}

func (a *clusterPolicyAPI) served() string {
	if a == nil {
		return ""
	}
	v, _ := a.version.Load().(string)
	return v
}

// object returns an empty object of the served version (nil when none is).
func (a *clusterPolicyAPI) object() client.Object {
	switch a.served() {
	case "v1beta1":
		return &cnpv1beta1.ClusterNetworkPolicy{}
	case "v1alpha2":
		return &cnpv1alpha2.ClusterNetworkPolicy{}
	}
	return nil
}

// list lists the served version from rd, as v1beta1 objects.
func (a *clusterPolicyAPI) list(ctx context.Context, rd client.Reader) ([]*cnpv1beta1.ClusterNetworkPolicy, error) {
	var out []*cnpv1beta1.ClusterNetworkPolicy
	switch a.served() {
	case "v1beta1":
		var l cnpv1beta1.ClusterNetworkPolicyList
		if err := rd.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return nil, err
		}
		for i := range l.Items {
			out = append(out, &l.Items[i])
		}
	case "v1alpha2":
		var l cnpv1alpha2.ClusterNetworkPolicyList
		if err := rd.List(ctx, &l, client.UnsafeDisableDeepCopy); err != nil {
			return nil, err
		}
		for i := range l.Items {
			c, err := toV1beta1(&l.Items[i])
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// toV1beta1 returns obj as a v1beta1 ClusterNetworkPolicy: v1alpha2 has the same
// schema (the module's types differ only in package), so JSON carries it over.
func toV1beta1(obj client.Object) (*cnpv1beta1.ClusterNetworkPolicy, error) {
	switch o := obj.(type) {
	case *cnpv1beta1.ClusterNetworkPolicy:
		return o, nil
	case *cnpv1alpha2.ClusterNetworkPolicy:
		data, err := json.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("converting v1alpha2 ClusterNetworkPolicy %s: %w", o.Name, err)
		}
		out := &cnpv1beta1.ClusterNetworkPolicy{}
		if err := json.Unmarshal(data, out); err != nil {
			return nil, fmt.Errorf("converting v1alpha2 ClusterNetworkPolicy %s: %w", o.Name, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("not a ClusterNetworkPolicy: %T", obj)
}

// discoverClusterPolicies returns the version of ClusterNetworkPolicy the API server
// serves (v1beta1 first), or "" when it serves none.
func discoverClusterPolicies(dc discovery.DiscoveryInterface) (string, error) {
	for _, v := range []string{"v1beta1", "v1alpha2"} {
		res, err := dc.ServerResourcesForGroupVersion(cnpGroup + "/" + v)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("discovery of %s/%s: %w", cnpGroup, v, err)
		}
		for _, r := range res.APIResources {
			if r.Name == cnpResource {
				return v, nil
			}
		}
	}
	return "", nil
}

// trimClusterPolicyOr trims ClusterNetworkPolicies and hands other objects to
// other.
func trimClusterPolicyOr(other toolscache.TransformFunc) toolscache.TransformFunc {
	return func(obj any) (any, error) {
		switch obj.(type) {
		case *cnpv1beta1.ClusterNetworkPolicy, *cnpv1alpha2.ClusterNetworkPolicy:
			return trimClusterPolicy(obj)
		}
		return other(obj)
	}
}

// trimClusterPolicy keeps identity, generation and the spec.
func trimClusterPolicy(obj any) (any, error) {
	switch c := obj.(type) {
	case *cnpv1beta1.ClusterNetworkPolicy:
		meta := trimMeta(c.ObjectMeta)
		meta.Generation = c.Generation
		return &cnpv1beta1.ClusterNetworkPolicy{ObjectMeta: meta, Spec: c.Spec}, nil
	case *cnpv1alpha2.ClusterNetworkPolicy:
		meta := trimMeta(c.ObjectMeta)
		meta.Generation = c.Generation
		return &cnpv1alpha2.ClusterNetworkPolicy{ObjectMeta: meta, Spec: c.Spec}, nil
	}
	return obj, nil
}

// trimNode keeps identity, labels and addresses, what nodes peers read, and the
// pod CIDRs, what --unknown-pod-cidrs=node reads (unknown.go).
func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{ObjectMeta: trimMeta(n.ObjectMeta),
		// Taints for the startup taint (startuptaint.go): a few per node, and
		// only the agent's own Node is cached.
		Spec:   corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs, Taints: n.Spec.Taints},
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses}}, nil
}

// nodeChanged passes node creates and deletes, and updates of labels, addresses or
// pod CIDRs (not the heartbeats and conditions that make up most node updates).
func nodeChanged() predicate.Predicate {
	return predicate.Or(predicate.LabelChangedPredicate{}, createDelete(), predicate.Funcs{
		CreateFunc:  func(event.CreateEvent) bool { return false },
		DeleteFunc:  func(event.DeleteEvent) bool { return false },
		GenericFunc: func(event.GenericEvent) bool { return false },
		UpdateFunc: func(e event.UpdateEvent) bool {
			a, ok1 := e.ObjectOld.(*corev1.Node)
			b, ok2 := e.ObjectNew.(*corev1.Node)
			return !ok1 || !ok2 || !slices.Equal(a.Status.Addresses, b.Status.Addresses) ||
				a.Spec.PodCIDR != b.Spec.PodCIDR || !slices.Equal(a.Spec.PodCIDRs, b.Spec.PodCIDRs)
		},
	})
}
