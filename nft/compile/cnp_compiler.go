package compile

import (
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
)

// clusterEntry is a recorded ClusterNetworkPolicy: parsed (nil when it has no
// tier nftpolicy knows) and its problems.
type clusterEntry struct {
	p        *clusterPolicy
	problems []Problem
}

// SetClusterNetworkPolicy records ClusterNetworkPolicy cnp, added or changed.
func (c *Compiler) SetClusterNetworkPolicy(cnp *cnpv1.ClusterNetworkPolicy) {
	p, problems := parseClusterPolicy(cnp)
	c.cnps[cnp.Name] = &clusterEntry{p: p, problems: problems}
	c.cnpOrder = nil
	c.changed = true
	delete(c.cnpCached, cnp.Name)
}

// DeleteClusterNetworkPolicy records that ClusterNetworkPolicy name is gone.
func (c *Compiler) DeleteClusterNetworkPolicy(name string) {
	if _, ok := c.cnps[name]; !ok {
		return
	}
	delete(c.cnps, name)
	c.cnpOrder = nil
	c.changed = true
	delete(c.cnpCached, name)
}

// SetNode records node n, added or changed (its labels and addresses, for nodes
// peers).
func (c *Compiler) SetNode(n *corev1.Node) {
	cur := newNodeInfo(n)
	old := c.nodes[n.Name]
	c.nodes[n.Name] = cur
	c.nodeChanged(old, cur)
}

// DeleteNode records that node name is gone.
func (c *Compiler) DeleteNode(name string) {
	old := c.nodes[name]
	if old == nil {
		return
	}
	delete(c.nodes, name)
	c.nodeChanged(old, nil)
}

func (c *Compiler) nodeChanged(old, cur *nodeInfo) {
	if old != nil && cur != nil && maps.Equal(old.labels, cur.labels) && slices.Equal(old.addrs, cur.addrs) {
		return
	}
	c.changed = true // the tier pass lists the nodes at every compilation
	c.dropCNPs(func(p *clusterPolicy) bool {
		return p.anyPeer(func(pe *cnpPeer) bool {
			return pe.nodeSel != nil && ((old != nil && pe.nodeSel.Matches(old.labels)) || (cur != nil && pe.nodeSel.Matches(cur.labels)))
		})
	})
}

// podChangedTiers drops the cached sets a pod change can affect: a pod peer selects
// the pod (before or after), or the pod is a local subject of a policy whose ingress
// named ports are resolved on its subjects.
func (c *Compiler) podChangedTiers(old, cur *podInfo) bool {
	return c.dropCNPs(func(p *clusterPolicy) bool {
		for _, pod := range []*podInfo{old, cur} {
			if pod == nil {
				continue
			}
			nsl := c.ix.labelsOf(pod.ns)
			if p.anyPeer(func(pe *cnpPeer) bool {
				return pe.sel != nil && pe.sel.nsSel.Matches(nsl) && pe.sel.podSel.Matches(pod.labels)
			}) {
				return true
			}
			if pod.local && p.ingressNamed() && p.selects(nsl, pod) {
				return true
			}
		}
		return false
	})
}

// namespaceChangedTiers drops the cached sets of policies with a namespace selector
// whose verdict on the namespace changed.
func (c *Compiler) namespaceChangedTiers(before, after labels.Set) {
	c.dropCNPs(func(p *clusterPolicy) bool {
		if p.ingressNamed() && p.subjNS != nil && p.subjNS.Matches(before) != p.subjNS.Matches(after) {
			return true
		}
		return p.anyPeer(func(pe *cnpPeer) bool {
			return pe.sel != nil && pe.sel.nsSel.Matches(before) != pe.sel.nsSel.Matches(after)
		})
	})
}

// dropCNPs forgets the cached sets of the policies for which affected is true,
// and reports whether there were any.
func (c *Compiler) dropCNPs(affected func(*clusterPolicy) bool) bool {
	n := len(c.cnpCached)
	maps.DeleteFunc(c.cnpCached, func(name string, _ []nft.Set) bool {
		e := c.cnps[name]
		return e == nil || e.p == nil || affected(e.p)
	})
	return len(c.cnpCached) < n
}

// cnpProblems returns the ClusterNetworkPolicies' problems, by name.
func (c *Compiler) cnpProblems() []Problem {
	var out []Problem
	for _, name := range slices.Sorted(maps.Keys(c.cnps)) {
		out = append(out, c.cnps[name].problems...)
	}
	return out
}

// tierPass starts the tiers' part of a compilation; nil without any
// ClusterNetworkPolicy.
func (c *Compiler) tierPass() *tierPass {
	if len(c.cnps) == 0 {
		return nil
	}
	if c.cnpOrder == nil {
		c.cnpOrder = []*clusterPolicy{}
		taken := map[string]bool{}
		for _, name := range slices.Sorted(maps.Keys(c.cnps)) {
			p := c.cnps[name].p
			if p == nil {
				continue
			}
			c.cnpOrder = append(c.cnpOrder, p)
			// Names unique by head: two policies whose names hash alike
			// would share sets (the kernel keeps one's elements) and the
			// deny log's prefix.
			if key := nft.UniqueKey(taken, "cnp", p.name); key != p.key {
				delete(c.cnpCached, name) // its sets' names change
				p.key = key
			}
		}
		slices.SortFunc(c.cnpOrder, cnpOrder)
	}
	tp := &tierPass{cnps: c.cnpOrder}
	for _, name := range slices.Sorted(maps.Keys(c.nodes)) {
		tp.nodes = append(tp.nodes, c.nodes[name])
	}
	return tp
}

// anyPeer reports whether match is true for a peer of one of the policy's rules.
func (p *clusterPolicy) anyPeer(match func(*cnpPeer) bool) bool {
	for _, rules := range [][]*cnpRule{p.ingress, p.egress} {
		for _, r := range rules {
			if slices.ContainsFunc(r.peers, match) {
				return true
			}
		}
	}
	return false
}

// ingressNamed reports whether an ingress rule uses a named port (resolved on the
// policy's local subjects).
func (p *clusterPolicy) ingressNamed() bool {
	return slices.ContainsFunc(p.ingress, func(r *cnpRule) bool { return len(r.named) > 0 })
}
