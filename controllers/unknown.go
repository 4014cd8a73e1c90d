package controllers

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Unknown local pods (--unknown-pod-cidrs): traffic from an address of this node's
// pod CIDRs that no pod the agent knows has is dropped (nft/doc.go, "Unknown local
// pods"). The CIDRs are given on the command line, or, with
// --unknown-pod-cidrs=node, read from this node's Node object (spec.podCIDRs, else
// spec.podCIDR), so one DaemonSet serves every node: the reconciler already
// watches Nodes (ClusterNetworkPolicy nodes peers), and its own Node's CIDRs are
// taken at every full sync and whenever that Node changes.
//
// A Node without pod CIDRs (a CNI with its own IPAM, such as Calico IPAM or
// Cilium's cluster-pool, leaves them unset or unused; or the node IPAM controller
// has not assigned them yet) leaves nothing to drop by: unknown addresses are then
// not isolated, and the agent says so at once and until it changes — an error in
// its log, a Warning Event on the Node, and nftpolicy_unknown_pod_cidrs{source="node"}
// at 0. It never guesses CIDRs (from pod addresses, say): a wrong guess would drop
// traffic of another node's pods forwarded through this one.

var unknownPodCIDRs = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "nftpolicy_unknown_pod_cidrs",
	Help: "Pod CIDRs of this node whose addresses no known pod has are dropped (--unknown-pod-cidrs), by where they " +
		"come from (flag, node); 0 with source node: the Node has none, so a new pod is not isolated until the agent knows it.",
}, []string{"source"})

func init() { metrics.Registry.MustRegister(unknownPodCIDRs) }

// errNoPodCIDRs is what the agent logs when --unknown-pod-cidrs=node finds none.
var errNoPodCIDRs = errors.New("no pod CIDRs for --unknown-pod-cidrs=node: traffic from pod addresses the agent does not know yet is NOT isolated")

// unknownState is the reconciler's view of its own Node's pod CIDRs; guarded by
// the reconciler's mu.
type unknownState struct {
	cidrs    []netip.Prefix // in force (from the Node); nil: none
	reported string         // the last state reported; "" before the first
}

// unknownCIDRs returns the pod CIDRs the compiler drops unknown addresses of.
func (r *NodeReconciler) unknownCIDRs() []netip.Prefix {
	if r.UnknownPodCIDRsFromNode {
		return r.unknown.cidrs
	}
	return r.UnknownPodCIDRs
}

// ownNode takes this node's pod CIDRs from n (nil: the Node does not exist) when
// they come from the Node, and reports when that changes what is isolated. It
// returns whether the CIDRs changed.
func (r *NodeReconciler) ownNode(n *corev1.Node, log logr.Logger) bool {
	if !r.UnknownPodCIDRsFromNode {
		return false
	}
	cidrs, why := nodePodCIDRs(n)
	changed := !slices.Equal(cidrs, r.unknown.cidrs)
	r.unknown.cidrs = cidrs
	unknownPodCIDRs.WithLabelValues("node").Set(float64(len(cidrs)))

	state := why
	if len(cidrs) > 0 {
		state = "isolated " + prefixList(cidrs)
		if why != "" {
			state += " (" + why + ")"
		}
	}
	if state == r.unknown.reported {
		return changed
	}
	first := r.unknown.reported == ""
	r.unknown.reported = state
	if len(cidrs) == 0 {
		log.Error(errNoPodCIDRs, "a new pod on this node may talk before its policies apply; set the Node's spec.podCIDRs "+
			"(the node IPAM controller: --allocate-node-cidrs) or give the CIDRs in --unknown-pod-cidrs", "reason", why)
		if n != nil && r.Recorder != nil {
			r.Recorder.Eventf(n, nil, corev1.EventTypeWarning, "UnknownPodsNotIsolated", "Isolate",
				"nftpolicy agent on %s: %s: %s, so traffic from pod addresses the agent does not know yet is not isolated "+
					"(a new pod may talk before its policies apply)", r.NodeName, "--unknown-pod-cidrs=node", why)
		}
		return changed
	}
	log.Info("traffic from pod addresses the agent does not know yet is dropped", "podCIDRs", prefixList(cidrs), "problems", why)
	if !first && n != nil && r.Recorder != nil {
		// The Warning above is on record: say it is over.
		r.Recorder.Eventf(n, nil, corev1.EventTypeNormal, "UnknownPodsIsolated", "Isolate",
			"nftpolicy agent on %s: traffic from addresses of %s that no known pod has is dropped again", r.NodeName, prefixList(cidrs))
	}
	return changed
}

// nodePodCIDRs returns n's pod CIDRs (spec.podCIDRs, else spec.podCIDR), sorted,
// and why some or all are missing ("" when there is nothing to say). The API
// server validates them; one that does not parse anyway is left out and named.
func nodePodCIDRs(n *corev1.Node) ([]netip.Prefix, string) {
	if n == nil {
		return nil, "the Node object does not exist"
	}
	raw := n.Spec.PodCIDRs
	if len(raw) == 0 && n.Spec.PodCIDR != "" {
		raw = []string{n.Spec.PodCIDR}
	}
	if len(raw) == 0 {
		return nil, "the Node has no spec.podCIDRs (a CNI with its own IPAM, or not assigned yet)"
	}
	var out []netip.Prefix
	var bad []string
	for _, s := range raw {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%q", s))
			continue
		}
		p = p.Masked()
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	if len(bad) > 0 {
		return out, "spec.podCIDRs " + strings.Join(bad, ", ") + " not CIDRs, left out"
	}
	return out, ""
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}
