package compile

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/trace"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "seed of TestCrosscheckRandom (0: a new one, printed)")
	casesFlag = flag.Int("cases", 2000, "number of TestCrosscheckRandom cases")
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

// crossEndpoint is an address, with its pod (and so its node) when a pod has it.
type crossEndpoint struct {
	ref  refEndpoint
	node string
	name string
}

var crossProtos = []struct {
	name  corev1.Protocol
	v4    uint8
	v6    uint8
	ports bool
}{
	{corev1.ProtocolTCP, nft.ProtoTCP, nft.ProtoTCP, true},
	{corev1.ProtocolUDP, nft.ProtoUDP, nft.ProtoUDP, true},
	{corev1.ProtocolSCTP, nft.ProtoSCTP, nft.ProtoSCTP, true},
	{"ICMP", nft.ProtoICMP, nft.ProtoICMPv6, false},
}

// crosscheck compiles w for each node and checks, for every pair of addresses (not
// both external), protocol and port, that the first packet of a connection gets
// through the forward hooks it crosses (the source pod's node, then the destination
// pod's node when different) exactly when the reference evaluator allows it. It also
// checks each ruleset's validity and the disjointness of its interval sets. It returns
// the number of packets compared and the first failures.
func crosscheck(t testing.TB, w world) (int, []string) {
	var nodes []string
	for _, p := range w.pods {
		if p.Spec.NodeName != "" && !slices.Contains(nodes, p.Spec.NodeName) {
			nodes = append(nodes, p.Spec.NodeName)
		}
	}
	slices.Sort(nodes)
	tracers := map[string]*trace.Tracer{}
	var errs []string
	for _, n := range nodes {
		rs, _ := Compile(Snapshot{NodeName: n, Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}, Options{})
		if err := rs.Validate(); err != nil {
			errs = append(errs, fmt.Sprintf("node %s: invalid ruleset: %v", n, err))
		}
		if err := checkDisjoint(rs); err != nil {
			errs = append(errs, fmt.Sprintf("node %s: %v", n, err))
		}
		tracers[n] = trace.New(rs)
	}
	if len(errs) > 0 {
		return 0, errs
	}
	var eps []crossEndpoint
	for _, p := range w.pods {
		switch {
		case p.Spec.HostNetwork: // the node's address: never crosses forward
		case refActive(p):
			for _, ip := range refPodIPs(p) {
				eps = append(eps, crossEndpoint{refEndpoint{p, ip}, p.Spec.NodeName, p.Namespace + "/" + p.Name})
			}
		default: // a finished pod's address is just an address
			for _, ip := range refPodIPs(p) {
				eps = append(eps, crossEndpoint{refEndpoint{nil, ip}, "", "finished " + p.Namespace + "/" + p.Name})
			}
		}
	}
	for _, ip := range w.externals {
		eps = append(eps, crossEndpoint{refEndpoint{nil, ip}, "", "external"})
	}
	ref := newRefCluster(w.pods, w.namespaces, w.policies)
	count := 0
	for _, src := range eps {
		for _, dst := range eps {
			if src.ref.ip == dst.ref.ip || src.ref.ip.Is4() != dst.ref.ip.Is4() || (src.node == "" && dst.node == "") {
				continue
			}
			crossed := []string{}
			for _, n := range []string{src.node, dst.node} {
				if n != "" && !slices.Contains(crossed, n) {
					crossed = append(crossed, n)
				}
			}
			for _, proto := range crossProtos {
				ports := w.ports
				if !proto.ports {
					ports = []int{0}
				}
				for _, port := range ports {
					pkt := trace.Packet{Saddr: src.ref.ip, Daddr: dst.ref.ip, L4Proto: proto.v4, DPort: uint16(port), CtState: nft.CtNew}
					if src.ref.ip.Is6() {
						pkt.L4Proto = proto.v6
						if !proto.ports {
							pkt.ICMPType = 128 // echo-request
						}
					}
					want := ref.allowed(src.ref, dst.ref, proto.name, port)
					got := true
					var traces []trace.Trace
					for _, n := range crossed {
						tr, err := tracers[n].Forward(pkt)
						if err != nil {
							return count, append(errs, fmt.Sprintf("node %s: %v: %v", n, pkt, err))
						}
						traces = append(traces, tr)
						if tr.Verdict != nft.Accept {
							got = false
							break
						}
					}
					count++
					if got != want && len(errs) < 5 {
						var b strings.Builder
						for i, tr := range traces {
							fmt.Fprintf(&b, "node %s:\n%s", crossed[i], tr)
						}
						errs = append(errs, fmt.Sprintf("%s (%s) -> %s (%s) %s/%d: ruleset allows=%v, evaluator allows=%v\n%s",
							src.name, src.ref.ip, dst.name, dst.ref.ip, proto.name, port, got, want, b.String()))
					}
				}
			}
		}
	}
	return count, errs
}

// checkDisjoint fails when two elements of an interval set overlap (the kernel
// refuses them) or a map has a key twice.
func checkDisjoint(rs *nft.Ruleset) error {
	for _, s := range rs.Sets {
		for i := range s.Elements {
			for j := i + 1; j < len(s.Elements); j++ {
				if elementsOverlap(s.Elements[i], s.Elements[j]) {
					return fmt.Errorf("set %s: elements %s and %s overlap", s.Name,
						nft.RenderElement(s.Type, s.Elements[i], false), nft.RenderElement(s.Type, s.Elements[j], false))
				}
			}
		}
	}
	return nil
}

func elementsOverlap(a, b nft.Element) bool {
	for f := range a.Key {
		x, y := a.Key[f], b.Key[f]
		if x.Addr.IsValid() {
			xe, ye := x.Addr, y.Addr
			if x.Range {
				xe = x.AddrEnd
			}
			if y.Range {
				ye = y.AddrEnd
			}
			if xe.Less(y.Addr) || ye.Less(x.Addr) {
				return false
			}
			continue
		}
		xe, ye := x.Num, y.Num
		if x.Range {
			xe = x.NumEnd
		}
		if y.Range {
			ye = y.NumEnd
		}
		if xe < y.Num || ye < x.Num {
			return false
		}
	}
	return true
}

// upstreamModel is the Kubernetes e2e network policy model: namespaces x, y, z
// (labelled ns=<name>), pods a, b, c in each (labelled pod=<name>), each serving ports
// 80 and 81 on TCP, UDP and SCTP with container ports named serve-<port>-<proto>;
// dual-stack, spread over node-1 and node-2.
func upstreamModel() ([]*corev1.Namespace, []*corev1.Pod) {
	var nss []*corev1.Namespace
	var pods []*corev1.Pod
	for i, ns := range []string{"x", "y", "z"} {
		nss = append(nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": ns}}})
		for j, name := range []string{"a", "b", "c"} {
			k := 3*i + j
			node := 1 + k%2
			pods = append(pods, modelPod(ns, name, fmt.Sprintf("node-%d", node),
				fmt.Sprintf("10.244.%d.%d", node, 10+k), fmt.Sprintf("fd00:10:244:%d::%x", node, 10+k), upstreamPorts()))
		}
	}
	return nss, pods
}

func upstreamPorts() []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, port := range []int32{80, 81} {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP} {
			out = append(out, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-%s", port, strings.ToLower(string(proto))), ContainerPort: port, Protocol: proto})
		}
	}
	return out
}

func modelPod(ns, name, node, v4, v6 string, ports []corev1.ContainerPort) *corev1.Pod {
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

var upstreamExternals = []netip.Addr{
	netip.MustParseAddr("192.168.7.7"), netip.MustParseAddr("10.244.9.9"),
	netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("fd00:10:244:9::9"),
}

// TestCrosscheckUpstreamAll: every hand-written policy of the golden cases on the
// upstream model at once (the golden test crosschecks each case on its own).
func TestCrosscheckUpstreamAll(t *testing.T) {
	w := world{ports: []int{1, 53, 79, 80, 81, 82, 85, 90, 91, 100, 101, 443, 8080, 65535}}
	w.namespaces, w.pods = upstreamModel()
	ext := map[netip.Addr]bool{}
	for _, c := range goldenCases {
		if !c.upstream {
			continue
		}
		cw := loadCase(t, c)
		w.policies = append(w.policies, cw.policies...)
		for _, a := range cw.externals {
			ext[a] = true
		}
	}
	for a := range ext {
		w.externals = append(w.externals, a)
	}
	slices.SortFunc(w.externals, netip.Addr.Compare)
	n, errs := crosscheck(t, w)
	if len(errs) > 0 {
		t.Fatal(strings.Join(errs, "\n"))
	}
	t.Logf("%d policies, %d packets compared", len(w.policies), n)
}

// TestCrosscheckRandom compares compiled rulesets and the evaluator on random
// clusters and policies. Reproduce a failure with -seed (and -cases).
func TestCrosscheckRandom(t *testing.T) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	cases := *casesFlag
	if testing.Short() {
		cases /= 10
	}
	// Cases are independent (each has its own generator, from seed and its number):
	// run them on every CPU, and report the lowest failing case.
	var (
		mu       sync.Mutex
		total    int
		failCase = -1
		failMsg  string
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cases {
					return
				}
				w := randomWorld(rand.New(rand.NewPCG(seed, uint64(i))))
				n, errs := crosscheck(t, w)
				mu.Lock()
				total += n
				if len(errs) > 0 && (failCase < 0 || i < failCase) {
					pols, _ := yaml.Marshal(w.policies)
					failCase, failMsg = i, fmt.Sprintf("%s\npolicies:\n%s", strings.Join(errs, "\n"), pols)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failCase >= 0 {
		t.Fatalf("seed %d case %d (rerun: go test ./nft/compile -run TestCrosscheckRandom -seed %d -cases %d):\n%s",
			seed, failCase, seed, failCase+1, failMsg)
	}
	t.Logf("seed %d: %d random cases, %d packets compared", seed, cases, total)
}

func randomWorld(rng *rand.Rand) world {
	w := world{ports: []int{53, 80, 81, 82, 8080}, externals: upstreamExternals}
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	for _, ns := range []string{"x", "y", "z"} {
		l := map[string]string{"ns": ns}
		if e := pick("prod", "dev", ""); e != "" {
			l["env"] = e
		}
		w.namespaces = append(w.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: l}})
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
			for _, cp := range upstreamPorts() {
				if rng.IntN(5) > 0 {
					ports = append(ports, cp)
				}
			}
			if n := rng.IntN(4); n > 0 {
				ports = append(ports, corev1.ContainerPort{Name: "http", ContainerPort: []int32{80, 81, 8080}[n-1]})
			}
			p := modelPod(ns, name, fmt.Sprintf("node-%d", node), fmt.Sprintf("10.244.%d.%d", node, k), v6, ports)
			if a := pick("web", "db", ""); a != "" {
				p.Labels["app"] = a
			}
			w.pods = append(w.pods, p)
		}
	}
	if rng.IntN(3) == 0 { // a finished pod: its address is nobody's
		p := modelPod(pick("x", "y"), "done", "node-1", "10.244.1.99", "fd00:10:244:1::99", upstreamPorts())
		p.Labels["app"] = "web"
		p.Status.Phase = corev1.PodFailed
		w.pods = append(w.pods, p)
	}
	if rng.IntN(3) == 0 { // a hostNetwork pod: never a target or a peer
		p := modelPod(pick("x", "y"), "host", "node-2", "172.18.0.2", "", upstreamPorts())
		p.Spec.HostNetwork = true
		w.pods = append(w.pods, p)
	}
	if rng.IntN(6) == 0 { // a namespace known only from its pods
		w.namespaces = w.namespaces[:2]
	}
	for i := range 1 + rng.IntN(4) {
		w.policies = append(w.policies, randomPolicy(rng, fmt.Sprintf("p%d", i), w.pods))
	}
	return w
}

func randomPolicy(rng *rand.Rand, name string, pods []*corev1.Pod) *networkingv1.NetworkPolicy {
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
		addr = upstreamExternals[rng.IntN(len(upstreamExternals))]
	} else {
		ips := refPodIPs(pods[rng.IntN(len(pods))])
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
	b := &networkingv1.IPBlock{CIDR: cidr.String()}
	for range rng.IntN(3) {
		if cidr.Bits() == addr.BitLen() {
			break
		}
		// An except inside the cidr, around one of the pods or externals in it.
		var cands []netip.Addr
		for _, p := range pods {
			for _, ip := range refPodIPs(p) {
				if cidr.Contains(ip) {
					cands = append(cands, ip)
				}
			}
		}
		for _, ip := range upstreamExternals {
			if cidr.Contains(ip) {
				cands = append(cands, ip)
			}
		}
		if len(cands) == 0 {
			break
		}
		in := cands[rng.IntN(len(cands))]
		exBits := cidr.Bits() + 1 + rng.IntN(in.BitLen()-cidr.Bits())
		b.Except = append(b.Except, netip.PrefixFrom(in, exBits).Masked().String())
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
