package nft

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// planSample is a small table in the shape the compiler produces.
func planSample() *Ruleset {
	return &Ruleset{
		Table: "nftpolicy",
		Sets: []Set{
			{Name: "ingress-v4", Type: []DataType{TypeIPv4Addr}, Verdicts: true, Elements: []Element{
				{Key: []Value{Addr(ip("10.244.1.5"))}, Verdict: Verdict{Kind: Goto, Chain: "ing-1"}, Comment: "x/a"},
				{Key: []Value{Addr(ip("10.244.1.6"))}, Verdict: Verdict{Kind: Goto, Chain: "ing-1"}, Comment: "x/b"},
			}},
			{Name: "peers-v4", Type: []DataType{TypeIPv4Addr, TypeInetProto, TypeInetService}, Interval: true, Elements: []Element{
				Elem(Prefix(netip.MustParsePrefix("10.0.0.0/24")), Num(ProtoTCP), NumRange(80, 90)),
			}},
		},
		Chains: []Chain{
			{Name: "forward", Hook: &Hook{Type: "filter", Hook: "forward", Policy: Accept}, Rules: []Rule{
				{Matches: []Match{Is(KeyCtState, Num(CtEstablished|CtRelated))}, Verdict: Verdict{Kind: Accept}},
				{VMap: &VMap{Keys: []Key{KeyIPDaddr}, Map: "ingress-v4"}},
			}},
			{Name: "ing-1", Rules: []Rule{
				{Matches: []Match{InSet("peers-v4", KeyIPSaddr, KeyL4Proto, KeyTHDport)}, Verdict: Verdict{Kind: Accept}},
				{Counter: true, Verdict: Verdict{Kind: Drop}},
			}},
		},
	}
}

func opKinds(t Transaction) []string {
	var out []string
	for _, op := range t.Ops {
		out = append(out, op.String())
	}
	return out
}

func TestPlanFullOrder(t *testing.T) {
	r := planSample()
	tx := Plan(nil, r)
	want := []string{
		"add table inet nftpolicy",
		"delete table inet nftpolicy",
		"add table inet nftpolicy",
		"add chain forward { type filter hook forward priority 0; policy accept; }",
		"add chain ing-1",
		"add map ingress-v4",
		"add set peers-v4",
		"add 2 elements to set ingress-v4",
		"add 1 elements to set peers-v4",
		"add rule to chain forward: ct state established,related accept",
		"add rule to chain forward: ip daddr vmap @ingress-v4",
		"add rule to chain ing-1: ip saddr . meta l4proto . th dport @peers-v4 accept",
		"add rule to chain ing-1: counter drop",
	}
	if got := opKinds(tx); !slices.Equal(got, want) {
		t.Errorf("full plan:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !tx.Full || tx.ChainsRewritten != 2 || tx.Elements() != 3 {
		t.Errorf("stats %+v", tx.Stats())
	}
	// Another table name also means a full replace.
	other := r.Clone()
	other.Table = "other"
	if tx := Plan(other, r); !tx.Full {
		t.Error("a different table must give a full plan")
	}
}

func TestPlanNoChange(t *testing.T) {
	r := planSample()
	if tx := Plan(r, r.Clone()); len(tx.Ops) != 0 {
		t.Errorf("same ruleset: want no ops, got\n%s", tx)
	}
	// Element and set order carry no meaning, nor does the order of an anonymous set's values.
	shuffled := r.Clone()
	slices.Reverse(shuffled.Sets)
	slices.Reverse(shuffled.Chains)
	slices.Reverse(shuffled.Sets[1].Elements)
	r2 := r.Clone()
	r2.Chains[0].Rules = append(r2.Chains[0].Rules, Rule{Matches: []Match{Is(KeyTHDport, Num(22), Num(80))}, Verdict: Verdict{Kind: Accept}})
	r3 := r2.Clone()
	r3.Chains[0].Rules[2].Matches[0].Values = []Element{Elem(Num(80)), Elem(Num(22))}
	if tx := Plan(r, shuffled); len(tx.Ops) != 0 {
		t.Errorf("reordered ruleset: want no ops, got\n%s", tx)
	}
	if tx := Plan(r2, r3); len(tx.Ops) != 0 {
		t.Errorf("anonymous set values reordered: want no ops, got\n%s", tx)
	}
}

func TestPlanPodChurnIsElementsOnly(t *testing.T) {
	a := planSample()
	b := a.Clone()
	b.Sets[0].Elements = append(b.Sets[0].Elements, Element{Key: []Value{Addr(ip("10.244.1.7"))}, Verdict: Verdict{Kind: Goto, Chain: "ing-1"}, Comment: "x/c"})
	b.Sets[0].Elements = slices.Delete(b.Sets[0].Elements, 0, 1) // x/a leaves
	tx := Plan(a, b)
	want := []string{"delete 1 elements from set ingress-v4", "add 1 elements to set ingress-v4"}
	if got := opKinds(tx); !slices.Equal(got, want) {
		t.Fatalf("pod churn:\n%s", tx)
	}
	if tx.Full || tx.ChainsRewritten != 0 || tx.Elements() != 2 {
		t.Errorf("stats %+v", tx.Stats())
	}
	if got := RenderElement([]DataType{TypeIPv4Addr}, tx.Ops[0].Elements[0], true); got != `10.244.1.5 comment "x/a" : goto ing-1` {
		t.Errorf("deleted %s", got)
	}
}

func TestPlanVerdictOrCommentChangeIsDeletePlusAdd(t *testing.T) {
	a := planSample()
	a.Chains = append(a.Chains, Chain{Name: "ing-2", Rules: []Rule{{Verdict: Verdict{Kind: Drop}}}})
	b := a.Clone()
	b.Sets[0].Elements[0].Verdict.Chain = "ing-2"
	b.Sets[0].Elements[1].Comment = "x/renamed"
	tx := Plan(a, b)
	if got := opKinds(tx); !slices.Equal(got, []string{"delete 2 elements from set ingress-v4", "add 2 elements to set ingress-v4"}) {
		t.Fatalf("got\n%s", tx)
	}
}

func TestPlanSetTypeChange(t *testing.T) {
	a := planSample()
	b := a.Clone()
	// peers-v4 loses its port: new type, and the rule using it changes with it.
	b.Sets[1].Type = []DataType{TypeIPv4Addr}
	b.Sets[1].Elements = []Element{Elem(Prefix(netip.MustParsePrefix("10.0.0.0/24")))}
	b.Chains[1].Rules[0].Matches = []Match{InSet("peers-v4", KeyIPSaddr)}
	want := []string{
		"flush chain ing-1",
		"delete set peers-v4",
		"add set peers-v4",
		"add rule to chain ing-1: ip saddr @peers-v4 accept",
		"add rule to chain ing-1: counter drop",
		"add 1 elements to set peers-v4",
	}
	if got := opKinds(Plan(a, b)); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A change of flags alone leaves the rule text alone, but the rule refers to the
	// old set: its chain is rewritten all the same.
	c := a.Clone()
	c.Sets[1].Comment = "now with a comment"
	got := opKinds(Plan(a, c))
	if !slices.Contains(got, "flush chain ing-1") || !slices.Contains(got, "delete set peers-v4") {
		t.Errorf("comment change must re-create the set and rewrite its users:\n%s", strings.Join(got, "\n"))
	}
}

func TestPlanChainReferencedByMapOnlyInA(t *testing.T) {
	a := planSample()
	a.Chains = append(a.Chains, Chain{Name: "ing-old", Rules: []Rule{{Matches: []Match{InSet("old-set", KeyIPSaddr)}, Verdict: Verdict{Kind: Accept}}}})
	a.Sets = append(a.Sets, Set{Name: "old-set", Type: []DataType{TypeIPv4Addr}, Elements: []Element{Elem(Addr(ip("10.1.1.1")))}})
	a.Sets[0].Elements = append(a.Sets[0].Elements, Element{Key: []Value{Addr(ip("10.244.1.9"))}, Verdict: Verdict{Kind: Goto, Chain: "ing-old"}})
	b := planSample()
	want := []string{
		"flush chain ing-old",
		"delete 1 elements from set ingress-v4",
		"delete set old-set",
		"delete chain ing-old",
	}
	if got := opKinds(Plan(a, b)); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// And back: the chain and the set come first, the element last.
	want = []string{
		"add set old-set",
		"add chain ing-old",
		"add rule to chain ing-old: ip saddr @old-set accept",
		"add 1 elements to set ingress-v4",
		"add 1 elements to set old-set",
	}
	if got := opKinds(Plan(b, a)); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestPlanHookChangeAndReorder(t *testing.T) {
	a := planSample()
	b := a.Clone()
	b.Chains[0].Hook.Priority = 10
	tx := Plan(a, b)
	want := []string{
		"flush chain forward",
		"delete chain forward",
		"add chain forward { type filter hook forward priority 10; policy accept; }",
		"add rule to chain forward: ct state established,related accept",
		"add rule to chain forward: ip daddr vmap @ingress-v4",
	}
	if got := opKinds(tx); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if tx.ChainsRewritten != 1 {
		t.Errorf("ChainsRewritten %d", tx.ChainsRewritten)
	}
	c := a.Clone()
	slices.Reverse(c.Chains[1].Rules)
	want = []string{
		"flush chain ing-1",
		"add rule to chain ing-1: counter drop",
		"add rule to chain ing-1: ip saddr . meta l4proto . th dport @peers-v4 accept",
	}
	if got := opKinds(Plan(a, c)); !slices.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestElementKeyMatchesRenderElement(t *testing.T) {
	types := [][]DataType{
		{TypeIPv4Addr}, {TypeIPv6Addr}, {TypeInetService}, {TypeInetProto}, {TypeICMPv6Type},
		{TypeCtState}, {TypeNFProto}, {TypeIfName}, {TypeIPv4Addr, TypeInetProto, TypeInetService},
	}
	values := map[DataType][]Value{
		TypeIPv4Addr:    {Addr(ip("10.0.0.1")), Addr(ip("10.0.0.2")), Prefix(netip.MustParsePrefix("10.0.0.0/24")), AddrRange(ip("10.0.0.1"), ip("10.0.0.5")), {Addr: ip("10.0.0.1"), AddrEnd: ip("10.0.0.1"), Range: true}, {Addr: ip("10.0.0.1"), AddrEnd: ip("10.0.0.9")}},
		TypeIPv6Addr:    {Addr(ip("fd00::1")), Prefix(netip.MustParsePrefix("fd00::/64")), Addr(ip("fe80::1%eth0")), Addr(ip("fe80::1"))},
		TypeInetService: {Num(80), Num(81), NumRange(80, 90), {Num: 80, NumEnd: 80, Range: true}, {Num: 80, NumEnd: 99}},
		TypeInetProto:   {Num(ProtoTCP), Num(ProtoUDP), NumRange(6, 17), Num(200)},
		TypeICMPv6Type:  {Num(128), Num(1), NumRange(1, 4), Num(250)},
		TypeCtState:     {Num(CtNew), Num(CtEstablished | CtRelated), Num(16), Num(0)},
		TypeNFProto:     {Num(NFProtoIPv4), Num(NFProtoIPv6), Num(3), {Num: NFProtoIPv4, NumEnd: 7, Range: true}},
		TypeIfName:      {Str("eth0"), Str("eth1")},
	}
	verdicts := []Verdict{{Kind: Accept}, {Kind: Drop}, {Kind: Jump, Chain: "a"}, {Kind: Goto, Chain: "a"}, {Kind: Jump, Chain: "b"}, {Kind: Accept, Chain: "ignored"}}
	for _, ts := range types {
		var elems []Element
		var build func(i int, key []Value)
		build = func(i int, key []Value) {
			if i == len(ts) {
				for _, c := range []string{"", "c"} {
					for _, v := range verdicts {
						elems = append(elems, Element{Key: slices.Clone(key), Comment: c, Verdict: v})
					}
				}
				return
			}
			for _, v := range values[ts[i]] {
				build(i+1, append(key, v))
			}
		}
		build(0, nil)
		// The text and the key must determine each other.
		for _, withVerdict := range []bool{false, true} {
			keyOf, textOf := map[string]string{}, map[string]string{}
			for _, x := range elems {
				text, key := RenderElement(ts, x, withVerdict), ElementKey(ts, x, withVerdict)
				if k, ok := keyOf[text]; ok && k != key {
					t.Fatalf("%v: %q has two keys", ts, text)
				}
				if s, ok := textOf[key]; ok && s != text {
					t.Fatalf("%v: %q and %q share a key", ts, s, text)
				}
				keyOf[text], textOf[key] = key, text
			}
		}
	}
}

func TestCloneIsDeep(t *testing.T) {
	a := planSample()
	a.Chains[1].Rules[0].Log = &Log{Group: 1}
	a.Chains[1].Rules[0].Statements = []Statement{Limit{Rate: 1, Per: PerSecond, Burst: 1}}
	b := a.Clone()
	if Render(a) != Render(b) {
		t.Fatal("clone renders differently")
	}
	b.Sets[0].Elements[0].Key[0] = Addr(ip("1.1.1.1"))
	b.Sets[0].Type[0] = TypeIPv6Addr
	b.Chains[0].Hook.Priority = 99
	b.Chains[0].Rules[0].Matches[0].Values[0].Key[0] = Num(1)
	b.Chains[0].Rules[1].VMap.Keys[0] = KeyIPSaddr
	b.Chains[1].Rules[0].Log.Group = 9
	b.Chains[1].Rules[0].Statements[0] = Limit{Rate: 2, Per: PerSecond, Burst: 1}
	b.Chains[1].Rules[0].Matches[0].Keys[0] = KeyIPDaddr
	if Render(a) != Render(planSample()) && !strings.Contains(Render(a), "log group 1") {
		t.Errorf("changing the clone changed the original:\n%s", Render(a))
	}
	if !strings.Contains(Render(a), "limit rate 1/second") {
		t.Errorf("changing the clone's statements changed the original:\n%s", Render(a))
	}
	a.Chains[1].Rules[0].Log = nil
	a.Chains[1].Rules[0].Statements = nil
	if Render(a) != Render(planSample()) {
		t.Errorf("changing the clone changed the original:\n%s", Render(a))
	}
}

// TestPlanKernelOrderProperty applies random transitions to a small model of what the
// kernel checks in a batch (every name a message uses exists, nothing still referred to
// is deleted, no element is added twice or deleted when absent) and checks that every
// plan is accepted op by op and ends in the desired state.
func TestPlanKernelOrderProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 3000; i++ {
		a, b := randomRuleset(rng), randomRuleset(rng)
		k := &simKernel{}
		if err := k.apply(Plan(nil, a)); err != nil {
			t.Fatalf("full plan of\n%s\nrejected: %v", Render(a), err)
		}
		if err := k.equals(a); err != nil {
			t.Fatalf("full plan of\n%s\nends wrong: %v", Render(a), err)
		}
		tx := Plan(a, b)
		if err := k.apply(tx); err != nil {
			t.Fatalf("plan\n%s\nfrom\n%s\nto\n%s\nrejected: %v", tx, Render(a), Render(b), err)
		}
		if err := k.equals(b); err != nil {
			t.Fatalf("plan\n%s\nfrom\n%s\nto\n%s\nends wrong: %v", tx, Render(a), Render(b), err)
		}
		if tx := Plan(b, b.Clone()); len(tx.Ops) != 0 {
			t.Fatalf("no-op plan has ops:\n%s", tx)
		}
	}
}

func randomRuleset(rng *rand.Rand) *Ruleset {
	r := &Ruleset{Table: "t"}
	regular := []string{}
	for i := 0; i < 4; i++ {
		if rng.IntN(3) > 0 {
			regular = append(regular, fmt.Sprintf("c%d", i))
		}
	}
	pickVerdict := func() Verdict {
		if len(regular) == 0 || rng.IntN(3) == 0 {
			return Verdict{Kind: Accept}
		}
		kind := Jump
		if rng.IntN(2) == 0 {
			kind = Goto
		}
		return Verdict{Kind: kind, Chain: regular[rng.IntN(len(regular))]}
	}
	setTypes := map[string][]DataType{}
	maps := []string{}
	sets := []string{}
	for i := 0; i < 4; i++ {
		if rng.IntN(3) == 0 {
			continue
		}
		s := Set{Name: fmt.Sprintf("s%d", i), Type: []DataType{TypeIPv4Addr}}
		if rng.IntN(4) == 0 {
			s.Type = []DataType{TypeInetService}
		}
		s.Verdicts = rng.IntN(2) == 0
		if rng.IntN(4) == 0 {
			s.Comment = "c"
		}
		for j := 0; j < 4; j++ {
			if rng.IntN(2) == 0 {
				continue
			}
			e := Element{Key: []Value{Addr(netip.AddrFrom4([4]byte{10, 0, 0, byte(j)}))}}
			if s.Type[0] == TypeInetService {
				e.Key = []Value{Num(uint32(j))}
			}
			if rng.IntN(3) == 0 {
				e.Comment = "p"
			}
			if s.Verdicts {
				e.Verdict = pickVerdict()
			}
			s.Elements = append(s.Elements, e)
		}
		if len(s.Elements) > 0 && rng.IntN(8) == 0 {
			s.Elements = append(s.Elements, s.Elements[0]) // a duplicate
		}
		setTypes[s.Name] = s.Type
		if s.Verdicts {
			maps = append(maps, s.Name)
		} else {
			sets = append(sets, s.Name)
		}
		r.Sets = append(r.Sets, s)
	}
	keyFor := func(set string) Key {
		if setTypes[set][0] == TypeInetService {
			return KeyTHDport
		}
		return KeyIPSaddr
	}
	randomRules := func(self int) []Rule {
		var rules []Rule
		for j := 0; j < rng.IntN(3); j++ {
			var rule Rule
			switch rng.IntN(4) {
			case 0:
				if len(sets) > 0 {
					s := sets[rng.IntN(len(sets))]
					rule.Matches = []Match{InSet(s, keyFor(s))}
				}
			case 1:
				if len(maps) > 0 {
					m := maps[rng.IntN(len(maps))]
					rule.VMap = &VMap{Keys: []Key{keyFor(m)}, Map: m}
				}
			case 2:
				rule.Matches = []Match{Is(KeyTHDport, Num(uint32(rng.IntN(3))), Num(100))}
			}
			if rule.VMap == nil {
				rule.Verdict = pickVerdict()
			}
			rules = append(rules, rule)
		}
		return rules
	}
	for i, name := range regular {
		r.Chains = append(r.Chains, Chain{Name: name, Rules: randomRules(i)})
	}
	if rng.IntN(4) > 0 {
		h := &Hook{Type: "filter", Hook: "forward", Priority: rng.IntN(2), Policy: Accept}
		r.Chains = append(r.Chains, Chain{Name: "base", Hook: h, Rules: randomRules(-1)})
	}
	// Sometimes a regular chain becomes a base chain or the other way round.
	if rng.IntN(6) == 0 {
		r.Chains = append(r.Chains, Chain{Name: "c9", Hook: &Hook{Type: "filter", Hook: "input", Policy: Drop}})
	} else if rng.IntN(5) == 0 {
		r.Chains = append(r.Chains, Chain{Name: "c9"})
	}
	if err := r.Validate(); err != nil {
		panic(fmt.Sprintf("random ruleset invalid: %v\n%s", err, Render(r)))
	}
	return r
}

// simKernel is a model of the checks the kernel makes on each message of a batch.
type simKernel struct {
	exists bool
	sets   map[string]*simSet
	chains map[string]*simChain
}

type simSet struct {
	def   Set
	elems map[string]Element // by kernel key (the key fields only)
}

type simChain struct {
	hook  *Hook
	rules []Rule
}

func (k *simKernel) kernelKey(s *simSet, e Element) string {
	return ElementKey(s.def.Type, Element{Key: e.Key}, false)
}

func (k *simKernel) refsToSet(name string) bool {
	for _, c := range k.chains {
		if refersToAny(c.rules, map[string]bool{name: true}) {
			return true
		}
	}
	return false
}

func (k *simKernel) refsToChain(name string) bool {
	for _, c := range k.chains {
		for _, r := range c.rules {
			if (r.Verdict.Kind == Jump || r.Verdict.Kind == Goto) && r.Verdict.Chain == name {
				return true
			}
		}
	}
	for _, s := range k.sets {
		for _, e := range s.elems {
			if (e.Verdict.Kind == Jump || e.Verdict.Kind == Goto) && e.Verdict.Chain == name {
				return true
			}
		}
	}
	return false
}

func (k *simKernel) apply(tx Transaction) error {
	for i, op := range tx.Ops {
		if err := k.step(op); err != nil {
			return fmt.Errorf("op %d (%s): %w", i, op, err)
		}
	}
	return nil
}

func (k *simKernel) step(op Op) error {
	if op.Kind != OpAddTable && !k.exists {
		return fmt.Errorf("no table")
	}
	switch op.Kind {
	case OpAddTable:
		if !k.exists {
			k.exists, k.sets, k.chains = true, map[string]*simSet{}, map[string]*simChain{}
		}
	case OpDelTable:
		k.exists, k.sets, k.chains = false, nil, nil
	case OpAddChain:
		if k.chains[op.Name] != nil {
			return fmt.Errorf("chain exists")
		}
		k.chains[op.Name] = &simChain{hook: op.Hook}
	case OpFlushChain:
		c := k.chains[op.Name]
		if c == nil {
			return fmt.Errorf("no chain")
		}
		c.rules = nil
	case OpDelChain:
		if k.chains[op.Name] == nil {
			return fmt.Errorf("no chain")
		}
		k.chains[op.Name].rules = nil
		if k.refsToChain(op.Name) {
			return fmt.Errorf("chain busy")
		}
		delete(k.chains, op.Name)
	case OpAddRule:
		c := k.chains[op.Name]
		if c == nil {
			return fmt.Errorf("no chain")
		}
		r := *op.Rule
		if r.VMap != nil && k.sets[r.VMap.Map] == nil {
			return fmt.Errorf("no map %s", r.VMap.Map)
		}
		for _, m := range r.Matches {
			if m.Set != "" && k.sets[m.Set] == nil {
				return fmt.Errorf("no set %s", m.Set)
			}
		}
		if (r.Verdict.Kind == Jump || r.Verdict.Kind == Goto) && k.chains[r.Verdict.Chain] == nil {
			return fmt.Errorf("no chain %s", r.Verdict.Chain)
		}
		c.rules = append(c.rules, r)
	case OpAddSet:
		if k.sets[op.Name] != nil {
			return fmt.Errorf("set exists")
		}
		if len(op.Set.Elements) > 0 {
			return fmt.Errorf("OpAddSet carries elements")
		}
		k.sets[op.Name] = &simSet{def: *op.Set, elems: map[string]Element{}}
	case OpDelSet:
		if k.sets[op.Name] == nil {
			return fmt.Errorf("no set")
		}
		if k.refsToSet(op.Name) {
			return fmt.Errorf("set busy")
		}
		delete(k.sets, op.Name)
	case OpAddElements:
		s := k.sets[op.Name]
		if s == nil {
			return fmt.Errorf("no set")
		}
		for _, e := range op.Elements {
			key := k.kernelKey(s, e)
			if _, ok := s.elems[key]; ok {
				return fmt.Errorf("element exists")
			}
			if (e.Verdict.Kind == Jump || e.Verdict.Kind == Goto) && k.chains[e.Verdict.Chain] == nil {
				return fmt.Errorf("element jumps to missing chain %s", e.Verdict.Chain)
			}
			s.elems[key] = e
		}
	case OpDelElements:
		s := k.sets[op.Name]
		if s == nil {
			return fmt.Errorf("no set")
		}
		for _, e := range op.Elements {
			key := k.kernelKey(s, e)
			if _, ok := s.elems[key]; !ok {
				return fmt.Errorf("element absent")
			}
			delete(s.elems, key)
		}
	default:
		return fmt.Errorf("unknown op")
	}
	return nil
}

// equals checks that the kernel model holds exactly r.
func (k *simKernel) equals(r *Ruleset) error {
	got := &Ruleset{Table: r.Table}
	for name, s := range k.sets {
		def := s.def
		def.Name = name
		for _, e := range s.elems {
			def.Elements = append(def.Elements, e)
		}
		got.Sets = append(got.Sets, def)
	}
	for name, c := range k.chains {
		got.Chains = append(got.Chains, Chain{Name: name, Hook: c.hook, Rules: c.rules})
	}
	want := r.Clone()
	for i := range want.Sets {
		want.Sets[i].Elements = uniqueElements(&want.Sets[i], want.Sets[i].Elements) // the kernel holds each once
	}
	if g, w := Render(got), Render(want); g != w {
		return fmt.Errorf("kernel holds\n%s\nwant\n%s", g, w)
	}
	return nil
}

// TestDiffElementsMatchesKeyDiff checks the head-and-tail shortcut of diffElements
// against the plain comparison of keys, with duplicates and shared heads and tails.
func TestDiffElementsMatchesKeyDiff(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	pool := []Element{
		Elem(Addr(ip("10.0.0.1"))), Elem(Addr(ip("10.0.0.2"))), Elem(Prefix(netip.MustParsePrefix("10.0.0.0/24"))),
		{Key: []Value{Addr(ip("10.0.0.1"))}, Comment: "c"}, Elem(Addr(ip("10.0.0.3"))),
		{Key: []Value{{Addr: ip("10.0.0.1"), Num: 7}}}, // renders like the first
	}
	types := []DataType{TypeIPv4Addr}
	pick := func(n int) []Element {
		var out []Element
		for range n {
			out = append(out, pool[rng.IntN(len(pool))])
		}
		return out
	}
	keys := func(es []Element) []string {
		var out []string
		for _, e := range es {
			out = append(out, ElementKey(types, e, false))
		}
		slices.Sort(out)
		return out
	}
	for i := 0; i < 20000; i++ {
		head, tail := pick(rng.IntN(4)), pick(rng.IntN(4))
		last := slices.Concat(head, pick(rng.IntN(4)), tail)
		desired := slices.Concat(head, pick(rng.IntN(4)), tail)
		d1, a1 := diffElements(types, false, last, desired)
		d2, a2 := keyDiff(types, false, last, desired)
		if !slices.Equal(keys(d1), keys(d2)) || !slices.Equal(keys(a1), keys(a2)) {
			t.Fatalf("last %v desired %v: got -%v +%v, want -%v +%v", last, desired, d1, a1, d2, a2)
		}
	}
}

// TestPlanObjects: objects are created before the rules that use them, kept
// while their definition stays (a counter keeps counting), and deleted (or
// re-created) only after the chains that used them were flushed.
func TestPlanObjects(t *testing.T) {
	model := func(rate uint32, withCounter bool) *Ruleset {
		r := &Ruleset{Table: "t", Objects: []Object{{Name: "lim", Kind: LimitObject, Limit: Limit{Rate: rate, Per: PerSecond, Burst: 1}}}}
		rule := Rule{Statements: []Statement{LimitRef{Name: "lim"}}, Log: &Log{Group: 1}}
		if withCounter {
			r.Objects = append(r.Objects, Object{Name: "cnt", Kind: CounterObject})
			rule.Statements = append(rule.Statements, CounterRef{Name: "cnt"})
		}
		r.Chains = []Chain{{Name: "c", Rules: []Rule{rule}}, {Name: "other", Rules: []Rule{{Verdict: Verdict{Kind: Accept}}}}}
		return r
	}
	ops := func(tx Transaction) string { return strings.TrimSpace(tx.String()) }
	for _, c := range []struct {
		name     string
		from, to *Ruleset
		want     string
	}{
		{"full", nil, model(10, true), `add table inet t
delete table inet t
add table inet t
add chain c
add chain other
add counter cnt
add limit lim
add rule to chain c: limit name "lim" counter name "cnt" log group 1
add rule to chain other: accept`},
		{"unchanged", model(10, true), model(10, true), ``},
		{"counter added", model(10, false), model(10, true), `add counter cnt
flush chain c
add rule to chain c: limit name "lim" counter name "cnt" log group 1`},
		{"limit changed, counter kept", model(10, true), model(20, true), `flush chain c
delete limit lim
add limit lim
add rule to chain c: limit name "lim" counter name "cnt" log group 1`},
		{"counter removed", model(10, true), model(10, false), `flush chain c
delete counter cnt
add rule to chain c: limit name "lim" log group 1`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := c.to.Validate(); err != nil {
				t.Fatal(err)
			}
			if got := ops(Plan(c.from, c.to)); got != c.want {
				t.Errorf("plan:\n%s\nwant:\n%s", got, c.want)
			}
		})
	}
	// A full sync's rewrite keeps the objects too.
	got := ops(PlanRewrite(model(10, true), model(10, true)))
	if regexp.MustCompile(`(?m)^(add|delete) (counter|limit) `).MatchString(got) || !strings.Contains(got, "flush chain c") {
		t.Errorf("rewrite touches objects or misses the chain:\n%s", got)
	}
}
