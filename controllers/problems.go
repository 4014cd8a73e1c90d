package controllers

import (
	"context"
	"hash/fnv"
	"maps"
	"slices"
	"strings"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// Reporting what cannot be enforced.
//
// A policy's problems depend on its spec alone: every node compiles the same
// problems for it. Every agent logs them and counts them in
// nftpolicy_policy_problems, which cost the apiserver nothing; but the Warning
// Event on the policy is written by one agent only, so that a broken policy
// costs the apiserver one Event per version, not one per node (5,000 on a
// 5,000-node cluster).
//
// The agents agree on the reporter without talking to each other, from what
// every one of them caches: the reporter of policy P is, among the nodes that
// host a pod P selects (scheduled, not finished, not hostNetwork: the nodes
// that enforce P), the one whose hash with P's namespace/name is highest
// (rendezvous hashing: the choice spreads over nodes and changes only for
// policies whose reporter's pods go). A policy that selects no pod at all (its
// pods not created yet, a selector that matches nothing, an invalid selector)
// enforces nothing anywhere yet but is still worth an Event, so its reporter is
// chosen the same way among every node that hosts any pod: in a cluster that
// runs the agent as a DaemonSet, every node with an agent. With no pod at all,
// every agent reports (nothing to agree on).
//
// A reporter is chosen when an agent's view of P's problems changes, once; the
// Event is not sent again when pods come and go later. Agents whose caches
// differ at that moment (a pod P selects created within the propagation delay
// of P itself) may choose differently: two Events, or, rarely, none; the log
// line and the metric on every node remain.

// reportProblems logs each policy's problems and records a Warning Event on the
// policy when its problems change and this node is its reporter (so a steady
// problem is reported once, not on every sync, and once for the cluster).
func (r *NodeReconciler) reportProblems(ctx context.Context, log logr.Logger, problems []compile.Problem) {
	policyProblems.Set(float64(len(problems)))
	now := map[types.NamespacedName][]string{}
	for _, p := range problems {
		key := p.Policy
		if p.Cluster != "" { // a ClusterNetworkPolicy: no namespace
			key = types.NamespacedName{Name: p.Cluster}
		}
		now[key] = append(now[key], p.Reason)
	}
	next := make(map[types.NamespacedName]string, len(now))
	var everyNode []string // nodes hosting any pod; listed once, when needed
	for _, key := range slices.SortedFunc(maps.Keys(now), func(a, b types.NamespacedName) int {
		return strings.Compare(a.String(), b.String())
	}) {
		text := strings.Join(now[key], "; ")
		next[key] = text
		if r.problems[key] == text {
			continue
		}
		if key == (types.NamespacedName{}) { // about pods, not a policy: nothing to attach an Event to
			log.Info("pods cannot be told apart", "problems", text)
			continue
		}
		if key.Namespace == "" {
			everyNode = r.reportClusterPolicy(ctx, log, key.Name, text, everyNode)
			continue
		}
		if r.Recorder == nil {
			log.Info("policy not fully enforceable", "policy", key.String(), "problems", text)
			continue
		}
		var np networkingv1.NetworkPolicy
		if err := r.Reader.Get(ctx, key, &np); err != nil {
			log.Info("policy not fully enforceable", "policy", key.String(), "problems", text)
			continue
		}
		candidates, err := selectedNodes(ctx, r.pods(), &np)
		if err == nil && len(candidates) == 0 {
			if everyNode == nil {
				everyNode, err = podNodes(ctx, r.pods())
			}
			candidates = everyNode
		}
		if err != nil {
			log.Error(err, "choosing the reporter of a policy's problems; reporting them here", "policy", key.String())
			candidates = nil
		}
		reporter := r.NodeName
		if len(candidates) > 0 {
			reporter = rendezvous(key, candidates)
		}
		log.Info("policy not fully enforceable", "policy", key.String(), "problems", text, "reporter", reporter)
		if reporter != r.NodeName {
			continue
		}
		r.Recorder.Eventf(&np, nil, corev1.EventTypeWarning, "NotEnforceable", "Compile",
			"node %s reports for every node: this policy cannot be fully enforced: %s", r.NodeName, text)
	}
	r.problems = next
}

// selectedNodes returns the nodes that host a pod np selects: scheduled, not
// finished, not hostNetwork. An invalid podSelector selects nothing, as in
// the compiler.
func selectedNodes(ctx context.Context, pods podSource, np *networkingv1.NetworkPolicy) ([]string, error) {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		return nil, nil
	}
	return nodesOf(ctx, pods, func(p *compile.Pod) bool {
		return p.Namespace() == np.Namespace && !p.HostNetwork() && !p.Finished() && sel.Matches(labels.Set(p.Labels()))
	})
}

// podNodes returns the nodes that host any pod.
func podNodes(ctx context.Context, pods podSource) ([]string, error) {
	return nodesOf(ctx, pods, func(*compile.Pod) bool { return true })
}

func nodesOf(ctx context.Context, pods podSource, keep func(*compile.Pod) bool) ([]string, error) {
	seen := map[string]bool{}
	err := pods.each(ctx, func(p *compile.Pod) {
		if p.Node() != "" && keep(p) {
			seen[p.Node()] = true
		}
	})
	return slices.Collect(maps.Keys(seen)), err
}

// rendezvous returns the node of nodes with the highest hash with policy
// (ties, which need a 64-bit collision, go to the lower name).
func rendezvous(policy types.NamespacedName, nodes []string) string {
	var best string
	var bestScore uint64
	for _, n := range nodes {
		h := fnv.New64a()
		h.Write([]byte(policy.Namespace))
		h.Write([]byte{'/'})
		h.Write([]byte(policy.Name))
		h.Write([]byte{0})
		h.Write([]byte(n))
		score := h.Sum64()
		if best == "" || score > bestScore || (score == bestScore && n < best) {
			best, bestScore = n, score
		}
	}
	return best
}

// reportClusterPolicy logs a ClusterNetworkPolicy's problems and records the
// Warning Event on it when this node is its reporter: chosen like a policy's
// that selects no pod, among every node that hosts a pod (a ClusterNetworkPolicy
// may select pods on every node). It returns everyNode, listed when first needed.
func (r *NodeReconciler) reportClusterPolicy(ctx context.Context, log logr.Logger, name, text string, everyNode []string) []string {
	obj := r.cnp.object()
	if r.Recorder == nil || obj == nil {
		log.Info("ClusterNetworkPolicy not fully enforceable", "clusterNetworkPolicy", name, "problems", text)
		return everyNode
	}
	key := types.NamespacedName{Name: name}
	if err := r.Reader.Get(ctx, key, obj); err != nil {
		log.Info("ClusterNetworkPolicy not fully enforceable", "clusterNetworkPolicy", name, "problems", text)
		return everyNode
	}
	var err error
	if everyNode == nil {
		if everyNode, err = podNodes(ctx, r.pods()); err != nil {
			log.Error(err, "choosing the reporter of a ClusterNetworkPolicy's problems; reporting them here", "clusterNetworkPolicy", name)
		}
	}
	reporter := r.NodeName
	if len(everyNode) > 0 {
		reporter = rendezvous(key, everyNode)
	}
	log.Info("ClusterNetworkPolicy not fully enforceable", "clusterNetworkPolicy", name, "problems", text, "reporter", reporter)
	if reporter == r.NodeName {
		r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, "NotEnforceable", "Compile",
			"node %s reports for every node: this policy cannot be fully enforced: %s", r.NodeName, text)
	}
	return everyNode
}
