package compile

// The reference evaluator and the random clusters live in nft/internal/netpolref, so
// that nft/explain's tests hold its answers against the same reading of the spec.
// These names keep this package's tests as they were written.

import (
	"math/rand/v2"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

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
}

func randomWorld(rng *rand.Rand) world {
	w := netpolref.RandomWorld(rng)
	return world{pods: w.Pods, namespaces: w.Namespaces, policies: w.Policies, externals: w.Externals, ports: w.Ports}
}
