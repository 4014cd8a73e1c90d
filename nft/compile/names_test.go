package compile

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
	if drop := ing[0].Rules[len(ing[0].Rules)-1].Comment; !strings.HasSuffix(drop, " +30 more") {
		t.Errorf("drop comment %q: want the policies that do not fit counted", drop)
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
		{[]string{strings.Repeat("a", 120), "x/b"}, "allowed by +2 more"},
		{[]string{"x/a", strings.Repeat("b", 120)}, "allowed by x/a +1 more"},
		{[]string{`x/"q"`}, "allowed by x/_q_"},
	} {
		got := listComment("allowed by", c.refs)
		if got != c.want || len(got) > nft.MaxCommentLen {
			t.Errorf("listComment(%q) = %q, want %q", c.refs, got, c.want)
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
	// Kept: a first choice, free in this pass.
	g := group{key: first.key, policies: pols}
	taken := map[string]bool{}
	g.name(taken, &groupNames{label: first.label, chain: first.chain, setNames: first.setNames, counters: first.counters})
	if g.groupNames != first.groupNames || !taken[first.chain] {
		t.Fatalf("known first names: %+v, taken %v; want %+v", g.groupNames, taken, first.groupNames)
	}
	// Taken by a group before it in this pass: named again, after the collision.
	taken = map[string]bool{first.chain: true}
	want := fresh(first.key, map[string]bool{first.chain: true})
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
