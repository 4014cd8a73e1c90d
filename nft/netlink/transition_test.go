package netlink

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

func TestApplyTwiceSendsNothing(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-idem")
	a := newApplier(t, ns, "np")
	model := richModel("np")
	if st := mustApply(t, a, model); !st.Full {
		t.Errorf("first apply not full: %+v", st)
	}
	before := nftRun(t, ns, "", "list", "table", "inet", "np")
	st := mustApply(t, a, richModel("np"))
	if st.Operations != 0 || st.Bytes != 0 || st.Full {
		t.Errorf("second apply of the same ruleset sent something: %+v", st)
	}
	if after := nftRun(t, ns, "", "list", "table", "inet", "np"); after != before {
		t.Errorf("table changed:\n%s", diffText(before, after))
	}
}

// transitions are pairs A -> B. Each is applied as A then B in one namespace and B
// from scratch (nft -f) in another; the tables must be the same.
// transition is a table before and after a change.
type transition struct {
	name string
	a, b *nft.Ruleset
}

func transitions() []transition {
	type pair = transition
	var out []pair
	add := func(name string, a *nft.Ruleset, change func(b *nft.Ruleset)) {
		b := a.Clone()
		change(b)
		out = append(out, pair{name, a, b})
	}
	base := func() *nft.Ruleset { return richModel("np") }
	set := func(r *nft.Ruleset, name string) *nft.Set { return r.FindSet(name) }

	add("pod churn in maps", base(), func(b *nft.Ruleset) {
		m := set(b, "vm4")
		m.Elements = append(m.Elements[1:], nft.Element{Key: []nft.Value{ad("10.244.1.9")}, Verdict: to(nft.Goto, "c1"), Comment: "x/new"})
		set(b, "vm6").Elements = nil
	})
	add("interval merges and zero ends", base(), func(b *nft.Ruleset) {
		// 10.0.0.0/25 + 10.0.0.128/25 become one /24; 0.0.0.0/8 leaves (a leading end
		// at zero appears), and an element at zero arrives in iv6 (its end at zero goes).
		set(b, "iv4b").Elements = []nft.Element{nft.Elem(p4("10.0.0.0/24")), nft.Elem(p4("128.0.0.0/1"))}
		set(b, "iv4").Elements = set(b, "iv4").Elements[1:]
		set(b, "iv6").Elements = append(set(b, "iv6").Elements, nft.Elem(p4("::/8")))
		set(b, "es").Elements = []nft.Element{nft.Elem(p4("192.168.0.0/16"))}
		ci := set(b, "ci4")
		ci.Elements = append(ci.Elements[1:], nft.Elem(p4("10.9.0.0/16"), nft.Num(nft.ProtoTCP), nft.NumRange(1, 1024)))
	})
	add("zero end goes away", base(), func(b *nft.Ruleset) {
		set(b, "iv6").Elements = []nft.Element{nft.Elem(p4("::/1"))}
		set(b, "sv").Elements = []nft.Element{nft.Elem(nft.NumRange(0, 100))}
	})
	add("map verdict and comment change", base(), func(b *nft.Ruleset) {
		m := set(b, "vm4")
		m.Elements[0].Verdict = to(nft.Jump, "c2")
		m.Elements[1].Comment = "now commented"
		set(b, "ivm").Elements[0].Verdict = vd(nft.Drop)
	})
	add("chain referenced by a map in A only", base(), func(b *nft.Ruleset) {
		// vm4 sends 10.244.1.8 to c2 in A; in B c2 is gone, with its rule using @es.
		set(b, "vm4").Elements = set(b, "vm4").Elements[:3]
		b.Chains = slices.DeleteFunc(b.Chains, func(c nft.Chain) bool { return c.Name == "c2" })
		fwd := b.Chain("forward")
		fwd.Rules = slices.DeleteFunc(fwd.Rules, func(r nft.Rule) bool { return r.Verdict.Chain == "c2" })
		b.Sets = slices.DeleteFunc(b.Sets, func(s nft.Set) bool { return s.Name == "es" })
	})
	out = append(out, pair{"chain referenced by a map in B only", out[len(out)-1].b, out[len(out)-1].a})
	add("set type change", base(), func(b *nft.Ruleset) {
		s := set(b, "s4")
		s.Type = tPorts4
		s.Elements = []nft.Element{nft.Elem(ad("10.1.1.1"), nft.Num(nft.ProtoTCP), nft.Num(80))}
		fwd := b.Chain("forward")
		for i, r := range fwd.Rules {
			if len(r.Matches) == 1 && r.Matches[0].Set == "s4" {
				fwd.Rules[i].Matches[0] = nft.Not(nft.InSet("s4", kPorts4...))
			}
		}
		// A flag change alone: the rule text stays, the set is re-created under it.
		set(b, "es").Interval = false
	})
	add("base chain hook and priority change", base(), func(b *nft.Ruleset) {
		b.Chain("forward").Hook.Priority = -5
		b.Chain("input2").Hook.Hook = "output"
		b.Chain("input2").Hook.Policy = nft.Accept
		// A regular chain becomes a base chain.
		b.Chain("c4").Hook = &nft.Hook{Type: "filter", Hook: "postrouting", Priority: 100, Policy: nft.Accept}
	})
	add("rules reordered", base(), func(b *nft.Ruleset) {
		slices.Reverse(b.Chain("forward").Rules)
		slices.Reverse(b.Chain("c2").Rules)
	})
	add("everything goes", base(), func(b *nft.Ruleset) { b.Sets, b.Chains = nil, nil })
	out = append(out, pair{"everything comes", out[len(out)-1].b, out[len(out)-1].a})
	return out
}

func TestTransitions(t *testing.T) {
	requireKernel(t)
	for _, tc := range transitions() {
		testTransition(t, tc, false)
	}
}

// TestTransitionsShared is TestTransitions with Options.ShareDesired: the applier
// keeps the rulesets it is given instead of copies.
func TestTransitionsShared(t *testing.T) {
	requireKernel(t)
	for _, tc := range transitions() {
		testTransition(t, tc, true)
	}
}

func testTransition(t *testing.T, tc transition, share bool) {
	t.Run(tc.name, func(t *testing.T) {
		for _, r := range []*nft.Ruleset{tc.a, tc.b} {
			if err := r.Validate(); err != nil {
				t.Fatal(err)
			}
		}
		nsAB, nsB := nfttest.NewNetNS(t, "np3-ab"), nfttest.NewNetNS(t, "np3-b")
		a, err := New(Options{Table: "np", NetNSPath: nsAB.Path(), ShareDesired: share})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		mustApply(t, a, tc.a)
		st := mustApply(t, a, tc.b)
		if st.Full {
			t.Errorf("A -> B was a full sync")
		}
		tx := nft.Plan(tc.a, tc.b)
		t.Logf("plan:\n%s", tx)
		nftRun(t, nsB, nft.Render(tc.b), "-f", "-")
		if got, want := listing(t, nsAB, "np"), listing(t, nsB, "np"); got != want {
			t.Errorf("A then B differs from B (- fresh, + A->B):\n%s", diffText(want, got))
		}
		// The kernel's view too, anonymous set numbers aside.
		if got, want := netlinkListing(t, nsAB, "np"), netlinkListing(t, nsB, "np"); got != want {
			t.Errorf("netlink view of A then B differs from B (- fresh, + A->B):\n%s", diffText(want, got))
		}
		if st := mustApply(t, a, tc.b); st.Operations != 0 {
			t.Errorf("B again sent %d messages", st.Operations)
		}
	})
}

func TestPodChurnIsElementsOnly(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-churn")
	a := newApplier(t, ns, "np")
	r := richModel("np")
	mustApply(t, a, r)
	r2 := r.Clone()
	m := r2.FindSet("vm4")
	m.Elements = append(m.Elements, nft.Element{Key: []nft.Value{ad("10.244.2.1")}, Verdict: to(nft.Goto, "c1"), Comment: "x/pod-1"})
	st := mustApply(t, a, r2)
	if st.Full || st.Operations != 1 || st.Elements != 1 || st.ChainsRewritten != 0 {
		t.Errorf("one pod added: %+v", st)
	}
	t.Logf("one pod added: %d messages, %d bytes", st.Operations, st.Bytes)
	st = mustApply(t, a, r)
	if st.Operations != 1 || st.Elements != 1 || st.ChainsRewritten != 0 {
		t.Errorf("one pod removed: %+v", st)
	}
}

// TestAtomicFailure makes the kernel refuse a batch that Validate accepts and checks
// that nothing changed, that the error names the element, and that the next Apply is
// a full sync that works.
func TestAtomicFailure(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-atomic")
	a := newApplier(t, ns, "np")
	good := richModel("np")
	mustApply(t, a, good)
	before := nftRun(t, ns, "", "list", "table", "inet", "np")

	cases := []struct {
		name   string
		change func(r *nft.Ruleset)
		errno  unix.Errno
		names  string
	}{
		{"overlapping interval elements, incremental", func(r *nft.Ruleset) {
			s := r.FindSet("iv4")
			s.Elements = append(s.Elements, nft.Elem(p4("10.0.0.128/25")))
			r.FindSet("vm4").Elements = r.FindSet("vm4").Elements[1:] // and more in the same batch
		}, unix.EEXIST, "add element 10.0.0.128/25 in set iv4"},
		{"overlapping concatenated intervals", func(r *nft.Ruleset) {
			s := r.FindSet("ci4")
			s.Elements = append(s.Elements, nft.Elem(p4("10.0.0.0/25"), nft.Num(nft.ProtoTCP), nft.NumRange(85, 95)))
		}, unix.EEXIST, "add element 10.0.0.0/25 . tcp . 85-95 in set ci4"},
		{"rule using a missing set", func(r *nft.Ruleset) {
			c := r.Chain("c1")
			c.Rules = append([]nft.Rule{rule(acc(), nft.InSet("missing", nft.KeyIPSaddr))}, c.Rules...)
		}, unix.ENOENT, "add rule to chain c1: ip saddr @missing accept"},
		{"a new set, and a rule using a missing set", func(r *nft.Ruleset) {
			r.Sets = append(r.Sets, nft.Set{Name: "fresh", Type: []nft.DataType{nft.TypeIPv4Addr}, Interval: true,
				Elements: []nft.Element{nft.Elem(p4("10.7.0.0/16"))}})
			c := r.Chain("c1")
			c.Rules = append([]nft.Rule{rule(acc(), nft.InSet("fresh", nft.KeyIPSaddr)), rule(acc(), nft.InSet("missing", nft.KeyIPSaddr))}, c.Rules...)
		}, unix.ENOENT, "add rule to chain c1: ip saddr @missing accept"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bad := good.Clone()
			tc.change(bad)
			_, err := a.Apply(context.Background(), bad)
			var te *TransactionError
			if !errors.As(err, &te) {
				t.Fatalf("want a TransactionError, got %v", err)
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, tc.errno) || !strings.Contains(te.Op, tc.names) {
				t.Errorf("error %q: want %v naming %q", err, tc.errno, tc.names)
			}
			if after := nftRun(t, ns, "", "list", "table", "inet", "np"); after != before {
				t.Fatalf("table changed by a refused batch:\n%s", diffText(before, after))
			}
			st, err := a.Apply(context.Background(), good)
			if err != nil || !st.Full {
				t.Fatalf("apply after failure: %+v %v", st, err)
			}
			if after := listing(t, ns, "np"); after != nfttest.SortBlocks(before) {
				t.Fatalf("table after recovery:\n%s", diffText(nfttest.SortBlocks(before), after))
			}
			before = nftRun(t, ns, "", "list", "table", "inet", "np")
		})
	}
	// A full sync that the kernel refuses leaves the old table too.
	bad := good.Clone()
	s := bad.FindSet("iv4")
	s.Elements = append(s.Elements, nft.Elem(p4("10.0.0.0/16")))
	a.last = nil
	if _, err := a.Apply(context.Background(), bad); err == nil {
		t.Fatal("full sync with overlapping elements succeeded")
	}
	if after := nftRun(t, ns, "", "list", "table", "inet", "np"); after != before {
		t.Fatalf("table changed by a refused full sync:\n%s", diffText(before, after))
	}
}

// TestAdoption replaces a table left by someone else (same name, other content) in
// the first Apply, in one transaction, leaving other tables alone.
func TestAdoption(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-adopt")
	fresh := nfttest.NewNetNS(t, "np3-adopt-b")
	old := `table inet np {
	set old { type ipv4_addr; elements = { 1.2.3.4 }; }
	chain forward { type filter hook forward priority 0; policy drop; ip saddr @old accept; }
	chain stale { counter; }
}
table inet other {
	chain c { type filter hook input priority 0; policy accept; counter accept; }
}
table ip np {
	chain c {
	}
}
`
	nftRun(t, ns, old, "-f", "-")
	otherBefore := nftRun(t, ns, "", "list", "table", "inet", "other")
	ipBefore := nftRun(t, ns, "", "list", "table", "ip", "np")

	// Watch the namespace's nftables events: one transaction must do it all.
	mon := exec.Command("nft", "monitor")
	out, err := mon.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Start(mon); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mon.Process.Kill(); _ = mon.Wait() }()
	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// waitFor collects events up to the first that contains marker.
	waitFor := func(marker string, d time.Duration) ([]string, bool) {
		var got []string
		timeout := time.After(d)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("nft monitor ended; saw %q", got)
				}
				got = append(got, l)
				if strings.Contains(l, marker) {
					return got, true
				}
			case <-timeout:
				return got, false
			}
		}
	}
	// mark runs a transaction of its own and waits until the monitor has reported
	// it whole: every event before it has been read.
	mark := func(name string, d time.Duration) bool {
		nftRun(t, ns, "", "add", "table", "inet", name)
		if _, ok := waitFor("add table inet "+name, d); !ok {
			return false
		}
		_, ok := waitFor("# new generation", d)
		return ok
	}
	for i := 0; !mark(fmt.Sprintf("ready%d", i), 200*time.Millisecond); i++ {
		if i > 50 {
			t.Fatal("nft monitor does not report")
		}
	}
	a := newApplier(t, ns, "np")
	model := withoutConcatIntervals(richModel("np"))
	st := mustApply(t, a, model)
	if !st.Full {
		t.Errorf("first apply not full: %+v", st)
	}
	nftRun(t, ns, "", "add", "table", "inet", "marker")
	events, ok := waitFor("add table inet marker", 10*time.Second)
	if !ok {
		t.Fatalf("nft monitor did not report the marker; saw %q", events)
	}
	gens := 0
	for _, l := range events {
		if strings.HasPrefix(l, "# new generation") {
			gens++
		}
	}
	if gens != 1 || !slices.Contains(events, "delete table inet np") {
		t.Errorf("want the old table deleted and the new one created in one generation, got:\n%s", strings.Join(events, "\n"))
	}
	nftRun(t, fresh, nft.Render(model), "-f", "-")
	if got, want := listing(t, ns, "np"), listing(t, fresh, "np"); got != want {
		t.Errorf("adopted table differs from a fresh one:\n%s", diffText(want, got))
	}
	if got := nftRun(t, ns, "", "list", "table", "inet", "other"); got != otherBefore {
		t.Errorf("table inet other changed:\n%s", diffText(otherBefore, got))
	}
	if got := nftRun(t, ns, "", "list", "table", "ip", "np"); got != ipBefore {
		t.Errorf("table ip np changed:\n%s", diffText(ipBefore, got))
	}
}

// tamper edits richModel's table np behind the applier's back and returns the
// drift a full sync then reports.
func tamper(t *testing.T, ns *nfttest.NetNS) []string {
	t.Helper()
	nftRun(t, ns, "", "delete", "element", "inet", "np", "vm4", "{ 10.244.1.5, 10.244.1.6, 10.244.1.7 }")
	nftRun(t, ns, "", "add", "element", "inet", "np", "s4", "{ 10.9.9.9 }")
	nftRun(t, ns, "", "flush", "chain", "inet", "np", "c2")
	nftRun(t, ns, "", "add", "chain", "inet", "np", "intruder")
	nftRun(t, ns, "", "flush", "chain", "inet", "np", "c3")
	nftRun(t, ns, "", "delete", "map", "inet", "np", "emap")
	nftRun(t, ns, "", "delete", "chain", "inet", "np", "c4")
	return []string{
		"chain c2: 0 rules, want 2",
		"chain c3: 0 rules, want 1",
		"chain c4 missing",
		"chain intruder unexpected",
		"set emap missing",
		"set s4: 1 elements unexpected",
		"set vm4: 3 elements missing",
	}
}

func TestFullSyncReportsDrift(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-drift")
	a := newApplier(t, ns, "np")
	model := richModel("np")

	nftRun(t, ns, "table inet np {\n\tchain x {\n\t}\n}\n", "-f", "-")
	st, err := a.FullSync(ctx, model)
	if err != nil || !st.Full || len(st.Drift) != 1 || !strings.Contains(st.Drift[0], "existed before") {
		t.Fatalf("first full sync: %+v %v", st, err)
	}
	st, err = a.FullSync(ctx, model)
	if err != nil || len(st.Drift) != 0 {
		t.Fatalf("full sync without drift: %q %v", st.Drift, err)
	}
	want := tamper(t, ns)
	st, err = a.FullSync(ctx, model)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(st.Drift, want) {
		t.Errorf("drift:\n%s\nwant:\n%s", strings.Join(st.Drift, "\n"), strings.Join(want, "\n"))
	}
	if st, err := a.Apply(ctx, model); err != nil || st.Operations != 0 {
		t.Errorf("apply after full sync: %+v %v", st, err)
	}
	nftRun(t, ns, "", "delete", "table", "inet", "np")
	st, err = a.FullSync(ctx, model)
	if err != nil || !slices.Equal(st.Drift, []string{"table inet np missing"}) {
		t.Errorf("missing table: %q %v", st.Drift, err)
	}
}

func TestDelete(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-del")
	nftRun(t, ns, "table inet other {\n}\n", "-f", "-")
	a := newApplier(t, ns, "np")
	if err := a.Delete(ctx); err != nil {
		t.Fatalf("delete of a missing table: %v", err)
	}
	mustApply(t, a, richModel("np"))
	if err := a.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if out := nftRun(t, ns, "", "list", "tables"); out != "table inet other\n" {
		t.Errorf("tables after delete: %q", out)
	}
	if st := mustApply(t, a, richModel("np")); !st.Full {
		t.Error("apply after delete must be a full sync")
	}
}

func TestWrongTable(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-wrong")
	a := newApplier(t, ns, "np")
	if _, err := a.Apply(context.Background(), richModel("other")); err == nil {
		t.Error("applier for table np applied a ruleset for table other")
	}
}

// withoutConcatIntervals drops concatenated interval sets and what uses them: nft 1.0.6's
// monitor aborts ("Memory allocation failure") printing their elements, whoever
// created them.
func withoutConcatIntervals(r *nft.Ruleset) *nft.Ruleset {
	gone := map[string]bool{}
	r.Sets = slices.DeleteFunc(r.Sets, func(s nft.Set) bool {
		gone[s.Name] = s.Interval && len(s.Type) > 1
		return gone[s.Name]
	})
	for i := range r.Chains {
		r.Chains[i].Rules = slices.DeleteFunc(r.Chains[i].Rules, func(rl nft.Rule) bool {
			for _, m := range rl.Matches {
				if gone[m.Set] || (len(m.Keys) > 1 && len(m.Values) > 0 && slices.ContainsFunc(m.Values, func(e nft.Element) bool {
					return slices.ContainsFunc(e.Key, func(v nft.Value) bool { return v.Range })
				})) {
					return true
				}
			}
			return false
		})
	}
	return r
}

// TestFullSyncKeepsSets: a full sync over a table that holds what the applier
// last applied sends nothing; a rule changed behind our back without changing
// the count, or its comment, is drift repaired by rewriting that chain alone,
// keeping every set and its elements (a replacement would make set lookups miss
// around the commit); a map element whose verdict was changed is seen as drift
// and replaced.
func TestFullSyncKeepsSets(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-resync")
	a := newApplier(t, ns, "np")
	model := richModel("np")
	mustApply(t, a, model)
	want := listing(t, ns, "np")

	st, err := a.FullSync(ctx, model)
	if err != nil || st.Full || len(st.Drift) != 0 || st.Operations != 0 {
		t.Fatalf("full sync without drift: %+v %v; want nothing sent", st, err)
	}
	if got := listing(t, ns, "np"); got != want {
		t.Errorf("after the full sync:\n%s", diffText(want, got))
	}

	// Someone swaps the last rule of c2 for another, and gives the first rule
	// of c1 another comment: same counts, drift all the same, repaired by
	// rewriting those two chains.
	handles := func(chain string) [][]string {
		h := regexp.MustCompile(`# handle (\d+)`).FindAllStringSubmatch(nftRun(t, ns, "", "-a", "list", "chain", "inet", "np", chain), -1)
		if len(h) < 2 {
			t.Fatalf("no rule handles in chain %s", chain)
		}
		return h
	}
	h2 := handles("c2")
	nftRun(t, ns, "", "replace", "rule", "inet", "np", "c2", "handle", h2[len(h2)-1][1], "accept")
	h1 := handles("c1")
	nftRun(t, ns, "", "replace", "rule", "inet", "np", "c1", "handle", h1[1][1], "counter", "drop", "comment", `"not ours"`)
	if got := listing(t, ns, "np"); got == want {
		t.Fatal("the rule swaps changed nothing")
	}
	st, err = a.FullSync(ctx, model)
	if wantDrift := []string{"chain c1: rule 0 differs", "chain c2: rule 1 differs"}; err != nil || st.Full || !slices.Equal(st.Drift, wantDrift) ||
		st.Elements != 0 || st.ChainsRewritten != 2 {
		t.Fatalf("full sync after the rule swaps: %+v %v; want drift %q repaired by rewriting two chains", st, err, wantDrift)
	}
	if got := listing(t, ns, "np"); got != want {
		t.Errorf("the rule swaps were not repaired:\n%s", diffText(want, got))
	}

	// Someone points a map element at another chain: drift, repaired in place
	// (the map patched: the element deleted and added again; every set kept).
	nftRun(t, ns, "", "delete", "element", "inet", "np", "vm4", "{ 10.244.1.5 }")
	nftRun(t, ns, "", "add", "element", "inet", "np", "vm4", "{ 10.244.1.5 : goto c4 }")
	st, err = a.FullSync(ctx, model)
	wantDrift := []string{"set vm4: 1 elements missing", "set vm4: 1 elements unexpected"}
	if err != nil || st.Full || st.Elements != 2 || !slices.Equal(st.Drift, wantDrift) {
		t.Fatalf("full sync after a verdict change: %+v %v; want drift %q repaired in place, two elements sent", st, err, wantDrift)
	}
	if got := listing(t, ns, "np"); got != want {
		t.Errorf("the verdict change was not repaired:\n%s", diffText(want, got))
	}

	// Someone changes a base chain's policy: drift, so a replacement.
	nftRun(t, ns, "", "chain", "inet", "np", "forward", "{ policy drop; }")
	st, err = a.FullSync(ctx, model)
	if wantDrift := []string{"chain forward: hook differs"}; err != nil || !st.Full || !slices.Equal(st.Drift, wantDrift) {
		t.Fatalf("full sync after a policy change: %+v %v; want drift %q and a replacement", st, err, wantDrift)
	}
	if got := listing(t, ns, "np"); got != want {
		t.Errorf("the policy change was not repaired:\n%s", diffText(want, got))
	}
}

// TestAdoptionKeepsSets: an Applier that did not write the table (a restarted
// agent) keeps the previous agent's sets that are exactly right, patches those
// whose elements differ (elements deleted and added in place, every set type of
// richModel), re-creates those whose type differs, and leaves the table equal
// to a fresh load of desired.
func TestAdoptionKeepsSets(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-keep")
	fresh := nfttest.NewNetNS(t, "np3-keep-b")
	model := richModel("np")
	mustApply(t, newApplier(t, ns, "np"), model)
	want := listing(t, ns, "np")

	// The same ruleset: every set kept, nothing but the chains sent.
	b := newApplier(t, ns, "np")
	st, err := b.FullSync(ctx, model)
	if err != nil || st.Full || st.Elements != 0 || !slices.Contains(st.Drift, fmt.Sprintf("adopted: %d of %d sets kept", len(model.Sets), len(model.Sets))) {
		t.Fatalf("adopting an identical table: %+v %v", st, err)
	}
	if got := listing(t, ns, "np"); got != want {
		t.Errorf("after adopting:\n%s", diffText(want, got))
	}
	if st, err := b.Apply(ctx, model); err != nil || st.Operations != 0 {
		t.Errorf("apply after adopting: %+v %v: the applier's idea of the table is off", st, err)
	}

	// Another ruleset: every set with more than one element lost its first
	// (patched), one chain is gone.
	next := richModel("np")
	changed := 0
	for i := range next.Sets {
		if len(next.Sets[i].Elements) > 1 {
			next.Sets[i].Elements = next.Sets[i].Elements[1:]
			changed++
		}
	}
	next.Chains = slices.DeleteFunc(next.Chains, func(c nft.Chain) bool { return c.Name == "c4" })
	c := newApplier(t, ns, "np")
	st, err = c.FullSync(ctx, next)
	keptMsg := fmt.Sprintf("adopted: %d of %d sets kept", len(next.Sets)-changed, len(next.Sets))
	patchedMsg := fmt.Sprintf("adopted: %d of %d sets patched (elements deleted and added in place)", changed, len(next.Sets))
	if err != nil || st.Full || !slices.Contains(st.Drift, keptMsg) || !slices.Contains(st.Drift, patchedMsg) {
		t.Fatalf("adopting a table that differs: %+v %v; want %q and %q", st, err, keptMsg, patchedMsg)
	}
	if st.Elements != changed {
		t.Errorf("adopting sent %d elements, want %d (one deleted per changed set, none added)", st.Elements, changed)
	}
	mustApply(t, newApplier(t, fresh, "np"), next)
	if got, want := listing(t, ns, "np"), listing(t, fresh, "np"); got != want {
		t.Errorf("adopted table differs from a fresh load:\n%s", diffText(want, got))
	}
	if st, err := c.Apply(ctx, next); err != nil || st.Operations != 0 {
		t.Errorf("apply after adopting: %+v %v", st, err)
	}

	// A set whose type changed is re-created (s4, one of those changed above;
	// the others get their first elements back).
	third := richModel("np")
	for i := range third.Sets {
		if third.Sets[i].Name == "s4" {
			third.Sets[i].Interval = true
		}
	}
	st, err = newApplier(t, ns, "np").FullSync(ctx, third)
	keptMsg = fmt.Sprintf("adopted: %d of %d sets kept", len(third.Sets)-changed, len(third.Sets))
	patchedMsg = fmt.Sprintf("adopted: %d of %d sets patched (elements deleted and added in place)", changed-1, len(third.Sets))
	if err != nil || st.Full || !slices.Contains(st.Drift, keptMsg) || !slices.Contains(st.Drift, patchedMsg) {
		t.Fatalf("adopting a table with a set of another type: %+v %v; want %q and %q", st, err, keptMsg, patchedMsg)
	}
	mustApply(t, newApplier(t, fresh, "np"), third)
	// A patched pipapo set lists its elements in the order they were added.
	if got, want := elementsSorted(listing(t, ns, "np")), elementsSorted(listing(t, fresh, "np")); got != want {
		t.Errorf("adopted table differs from a fresh load:\n%s", diffText(want, got))
	}
}

var elementsRE = regexp.MustCompile(`(?s)elements = \{(.*?)\}`)

// elementsSorted sorts the elements of each set in an nft listing.
func elementsSorted(listing string) string {
	return elementsRE.ReplaceAllStringFunc(listing, func(block string) string {
		inner := elementsRE.FindStringSubmatch(block)[1]
		var elems []string
		for _, e := range strings.Split(inner, ",") {
			elems = append(elems, strings.TrimSpace(e))
		}
		slices.Sort(elems)
		return "elements = { " + strings.Join(elems, ", ") + " }"
	})
}
