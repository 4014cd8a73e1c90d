package netpolref

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// World is a whole cluster for a crosscheck: every node's ruleset is compiled from it,
// and the reference evaluator judges it whole.
type World struct {
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy
	Externals  []netip.Addr // addresses of no pod
	Ports      []int        // destination ports to try (TCP, UDP and SCTP each)

	ClusterPolicies []*cnpv1.ClusterNetworkPolicy // the tiers (RandomTieredWorld)
	Nodes           []*corev1.Node
}

// UpstreamModel is the Kubernetes e2e network policy model: namespaces x, y, z
// (labelled ns=<name>), pods a, b, c in each (labelled pod=<name>), each serving ports
// 80 and 81 on TCP, UDP and SCTP with container ports named serve-<port>-<proto>;
// dual-stack, spread over node-1 and node-2.
func UpstreamModel() ([]*corev1.Namespace, []*corev1.Pod) {
	var nss []*corev1.Namespace
	var pods []*corev1.Pod
	for i, ns := range []string{"x", "y", "z"} {
		nss = append(nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": ns}}})
		for j, name := range []string{"a", "b", "c"} {
			k := 3*i + j
			node := 1 + k%2
			pods = append(pods, ModelPod(ns, name, fmt.Sprintf("node-%d", node),
				fmt.Sprintf("10.244.%d.%d", node, 10+k), fmt.Sprintf("fd00:10:244:%d::%x", node, 10+k), UpstreamPorts()))
		}
	}
	return nss, pods
}

func UpstreamPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, port := range []int32{80, 81} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
			out = append(out, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))), ContainerPort: port, Protocol: proto})
		}
	}
	return out
}

func ModelPod(ns, name, node, v4, v6 string, ports []corev1.ContainerPort) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, cp := range ports {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "cont-" + cp.Name, Ports: []corev1.ContainerPort{cp}})
	}
	for _, ip := range []string{v4, v6} {
		if ip != "" {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
	}
	return p
}

// moveToInit makes p's container name an init container with restartPolicy.
func moveToInit(p *corev1.Pod, name string, restartPolicy *corev1.ContainerRestartPolicy) {
	i := slices.IndexFunc(p.Spec.Containers, func(c corev1.Container) bool { return c.Name == name })
	c := p.Spec.Containers[i]
	c.RestartPolicy = restartPolicy
	p.Spec.Containers = slices.Delete(p.Spec.Containers, i, i+1)
	p.Spec.InitContainers = append(p.Spec.InitContainers, c)
}

var UpstreamExternals = []netip.Addr{
	netip.MustParseAddr("192.168.7.7"), netip.MustParseAddr("10.244.9.9"),
	netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("fd00:10:244:9::9"),
}

// RandomWorld is a random cluster: namespaces x, y, z with random labels, pods a, b, c
// in each on node-1 or node-2 (sometimes single-stack, with random container ports),
// sometimes a finished and a hostNetwork pod, and one to four random policies.
func RandomWorld(rng *rand.Rand) World {
	w := World{Ports: []int{53, 80, 81, 82, 8080}, Externals: UpstreamExternals}
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	for _, ns := range []string{"x", "y", "z"} {
		l := map[string]string{"ns": ns}
		if e := pick("prod", "dev", ""); e != "" {
			l["env"] = e
		}
		w.Namespaces = append(w.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: l}})
	}
	k := 0
	for _, ns := range []string{"x", "y", "z"} {
		for _, name := range []string{"a", "b", "c"} {
			k++
			node := 1 + rng.IntN(2)
			v6 := fmt.Sprintf("fd00:10:244:%d::%x", node, k)
			if rng.IntN(8) == 0 {
				v6 = "" // single-stack
			}
			var ports []corev1.ContainerPort
			for _, cp := range UpstreamPorts() {
				if rng.IntN(5) > 0 {
					ports = append(ports, cp)
				}
			}
			http := rng.IntN(4)
			if http > 0 {
				ports = append(ports, corev1.ContainerPort{Name: "http", ContainerPort: []int32{80, 81, 8080}[http-1]})
			}
			p := ModelPod(ns, name, fmt.Sprintf("node-%d", node), fmt.Sprintf("10.244.%d.%d", node, k), v6, ports)
			if http > 0 {
				// The named port on a container, a sidecar (an init container
				// that restarts always: it serves), or a plain init container
				// (ended before the pod serves: the name resolves nowhere).
				switch rng.IntN(3) {
				case 1:
					always := corev1.ContainerRestartPolicyAlways
					moveToInit(p, "cont-http", &always)
				case 2:
					moveToInit(p, "cont-http", nil)
				}
			}
			if a := pick("web", "db", ""); a != "" {
				p.Labels["app"] = a
			}
			w.Pods = append(w.Pods, p)
		}
	}
	if rng.IntN(3) == 0 { // a finished pod: its address is nobody's
		p := ModelPod(pick("x", "y"), "done", "node-1", "10.244.1.99", "fd00:10:244:1::99", UpstreamPorts())
		p.Labels["app"] = "web"
		p.Status.Phase = corev1.PodFailed
		w.Pods = append(w.Pods, p)
	}
	if rng.IntN(3) == 0 { // a hostNetwork pod: never a target or a peer
		p := ModelPod(pick("x", "y"), "host", "node-2", "172.18.0.2", "", UpstreamPorts())
		p.Spec.HostNetwork = true
		w.Pods = append(w.Pods, p)
	}
	if rng.IntN(6) == 0 { // a namespace known only from its pods
		w.Namespaces = w.Namespaces[:2]
	}
	for i := range 1 + rng.IntN(4) {
		w.Policies = append(w.Policies, RandomPolicy(rng, fmt.Sprintf("p%d", i), w.Pods))
	}
	return w
}

func RandomPolicy(rng *rand.Rand, name string, pods []*corev1.Pod) *networkingv1.NetworkPolicy {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: pick("x", "y", "z"), Name: name}}
	np.Spec.PodSelector = *randomSelector(rng, podLabels)
	if rng.IntN(80) == 0 { // invalid: selects no pod
		np.Spec.PodSelector.MatchExpressions = append(np.Spec.PodSelector.MatchExpressions,
			metav1.LabelSelectorRequirement{Key: "pod", Operator: metav1.LabelSelectorOpIn})
	}
	switch rng.IntN(5) {
	case 1:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 2:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 3:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	if rng.IntN(80) == 0 { // unknown: ignored
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, "Sideways")
	}
	nRules := func() int {
		switch rng.IntN(5) {
		case 0:
			return -1 // missing
		case 1:
			return 0 // empty list
		}
		return 1 + rng.IntN(3)
	}
	if n := nRules(); n >= 0 {
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
		for range n {
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: randomPeers(rng, pods), Ports: randomPorts(rng)})
		}
	}
	if n := nRules(); n >= 0 {
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{}
		for range n {
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: randomPeers(rng, pods), Ports: randomPorts(rng)})
		}
	}
	return np
}

var (
	podLabels = map[string][]string{"pod": {"a", "b", "c"}, "app": {"web", "db"}}
	nsLabels  = map[string][]string{"ns": {"x", "y", "z"}, "env": {"prod", "dev"}, "kubernetes.io/metadata.name": {"x", "z"}}
)

func randomSelector(rng *rand.Rand, keys map[string][]string) *metav1.LabelSelector {
	sel := &metav1.LabelSelector{}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	slices.Sort(names)
	for range rng.IntN(3) {
		key := names[rng.IntN(len(names))]
		vals := keys[key]
		v := vals[rng.IntN(len(vals))]
		two := []string{v, vals[rng.IntN(len(vals))]}
		switch rng.IntN(5) {
		case 0:
			if sel.MatchLabels == nil {
				sel.MatchLabels = map[string]string{}
			}
			sel.MatchLabels[key] = v
		case 1:
			sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{Key: key, Operator: metav1.LabelSelectorOpIn, Values: two})
		case 2:
			sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{Key: key, Operator: metav1.LabelSelectorOpNotIn, Values: two})
		case 3:
			sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{Key: key, Operator: metav1.LabelSelectorOpExists})
		case 4:
			sel.MatchExpressions = append(sel.MatchExpressions, metav1.LabelSelectorRequirement{Key: key, Operator: metav1.LabelSelectorOpDoesNotExist})
		}
	}
	return sel
}

func randomPeers(rng *rand.Rand, pods []*corev1.Pod) []networkingv1.NetworkPolicyPeer {
	if rng.IntN(4) == 0 {
		return nil
	}
	var out []networkingv1.NetworkPolicyPeer
	for range 1 + rng.IntN(3) {
		var pe networkingv1.NetworkPolicyPeer
		switch rng.IntN(5) {
		case 0:
			pe.PodSelector = randomSelector(rng, podLabels)
		case 1:
			pe.NamespaceSelector = randomSelector(rng, nsLabels)
		case 2:
			pe.PodSelector = randomSelector(rng, podLabels)
			pe.NamespaceSelector = randomSelector(rng, nsLabels)
		default:
			pe.IPBlock = randomIPBlock(rng, pods)
		}
		if rng.IntN(60) == 0 { // broken: the rule must allow nothing
			pe.IPBlock = &networkingv1.IPBlock{CIDR: "10.244.0/16"}
		}
		out = append(out, pe)
	}
	return out
}

func randomIPBlock(rng *rand.Rand, pods []*corev1.Pod) *networkingv1.IPBlock {
	v6 := rng.IntN(3) == 0
	var addr netip.Addr
	if rng.IntN(3) == 0 {
		addr = UpstreamExternals[rng.IntN(len(UpstreamExternals))]
	} else {
		ips := PodIPs(pods[rng.IntN(len(pods))])
		addr = ips[0]
		if v6 && len(ips) > 1 {
			addr = ips[1]
		}
	}
	lens := []int{0, 8, 16, 24, 30, 32}
	if addr.Is6() {
		lens = []int{0, 8, 48, 64, 126, 128}
	}
	bits := lens[rng.IntN(len(lens))]
	cidr := netip.PrefixFrom(addr, bits).Masked()
	// Now and then an IPv4 prefix written IPv4-mapped (::ffff:10.0.0.0/104),
	// as validation accepts where StrictIPCIDRValidation is off.
	mapped := addr.Is4() && rng.IntN(4) == 0
	text := func(p netip.Prefix) string {
		if mapped && rng.IntN(2) == 0 {
			return netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96).String()
		}
		return p.String()
	}
	b := &networkingv1.IPBlock{CIDR: text(cidr)}
	for range rng.IntN(3) {
		if cidr.Bits() == addr.BitLen() {
			break
		}
		// An except inside the cidr, around one of the pods or externals in it.
		var cands []netip.Addr
		for _, p := range pods {
			for _, ip := range PodIPs(p) {
				if cidr.Contains(ip) {
					cands = append(cands, ip)
				}
			}
		}
		for _, ip := range UpstreamExternals {
			if cidr.Contains(ip) {
				cands = append(cands, ip)
			}
		}
		if len(cands) == 0 {
			break
		}
		in := cands[rng.IntN(len(cands))]
		exBits := cidr.Bits() + 1 + rng.IntN(in.BitLen()-cidr.Bits())
		b.Except = append(b.Except, text(netip.PrefixFrom(in, exBits).Masked()))
	}
	return b
}

func randomPorts(rng *rand.Rand) []networkingv1.NetworkPolicyPort {
	if rng.IntN(3) == 0 {
		return nil
	}
	var out []networkingv1.NetworkPolicyPort
	for range 1 + rng.IntN(3) {
		var pp networkingv1.NetworkPolicyPort
		if n := rng.IntN(5); n < 3 {
			proto := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}[n]
			pp.Protocol = &proto
		}
		switch rng.IntN(6) {
		case 0: // protocol only
		case 1, 2:
			port := intstr.FromInt32([]int32{53, 80, 81, 8080}[rng.IntN(4)])
			pp.Port = &port
			if rng.IntN(3) == 0 {
				end := port.IntVal + []int32{0, 1, 2, 8000}[rng.IntN(4)]
				pp.EndPort = &end
			}
		default:
			port := intstr.FromString([]string{"serve-80-tcp", "serve-81-tcp", "serve-80-udp", "serve-81-sctp", "http", "missing"}[rng.IntN(6)])
			pp.Port = &port
		}
		if rng.IntN(60) == 0 { // broken: the rule must allow nothing
			end := int32(1)
			port := intstr.FromInt32(80)
			pp.Port, pp.EndPort = &port, &end
		}
		out = append(out, pp)
	}
	return out
}
