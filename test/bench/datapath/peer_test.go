package datapath

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// The peer: the same policies rendered the way kube-router renders them, with
// iptables and ipset. Written from kube-router's documented design, not its code:
//
//	FORWARD            -j NPR-FWD
//	NPR-FWD            one rule per isolated local pod: -d <pod> -j NPR-POD-<n>
//	NPR-POD-<n>        ESTABLISHED,RELATED accept; then one jump per policy that
//	                   selects the pod, in namespace/name order; then accept if
//	                   marked, else drop
//	NPR-POL-<k>        per ingress rule and port: -m set src (the rule's peer pods,
//	                   hash:ip; ipBlocks, hash:net) -m set dst (the policy's
//	                   selected pods) -p tcp --dport P -j MARK, then RETURN if marked
//
// Ingress only, numeric TCP and UDP ports and port ranges, ipBlock without except: what
// the scenarios use (build checks nothing else appears).
//
// Legacy xtables (iptables-legacy), not the iptables-nft shim: kube-router
// drives whichever `iptables` the host has, and on the nodes it has been tuned
// for that is legacy xtables; the nft shim would turn each -m set match into an
// xtables-compat expression inside nf_tables, measuring neither design.
const (
	peerIptablesRestore = "iptables-legacy-restore"
	peerIptables        = "iptables-legacy"
	peerIpset           = "ipset"
	markAllowed         = "0x10000/0x10000"
)

// peerRender is the peer's state for one node: ipsets (by name, as `ipset
// restore` lines), an `iptables-legacy-restore` script for the filter table, and
// counts. Sets are named by their content, so that scenarios share the sets they
// have in common and switching scenarios creates only the sets that differ.
type peerRender struct {
	sets     map[string]string
	iptables string
	rules    int
	members  int
}

// renderPeer renders o's ingress policies for each of nodes. The sets and the
// policy chains are the same on every node; the pod chains are the node's.
func renderPeer(o objects, nodes []string) ([]peerRender, error) {
	nsLabels := map[string]labels.Set{}
	for _, ns := range o.namespaces {
		nsLabels[ns.Name] = ns.Labels
	}
	// Pods by label, so that a selector with matchLabels looks at its candidates only.
	byLabel := map[string][]*corev1.Pod{}
	for _, p := range o.pods {
		for k, v := range p.Labels {
			byLabel[k+"="+v] = append(byLabel[k+"="+v], p)
		}
	}
	byNS := map[string][]*corev1.Pod{}
	for _, p := range o.pods {
		byNS[p.Namespace] = append(byNS[p.Namespace], p)
	}
	// candidates are the pods a selector can match in namespaces nss: those with
	// its first matchLabels pair, or else every pod of those namespaces.
	candidates := func(nss map[string]bool, ls *metav1.LabelSelector) []*corev1.Pod {
		if ls == nil || len(ls.MatchLabels) == 0 {
			var out []*corev1.Pod
			for ns := range nss {
				out = append(out, byNS[ns]...)
			}
			return out
		}
		keys := slices.Sorted(func(yield func(string) bool) {
			for k := range ls.MatchLabels {
				if !yield(k) {
					return
				}
			}
		})
		return byLabel[keys[0]+"="+ls.MatchLabels[keys[0]]]
	}
	r := peerRender{sets: map[string]string{}}
	var chains, rules strings.Builder
	set := func(typ string, members []string) string {
		members = slices.Compact(slices.Sorted(slices.Values(members)))
		sum := sha256.Sum256([]byte(typ + " " + strings.Join(members, " ")))
		name := "npr-" + hex.EncodeToString(sum[:8])
		if _, ok := r.sets[name]; ok {
			return name
		}
		var b strings.Builder
		fmt.Fprintf(&b, "create %s %s family inet hashsize 1024 maxelem 131072\n", name, typ)
		for _, m := range members {
			fmt.Fprintf(&b, "add %s %s\n", name, m)
		}
		r.sets[name] = b.String()
		r.members += len(members)
		return name
	}
	rule := func(format string, args ...any) {
		fmt.Fprintf(&rules, format+"\n", args...)
		r.rules++
	}
	selectPods := func(nss map[string]bool, ls *metav1.LabelSelector, sel labels.Selector) []*corev1.Pod {
		var out []*corev1.Pod
		for _, p := range candidates(nss, ls) {
			if p.Status.PodIP != "" && nss[p.Namespace] && sel.Matches(labels.Set(p.Labels)) {
				out = append(out, p)
			}
		}
		return out
	}
	ips := func(pods []*corev1.Pod) []string {
		out := make([]string, len(pods))
		for i, p := range pods {
			out[i] = p.Status.PodIP
		}
		return out
	}

	pols := slices.Clone(o.policies)
	slices.SortFunc(pols, func(a, b *networkingv1.NetworkPolicy) int {
		return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name)
	})
	selectedBy := map[string]map[string][]string{} // node -> local pod IP -> policy chains
	for _, n := range nodes {
		selectedBy[n] = map[string][]string{}
	}
	for k, np := range pols {
		if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || len(np.Spec.PolicyTypes) != 1 {
			return nil, fmt.Errorf("peer: %s/%s: only ingress policies are rendered", np.Namespace, np.Name)
		}
		podSel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			return nil, err
		}
		chain := fmt.Sprintf("NPR-POL-%d", k)
		fmt.Fprintf(&chains, ":%s - [0:0]\n", chain)
		selected := selectPods(map[string]bool{np.Namespace: true}, &np.Spec.PodSelector, podSel)
		dst := set("hash:ip", ips(selected))
		for _, p := range selected {
			if local := selectedBy[p.Spec.NodeName]; local != nil {
				local[p.Status.PodIP] = append(local[p.Status.PodIP], chain)
			}
		}
		for _, in := range np.Spec.Ingress {
			var pods, cidrs []string
			for _, pe := range in.From {
				switch {
				case pe.IPBlock != nil:
					if len(pe.IPBlock.Except) > 0 {
						return nil, fmt.Errorf("peer: %s/%s: ipBlock except is not rendered", np.Namespace, np.Name)
					}
					cidrs = append(cidrs, pe.IPBlock.CIDR)
				default:
					inNS := map[string]bool{np.Namespace: true}
					if pe.NamespaceSelector != nil {
						nsSel, err := metav1.LabelSelectorAsSelector(pe.NamespaceSelector)
						if err != nil {
							return nil, err
						}
						inNS = map[string]bool{}
						for ns, l := range nsLabels {
							if nsSel.Matches(l) {
								inNS[ns] = true
							}
						}
					}
					sel := labels.Everything()
					if pe.PodSelector != nil {
						if sel, err = metav1.LabelSelectorAsSelector(pe.PodSelector); err != nil {
							return nil, err
						}
					}
					pods = append(pods, ips(selectPods(inNS, pe.PodSelector, sel))...)
				}
			}
			var srcs []string
			if len(in.From) == 0 {
				srcs = append(srcs, "") // from anywhere
			}
			if len(pods) > 0 || (len(in.From) > 0 && len(cidrs) == 0) {
				srcs = append(srcs, set("hash:ip", pods))
			}
			if len(cidrs) > 0 {
				srcs = append(srcs, set("hash:net", cidrs))
			}
			var dports []string
			for _, pp := range in.Ports {
				proto := "tcp"
				if pp.Protocol != nil && *pp.Protocol == corev1.ProtocolUDP {
					proto = "udp"
				} else if pp.Protocol != nil && *pp.Protocol != corev1.ProtocolTCP || pp.Port == nil || pp.Port.StrVal != "" {
					return nil, fmt.Errorf("peer: %s/%s: only numeric TCP and UDP ports are rendered", np.Namespace, np.Name)
				}
				p := pp.Port.String()
				if pp.EndPort != nil {
					p += fmt.Sprintf(":%d", *pp.EndPort)
				}
				dports = append(dports, fmt.Sprintf("-p %s -m %s --dport %s", proto, proto, p))
			}
			if len(dports) == 0 {
				dports = []string{""}
			}
			for _, src := range srcs {
				for _, dp := range dports {
					m := ""
					if src != "" {
						m = "-m set --match-set " + src + " src "
					}
					rule("-A %s %s-m set --match-set %s dst %s -j MARK --set-xmark %s", chain, m, dst, dp, markAllowed)
					rule("-A %s -m mark --mark %s -j RETURN", chain, markAllowed)
				}
			}
		}
	}

	fmt.Fprintf(&chains, ":NPR-FWD - [0:0]\n")
	out := make([]peerRender, len(nodes))
	for i, node := range nodes {
		nr := peerRender{sets: r.sets, members: r.members, rules: r.rules + 1}
		var podChains, podRules strings.Builder
		local := selectedBy[node]
		for n, ip := range slices.Sorted(func(yield func(string) bool) {
			for ip := range local {
				if !yield(ip) {
					return
				}
			}
		}) {
			if !netip.MustParseAddr(ip).Is4() {
				continue
			}
			chain := fmt.Sprintf("NPR-POD-%d", n)
			fmt.Fprintf(&podChains, ":%s - [0:0]\n", chain)
			lines := []string{
				fmt.Sprintf("-A NPR-FWD -d %s/32 -j %s", ip, chain),
				fmt.Sprintf("-A %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", chain),
			}
			for _, pc := range local[ip] {
				lines = append(lines, fmt.Sprintf("-A %s -j %s", chain, pc))
			}
			lines = append(lines,
				fmt.Sprintf("-A %s -m mark --mark %s -j ACCEPT", chain, markAllowed),
				fmt.Sprintf("-A %s -j DROP", chain))
			for _, l := range lines {
				podRules.WriteString(l + "\n")
			}
			nr.rules += len(lines)
		}
		nr.iptables = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" +
			chains.String() + podChains.String() + rules.String() + "-A FORWARD -j NPR-FWD\n" + podRules.String() + "COMMIT\n"
		out[i] = nr
	}
	return out, nil
}

// emptyFilter is the legacy filter table with nothing in it. Every node gets it
// before the first measurement, so that "no policy", nftpolicy and the peer all
// pay for the same (empty) legacy hooks.
const emptyFilter = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"

// peerTools reports which of the peer's tools are missing from PATH.
func peerTools() []string {
	var missing []string
	for _, bin := range []string{peerIptablesRestore, peerIptables, peerIpset} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	return missing
}

// peerNode is what one node holds of the peer: the sets created so far (they
// stay when the rules go: a set without a rule that matches it costs packets
// nothing) and whether the rules are in.
type peerNode struct {
	ns   *nfttest.NetNS
	sets map[string]bool
}

// load creates the sets of r the node lacks, then replaces the filter table
// with r's rules in one iptables-restore.
func (n *peerNode) load(r peerRender) error {
	var b strings.Builder
	for name, lines := range r.sets {
		if !n.sets[name] {
			b.WriteString(lines)
		}
	}
	if b.Len() > 0 {
		if _, err := n.ns.RunContext(bg, b.String(), peerIpset, "-exist", "restore"); err != nil {
			return fmt.Errorf("peer: ipset restore: %w", err)
		}
		for name := range r.sets {
			n.sets[name] = true
		}
	}
	if _, err := n.ns.RunContext(bg, r.iptables, peerIptablesRestore); err != nil {
		return fmt.Errorf("peer: iptables restore: %w", err)
	}
	return nil
}

// unload empties the legacy filter table (the table itself stays).
func (n *peerNode) unload() error {
	if _, err := n.ns.RunContext(bg, emptyFilter, peerIptablesRestore); err != nil {
		return fmt.Errorf("peer: emptying the filter table: %w", err)
	}
	return nil
}
