package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// Unknown local pods (--unknown-pod-cidrs): traffic from an address of this node's
// pod CIDRs that no pod the agent knows has is dropped (nft/doc.go, "Unknown local
// pods"). The CIDRs are given on the command line, or, with
// --unknown-pod-cidrs=node, read from this node's Node object (spec.podCIDRs, else
// spec.podCIDR), so one DaemonSet serves every node: the agent's cache always
// holds its own Node (and only it, unless a ClusterNetworkPolicy has a nodes
// peer: nodewatch.go), and its CIDRs are taken at every full sync and whenever
// that Node changes.
//
// A Node without pod CIDRs (a CNI with its own IPAM, such as Calico IPAM or
// Cilium's cluster-pool, leaves them unset or unused; or the node IPAM controller
// has not assigned them yet) leaves nothing to drop by: unknown addresses are then
// not isolated, and the agent says so at once and until it changes — an error in
// its log, a Warning Event on the Node, and nftpolicy_unknown_pod_cidrs{source="node"}
// at 0. So does a Node whose pod CIDRs the pods' addresses contradict (a CNI with
// its own IPAM on a cluster whose controller-manager assigns CIDRs anyway): a pod
// of another node inside them would have its traffic to this node's pods dropped.
// The agent never guesses CIDRs (from pod addresses, say) for the same reason.

var unknownPodCIDRs = prometheus.NewGaugeVec(prometheus.GaugeOpts{
	Name: "nftpolicy_unknown_pod_cidrs",
	Help: "Pod CIDRs of this node whose addresses no known pod has are dropped (--unknown-pod-cidrs), by where they " +
		"come from (flag, node); 0 with source node: the Node has none, so a new pod is not isolated until the agent knows it.",
}, []string{"source"})

func init() { metrics.Registry.MustRegister(unknownPodCIDRs) }

// errNoPodCIDRs is what the agent logs when --unknown-pod-cidrs=node isolates nothing.
var errNoPodCIDRs = errors.New("no pod CIDRs for --unknown-pod-cidrs=node: traffic from pod addresses the agent does not know yet is NOT isolated")

// unknownState is the reconciler's view of its own Node's pod CIDRs; guarded by
// the reconciler's mu.
type unknownState struct {
	node  *corev1.Node   // as last seen (a cache object: read only); nil: none
	cidrs []netip.Prefix // the Node's
	why   string         // why it has none, or why some were left out
	// conflicts are the pods whose addresses contradict cidrs: a pod of this node
	// outside them, or a pod of another node inside them. Either means the CNI
	// does not hand out addresses from the Node's pod CIDRs (its own IPAM, with
	// CIDRs the controller-manager assigned anyway): dropping by them would cut
	// another node's pods, so nothing is dropped.
	conflicts map[types.NamespacedName]string
	inForce   []netip.Prefix // what the compiler drops by
	reported  string         // the last state reported; "" before the first
}

// unknownCIDRs returns the pod CIDRs the compiler drops unknown addresses of.
func (r *NodeReconciler) unknownCIDRs() []netip.Prefix {
	if r.UnknownPodCIDRsFromNode {
		return r.unknown.inForce
	}
	return r.UnknownPodCIDRs
}

// ownNode records this node's Node (nil: it does not exist) and reports whether
// its pod CIDRs changed, in which case every pod must be checked again (checkPods).
func (r *NodeReconciler) ownNode(n *corev1.Node) bool {
	cidrs, why := NodePodCIDRs(n)
	changed := !slices.Equal(cidrs, r.unknown.cidrs)
	r.unknown.node, r.unknown.cidrs, r.unknown.why = n, cidrs, why
	return changed
}

// checkPods checks every pod against the Node's pod CIDRs afresh.
func (r *NodeReconciler) checkPods(ctx context.Context) error {
	r.unknown.conflicts = map[types.NamespacedName]string{}
	return r.pods().each(ctx, func(p *compile.Pod) {
		r.notePod(types.NamespacedName{Namespace: p.Namespace(), Name: p.Name()}, p)
	})
}

// notePod checks one pod (nil: it is gone) against the Node's pod CIDRs.
func (r *NodeReconciler) notePod(key types.NamespacedName, p *compile.Pod) {
	if !r.UnknownPodCIDRsFromNode {
		return
	}
	if r.unknown.conflicts == nil {
		r.unknown.conflicts = map[types.NamespacedName]string{}
	}
	delete(r.unknown.conflicts, key)
	if p == nil || len(r.unknown.cidrs) == 0 || p.HostNetwork() || p.Finished() || p.Node() == "" {
		return
	}
	local := p.Node() == r.NodeName
	for _, a := range p.Addrs() {
		inside, family := false, false
		for _, c := range r.unknown.cidrs {
			if c.Addr().Is4() == a.Is4() {
				family = true
				inside = inside || c.Contains(a)
			}
		}
		switch {
		case local && family && !inside:
			r.unknown.conflicts[key] = fmt.Sprintf("pod %s of this node has %s, outside them", key, a)
			return
		case !local && inside:
			r.unknown.conflicts[key] = fmt.Sprintf("pod %s of node %s has %s, inside them", key, p.Node(), a)
			return
		}
	}
}

// settleUnknown decides what the compiler drops by, reports when that changes
// what is isolated, and returns whether it changed.
func (r *NodeReconciler) settleUnknown(log logr.Logger) bool {
	u := &r.unknown
	cidrs, why := u.cidrs, u.why
	if len(cidrs) > 0 && len(u.conflicts) > 0 {
		keys := slices.SortedFunc(maps.Keys(u.conflicts), func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
		why = fmt.Sprintf("the pods' addresses do not come from the Node's spec.podCIDRs %s (a CNI with its own IPAM?): %s",
			prefixList(cidrs), u.conflicts[keys[0]])
		if len(keys) > 1 {
			why += fmt.Sprintf(", and %d more pods", len(keys)-1)
		}
		cidrs = nil
	}
	changed := !slices.Equal(cidrs, u.inForce)
	u.inForce = cidrs
	unknownPodCIDRs.WithLabelValues("node").Set(float64(len(cidrs)))

	// Reported once per state: the conflicting pods' count alone is no news.
	state := "none: " + why
	if len(u.conflicts) > 0 && len(cidrs) == 0 && len(u.cidrs) > 0 {
		state = "conflicts with " + prefixList(u.cidrs)
	}
	if len(cidrs) > 0 {
		state = "isolated " + prefixList(cidrs) + " " + why
	}
	if state == u.reported {
		return changed
	}
	first := u.reported == ""
	u.reported = state
	n := u.node
	if len(cidrs) == 0 {
		log.Error(errNoPodCIDRs, "a new pod on this node may talk before its policies apply; set the Node's spec.podCIDRs "+
			"to the ranges its CNI hands out (the node IPAM controller: --allocate-node-cidrs), or give them in --unknown-pod-cidrs", "reason", why)
		if n != nil && r.Recorder != nil {
			r.Recorder.Eventf(n, nil, corev1.EventTypeWarning, "UnknownPodsNotIsolated", "Isolate",
				"nftpolicy agent on %s, --unknown-pod-cidrs=node: %s; so traffic from pod addresses the agent does not know yet "+
					"is not isolated (a new pod may talk before its policies apply)", r.NodeName, why)
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

// NodePodCIDRs returns n's pod CIDRs (spec.podCIDRs, else spec.podCIDR), sorted,
// and why some or all are missing ("" when there is nothing to say). The API
// server validates them; one that does not parse anyway is left out and named.
func NodePodCIDRs(n *corev1.Node) ([]netip.Prefix, string) {
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
