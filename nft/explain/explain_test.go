package explain

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "seed of TestExplainMatchesReference (0: a new one, printed)")
	casesFlag = flag.Int("cases", 1000, "number of random clusters")
)

func upstream() Cluster {
	nss, pods := netpolref.UpstreamModel()
	return Cluster{Pods: pods, Namespaces: nss, Nodes: []*corev1.Node{node("node-1", "172.18.0.1", "fc00::1"), node("node-2", "172.18.0.2", "fc00::2")}}
}

func node(name string, addrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	return n
}

func mustRef(t testing.TB, s string) Ref {
	r, err := ParseRef(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func allowWebFromA() *networkingv1.NetworkPolicy {
	port := intstr.FromInt32(80)
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "allow-80-from-x-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"pod": "b"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"ns": "x"}},
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"pod": "a"}},
				}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &port}},
			}},
		},
	}
}

func denyAll(ns string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "deny-all"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}}}
}

func TestExplainAllowedAndDenied(t *testing.T) {
	c := upstream()
	c.Policies = []*networkingv1.NetworkPolicy{allowWebFromA()}
	ask := func(from, to string, port int) *Answer {
		t.Helper()
		a, err := Explain(c, Question{From: mustRef(t, from), To: mustRef(t, to), Port: port}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Mismatch) > 0 {
			t.Fatalf("mismatch: %v", a.Mismatch)
		}
		return a
	}
	a := ask("x/a", "y/b", 80)
	if a.Verdict != Allow || a.Ingress.Verdict != Allow || len(a.Ingress.AllowedBy) != 1 || a.Ingress.AllowedBy[0].Policy != "y/allow-80-from-x-a" || a.Ingress.AllowedBy[0].Rule != 0 {
		t.Errorf("x/a -> y/b 80:\n%s", a.Text())
	}
	if a.Ingress.AllowedBy[0].Peer != "peer 0: pods pod=a in namespaces ns=x" || a.Ingress.AllowedBy[0].Port != "port 0: TCP/80" {
		t.Errorf("attribution: %+v", a.Ingress.AllowedBy[0])
	}
	a = ask("x/b", "y/b", 80)
	if a.Verdict != Deny || a.Ingress.Verdict != Deny || a.Egress.Verdict != Allow || strings.Join(a.Ingress.IsolatedBy, ",") != "y/allow-80-from-x-a" || len(a.Ingress.AllowedBy) != 0 {
		t.Errorf("x/b -> y/b 80:\n%s", a.Text())
	}
	if !strings.HasPrefix(a.Summary, "DENY: x/b -> y/b tcp/80 (IPv4): ingress on node-1 isolated by y/allow-80-from-x-a") {
		t.Errorf("summary %q", a.Summary)
	}
	last := a.Ingress.Trace.Steps[len(a.Ingress.Trace.Steps)-1]
	if last.Verdict != "drop" || !strings.Contains(last.Text, "drop") || !strings.HasPrefix(last.Chain, "ing-") {
		t.Errorf("last step %+v", last)
	}
	a = ask("x/a", "y/b", 0)
	if a.Verdict != Partial || allowedPorts(a.Ports) != "tcp/80" || a.DetailPort != "tcp/1" {
		t.Errorf("x/a -> y/b every port: %s\n%s", allowedPorts(a.Ports), a.Text())
	}
	a = ask("192.168.7.7", "y/b", 80)
	if a.Verdict != Deny || a.Egress.JudgedBy != "" || !strings.Contains(a.Egress.Note, "external") {
		t.Errorf("external -> y/b:\n%s", a.Text())
	}
	a = ask("node/node-1", "y/b", 80) // y/b is on node-1: never crosses forward
	if a.Verdict != Allow || a.Ingress.Trace != nil || !strings.Contains(a.Summary, "never crosses the forward hook") {
		t.Errorf("node-1 -> y/b:\n%s", a.Text())
	}
	a = ask("node/node-2", "y/b", 80) // from another node: judged
	if a.Verdict != Deny {
		t.Errorf("node-2 -> y/b:\n%s", a.Text())
	}
	a, err := Explain(c, Question{From: mustRef(t, "x/a"), To: mustRef(t, "y/b"), Port: 80, Family: 6}, Options{})
	if err != nil || a.Verdict != Allow || !strings.Contains(a.To.Address, ":") {
		t.Errorf("IPv6: %v\n%v", err, a)
	}
}

// TestExplainSameNodeBothDeny: when egress drops the packet on the node that also
// judges ingress, ingress is walked alone and still answered from the table.
func TestExplainSameNodeBothDeny(t *testing.T) {
	c := upstream()
	c.Policies = []*networkingv1.NetworkPolicy{denyAll("x")}
	// x/a (node-1) and x/c (node-1): k=0 and k=2 in the upstream model.
	a, err := Explain(c, Question{From: mustRef(t, "x/a"), To: mustRef(t, "x/c"), Port: 80}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Verdict != Deny || a.Egress.Verdict != Deny || a.Ingress.Verdict != Deny || a.Ingress.Trace.Reached || a.Ingress.Trace.From != "chain pod-ingress" {
		t.Errorf("%s", a.Text())
	}
	if !strings.Contains(a.Summary, "denied twice") {
		t.Errorf("summary %q", a.Summary)
	}
}

func TestExplainErrors(t *testing.T) {
	c := upstream()
	c.Pods = append(c.Pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "pending"}, Spec: corev1.PodSpec{NodeName: "node-1"}})
	for _, q := range []struct{ from, to, want string }{
		{"x/nope", "y/b", "pod x/nope not found"},
		{"x/pending", "y/b", "pod x/pending has no address"},
		{"node/node-9", "y/b", "node node-9 not found"},
		{"10.244.1.10", "fd00:10:244:2::b", "have no address family in common"},
	} {
		_, err := Explain(c, Question{From: mustRef(t, q.from), To: mustRef(t, q.to), Port: 80}, Options{})
		if _, ok := err.(*NotFoundError); !ok || !strings.Contains(err.Error(), q.want) {
			t.Errorf("%s -> %s: err %v, want %q", q.from, q.to, err, q.want)
		}
	}
	for _, bad := range []string{"", "x", "a/b/c", "node/", "X/a", "/a"} {
		if _, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q): no error", bad)
		}
	}
}

// TestExplainMatchesReference: over random clusters, explain's verdicts (overall and
// per direction) equal the reference evaluator's, and the policy attribution agrees
// with the walk (no Mismatch), for both families, one port at a time and for every
// port at once. Reproduce a failure with -seed and -cases.
func TestExplainMatchesReference(t *testing.T) {
	explainMatchesReference(t, netpolref.RandomWorld)
}

// TestExplainMatchesReferenceTiers is TestExplainMatchesReference over mixed
// NetworkPolicy and ClusterNetworkPolicy clusters (netpolref.RandomTieredWorld),
// with the nodes' addresses among the ends (a pod's traffic to its own node is
// judged by the tiers at the input hook): the verdicts equal the reference's, and
// for every direction the rule each tier decided by is the one the walk took.
func TestExplainMatchesReferenceTiers(t *testing.T) {
	explainMatchesReference(t, netpolref.RandomTieredWorld)
}

func explainMatchesReference(t *testing.T, world func(*rand.Rand) netpolref.World) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	cases := *casesFlag
	if testing.Short() {
		cases /= 10
	}
	protos := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	questions, ranges, byTier, input := 0, 0, 0, 0
	for i := range cases {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		w := world(rng)
		c := Cluster{Pods: w.Pods, Namespaces: w.Namespaces, Policies: w.Policies, ClusterPolicies: w.ClusterPolicies, Nodes: w.Nodes}
		ref := netpolref.New(w.Pods, w.Namespaces, w.Policies).WithTiers(w.ClusterPolicies, w.Nodes)
		// Two clusters in four give explain their pods as the compiler's records
		// (Cluster.PodRecords, as nftpolicy explain lists them; the reference
		// reads the objects), one of them with its first pod as an object too.
		if i%4 >= 2 {
			c.Pods = nil
			for _, p := range w.Pods {
				rec := compile.PodOf(p)
				c.PodRecords = append(c.PodRecords, &rec)
			}
			if i%4 == 3 && len(w.Pods) > 0 {
				c.Pods = w.Pods[:1]
			}
		}
		// Every other cluster: the table as the agent writes it by default (recheck
		// mode at some epoch, policy counters) and with the deny log on.
		opts := Options{}
		if i%2 == 1 {
			opts = Options{Compile: compile.Options{Established: compile.EstablishedRecheck, PolicyCounters: true,
				DenyLog: compile.DenyLog{Group: 7600, Rate: 10}}, Epoch: uint32(1 + i%7)}
		}
		var eps []netpolref.Endpoint
		for _, p := range w.Pods {
			if netpolref.Active(p) {
				for _, ip := range netpolref.PodIPs(p) {
					eps = append(eps, netpolref.Endpoint{Pod: p, IP: ip})
				}
			}
		}
		for _, ip := range w.Externals {
			eps = append(eps, netpolref.Endpoint{IP: ip})
		}
		for _, n := range w.Nodes {
			for _, a := range n.Status.Addresses {
				if ip, err := netip.ParseAddr(a.Address); err == nil {
					eps = append(eps, netpolref.Endpoint{IP: ip, Node: n.Name})
				}
			}
		}
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d case %d (rerun: -seed %d -cases %d): %s", seed, i, seed, i+1, fmt.Sprintf(format, args...))
		}
		for range 12 {
			src, dst := eps[rng.IntN(len(eps))], eps[rng.IntN(len(eps))]
			if src.IP == dst.IP || src.IP.Is4() != dst.IP.Is4() || (src.Pod == nil && dst.Pod == nil) {
				continue
			}
			q := Question{From: refOf(src), To: refOf(dst)}
			proto := protos[rng.IntN(len(protos))]
			if rng.IntN(4) == 0 { // every port
				q.Protocol = proto
				a, err := Explain(c, q, opts)
				if err != nil {
					fail("%v", err)
				}
				if len(a.Mismatch) > 0 {
					fail("mismatch: %v", a.Mismatch)
				}
				for _, pr := range a.Ports {
					ranges++
					for _, port := range append([]int{pr.First, pr.Last}, w.Ports...) {
						if port < pr.First || port > pr.Last {
							continue
						}
						if want := verdictOf(ref.Allowed(src, dst, proto, port)); want != pr.Verdict {
							fail("%s -> %s %s/%d (range %d-%d): explain %s, reference %s\n%s", q.From, q.To, proto, port, pr.First, pr.Last, pr.Verdict, want, a.Text())
						}
					}
				}
				continue
			}
			q.Protocol = proto
			q.Port = w.Ports[rng.IntN(len(w.Ports))]
			a, err := Explain(c, q, opts)
			if err != nil {
				fail("%v", err)
			}
			questions++
			if len(a.Mismatch) > 0 {
				fail("mismatch: %v\n%s", a.Mismatch, a.Text())
			}
			for _, d := range []Direction{a.Egress, a.Ingress} {
				if d.DecidedBy == netpolref.ByAdmin || d.DecidedBy == netpolref.ByBaseline {
					byTier++
				}
			}
			if a.Egress.Trace != nil && a.Egress.Trace.From == "hook input" {
				input++
			}
			want := verdictOf(ref.Allowed(src, dst, proto, q.Port))
			eg, ing := verdictOf(ref.EgressAllows(src, dst, proto, q.Port)), verdictOf(ref.IngressAllows(src, dst, proto, q.Port))
			if a.Verdict != want || a.Egress.Verdict != eg || a.Ingress.Verdict != ing {
				fail("%s -> %s %s/%d: explain %s (egress %s, ingress %s), reference %s (egress %s, ingress %s)\n%s",
					q.From, q.To, proto, q.Port, a.Verdict, a.Egress.Verdict, a.Ingress.Verdict, want, eg, ing, a.Text())
			}
		}
	}
	t.Logf("seed %d: %d clusters, %d questions on one port (%d of their directions decided by a ClusterNetworkPolicy tier, %d walked through the input hook), %d port ranges checked, 0 mismatches",
		seed, cases, questions, byTier, input, ranges)
}

func refOf(e netpolref.Endpoint) Ref {
	if e.Pod != nil && e.IP.Is6() == false && len(netpolref.PodIPs(e.Pod)) > 0 && netpolref.PodIPs(e.Pod)[0] == e.IP {
		return Ref{Namespace: e.Pod.Namespace, Pod: e.Pod.Name}
	}
	return Ref{Addr: e.IP}
}

func verdictOf(ok bool) string {
	if ok {
		return Allow
	}
	return Deny
}

func cnp(name string, tier cnpv1.Tier, prio int32, subjectNS string) *cnpv1.ClusterNetworkPolicy {
	c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	c.Spec.Tier, c.Spec.Priority = tier, prio
	c.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{"ns": subjectNS}}
	return c
}

func fromNS(ns string) []cnpv1.ClusterNetworkPolicyIngressPeer {
	return []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"ns": ns}}}}
}

// TestExplainTiers: explain names the tier, the ClusterNetworkPolicy, its
// priority and the rule that decided; after an Admin Pass, what NetworkPolicy
// or Baseline decided; and judges a pod's traffic to its own node at input.
func TestExplainTiers(t *testing.T) {
	c := upstream()
	c.Nodes = netpolref.ModelNodes()
	c.Policies = []*networkingv1.NetworkPolicy{allowWebFromA()} // y/b: ingress TCP 80 from x/a only
	admin := cnp("guard", cnpv1.AdminTier, 10, "y")
	admin.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		{Name: "pass-x", Action: "Pass", From: fromNS("x")},
		{Name: "no-z", Action: "Deny", From: fromNS("z")},
	}
	admin.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{
		{Name: "no-node", Action: "Deny", To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"172.18.0.0/24"}}}},
	}
	base := cnp("default-deny", cnpv1.BaselineTier, 5, "z")
	base.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: "Deny", From: fromNS("x")}}
	c.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{admin, base}
	ask := func(from, to string, port int) *Answer {
		t.Helper()
		a, err := Explain(c, Question{From: mustRef(t, from), To: mustRef(t, to), Port: port}, Options{Compile: compile.Options{
			Established: compile.EstablishedRecheck, PolicyCounters: true, DenyLog: compile.DenyLog{Group: 100, Rate: 10}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Mismatch) > 0 {
			t.Fatalf("mismatch: %v\n%s", a.Mismatch, a.Text())
		}
		return a
	}
	// z/a -> y/b: Admin denies (rule 1, no-z).
	a := ask("z/a", "y/b", 80)
	st := a.Ingress.Tiers
	if a.Verdict != Deny || a.Ingress.DecidedBy != "Admin" || len(st) != 1 || st[0].Policy != "cnp/guard" || *st[0].Priority != 10 ||
		st[0].Rule != 1 || st[0].RuleName != "no-z" || st[0].Action != "Deny" {
		t.Errorf("z/a -> y/b:\n%s", a.Text())
	}
	if !strings.Contains(a.Summary, "ingress on node-1 denied by Admin cnp/guard (priority 10) rule 1 (no-z)") {
		t.Errorf("summary %q", a.Summary)
	}
	// x/a -> y/b: Admin passes (rule 0), NetworkPolicy allows.
	a = ask("x/a", "y/b", 80)
	if a.Verdict != Allow || a.Ingress.DecidedBy != "NetworkPolicy" || a.Ingress.Tiers[0].Action != "Pass" || a.Ingress.Tiers[0].Rule != 0 ||
		len(a.Ingress.AllowedBy) != 1 || !strings.Contains(a.Summary, "Admin cnp/guard (priority 10) rule 0 (pass-x) passes; ingress allowed by y/allow-80-from-x-a rule 0") {
		t.Errorf("x/a -> y/b:\n%s", a.Text())
	}
	// x/b -> y/b: passed, then NetworkPolicy denies.
	if a = ask("x/b", "y/b", 80); a.Verdict != Deny || a.Ingress.DecidedBy != "NetworkPolicy" || a.Ingress.Tiers[0].Action != "Pass" {
		t.Errorf("x/b -> y/b:\n%s", a.Text())
	}
	// x/a -> z/b: no NetworkPolicy isolates z/b: Baseline denies.
	a = ask("x/a", "z/b", 80)
	if a.Verdict != Deny || a.Ingress.DecidedBy != "Baseline" || len(a.Ingress.Tiers) != 1 || a.Ingress.Tiers[0].Tier != "Baseline" ||
		a.Ingress.Tiers[0].Policy != "cnp/default-deny" || a.Ingress.Tiers[0].Rule != 0 {
		t.Errorf("x/a -> z/b:\n%s", a.Text())
	}
	// The walk ends in the rule's drop chain, which logs.
	last := a.Ingress.Trace.Steps[len(a.Ingress.Trace.Steps)-1]
	if !strings.Contains(last.Chain, "cnp/default-deny-in-") || !strings.HasSuffix(last.Chain, "-drop") || last.Verdict != "drop" {
		t.Errorf("last step %+v", last)
	}
	// y/b (node-1) -> its own node: judged at input, Admin denies.
	a = ask("y/b", "node/node-1", 22)
	if a.Verdict != Deny || a.Egress.JudgedBy != "node-1" || a.Egress.Trace.From != "hook input" || a.Egress.DecidedBy != "Admin" || a.Egress.Tiers[0].RuleName != "no-node" {
		t.Errorf("y/b -> node-1:\n%s", a.Text())
	}
	// x/a -> its own node: no policy of x's tiers: allowed, still walked.
	if a = ask("x/a", "node/node-1", 22); a.Verdict != Allow || a.Egress.Trace == nil {
		t.Errorf("x/a -> node-1:\n%s", a.Text())
	}
	// The JSON carries the tier fields.
	a = ask("z/a", "y/b", 80)
	js, err := json.Marshal(a.Ingress)
	if err != nil || !strings.Contains(string(js), `"decidedBy":"Admin","tiers":[{"tier":"Admin","action":"Deny","policy":"cnp/guard","priority":10,"rule":1,"ruleName":"no-z","selecting":["cnp/guard"]}]`) {
		t.Errorf("json %s %v", js, err)
	}
}

// CompileOptionsOf reads the CNI gate's boot mark back from a table an agent
// wrote, so that --live compiles the same table.
func TestCompileOptionsOfSyncedBoot(t *testing.T) {
	for _, want := range []compile.Options{
		{},
		{SyncedBoot: "8d2f6c1e-3b4a-4f0e-9c1d-2a7b5e6f8091"},
		{SyncedBoot: "8d2f6c1e-3b4a-4f0e-9c1d-2a7b5e6f8091", Established: compile.EstablishedRecheck, CtMarkMask: compile.DefaultCtMarkMask},
	} {
		rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-1"}, want)
		got, _ := CompileOptionsOf(rs)
		if got.SyncedBoot != want.SyncedBoot || got.Established != want.Established {
			t.Errorf("options %+v read back as %+v", want, got)
		}
		again, _ := compile.Compile(compile.Snapshot{NodeName: "node-1"}, got)
		if d := Diff(again, rs); len(d) > 0 {
			t.Errorf("options %+v: the table compiled with what was read back differs: %q", want, d)
		}
	}
}

// TestExplainPortsNameTheDecider: without a port, each range names what decided
// each direction, and ranges that different rules decide are not merged: an
// Admin Deny of tcp/22 inside a NetworkPolicy that allows every port is a range
// of its own naming the Admin rule (it was "deny ... by x/egress-all rule 0").
func TestExplainPortsNameTheDecider(t *testing.T) {
	c := upstream()
	c.Policies = []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "egress-all"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{}}}}}
	noSSH := cnp("no-ssh", cnpv1.AdminTier, 10, "x")
	p22 := int32(22)
	noSSH.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: "Deny",
		To:        []cnpv1.ClusterNetworkPolicyEgressPeer{{Namespaces: &metav1.LabelSelector{}}},
		Protocols: []cnpv1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: p22}}}}}}
	c.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{noSSH}
	a, err := Explain(c, Question{From: mustRef(t, "x/a"), To: mustRef(t, "y/b")}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var tcp []string
	for _, p := range a.Ports {
		if p.Protocol == "tcp" {
			tcp = append(tcp, fmt.Sprintf("%d-%d %s: %s", p.First, p.Last, p.Verdict, strings.Join(p.Why, "; ")))
		}
	}
	want := []string{
		"1-21 allow: egress allowed by x/egress-all rule 0; ingress not isolated",
		"22-22 deny: egress on node-1 denied by Admin cnp/no-ssh (priority 10) rule 0; ingress not isolated",
		"23-65535 allow: egress allowed by x/egress-all rule 0; ingress not isolated",
	}
	if strings.Join(tcp, "\n") != strings.Join(want, "\n") {
		t.Errorf("tcp ranges:\n%s\nwant\n%s", strings.Join(tcp, "\n"), strings.Join(want, "\n"))
	}
}

// TestExplainOwnNode: NetworkPolicy never judges a pod's traffic to its own
// node, from it, or to the pod itself: a policy that isolates the pod is not
// named as isolating these connections (they were "isolated, no rule allows
// it", yet allowed, and with a ClusterNetworkPolicy "the table is not what the
// policies compile to"), but in a note.
func TestExplainOwnNode(t *testing.T) {
	for _, tiers := range []bool{false, true} {
		c := upstream()
		c.Nodes = netpolref.ModelNodes()
		c.Policies = []*networkingv1.NetworkPolicy{denyAll("x")}
		if tiers {
			c.ClusterPolicies = []*cnpv1.ClusterNetworkPolicy{cnp("elsewhere", cnpv1.AdminTier, 10, "z")}
		}
		for _, q := range [][2]string{{"x/a", "node/node-1"}, {"node/node-1", "x/a"}, {"x/a", "x/a"}} {
			a, err := Explain(c, Question{From: mustRef(t, q[0]), To: mustRef(t, q[1]), Port: 22}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			d := a.Egress
			if q[0] != "x/a" {
				d = a.Ingress
			}
			if a.Verdict != Allow || d.Verdict != Allow || len(d.IsolatedBy) > 0 || !strings.Contains(d.Note, "x/deny-all isolates the pod for its other traffic") ||
				strings.Contains(a.Text(), "not what") || len(a.Mismatch) > 0 {
				t.Errorf("tiers %v, %s -> %s:\n%s", tiers, q[0], q[1], a.Text())
			}
		}
	}
}

// TestExplainSharedAddress: two local pods claim one address (reported by the
// compile). Asked by the address, explain named the first pod by name, while
// the kernel judged the address by the other's policies, and called the
// difference a mismatch. Now: by address, an error naming the claimants; by
// name, the verdict the table gives the address, with a note that says why,
// and no mismatch.
func TestExplainSharedAddress(t *testing.T) {
	pod := func(ns, name, node, ip, app string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}}}
		p.Spec.NodeName = node
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIP = ip
		p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
		return p
	}
	c := Cluster{
		Pods: []*corev1.Pod{
			pod("a-team", "open-0", "node-1", "10.0.1.9", "open"),
			pod("z-team", "locked-0", "node-1", "10.0.1.9", "locked"),
			pod("c", "client", "node-2", "10.0.2.2", "client"),
		},
		Nodes: []*corev1.Node{node("node-1", "172.18.0.1"), node("node-2", "172.18.0.2")},
		Policies: []*networkingv1.NetworkPolicy{{ObjectMeta: metav1.ObjectMeta{Namespace: "z-team", Name: "deny-all"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}},
	}
	_, err := Explain(c, Question{From: mustRef(t, "c/client"), To: mustRef(t, "10.0.1.9"), Port: 80}, Options{})
	var nf *NotFoundError
	if !errors.As(err, &nf) || !strings.Contains(err.Error(), "a-team/open-0, z-team/locked-0") {
		t.Errorf("by address: %v, want an error naming both pods", err)
	}
	for _, to := range []string{"a-team/open-0", "z-team/locked-0"} {
		a, err := Explain(c, Question{From: mustRef(t, "c/client"), To: mustRef(t, to), Port: 80}, Options{})
		if err != nil {
			t.Fatalf("%s: %v", to, err)
		}
		// z-team/locked-0 is isolated, a-team/open-0 not: the address is
		// judged by deny-all, for both pods.
		if a.Verdict != Deny || len(a.Mismatch) > 0 || !strings.Contains(a.Ingress.Note, "address 10.0.1.9 is also pod ") {
			t.Errorf("to %s: verdict %s, mismatch %q, note %q\n%s", to, a.Verdict, a.Mismatch, a.Ingress.Note, a.Text())
		}
	}
}
