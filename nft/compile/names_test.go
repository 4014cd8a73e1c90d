package compile

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
)

// TestLongNames: the longest namespace and policy names, and many policies on one
// pod, still give valid names and comments within nft's limits.
func TestLongNames(t *testing.T) {
	ns := strings.Repeat("n", 63)
	pod := modelPod(ns, strings.Repeat("p", 253), "node-1", "10.0.0.1", "fd00::1", upstreamPorts())
	var pols []*networkingv1.NetworkPolicy
	for i := range 30 {
		pols = append(pols, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%02d", strings.Repeat("x", 250), i)},
			Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			},
		})
	}
	rs, problems := Compile(Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{pod}, Policies: pols}, Options{})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	var ing []nft.Chain
	for _, ch := range rs.Chains {
		if strings.HasPrefix(ch.Name, "ing-") {
			ing = append(ing, ch)
		}
	}
	if len(ing) != 1 {
		t.Fatalf("%d ingress chains, want 1 for 30 policies on one pod", len(ing))
	}
	t.Logf("chain %s", ing[0].Name)
	drop := ing[0].Rules[len(ing[0].Rules)-1].Comment
	if !strings.HasSuffix(drop, "... +29 more") || !strings.HasPrefix(drop, "isolated by "+ns+"/xxx") {
		t.Errorf("drop comment %q: want the first policy, cut, and the others counted", drop)
	}
	// Every comment of a group's objects names a policy, if only in part.
	for _, st := range rs.Sets {
		if (strings.HasPrefix(st.Name, "ing-") || strings.HasPrefix(st.Name, "eg-")) && !strings.Contains(st.Comment, ns+"/x") {
			t.Errorf("set %s: comment %q names no policy", st.Name, st.Comment)
		}
	}
	for _, ch := range rs.Chains {
		for _, r := range ch.Rules {
			if r.Comment != "" && !strings.Contains(r.Comment, ns+"/x") {
				t.Errorf("chain %s: comment %q names no policy", ch.Name, r.Comment)
			}
		}
	}
}

// TestLongGroupNamesKeepTheCount: the objects of a group of long-named
// policies say how many policies run there (`_and_1`, which the label's cut
// took off before) and share one label, so one prefix finds them all and a
// chain's reply twin is `<chain>-reply` (strict mode), for NetworkPolicy groups
// and ClusterNetworkPolicy tier groups.
func TestLongGroupNamesKeepTheCount(t *testing.T) {
	ns := strings.Repeat("n", 63)
	pod := modelPod(ns, "p", "node-1", "10.0.0.1", "fd00::1", upstreamPorts())
	var pols []*networkingv1.NetworkPolicy
	var cnps []*cnpv1.ClusterNetworkPolicy
	for i := range 2 {
		pols = append(pols, &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%d", strings.Repeat("x", 100), i)},
			Spec: networkingv1.NetworkPolicySpec{
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}}},
			},
		})
		c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", strings.Repeat("admin-deny-all-", 10), i)}}
		c.Spec.Tier, c.Spec.Priority = cnpv1.AdminTier, int32(i)
		c.Spec.Subject.Namespaces = &metav1.LabelSelector{}
		c.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: "Deny", To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"192.0.2.0/24"}}}}}
		cnps = append(cnps, c)
	}
	rs, problems := Compile(Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{pod}, Policies: pols, ClusterNetworkPolicies: cnps},
		Options{Established: EstablishedRecheck, PolicyCounters: true})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range rs.Chains {
		names = append(names, c.Name)
	}
	for _, s := range rs.Sets {
		names = append(names, s.Name)
	}
	for _, o := range rs.Objects {
		names = append(names, o.Name)
	}
	groups := 0
	for _, c := range rs.Chains {
		var base string
		switch {
		case strings.HasPrefix(c.Name, "ing-") || strings.HasPrefix(c.Name, "eg-"):
			if strings.HasSuffix(c.Name, "-reply") {
				continue
			}
			base = c.Name
		case strings.HasPrefix(c.Name, "adm-") && strings.HasSuffix(c.Name, "-v4"):
			base = strings.TrimSuffix(c.Name, "-v4")
		default:
			continue
		}
		groups++
		if !strings.HasSuffix(base, "_and_1") {
			t.Errorf("chain %s: the name does not say that two policies run there", c.Name)
		}
		if !slices.Contains(names, c.Name+"-reply") {
			t.Errorf("chain %s: no reply twin %s-reply", c.Name, c.Name)
		}
		head := regexp.MustCompile(`^[a-z-]+-[0-9a-f]{8}-`).FindString(base) // <prefix>-<hash>-
		for _, n := range names {
			if strings.HasPrefix(n, head) && !strings.HasPrefix(n, base) {
				t.Errorf("%s: the label is not chain %s's", n, c.Name)
			}
		}
	}
	if groups != 3 {
		t.Errorf("%d group chains (ingress, egress, Admin egress), want 3", groups)
	}
}

func TestListComment(t *testing.T) {
	for _, c := range []struct {
		refs []string
		want string
	}{
		{nil, "allowed by"},
		{[]string{"x/a"}, "allowed by x/a"},
		{[]string{"x/a", "x/b"}, "allowed by x/a, x/b"},
		// The first ref always shows, cut to leave room for the count.
		{[]string{strings.Repeat("a", 120), "x/b"}, "allowed by " + strings.Repeat("a", 128-len("allowed by  +1 more...")) + "... +1 more"},
		{[]string{strings.Repeat("a", 200)}, "allowed by " + strings.Repeat("a", 128-len("allowed by ...")) + "..."},
		{[]string{"x/a", strings.Repeat("b", 120)}, "allowed by x/a +1 more"},
		{[]string{`x/"q"`}, "allowed by x/_q_"},
	} {
		got := listComment("allowed by", c.refs)
		if got != c.want || len(got) > nft.MaxCommentLen {
			t.Errorf("listComment(%q) = %q, want %q", c.refs, got, c.want)
		}
	}
}

// TestComment: a comment is UTF-8 without control characters, cut on a
// character boundary with a visible mark (rule names are free text: a cut in the
// middle of a character left a lone byte in the kernel's listing, which grep
// calls binary and nft -j drops).
func TestComment(t *testing.T) {
	long := "cnp/x egress rule 4 (" + strings.Repeat("a", 99) + strings.Repeat("\u00e9", 5) + "): Deny"
	for _, c := range []struct{ in, want string }{
		{"x/a", "x/a"},
		{"tab\there\nand \"q\" \\ \x7f\u0085", "tab_here_and _q_ _ __"},
		{"broken \xc3 byte, real \ufffd", "broken _ byte, real \ufffd"},
		{strings.Repeat("a", 128), strings.Repeat("a", 128)},
		{strings.Repeat("a", 129), strings.Repeat("a", 125) + "..."},
		{long, long[:len("cnp/x egress rule 4 (")+99] + "\u00e9\u00e9..."}, // 127 bytes: half an é does not fit
	} {
		got := comment(c.in)
		if got != c.want || len(got) > nft.MaxCommentLen || !utf8.ValidString(got) {
			t.Errorf("comment(%q) = %q (%d bytes), want %q", c.in, got, len(got), c.want)
		}
		if err := (&nft.Ruleset{Table: "t", Chains: []nft.Chain{{Name: "c", Rules: []nft.Rule{{Comment: got}}}}}).Validate(); err != nil {
			t.Errorf("comment(%q): %v", c.in, err)
		}
	}
}

// TestCompileIsDeterministicRandom: shuffled inputs give the same Ruleset value
// (not only the same rendering): Plan may rely on the order of elements.
func TestCompileIsDeterministicRandom(t *testing.T) {
	for i := range 200 {
		rng := rand.New(rand.NewPCG(3, uint64(i)))
		w := randomWorld(rng)
		s := Snapshot{NodeName: "node-1", Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}
		rs1, p1 := Compile(s, Options{})
		rng.Shuffle(len(w.pods), func(i, j int) { w.pods[i], w.pods[j] = w.pods[j], w.pods[i] })
		rng.Shuffle(len(w.namespaces), func(i, j int) { w.namespaces[i], w.namespaces[j] = w.namespaces[j], w.namespaces[i] })
		rng.Shuffle(len(w.policies), func(i, j int) { w.policies[i], w.policies[j] = w.policies[j], w.policies[i] })
		s = Snapshot{NodeName: "node-1", Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}
		rs2, p2 := Compile(s, Options{})
		if !reflect.DeepEqual(rs1, rs2) || !reflect.DeepEqual(p1, p2) {
			t.Fatalf("case %d: the result depends on the order of the snapshot", i)
		}
	}
}

// TestKnownNames: a group named by the pass before keeps its names when they
// were a first choice that no group took in this pass; otherwise it is named
// again, as a first compilation names it (taken chains, collisions).
func TestKnownNames(t *testing.T) {
	pols := []*policy{{ref: "ns/a"}, {ref: "ns/b"}}
	fresh := func(key string, taken map[string]bool) group {
		g := group{key: key, policies: pols}
		g.name(taken, nil)
		return g
	}
	first := fresh("ingress\nns/a\nns/b", map[string]bool{})
	if first.collided {
		t.Fatal("a first name collided with nothing")
	}
	// Kept: a first choice, free in this pass. (What is taken is a head: the
	// chain's prefix and hash, which the deny log names it by.)
	head := nft.ObjectHead("eg", first.key)
	g := group{key: first.key, policies: pols}
	taken := map[string]bool{}
	g.name(taken, &groupNames{label: first.label, chain: first.chain, setNames: first.setNames, counters: first.counters})
	if g.groupNames != first.groupNames || !taken[head] {
		t.Fatalf("known first names: %+v, taken %v; want %+v", g.groupNames, taken, first.groupNames)
	}
	// Taken by a group before it in this pass: named again, after the collision.
	taken = map[string]bool{head: true}
	want := fresh(first.key, map[string]bool{head: true})
	g = group{key: first.key, policies: pols}
	g.name(taken, &first.groupNames)
	if g.groupNames != want.groupNames || !g.collided || g.chain == first.chain {
		t.Fatalf("known names taken this pass: %+v; want %+v", g.groupNames, want.groupNames)
	}
	// Collided before, free now: named again, which gives the first choice.
	g = group{key: first.key, policies: pols}
	g.name(map[string]bool{}, &want.groupNames)
	if g.groupNames != first.groupNames {
		t.Fatalf("known names that collided, now free: %+v; want %+v", g.groupNames, first.groupNames)
	}
}

// collidingNames returns two names prefix+<hex> whose keys (key(name)) have the
// same nft.ShortHash: a birthday search over 32 bits, ~65,000 hashes.
func collidingNames(t *testing.T, prefix string, key func(string) string) (string, string) {
	t.Helper()
	seen := map[string]string{}
	for i := range 1 << 22 {
		s := fmt.Sprintf("%s%x", prefix, i)
		h := nft.ShortHash(key(s))
		if o, ok := seen[h]; ok {
			return o, s
		}
		seen[h] = s
	}
	t.Fatal("no collision found")
	return "", ""
}

// TestNamesUniqueByHead: keys whose 32-bit hashes collide (names an author can
// craft) still give every policy objects of its own, and a deny log prefix of
// its own. Two ClusterNetworkPolicies with 253-character names alike for their
// first 200 had one set under one name (Validate refused the table; the kernel
// took it and kept one policy's elements: a Deny lost); two NetworkPolicies'
// group chains had different names but one deny log prefix, so the log named
// one policy for the other's drops.
func TestNamesUniqueByHead(t *testing.T) {
	opts := Options{DenyLog: DenyLog{Group: 1, Rate: 10}, PolicyCounters: true, Established: EstablishedRecheck}
	pod := modelPod("x", "a", "node-1", "10.244.1.10", "fd00:10:244:1::a", upstreamPorts())

	t.Run("cluster policies", func(t *testing.T) {
		long := strings.Repeat("tenant-egress-policy-x", 10)[:200] + "-"
		a, b := collidingNames(t, long, func(s string) string { return s })
		mk := func(name string, prio int32, act cnpv1.ClusterNetworkPolicyRuleAction, cidr string) *cnpv1.ClusterNetworkPolicy {
			c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
			c.Spec.Tier, c.Spec.Priority = cnpv1.AdminTier, prio
			c.Spec.Subject.Namespaces = &metav1.LabelSelector{}
			c.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: act,
				To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{cnpv1.CIDR(cidr)}}}}}
			return c
		}
		rs, problems := Compile(Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{pod},
			ClusterNetworkPolicies: []*cnpv1.ClusterNetworkPolicy{mk(a, 10, "Deny", "10.0.0.0/8"), mk(b, 20, "Accept", "192.168.0.0/16")}}, opts)
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		if err := rs.Validate(); err != nil {
			t.Fatalf("two policies whose names hash alike: %v", err)
		}
		// Each policy's peer set, with its own peers (comments are cut at 128
		// bytes: these two end alike).
		var held []string
		for _, s := range rs.Sets {
			if strings.Contains(s.Name, "-eg-") && strings.HasSuffix(s.Name, "-net-v4") {
				held = append(held, nft.RenderElement(s.Type, s.Elements[0], false))
			}
		}
		slices.Sort(held)
		if want := []string{"10.0.0.0/8", "192.168.0.0/16"}; !slices.Equal(held, want) {
			t.Errorf("the two policies' peer sets hold %q, want %q", held, want)
		}
		// The same, incrementally: b first, then a, which sorts first and
		// takes the plain key; b's objects are renamed, its cached sets
		// dropped.
		inc := Load(Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{pod},
			ClusterNetworkPolicies: []*cnpv1.ClusterNetworkPolicy{mk(b, 20, "Accept", "192.168.0.0/16")}}, opts)
		_, _ = inc.Compile()
		inc.SetClusterNetworkPolicy(mk(a, 10, "Deny", "10.0.0.0/8"))
		if got, _ := inc.Compile(); nft.Render(got) != nft.Render(rs) {
			t.Errorf("incremental compile differs from the whole one:\n%s", nft.Render(got))
		}
		prefixes := map[string]bool{}
		for _, ch := range rs.Chains {
			for _, r := range ch.Rules {
				if r.Log != nil {
					if prefixes[r.Log.Prefix] && !strings.HasSuffix(ch.Name, nft.SuffixReply) {
						t.Errorf("deny log prefix %q twice", r.Log.Prefix)
					}
					prefixes[r.Log.Prefix] = true
				}
			}
		}
	})

	t.Run("network policies", func(t *testing.T) {
		a, b := collidingNames(t, "deny-", func(s string) string { return "ingress\nx/" + s })
		var pods []*corev1.Pod
		var pols []*networkingv1.NetworkPolicy
		for i, name := range []string{a, b} {
			p := modelPod("x", name, "node-1", fmt.Sprintf("10.244.1.%d", 20+i), "", upstreamPorts())
			p.Labels = map[string]string{"app": name}
			pods = append(pods, p)
			pols = append(pols, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: p.Labels},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}})
		}
		c := Load(Snapshot{NodeName: "node-1", Pods: pods, Policies: pols}, opts)
		rs, problems := c.Compile()
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		if err := rs.Validate(); err != nil {
			t.Fatal(err)
		}
		at := c.Attribution()
		for _, name := range []string{a, b} {
			n := 0
			for prefix, g := range at.Groups {
				if len(g.Policies) == 1 && g.Policies[0].Name == name && !g.Reply {
					n++
					if !strings.Contains(prefix, " ing-") {
						t.Errorf("%s: prefix %q", name, prefix)
					}
				}
			}
			if n != 1 {
				t.Errorf("policy x/%s has %d deny log prefixes of its own, want 1 (groups: %v)", name, n, at.Groups)
			}
		}
	})
}

// TestNodeAddressZones: Node addresses are not validated; one written with a zone
// ("fd00::1%eth0") is the address a packet carries, once in the nodes peer's set
// (twice, every full sync found the table drifted and patched it).
func TestNodeAddressZones(t *testing.T) {
	pod := modelPod("x", "a", "node-1", "10.244.1.10", "fd00:10:244:1::a", upstreamPorts())
	node := func(name string, addrs ...string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
		for _, a := range addrs {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
		}
		return n
	}
	cnp := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "to-nodes"}}
	cnp.Spec.Tier, cnp.Spec.Priority = cnpv1.AdminTier, 1
	cnp.Spec.Subject.Namespaces = &metav1.LabelSelector{}
	cnp.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: "Deny",
		To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{}}}}}
	rs, problems := Compile(Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{pod}, ClusterNetworkPolicies: []*cnpv1.ClusterNetworkPolicy{cnp},
		Nodes: []*corev1.Node{node("node-1", "fd00::1", "fd00::1%eth0", "10.0.0.1"), node("node-2", "fd00::1%1", "fd00::2")}}, Options{})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	for _, s := range rs.Sets {
		if !strings.Contains(s.Name, "-eg-") || !strings.HasSuffix(s.Name, "-v6") || strings.HasSuffix(s.Name, "-net-v6") {
			continue
		}
		var got []string
		for _, e := range s.Elements {
			got = append(got, nft.RenderElement(s.Type, e, false))
		}
		if want := []string{"fd00::1", "fd00::2"}; !slices.Equal(got, want) {
			t.Errorf("set %s holds %q, want %q", s.Name, got, want)
		}
		return
	}
	t.Fatalf("no nodes peer set for IPv6 in\n%s", nft.Render(rs))
}
