package compile

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/trace"
)

// TestTierCostIgnoresOtherSubjects: a packet walks the same path, rule for rule,
// whether or not 300 ClusterNetworkPolicies select other pods; only the table grows.
func TestTierCostIgnoresOtherSubjects(t *testing.T) {
	nss, pods := upstreamModel()
	nsSel := func(name string) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": name}}
	}
	mk := func(name string, tier cnpv1.Tier, prio int32, subject string) *cnpv1.ClusterNetworkPolicy {
		c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
		c.Spec.Tier, c.Spec.Priority = tier, prio
		c.Spec.Subject.Namespaces = nsSel(subject)
		c.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: "Deny", From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: nsSel("y")}}}}
		c.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: "Accept",
			To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"192.168.0.0/16"}}}}}
		return c
	}
	few := []*cnpv1.ClusterNetworkPolicy{mk("x-admin", cnpv1.AdminTier, 10, "x"), mk("x-baseline", cnpv1.BaselineTier, 10, "x")}
	many := append([]*cnpv1.ClusterNetworkPolicy{}, few...)
	for i := range 300 {
		tier := cnpv1.AdminTier
		if i%2 == 1 {
			tier = cnpv1.BaselineTier
		}
		many = append(many, mk(fmt.Sprintf("z-%03d", i), tier, int32(i%7), "z"))
	}
	compileWith := func(cnps []*cnpv1.ClusterNetworkPolicy) (*nft.Ruleset, *trace.Tracer) {
		rs, _ := Compile(Snapshot{NodeName: "node-1", Pods: pods, Namespaces: nss, ClusterNetworkPolicies: cnps}, Options{})
		return rs, trace.New(rs)
	}
	rsFew, trFew := compileWith(few)
	rsMany, trMany := compileWith(many)
	addr := func(ns, name string) netip.Addr {
		for _, p := range pods {
			if p.Namespace == ns && p.Name == name {
				return refPodIPs(p)[0]
			}
		}
		t.Fatalf("no pod %s/%s", ns, name)
		return netip.Addr{}
	}
	// x/a is on node-1, subject of the x policies; y/b on node-1 too; z/c is on
	// node-1 and the 300 select it.
	cases := []struct{ from, to [2]string }{
		{[2]string{"y", "b"}, [2]string{"x", "a"}}, // x/a's ingress: denied by x-admin
		{[2]string{"x", "a"}, [2]string{"y", "b"}}, // x/a's egress, y/b unselected
	}
	for _, c := range cases {
		pkt := trace.Packet{Saddr: addr(c.from[0], c.from[1]), Daddr: addr(c.to[0], c.to[1]), L4Proto: nft.ProtoTCP, DPort: 80, CtState: nft.CtNew}
		a, err := trFew.Forward(pkt)
		if err != nil {
			t.Fatal(err)
		}
		b, err := trMany.Forward(pkt)
		if err != nil {
			t.Fatal(err)
		}
		if a.String() != b.String() {
			t.Errorf("%v -> %v: the path changed with 300 policies selecting other pods:\n%s\nvs\n%s", c.from, c.to, a, b)
		}
		// Every chain the packet entered holds the same rules: it was evaluated
		// alike, not only matched alike.
		var entered []string
		for _, st := range b.Steps {
			entered = append(entered, st.Chain)
			if st.Verdict.Chain != "" {
				entered = append(entered, st.Verdict.Chain)
			}
		}
		for _, name := range entered {
			cf, cm := rsFew.Chain(name), rsMany.Chain(name)
			if cf == nil || cm == nil || len(cf.Rules) != len(cm.Rules) {
				t.Errorf("%v -> %v: chain %s differs", c.from, c.to, name)
				continue
			}
			for i := range cf.Rules {
				if nft.RenderRule(cf.Rules[i]) != nft.RenderRule(cm.Rules[i]) {
					t.Errorf("%v -> %v: chain %s rule %d differs", c.from, c.to, name, i)
				}
			}
		}
	}
	cf, cm := rsFew.Counts(), rsMany.Counts()
	if cm.Rules <= cf.Rules {
		t.Fatalf("the 300 policies added no rules (%d vs %d): the test proves nothing", cm.Rules, cf.Rules)
	}
	t.Logf("table: %d rules with 2 policies, %d with 302; the packets' paths are identical", cf.Rules, cm.Rules)
}

// TestClusterPortSetShapes: a ClusterNetworkPolicy rule's exact ports are a hash
// and only its wide ranges an interval set (the kernel's pipapo, a dearer lookup:
// issue 16 §4), each set and its nft rule present only when it has elements, and
// named port destinations a hash; every nft rule of one policy rule counts into
// its one named counter. Over the golden case cnp-ports (which names each shape)
// and random tiered clusters.
func TestClusterPortSetShapes(t *testing.T) {
	opts := Options{PolicyCounters: true, DenyLog: DenyLog{Group: 100, Rate: 100, Burst: 20}, Established: EstablishedRecheck}
	check := func(name string, rs *nft.Ruleset, counters bool) (ports, ranges, named int) {
		t.Helper()
		for _, s := range rs.Sets {
			if !strings.HasPrefix(s.Name, "cnp-") {
				continue
			}
			switch {
			case strings.HasSuffix(s.Name, "-ports"):
				ports++
				if s.Interval || len(s.Elements) == 0 {
					t.Errorf("%s: set %s: interval %v, %d elements; want a hash with elements", name, s.Name, s.Interval, len(s.Elements))
				}
				for _, e := range s.Elements {
					if e.Key[1].Range {
						t.Errorf("%s: set %s holds a range %v", name, s.Name, e.Key[1])
					}
				}
				if strings.Contains(nft.Render(&nft.Ruleset{Table: "t", Sets: []nft.Set{s}}), "flags interval") {
					t.Errorf("%s: set %s renders with flags interval", name, s.Name)
				}
			case strings.HasSuffix(s.Name, "-ranges"):
				ranges++
				if !s.Interval || len(s.Elements) == 0 {
					t.Errorf("%s: set %s: interval %v, %d elements; want an interval set with elements", name, s.Name, s.Interval, len(s.Elements))
				}
				for _, e := range s.Elements {
					if int(e.Key[1].NumEnd)-int(e.Key[1].Num) < maxExactPorts {
						t.Errorf("%s: set %s holds %v, which the hash should spell out", name, s.Name, e.Key[1])
					}
				}
			case strings.Contains(s.Name, "-named-v"):
				named++
				if s.Interval {
					t.Errorf("%s: set %s: a named port set with flags interval", name, s.Name)
				}
			}
		}
		// Every rule of a tier chain that looks up a rule's sets counts into the
		// counter named after that rule (cnp-<hash>-cnp/<name>-<eg|in><N>-...).
		for _, c := range rs.Chains {
			for _, r := range c.Rules {
				var set, counter string
				for _, m := range r.Matches {
					if strings.HasPrefix(m.Set, "cnp-") {
						set = m.Set
						if rs.FindSet(m.Set) == nil {
							t.Errorf("%s: chain %s looks up %s, which does not exist", name, c.Name, m.Set)
						}
					}
				}
				for _, st := range r.Statements {
					if cr, ok := st.(nft.CounterRef); ok {
						counter = cr.Name
					}
				}
				if set == "" || !counters {
					continue
				}
				i := max(strings.LastIndex(counter, "-admin-"), strings.LastIndex(counter, "-baseline-")) // <rule>-<tier>-<verdict>
				if i < 0 || !strings.HasPrefix(set, counter[:i+1]) {
					t.Errorf("%s: chain %s: the rule on %s counts into %q", name, c.Name, set, counter)
				}
			}
		}
		return ports, ranges, named
	}

	w := loadCase(t, goldenCase{name: "cnp-ports", upstream: true})
	rs, problems := Compile(w.snapshot("node-1"), opts)
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	check("cnp-ports", rs, true)
	// The shapes the case names, set by set and rule by rule.
	snap := w.snapshot("node-1")
	in := func(pol string, ingress bool, i int, what string) string {
		return ruleObject(t, snap, pol, ingress, i, what)
	}
	for _, c := range []struct {
		set     string
		ingress bool
		want    bool
		rules   int // per chain (each family's group chain and reply twin)
	}{
		{in("x-ports-in", true, 0, "ports"), true, true, 1}, // exact ports and a wide range: both
		{in("x-ports-in", true, 0, "ranges"), true, true, 1},
		{in("x-ports-out", false, 0, "ports"), false, false, 0}, // a wide range only
		{in("x-ports-out", false, 0, "ranges"), false, true, 1},
		{in("x-ports-out", false, 1, "ports"), false, true, 1}, // one port only
		{in("x-ports-out", false, 1, "ranges"), false, false, 0},
	} {
		if got := rs.FindSet(c.set) != nil; got != c.want {
			t.Errorf("set %s: present %v, want %v", c.set, got, c.want)
		}
		dir := "adm-eg-"
		if c.ingress {
			dir = "adm-in-"
		}
		chains := 0
		for _, ch := range rs.Chains {
			if !strings.HasPrefix(ch.Name, dir) {
				continue
			}
			chains++
			n := 0
			for _, r := range ch.Rules {
				for _, m := range r.Matches {
					if m.Set == c.set {
						n++
					}
				}
			}
			if n != c.rules {
				t.Errorf("chain %s: %d rules look up %s, want %d", ch.Name, n, c.set, c.rules)
			}
		}
		if chains != 4 { // the group chain of each family and their reply twins
			t.Errorf("%d chains %s*, want 4", chains, dir)
		}
	}
	if s := rs.FindSet(in("x-ports-in", true, 0, "ports")); s == nil || len(s.Elements) != 7 {
		t.Errorf("x-ports-in in0-ports: want TCP 80, UDP 53, UDP 5000-5003 spelled out and SCTP 9000 (7 elements): %v", s)
	}

	var totals [3]int
	for i := range 40 {
		w := randomTieredWorld(rand.New(rand.NewPCG(21, uint64(i))))
		for _, o := range []Options{{}, opts} {
			rs, _ := Compile(w.snapshot("node-1"), o)
			p, r, n := check(fmt.Sprintf("random %d", i), rs, o.PolicyCounters)
			totals[0], totals[1], totals[2] = totals[0]+p, totals[1]+r, totals[2]+n
		}
	}
	if totals[0] == 0 || totals[1] == 0 || totals[2] == 0 {
		t.Errorf("the random clusters did not cover every shape (ports, ranges, named sets): %v", totals)
	}
	t.Logf("random tiered clusters: %d ports hashes, %d ranges sets, %d named port hashes", totals[0], totals[1], totals[2])
}

// TestNarrowsTiers: in strict mode, an element added to a set of a
// ClusterNetworkPolicy rule that denies, or passes from the Admin tier, may deny
// an open connection (Narrows true: a new epoch); one added to an Accept rule's
// sets, or a Baseline Pass's, only allows more. Peers, exact ports and port
// ranges alike, with and without the deny log (whose Deny rules go to a drop
// chain instead of dropping).
func TestNarrowsTiers(t *testing.T) {
	addr := nft.Elem(nft.Addr(mustAddr("10.99.0.1")))
	port := func(proto uint8, n uint32) nft.Element { return nft.Elem(nft.Num(uint32(proto)), nft.Num(n)) }
	type set struct {
		pol     string
		ingress bool
		rule    int
		what    string
	}
	cases := []struct {
		src     string
		set     set
		elem    nft.Element
		narrows bool
	}{
		{"cnp-admin", set{"deny-y-to-x", true, 0, "v4"}, addr, true},               // Admin Deny peers
		{"cnp-admin", set{"pass-x-ingress", true, 0, "v4"}, addr, true},            // Admin Pass peers
		{"cnp-admin", set{"accept-z-to-x", true, 0, "v4"}, addr, false},            // Admin Accept peers
		{"cnp-admin", set{"accept-z-to-x", true, 0, "ports"}, port(6, 81), false},  // Admin Accept ports
		{"cnp-admin", set{"dns-and-no-9", false, 1, "net-v4"}, addr, true},         // Admin egress Deny (networks)
		{"cnp-baseline", set{"default-deny", true, 0, "v4"}, addr, true},           // Baseline Deny
		{"cnp-baseline", set{"web-from-x", true, 0, "v4"}, addr, false},            // Baseline Accept
		{"cnp-baseline", set{"web-from-x", false, 0, "net-v4"}, addr, true},        // Baseline egress Deny (networks)
		{"cnp-baseline", set{"z-pass", false, 0, "net-v4"}, addr, true},            // Admin egress Pass (networks)
		{"cnp-ports", set{"x-ports-out", false, 1, "ports"}, port(17, 5003), true}, // Deny on one more port
		{"cnp-ports", set{"x-ports-out", false, 0, "ranges"}, nft.Elem(nft.Num(6), nft.NumRange(9000, 9100)), true},
		{"cnp-ports", set{"x-ports-in", true, 0, "ranges"}, nft.Elem(nft.Num(17), nft.NumRange(9000, 9100)), false},
	}
	for _, denyLog := range []bool{false, true} {
		opts := Options{Established: EstablishedRecheck}
		if denyLog {
			opts.DenyLog, opts.PolicyCounters = DenyLog{Group: 100, Rate: 100, Burst: 20}, true
		}
		for _, c := range cases {
			w := loadCase(t, goldenCase{name: c.src, upstream: true})
			snap := w.snapshot("node-1")
			base, _ := Compile(snap, opts)
			if Narrows(base, base) {
				t.Fatalf("%s: no change narrows", c.src)
			}
			next := base.Clone()
			name := ruleObject(t, snap, c.set.pol, c.set.ingress, c.set.rule, c.set.what)
			s := next.FindSet(name)
			if s == nil {
				t.Fatalf("%s: no set %s", c.src, name)
			}
			s.Elements = append(s.Elements, c.elem)
			if got := Narrows(base, next); got != c.narrows {
				t.Errorf("deny log %v: an element added to %s: Narrows %v, want %v", denyLog, name, got, c.narrows)
			}
		}
	}
}

// TestCounterNameHasTier: a ClusterNetworkPolicy moved from Admin to Baseline
// counts into counters of new names, so the Admin tier's past counts are never
// served as Baseline's.
func TestCounterNameHasTier(t *testing.T) {
	names := func(tier cnpv1.Tier) map[string]bool {
		c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "guard"}}
		c.Spec.Tier, c.Spec.Priority = tier, 1
		c.Spec.Subject.Namespaces = &metav1.LabelSelector{}
		c.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: "Deny", From: []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}
		pod := modelPod("x", "a", "node-1", "10.244.1.10", "", upstreamPorts())
		rs, _ := Compile(Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{pod}, ClusterNetworkPolicies: []*cnpv1.ClusterNetworkPolicy{c}}, Options{PolicyCounters: true})
		out := map[string]bool{}
		for _, o := range rs.Objects {
			if o.Kind == nft.CounterObject {
				out[o.Name] = true
			}
		}
		return out
	}
	admin, baseline := names(cnpv1.AdminTier), names(cnpv1.BaselineTier)
	if len(admin) == 0 {
		t.Fatal("no counters")
	}
	for n := range admin {
		if baseline[n] {
			t.Errorf("counter %s counts for the policy in both tiers", n)
		}
	}
}

// ruleObject is the name the compiler gives an object of rule i (ingress or
// egress) of ClusterNetworkPolicy pol in snap: cnp-<hash>-cnp/<pol>-<rule key>-<what>
// (what: v4, net-v6, ports, ranges, named-v4, ...). The policy's key is its name
// (no other policy of snap shares its hash).
func ruleObject(t *testing.T, snap Snapshot, pol string, ingress bool, i int, what string) string {
	t.Helper()
	for _, c := range snap.ClusterNetworkPolicies {
		if c.Name != pol {
			continue
		}
		p, _ := parseClusterPolicy(c)
		if p == nil || i >= len(p.rules(ingress)) {
			t.Fatalf("cnp/%s has no rule %d (ingress %v)", pol, i, ingress)
		}
		return p.setName(p.rules(ingress)[i], what)
	}
	t.Fatalf("no ClusterNetworkPolicy %s", pol)
	return ""
}

// TestClusterRuleObjectsFollowTheRule: a ClusterNetworkPolicy rule's objects
// (sets, counter, drop chain) are named by the rule's peers and protocols, not
// its index, so a rule inserted before others (or removed) leaves theirs alone:
// the transaction adds the new rule's sets (which the applier sends a batch
// ahead) and rewrites the chains, and changes no element of a set that was
// there. With names by index it moved every later rule's networks into the sets
// of the rule before it, in the transaction that rewrote the rules: the kernel
// shows new rules to packets before it commits an interval set's new elements,
// so a packet in between was judged by one rule with another's networks. The
// counters of the rules that moved keep their counts.
func TestClusterRuleObjectsFollowTheRule(t *testing.T) {
	pod := modelPod("x", "a", "node-1", "10.244.1.10", "fd00:10:244:1::a", upstreamPorts())
	rule := func(act cnpv1.ClusterNetworkPolicyRuleAction, cidrs ...string) cnpv1.ClusterNetworkPolicyEgressRule {
		r := cnpv1.ClusterNetworkPolicyEgressRule{Action: act, To: []cnpv1.ClusterNetworkPolicyEgressPeer{{}}}
		for _, c := range cidrs {
			r.To[0].Networks = append(r.To[0].Networks, cnpv1.CIDR(c))
		}
		return r
	}
	policy := func(rules ...cnpv1.ClusterNetworkPolicyEgressRule) *cnpv1.ClusterNetworkPolicy {
		c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "guard"}}
		c.Spec.Tier, c.Spec.Priority = cnpv1.AdminTier, 10
		c.Spec.Subject.Namespaces = &metav1.LabelSelector{}
		c.Spec.Egress = rules
		return c
	}
	deny9 := rule("Deny", "10.0.0.0/8", "fd00:9::/32")
	accept192 := rule("Accept", "192.168.0.0/16")
	deny172 := rule("Deny", "172.16.0.0/12")
	twice := rule("Deny", "10.0.0.0/8", "fd00:9::/32") // the same as deny9: its own objects all the same
	steps := [][]cnpv1.ClusterNetworkPolicyEgressRule{
		{deny9, accept192},
		{deny172, deny9, accept192},        // inserted first
		{deny172, twice, deny9, accept192}, // an equal rule before another
		{deny9, accept192},                 // removed again
	}
	for _, opts := range []Options{{}, {DenyLog: DenyLog{Group: 1, Rate: 10}, PolicyCounters: true, Established: EstablishedRecheck}} {
		snap := Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{pod}, ClusterNetworkPolicies: []*cnpv1.ClusterNetworkPolicy{policy(steps[0]...)}}
		last, _ := Compile(snap, opts)
		for i, rules := range steps[1:] {
			snap.ClusterNetworkPolicies = []*cnpv1.ClusterNetworkPolicy{policy(rules...)}
			next, problems := Compile(snap, opts)
			if len(problems) > 0 {
				t.Fatal(problems)
			}
			if err := next.Validate(); err != nil {
				t.Fatalf("step %d: %v", i+1, err)
			}
			tx := nft.Plan(last, next)
			added := 0
			for _, op := range tx.Ops {
				switch op.Kind {
				case nft.OpAddElements, nft.OpDelElements:
					if last.FindSet(op.Name) != nil && !strings.HasPrefix(op.Name, "admin-") {
						t.Errorf("counters %v, step %d: the elements of %s change with the rules that use it: %s", opts.PolicyCounters, i+1, op.Name, op)
					}
				case nft.OpDelObject:
					if next.FindObject(op.Object.Name) != nil {
						t.Errorf("counters %v, step %d: %s is created again (its counts lost)", opts.PolicyCounters, i+1, op.Object.Name)
					}
				case nft.OpAddSet:
					added++
				}
			}
			if i == 0 && added == 0 {
				t.Errorf("step %d: the inserted rule's sets were not added:\n%s", i+1, tx)
			}
			last = next
		}
	}
}

// TestClusterRuleCommentsKeepTheRule: a ClusterNetworkPolicy of the longest
// name with long rule names still gives every rule a comment that says which rule
// it is and what it does ("egress rule 1 (...): Accept"), and every set one that
// says which rule it serves: the policy's name is cut first, the rule's name
// next. Cutting the comment's end gave a Deny and two Accepts one comment.
func TestClusterRuleCommentsKeepTheRule(t *testing.T) {
	name := strings.Repeat("admin-deny-all-", 17)[:253]
	c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	c.Spec.Tier, c.Spec.Priority = cnpv1.AdminTier, 1
	c.Spec.Subject.Namespaces = &metav1.LabelSelector{}
	for i, act := range []cnpv1.ClusterNetworkPolicyRuleAction{"Deny", "Accept", "Accept"} {
		c.Spec.Egress = append(c.Spec.Egress, cnpv1.ClusterNetworkPolicyEgressRule{
			Name:   strings.Repeat("é", 45) + fmt.Sprintf("-%d", i), // 92 bytes
			Action: act,
			To:     []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{cnpv1.CIDR(fmt.Sprintf("192.0.%d.0/24", i))}}},
			Protocols: []cnpv1.ClusterNetworkPolicyProtocol{
				{TCP: &cnpv1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1.Port{Number: 80}}},
				{UDP: &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnpv1.Port{Range: &cnpv1.PortRange{Start: 1000, End: 2000}}}},
			},
		})
	}
	pod := modelPod("x", "a", "node-1", "10.244.1.10", "fd00:10:244:1::a", upstreamPorts())
	snap := Snapshot{NodeName: "node-1", Pods: []*corev1.Pod{pod}, ClusterNetworkPolicies: []*cnpv1.ClusterNetworkPolicy{c}}
	for _, opts := range []Options{{}, {DenyLog: DenyLog{Group: 1, Rate: 10}, Established: EstablishedRecheck}} {
		rs, problems := Compile(snap, opts)
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		if err := rs.Validate(); err != nil {
			t.Fatal(err)
		}
		ruleRE := regexp.MustCompile(`^cnp/admin-deny-all-.*\.\.\. egress rule ([0-2]) \(é+(?:-[0-2]|\.\.\.)\): (Deny|Accept)(, port ranges|: logs and drops.*)?$`)
		for _, ch := range rs.Chains {
			comments := map[string]bool{}
			for _, r := range ch.Rules {
				if r.Comment == "" || !strings.HasPrefix(ch.Name, "adm-") && !strings.HasPrefix(ch.Name, "cnp-") {
					continue
				}
				m := ruleRE.FindStringSubmatch(r.Comment)
				if m == nil {
					t.Errorf("chain %s: comment %q does not say which rule and what it does", ch.Name, r.Comment)
					continue
				}
				if want := []string{"Deny", "Accept", "Accept"}[m[1][0]-'0']; m[2] != want {
					t.Errorf("chain %s: comment %q: rule %s is a %s", ch.Name, r.Comment, m[1], want)
				}
				comments[r.Comment] = true
			}
			if strings.HasPrefix(ch.Name, "adm-eg-") && len(comments) != 6 {
				t.Errorf("chain %s: %d comments, want 6 (3 rules, ports and port ranges)", ch.Name, len(comments))
			}
		}
		setRE := regexp.MustCompile(`^[a-z ]+ of cnp/admin-deny-all-.*\.\.\. egress rule eg-[0-9a-f]{8}$`)
		for _, s := range rs.Sets {
			if strings.HasPrefix(s.Name, "cnp-") && !setRE.MatchString(s.Comment) {
				t.Errorf("set %s: comment %q does not name its rule", s.Name, s.Comment)
			}
		}
	}
}

// TestEveryChainReached: every chain of a compiled table is reached from a base
// chain (by a jump, a goto or a verdict map's element), in every golden case and
// random tiered clusters, in keep and recheck mode, with the deny log and
// counters. A chain reached by nothing tells a reader of rules that judge
// nothing: a Baseline group chain was written for pods that NetworkPolicy
// isolates (and always decides for), and a tier group's chain for a family
// none of its subjects has.
func TestEveryChainReached(t *testing.T) {
	check := func(what string, rs *nft.Ruleset) {
		t.Helper()
		reached := map[string]bool{}
		var visit func(name string)
		visit = func(name string) {
			if reached[name] {
				return
			}
			reached[name] = true
			c := rs.Chain(name)
			if c == nil {
				return
			}
			for _, r := range c.Rules {
				if r.Verdict.Chain != "" {
					visit(r.Verdict.Chain)
				}
				if r.VMap != nil {
					if m := rs.FindSet(r.VMap.Map); m != nil {
						for _, e := range m.Elements {
							if e.Verdict.Chain != "" {
								visit(e.Verdict.Chain)
							}
						}
					}
				}
			}
		}
		for _, c := range rs.Chains {
			if c.Hook != nil {
				visit(c.Name)
			}
		}
		for _, c := range rs.Chains {
			if !reached[c.Name] {
				t.Errorf("%s: chain %s is reached by nothing", what, c.Name)
			}
		}
	}
	optsOf := []Options{{}, {Established: EstablishedRecheck, DenyLog: DenyLog{Group: 1, Rate: 10}, PolicyCounters: true}}
	for _, c := range goldenCases {
		if c.name == "duplicate-address" {
			continue // the groups of pods whose shared address is dropped are reached by nothing, on purpose
		}
		w := loadCase(t, c)
		rs, _ := Compile(w.snapshot(c.node), c.opts)
		check(c.name, rs)
	}
	for i := range 40 {
		w := randomTieredWorld(rand.New(rand.NewPCG(41, uint64(i))))
		for _, o := range optsOf {
			rs, _ := Compile(w.snapshot("node-1"), o)
			check(fmt.Sprintf("random %d (%v)", i, o.Established), rs)
		}
	}
}
