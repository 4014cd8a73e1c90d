package compile

// The reference evaluator and the random clusters live in nft/internal/netpolref, so
// that nft/explain's tests hold its answers against the same reading of the spec.
// These names keep this package's tests as they were written.

import (
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
)

type refEndpoint = netpolref.Endpoint

var (
	newRefCluster     = netpolref.New
	refActive         = netpolref.Active
	refPodIPs         = netpolref.PodIPs
	upstreamModel     = netpolref.UpstreamModel
	upstreamPorts     = netpolref.UpstreamPorts
	modelPod          = netpolref.ModelPod
	randomPolicy      = netpolref.RandomPolicy
	upstreamExternals = netpolref.UpstreamExternals
)

// world is a whole cluster for a crosscheck: every node's ruleset is compiled from it,
// and the reference evaluator judges it whole.
type world struct {
	pods       []*corev1.Pod
	namespaces []*corev1.Namespace
	policies   []*networkingv1.NetworkPolicy
	externals  []netip.Addr // addresses of no pod
	ports      []int        // destination ports to try (TCP, UDP and SCTP each)
	cnps       []*cnpv1.ClusterNetworkPolicy
	nodes      []*corev1.Node
}

func (w world) snapshot(node string) Snapshot {
	return Snapshot{NodeName: node, Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies, ClusterNetworkPolicies: w.cnps, Nodes: w.nodes}
}

func fromRef(w netpolref.World) world {
	return world{pods: w.Pods, namespaces: w.Namespaces, policies: w.Policies, externals: w.Externals, ports: w.Ports,
		cnps: w.ClusterPolicies, nodes: w.Nodes}
}

func randomWorld(rng *rand.Rand) world { return fromRef(netpolref.RandomWorld(rng)) }

func randomTieredWorld(rng *rand.Rand) world { return fromRef(netpolref.RandomTieredWorld(rng)) }
