package controllers

// The compiler, fed the objects as the agent's caches hold them (pruned
// protobuf, informer transforms, v1alpha2 conversion), compiles the same table,
// with the same problems, as from the whole objects: a field a trim drops that
// the compiler reads would change what the agent enforces, and nothing offline
// (explain compiles whole objects) would show it.

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/apitesting/fuzzer"
	"k8s.io/apimachinery/pkg/api/resource"
	metafuzzer "k8s.io/apimachinery/pkg/apis/meta/fuzzer"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	cnpv1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/randfill"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
)

type trimWorld struct {
	r *rand.Rand
	f *randfill.Filler
}

func newTrimWorld(seed int64) *trimWorld {
	f := fuzzer.FuzzerFor(metafuzzer.Funcs, rand.NewSource(seed), scheme.Codecs).
		NilChance(0.2).NumElements(1, 3).
		Funcs(func(q *resource.Quantity, c randfill.Continue) {
			*q = *resource.NewQuantity(c.Int63n(1000), resource.DecimalSI)
		}, func(v *intstr.IntOrString, c randfill.Continue) {
			if c.Intn(2) == 0 {
				*v = intstr.FromInt32(c.Int31n(70000))
			} else {
				*v = intstr.FromString([]string{"http", "dns", "x y", ""}[c.Intn(4)])
			}
		})
	return &trimWorld{r: rand.New(rand.NewSource(seed + 1)), f: f}
}

func (g *trimWorld) pick(s ...string) string { return s[g.r.Intn(len(s))] }

func (g *trimWorld) labels() map[string]string {
	if g.r.Intn(6) == 0 {
		return nil
	}
	m := map[string]string{}
	for _, k := range []string{"app", "tier", "role"} {
		if g.r.Intn(2) == 0 {
			m[k] = g.pick("a", "b")
		}
	}
	return m
}

func (g *trimWorld) selector() metav1.LabelSelector {
	var s metav1.LabelSelector
	if g.r.Intn(3) > 0 {
		s.MatchLabels = map[string]string{}
		for _, k := range []string{"app", "tier", "role"} {
			if g.r.Intn(3) == 0 {
				s.MatchLabels[k] = g.pick("a", "b")
			}
		}
	}
	if g.r.Intn(3) == 0 {
		ops := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}
		op := ops[g.r.Intn(len(ops))]
		req := metav1.LabelSelectorRequirement{Key: g.pick("app", "tier", "role", "kubernetes.io/metadata.name"), Operator: op}
		if op == metav1.LabelSelectorOpIn || op == metav1.LabelSelectorOpNotIn {
			req.Values = []string{g.pick("a", "b", "ns-0", "ns-1")}
		}
		s.MatchExpressions = []metav1.LabelSelectorRequirement{req}
	}
	return s
}

func (g *trimWorld) addr(i int) string {
	switch g.r.Intn(6) {
	case 0:
		return fmt.Sprintf("fd00:10::%x", i+1)
	case 1:
		return fmt.Sprintf("::ffff:10.9.0.%d", i%250+1)
	case 2:
		return "not-an-ip"
	}
	return fmt.Sprintf("10.%d.%d.%d", 1+g.r.Intn(2), i/250, i%250+1)
}

func (g *trimWorld) cidr() string {
	return g.pick("10.1.0.0/16", "10.2.0.0/24", "10.1.0.5/32", "fd00:10::/64", "0.0.0.0/0", "::ffff:10.0.0.0/104", "bogus")
}

var auditPhases = []corev1.PodPhase{corev1.PodPending, corev1.PodRunning, corev1.PodSucceeded, corev1.PodFailed, ""}

func (g *trimWorld) pod(i int, nodes []string) corev1.Pod {
	var p corev1.Pod
	g.f.Fill(&p)
	p.Namespace, p.Name, p.Labels = fmt.Sprintf("ns-%d", g.r.Intn(3)), fmt.Sprintf("pod-%d", i), g.labels()
	p.Spec.NodeName = nodes[g.r.Intn(len(nodes))]
	p.Spec.HostNetwork = g.r.Intn(6) == 0
	p.Status.Phase = auditPhases[g.r.Intn(len(auditPhases))]
	switch g.r.Intn(4) {
	case 0:
		p.Status.PodIP, p.Status.PodIPs = "", nil
	case 1:
		p.Status.PodIP, p.Status.PodIPs = g.addr(i), nil
	default:
		p.Status.PodIP = g.addr(i)
		p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}}
		if g.r.Intn(2) == 0 {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: fmt.Sprintf("fd00:20::%x", i+1)})
		}
	}
	for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
		for c := range cs {
			for j := range cs[c].Ports {
				cs[c].Ports[j].Name = g.pick("http", "dns", "", "metrics")
				cs[c].Ports[j].ContainerPort = int32([]int{80, 53, 8080, 0, 70000}[g.r.Intn(5)])
				cs[c].Ports[j].Protocol = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP, "", "ICMP"}[g.r.Intn(5)]
			}
		}
	}
	for c := range p.Spec.InitContainers {
		if g.r.Intn(2) == 0 {
			always := corev1.ContainerRestartPolicyAlways
			p.Spec.InitContainers[c].RestartPolicy = &always
		}
	}
	return p
}

func (g *trimWorld) node(i int) corev1.Node {
	var n corev1.Node
	g.f.Fill(&n)
	n.Name, n.Namespace, n.Labels = fmt.Sprintf("node-%d", i), "", g.labels()
	n.Status.Addresses = nil
	for j := range 1 + g.r.Intn(3) {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{
			Type:    []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP, corev1.NodeHostName}[g.r.Intn(3)],
			Address: g.pick(fmt.Sprintf("192.168.0.%d", i+1), fmt.Sprintf("fd00:99::%x", i*4+j+1), "node.example", fmt.Sprintf("::ffff:192.168.1.%d", i+1)),
		})
	}
	switch g.r.Intn(3) {
	case 0:
		n.Spec.PodCIDR, n.Spec.PodCIDRs = "", nil
	case 1:
		n.Spec.PodCIDR, n.Spec.PodCIDRs = fmt.Sprintf("10.1.%d.0/24", i), nil
	default:
		n.Spec.PodCIDRs = []string{fmt.Sprintf("10.1.%d.0/24", i), fmt.Sprintf("fd00:10:%x::/64", i)}
		n.Spec.PodCIDR = n.Spec.PodCIDRs[0]
	}
	return n
}

func (g *trimWorld) namespace(i int) corev1.Namespace {
	var ns corev1.Namespace
	g.f.Fill(&ns)
	ns.Name, ns.Namespace, ns.Labels = fmt.Sprintf("ns-%d", i), "", g.labels()
	return ns
}

func (g *trimWorld) npPorts() []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	for range g.r.Intn(3) {
		var pp networkingv1.NetworkPolicyPort
		if g.r.Intn(4) > 0 {
			pr := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}[g.r.Intn(3)]
			pp.Protocol = &pr
		}
		switch g.r.Intn(4) {
		case 0:
			v := intstr.FromString(g.pick("http", "dns", "metrics"))
			pp.Port = &v
		case 1, 2:
			v := intstr.FromInt32(int32([]int{80, 53, 8080}[g.r.Intn(3)]))
			pp.Port = &v
			if g.r.Intn(3) == 0 {
				e := pp.Port.IntVal + 10
				pp.EndPort = &e
			}
		}
		out = append(out, pp)
	}
	return out
}

func (g *trimWorld) npPeers() []networkingv1.NetworkPolicyPeer {
	var out []networkingv1.NetworkPolicyPeer
	for range g.r.Intn(3) {
		var pe networkingv1.NetworkPolicyPeer
		switch g.r.Intn(4) {
		case 0:
			s := g.selector()
			pe.PodSelector = &s
		case 1:
			s := g.selector()
			pe.NamespaceSelector = &s
		case 2:
			s, t := g.selector(), g.selector()
			pe.PodSelector, pe.NamespaceSelector = &s, &t
		default:
			pe.IPBlock = &networkingv1.IPBlock{CIDR: g.cidr()}
			if g.r.Intn(2) == 0 {
				pe.IPBlock.Except = []string{g.cidr()}
			}
		}
		out = append(out, pe)
	}
	return out
}

func (g *trimWorld) policy(i int) networkingv1.NetworkPolicy {
	var np networkingv1.NetworkPolicy
	g.f.Fill(&np)
	np.Namespace, np.Name = fmt.Sprintf("ns-%d", g.r.Intn(3)), fmt.Sprintf("np-%d", i)
	if g.r.Intn(4) == 0 {
		return np // the fuzzer's spec, as it is
	}
	np.Spec = networkingv1.NetworkPolicySpec{PodSelector: g.selector()}
	for _, t := range []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress} {
		if g.r.Intn(3) > 0 {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, t)
		}
	}
	for range g.r.Intn(3) {
		np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: g.npPeers(), Ports: g.npPorts()})
	}
	for range g.r.Intn(3) {
		np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: g.npPeers(), Ports: g.npPorts()})
	}
	return np
}

func (g *trimWorld) cnpProtocols() []cnpv1beta1.ClusterNetworkPolicyProtocol {
	var out []cnpv1beta1.ClusterNetworkPolicyProtocol
	for range g.r.Intn(3) {
		var p cnpv1beta1.ClusterNetworkPolicyProtocol
		port := func() *cnpv1beta1.Port {
			switch g.r.Intn(3) {
			case 0:
				return nil
			case 1:
				return &cnpv1beta1.Port{Number: int32([]int{80, 53, 8080}[g.r.Intn(3)])}
			}
			return &cnpv1beta1.Port{Range: &cnpv1beta1.PortRange{Start: 50, End: 90}}
		}
		switch g.r.Intn(4) {
		case 0:
			p.TCP = &cnpv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: port()}
		case 1:
			p.UDP = &cnpv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: port()}
		case 2:
			p.SCTP = &cnpv1beta1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port()}
		default:
			p.DestinationNamedPort = g.pick("http", "dns", "metrics")
		}
		out = append(out, p)
	}
	return out
}

func (g *trimWorld) cnpAction() cnpv1beta1.ClusterNetworkPolicyRuleAction {
	return []cnpv1beta1.ClusterNetworkPolicyRuleAction{cnpv1beta1.ClusterNetworkPolicyRuleActionAccept,
		cnpv1beta1.ClusterNetworkPolicyRuleActionDeny, cnpv1beta1.ClusterNetworkPolicyRuleActionPass}[g.r.Intn(3)]
}

func (g *trimWorld) cnp(i int) cnpv1beta1.ClusterNetworkPolicy {
	var c cnpv1beta1.ClusterNetworkPolicy
	g.f.Fill(&c)
	c.Name, c.Namespace = fmt.Sprintf("cnp-%d", i), ""
	if g.r.Intn(5) == 0 {
		return c // the fuzzer's spec
	}
	s := cnpv1beta1.ClusterNetworkPolicySpec{Tier: []cnpv1beta1.Tier{cnpv1beta1.AdminTier, cnpv1beta1.BaselineTier}[g.r.Intn(2)], Priority: int32(g.r.Intn(4))}
	if g.r.Intn(2) == 0 {
		sel := g.selector()
		s.Subject.Namespaces = &sel
	} else {
		s.Subject.Pods = &cnpv1beta1.NamespacedPod{NamespaceSelector: g.selector(), PodSelector: g.selector()}
	}
	for range g.r.Intn(3) {
		r := cnpv1beta1.ClusterNetworkPolicyIngressRule{Name: g.pick("", "in"), Action: g.cnpAction(), Protocols: g.cnpProtocols()}
		for range 1 + g.r.Intn(2) {
			var pe cnpv1beta1.ClusterNetworkPolicyIngressPeer
			if g.r.Intn(2) == 0 {
				sel := g.selector()
				pe.Namespaces = &sel
			} else {
				pe.Pods = &cnpv1beta1.NamespacedPod{NamespaceSelector: g.selector(), PodSelector: g.selector()}
			}
			r.From = append(r.From, pe)
		}
		s.Ingress = append(s.Ingress, r)
	}
	for range g.r.Intn(3) {
		r := cnpv1beta1.ClusterNetworkPolicyEgressRule{Name: g.pick("", "out"), Action: g.cnpAction(), Protocols: g.cnpProtocols()}
		for range 1 + g.r.Intn(2) {
			var pe cnpv1beta1.ClusterNetworkPolicyEgressPeer
			switch g.r.Intn(5) {
			case 0:
				sel := g.selector()
				pe.Namespaces = &sel
			case 1:
				pe.Pods = &cnpv1beta1.NamespacedPod{NamespaceSelector: g.selector(), PodSelector: g.selector()}
			case 2, 3:
				sel := g.selector()
				pe.Nodes = &sel
			default:
				pe.Networks = []cnpv1beta1.CIDR{cnpv1beta1.CIDR(g.cidr())}
			}
			r.To = append(r.To, pe)
		}
		s.Egress = append(s.Egress, r)
	}
	c.Spec = s
	return c
}

// roundTrip passes obj through its protobuf encoding, as client-go decodes a
// whole object.
func roundTrip[T any, PT interface {
	*T
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}](t *testing.T, obj PT) (PT, []byte) {
	t.Helper()
	b, err := obj.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	out := PT(new(T))
	if err := out.Unmarshal(b); err != nil {
		t.Fatal(err)
	}
	return out, b
}

func jsonRoundTrip[T any](t *testing.T, in any) *T {
	t.Helper()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out := new(T)
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// prunedCopy decodes the protobuf bytes b of a T pruned to fields, as the
// agent's list reader does.
func prunedCopy[T any, PT interface {
	*T
	Unmarshal([]byte) error
}](t *testing.T, b []byte, fields keep) PT {
	t.Helper()
	pruned, err := prune(nil, b, fields)
	if err != nil {
		t.Fatal(err)
	}
	out := PT(new(T))
	if err := out.Unmarshal(pruned); err != nil {
		t.Fatal(err)
	}
	return out
}

// throughPaths is obj as each read path's cache holds it, for a kind the
// agent reads whole and trims (trim): on the JSON path after a JSON round trip.
func throughPaths[T any](t *testing.T, obj *T, trim func(any) (any, error)) map[string]*T {
	t.Helper()
	out := map[string]*T{}
	for _, name := range []string{"protobuf-list", "protobuf-watch", "json-transform"} {
		src := obj
		if name == "json-transform" {
			src = jsonRoundTrip[T](t, obj)
		}
		o, err := trim(src)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = o.(*T)
	}
	return out
}

func renderCompiled(s compile.Snapshot, opts compile.Options) string {
	rs, problems := compile.Compile(s, opts)
	var ps []string
	for _, p := range problems {
		ps = append(ps, p.String())
	}
	return nft.Render(rs) + "\n# problems\n" + strings.Join(ps, "\n")
}

// TestTrimmedObjectsCompileAlike: worlds of pods, namespaces, nodes, NetworkPolicies and
// ClusterNetworkPolicies with every field filled at random (and the fields the
// compiler reads set to values that select, match and parse); the table and
// problems compiled from the whole objects equal those compiled from the
// objects as the agent's caches hold them, on each of its read paths.
func TestTrimmedObjectsCompileAlike(t *testing.T) {
	podDec := prunedDecoder[corev1.Pod, *corev1.Pod]{Serializer: protobuf.NewSerializer(scheme.Scheme, scheme.Scheme), fields: podWatchFields, gvk: podGVK}
	nodeDec := prunedDecoder[corev1.Node, *corev1.Node]{Serializer: protobuf.NewSerializer(scheme.Scheme, scheme.Scheme), fields: nodeWatchFields, gvk: nodeGVK}
	worlds, tables := 60, map[string]bool{}
	for w := range worlds {
		g := newTrimWorld(int64(1000 + w))
		nodeNames := []string{"node-0", "node-1", "node-2"}
		var (
			whole    compile.Snapshot
			paths    = map[string]*compile.Snapshot{"protobuf-list": {}, "protobuf-watch": {}, "json-transform": {}}
			ownWhole *corev1.Node
			ownTrim  = map[string]*corev1.Node{}
		)
		node := nodeNames[g.r.Intn(len(nodeNames))]
		whole.NodeName = node
		for _, s := range paths {
			s.NodeName = node
		}
		in := &podInterner{}
		for i := range 25 {
			p := g.pod(i, nodeNames)
			wp, b := roundTrip(t, &p)
			whole.Pods = append(whole.Pods, wp)
			// The first list: pruned to podFields.
			lp := prunedCopy[corev1.Pod](t, b, podFields)
			paths["protobuf-list"].PodRecords = append(paths["protobuf-list"].PodRecords, &in.record(lp).Pod)
			// The watch: prunedDecoder, then the informer's transform.
			obj, _, err := podDec.Decode(encodeProtobuf(t, wp), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			rec, _ := in.trimPod(obj)
			paths["protobuf-watch"].PodRecords = append(paths["protobuf-watch"].PodRecords, &rec.(*cachedPod).Pod)
			// JSON (--json, or watch-list): client-go decodes whole, the transform trims.
			jp := jsonRoundTrip[corev1.Pod](t, wp)
			rec, _ = in.trimPod(jp)
			paths["json-transform"].PodRecords = append(paths["json-transform"].PodRecords, &rec.(*cachedPod).Pod)
		}
		for i := range 3 {
			ns := g.namespace(i)
			wn, _ := roundTrip(t, &ns)
			whole.Namespaces = append(whole.Namespaces, wn)
			for name, o := range throughPaths(t, wn, trimNamespace) {
				paths[name].Namespaces = append(paths[name].Namespaces, o)
			}
		}
		for i := range 4 {
			np := g.policy(i)
			wp, _ := roundTrip(t, &np)
			whole.Policies = append(whole.Policies, wp)
			for name, o := range throughPaths(t, wp, trimPolicy) {
				paths[name].Policies = append(paths[name].Policies, o)
			}
		}
		for i := range len(nodeNames) {
			n := g.node(i)
			wn, b := roundTrip(t, &n)
			whole.Nodes = append(whole.Nodes, wn)
			if wn.Name == node {
				ownWhole = wn
			}
			// The all-node list, pruned, then trimNode.
			ln := prunedCopy[corev1.Node](t, b, nodeWatchFields)
			add := func(path string, n *corev1.Node) {
				o, _ := trimNode(n)
				tn := o.(*corev1.Node)
				paths[path].Nodes = append(paths[path].Nodes, tn)
				if tn.Name == node {
					ownTrim[path] = tn
				}
			}
			add("protobuf-list", ln)
			obj, _, err := nodeDec.Decode(encodeProtobuf(t, wn), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			add("protobuf-watch", obj.(*corev1.Node))
			add("json-transform", jsonRoundTrip[corev1.Node](t, wn))
		}
		// ClusterNetworkPolicies: served as JSON (a CRD); v1beta1 read as it is,
		// v1alpha2 converted (toV1beta1), both through the cache's default transform.
		transform := trimClusterPolicyOr(func(o any) (any, error) { return o, nil })
		alpha := map[string]bool{"protobuf-watch": true}
		for i := range 3 {
			c := g.cnp(i)
			wc := jsonRoundTrip[cnpv1beta1.ClusterNetworkPolicy](t, &c)
			whole.ClusterNetworkPolicies = append(whole.ClusterNetworkPolicies, wc)
			for name, s := range paths {
				var src any = jsonRoundTrip[cnpv1beta1.ClusterNetworkPolicy](t, wc)
				if alpha[name] {
					src = jsonRoundTrip[cnpv1alpha2.ClusterNetworkPolicy](t, wc)
				}
				o, err := transform(src)
				if err != nil {
					t.Fatal(err)
				}
				cv, err := toV1beta1(o.(client.Object))
				if err != nil {
					t.Fatal(err)
				}
				s.ClusterNetworkPolicies = append(s.ClusterNetworkPolicies, cv)
			}
		}
		for _, strict := range []bool{false, true} {
			opts := func(own *corev1.Node) compile.Options {
				o := compile.Options{PolicyCounters: true, DenyLog: compile.DenyLog{Group: 7, Rate: 10}}
				if strict {
					o.Established = compile.EstablishedRecheck
				}
				o.UnknownLocalPods, _ = NodePodCIDRs(own)
				return o
			}
			want := renderCompiled(whole, opts(ownWhole))
			tables[want] = true
			for _, name := range []string{"protobuf-list", "protobuf-watch", "json-transform"} {
				got := renderCompiled(*paths[name], opts(ownTrim[name]))
				if got != want {
					t.Errorf("world %d (node %s, strict %v), path %s: the trimmed objects compile differently\n%s",
						w, node, strict, name, lineDiff(want, got))
				}
			}
		}
	}
	t.Logf("%d worlds, %d distinct tables", worlds, len(tables))
}

func lineDiff(want, got string) string {
	a, b := strings.Split(want, "\n"), strings.Split(got, "\n")
	var out []string
	for _, l := range a {
		if !slices.Contains(b, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range b {
		if !slices.Contains(a, l) {
			out = append(out, "+ "+l)
		}
	}
	if len(out) > 40 {
		out = append(out[:40], "...")
	}
	return strings.Join(out, "\n")
}

// TestTrimmedObjectsReadAlike: the agent's other readers of trimmed objects (the CRD
// watch's crdWants, the startup taint's patch, --unknown-pod-cidrs=node, the
// Node event predicate) read of the trimmed objects what they read of the
// whole ones; and a ClusterNetworkPolicy the apiserver sends with explicit
// empty lists compiles alike read as v1beta1 and as v1alpha2 converted.
func TestTrimmedObjectsReadAlike(t *testing.T) {
	g := newTrimWorld(77)
	// The CRD.
	for i := range 300 {
		// Filled but for the schemas (a recursive type the filler does not end).
		var c apiextensionsv1.CustomResourceDefinition
		g.f.Fill(&c.ObjectMeta)
		g.f.Fill(&c.Status)
		g.f.Fill(&c.Spec.Names)
		c.Spec.Group = cnpGroup
		for range g.r.Intn(4) {
			var v apiextensionsv1.CustomResourceDefinitionVersion
			g.f.Fill(&v.Name)
			g.f.Fill(&v.Served)
			g.f.Fill(&v.Storage)
			g.f.Fill(&v.AdditionalPrinterColumns)
			v.Name = g.pick("v1beta1", "v1alpha2", "v1")
			v.Schema = &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{Type: "object"}}
			c.Spec.Versions = append(c.Spec.Versions, v)
		}
		for k := range c.Status.Conditions {
			c.Status.Conditions[k].Type = []apiextensionsv1.CustomResourceDefinitionConditionType{apiextensionsv1.Established, apiextensionsv1.NamesAccepted, apiextensionsv1.Terminating}[g.r.Intn(3)]
			c.Status.Conditions[k].Status = []apiextensionsv1.ConditionStatus{apiextensionsv1.ConditionTrue, apiextensionsv1.ConditionFalse}[g.r.Intn(2)]
		}
		if g.r.Intn(2) == 0 {
			c.DeletionTimestamp = nil
		}
		o, _ := trimCRD(&c)
		v1, d1, w1 := crdWants(&c)
		v2, d2, w2 := crdWants(o.(*apiextensionsv1.CustomResourceDefinition))
		if v1 != v2 || d1 != d2 || w1 != w2 {
			t.Errorf("CRD %d: whole says %q %v %q, trimmed %q %v %q", i, v1, d1, w1, v2, d2, w2)
		}
	}
	// Nodes: each path's trimmed Node against the whole.
	nodeDec := prunedDecoder[corev1.Node, *corev1.Node]{Serializer: protobuf.NewSerializer(scheme.Scheme, scheme.Scheme), fields: nodeWatchFields, gvk: nodeGVK}
	trimmedNodes := func(wn *corev1.Node) map[string]*corev1.Node {
		out := map[string]*corev1.Node{}
		o, _ := trimNode(wn)
		out["transform"] = o.(*corev1.Node)
		obj, _, err := nodeDec.Decode(encodeProtobuf(t, wn), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		o, _ = trimNode(obj)
		out["protobuf-watch"] = o.(*corev1.Node)
		return out
	}
	var prevWhole *corev1.Node
	var prevTrim map[string]*corev1.Node
	for i := range 300 {
		n := g.node(i % 4)
		for k := range n.Spec.Taints {
			n.Spec.Taints[k].Key = g.pick("startup", "other")
		}
		if g.r.Intn(3) == 0 && prevWhole != nil { // an update changing little
			n = *prevWhole.DeepCopy()
			n.Status.Images = nil
			n.ResourceVersion += "1"
		}
		wn, _ := roundTrip(t, &n)
		for path, tn := range trimmedNodes(wn) {
			p1, r1 := taintRemoval(wn.Spec.Taints, "startup")
			p2, r2 := taintRemoval(tn.Spec.Taints, "startup")
			if string(p1) != string(p2) || !slices.Equal(r1, r2) {
				t.Errorf("node %d %s: taint patch %s, whole %s", i, path, p2, p1)
			}
			c1, why1 := NodePodCIDRs(wn)
			c2, why2 := NodePodCIDRs(tn)
			if !slices.Equal(c1, c2) || why1 != why2 {
				t.Errorf("node %d %s: pod CIDRs %v %q, whole %v %q", i, path, c2, why2, c1, why1)
			}
			if prevWhole != nil {
				pw := nodeChanged().Update(event.UpdateEvent{ObjectOld: prevWhole, ObjectNew: wn})
				pt := nodeChanged().Update(event.UpdateEvent{ObjectOld: prevTrim[path], ObjectNew: tn})
				if pw != pt {
					t.Errorf("node %d %s: update passes %v, whole %v", i, path, pt, pw)
				}
			}
		}
		prevWhole, prevTrim = wn, trimmedNodes(wn)
	}
	// Explicit empty lists and objects, as a client may write them (none is
	// refused by the CRD's schema).
	raw := `{"apiVersion":"policy.networking.k8s.io/v1beta1","kind":"ClusterNetworkPolicy","metadata":{"name":"e"},
	"spec":{"tier":"Admin","priority":1,"subject":{"namespaces":{"matchLabels":{},"matchExpressions":[]}},
	"ingress":[],
	"egress":[{"action":"Deny","to":[{"nodes":{"matchLabels":{}}}]},
	          {"action":"Accept","to":[{"pods":{"namespaceSelector":{},"podSelector":{"matchExpressions":[]}}}]},
	          {"action":"Deny","to":[{"namespaces":{}}],"protocols":[{"tcp":{"destinationPort":{"number":80}}}]}]}}`
	var beta cnpv1beta1.ClusterNetworkPolicy
	var alpha cnpv1alpha2.ClusterNetworkPolicy
	if err := json.Unmarshal([]byte(raw), &beta); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(raw), &alpha); err != nil {
		t.Fatal(err)
	}
	ta, _ := trimClusterPolicy(&alpha)
	conv, err := toV1beta1(ta.(client.Object))
	if err != nil {
		t.Fatal(err)
	}
	tb, _ := trimClusterPolicy(&beta)
	nodes := []*corev1.Node{{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Address: "192.168.0.1"}}}}}
	ns := []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "a"}}}
	pods := []*corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"}, Spec: corev1.PodSpec{NodeName: "n1"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}}}}
	want := renderCompiled(compile.Snapshot{NodeName: "n1", Pods: pods, Namespaces: ns, Nodes: nodes, ClusterNetworkPolicies: []*cnpv1beta1.ClusterNetworkPolicy{&beta}}, compile.Options{})
	for name, c := range map[string]*cnpv1beta1.ClusterNetworkPolicy{"v1beta1 trimmed": tb.(*cnpv1beta1.ClusterNetworkPolicy), "v1alpha2 converted": conv} {
		if got := renderCompiled(compile.Snapshot{NodeName: "n1", Pods: pods, Namespaces: ns, Nodes: nodes, ClusterNetworkPolicies: []*cnpv1beta1.ClusterNetworkPolicy{c}}, compile.Options{}); got != want {
			t.Errorf("%s compiles differently:\n%s", name, lineDiff(want, got))
		}
	}
}
