package compile

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Snapshot is the cluster as one node sees it. The controllers pass trimmed objects:
// Compile reads only metadata name, namespace and labels, spec.nodeName,
// spec.hostNetwork, spec.containers[].ports, status.phase and status.podIPs (or
// status.podIP) of pods; name and labels of namespaces; and the whole policy.
// Of nodes, name, labels and status.addresses (for ClusterNetworkPolicy nodes
// peers). Compile never modifies the objects.
type Snapshot struct {
	NodeName string
	Pods     []*corev1.Pod
	// PodRecords are pods as the compiler reads them (PodOf), for a caller
	// that keeps no pod objects (nftpolicy explain at 100,000 pods); a pod of
	// Pods with the same namespace and name wins.
	PodRecords []*Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy

	// ClusterNetworkPolicies are the Admin and Baseline tiers (v1alpha2 objects
	// converted to v1beta1, the same schema). Without any, the table is exactly the
	// NetworkPolicy table.
	ClusterNetworkPolicies []*cnpv1.ClusterNetworkPolicy
	Nodes                  []*corev1.Node
}

// Options tune Compile.
type Options struct {
	Table string // table name; nft.DefaultTable when empty
	// DenyLog logs isolation drops to an NFLOG group; the zero value logs nothing.
	DenyLog DenyLog
	// PolicyCounters adds two counters to each group chain, of the packets it
	// allowed and of those it dropped for isolation, which the agent credits to
	// the group's policies (see observe.go and nft/doc.go, "Policy counters").
	PolicyCounters bool
	// Established is what a policy change does to open connections (strict.go);
	// the zero value keeps them.
	Established Established
	// CtMarkMask is the conntrack mark bits EstablishedRecheck owns
	// (DefaultCtMarkMask when 0); CheckCtMarkMask says which masks work.
	CtMarkMask uint32
	// UnknownLocalPods are the node's pod CIDRs: packets from an address in them
	// that no known local pod has are dropped (unknown.go). Empty: none.
	UnknownLocalPods []netip.Prefix
	// SyncedBoot is the node's boot id, or "": the table gets an empty set
	// named nft.SyncedBootSet(SyncedBoot), which the CNI gate looks for before
	// it lets a new pod's network come up (controllers/cnigate). The agent
	// compiles only from complete caches, so any table of its carries it.
	SyncedBoot string
}

// Problem is something Compile could not enforce exactly as written. Policy names the
// NetworkPolicy concerned, Cluster the ClusterNetworkPolicy; both are zero for a
// problem about pods (two local pods sharing an address). Problems never widen what
// is allowed: see the package documentation.
type Problem struct {
	Policy  types.NamespacedName
	Cluster string
	Reason  string
}

func (p Problem) String() string {
	if p.Cluster != "" {
		return "cnp/" + p.Cluster + ": " + p.Reason
	}
	if p.Policy == (types.NamespacedName{}) {
		return p.Reason
	}
	return p.Policy.String() + ": " + p.Reason
}

// Compile returns the table that enforces s's policies on s.NodeName, and the problems
// found, by policy (namespace/name), each policy's in rule order. It is a pure
// function: the same snapshot, in any order, gives the same result (an object listed
// twice under one namespace/name counts once: the first eligible pod, the first
// policy, the last namespace). The ruleset always passes Validate.
//
// Compile is a fresh Compiler loaded with s; a Compiler fed the same objects one
// change at a time returns the same.
func Compile(s Snapshot, opts Options) (*nft.Ruleset, []Problem) {
	return Load(s, opts).Compile()
}

// Load is a fresh Compiler holding s's objects, as Compile reads them; its
// Compile is Compile(s, opts), and its Attribution then names the table's rules.
func Load(s Snapshot, opts Options) *Compiler {
	c := NewCompiler(s.NodeName, opts)
	for _, ns := range s.Namespaces {
		if ns != nil {
			c.SetNamespace(ns)
		}
	}
	for _, p := range s.Pods {
		if p == nil {
			continue
		}
		if _, dup := c.ix.pods[objKey{p.Namespace, p.Name}]; !dup {
			c.SetPod(p)
		}
	}
	for _, p := range s.PodRecords {
		if p == nil {
			continue
		}
		if _, dup := c.ix.pods[objKey{p.ns, p.name}]; !dup {
			c.SetPodRecord(p)
		}
	}
	for _, np := range s.Policies {
		if np == nil {
			continue
		}
		if _, dup := c.pols[objKey{np.Namespace, np.Name}]; !dup {
			c.SetPolicy(np)
		}
	}
	for _, n := range s.Nodes {
		if n != nil {
			if _, dup := c.nodes[n.Name]; !dup {
				c.SetNode(n)
			}
		}
	}
	for _, cnp := range s.ClusterNetworkPolicies {
		if cnp != nil {
			if _, dup := c.cnps[cnp.Name]; !dup {
				c.SetClusterNetworkPolicy(cnp)
			}
		}
	}
	return c
}
