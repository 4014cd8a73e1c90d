package nft

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestRenderSample(t *testing.T) {
	r := &Ruleset{
		Table: "nftpolicy",
		Chains: []Chain{
			{Name: "ing-1", Rules: []Rule{
				{Matches: []Match{Is(KeyCtState, Num(CtInvalid))}, Verdict: Verdict{Kind: Drop}},
				{Matches: []Match{InSet("s-ports-v4", KeyIPSaddr, KeyL4Proto, KeyTHDport)}, Counter: true, Verdict: Verdict{Kind: Accept}, Comment: "x/p#0"},
				{Counter: true, Verdict: Verdict{Kind: Drop}},
			}},
			{Name: "forward", Hook: &Hook{Type: "filter", Hook: "forward", Policy: Accept}, Rules: []Rule{
				{Matches: []Match{Is(KeyCtState, Num(CtEstablished|CtRelated))}, Verdict: Verdict{Kind: Accept}},
				{Matches: []Match{Is(KeyICMPv6Type, Num(135), Num(133))}, Verdict: Verdict{Kind: Accept}},
				{VMap: &VMap{Keys: []Key{KeyIPDaddr}, Map: "ingress-v4"}},
			}},
		},
		Sets: []Set{
			{Name: "s-ports-v4", Type: []DataType{TypeIPv4Addr, TypeInetProto, TypeInetService}, Interval: true, Elements: []Element{
				Elem(Addr(netip.MustParseAddr("10.0.1.1")), Num(ProtoUDP), Num(53)),
				Elem(Prefix(netip.MustParsePrefix("10.0.0.0/24")), Num(ProtoTCP), NumRange(80, 90)),
				Elem(AddrRange(netip.MustParseAddr("10.0.2.1"), netip.MustParseAddr("10.0.2.5")), Num(ProtoSCTP), Num(7)),
			}},
			{Name: "ingress-v4", Type: []DataType{TypeIPv4Addr}, Verdicts: true, Elements: []Element{
				{Key: []Value{Addr(netip.MustParseAddr("10.244.1.5"))}, Verdict: Verdict{Kind: Goto, Chain: "ing-1"}, Comment: "x/a"},
			}},
		},
	}
	if err := r.Validate(); err != nil {
		t.Fatal(err)
	}
	want := `table inet nftpolicy {
	map ingress-v4 {
		type ipv4_addr : verdict
		elements = {
			10.244.1.5 comment "x/a" : goto ing-1
		}
	}

	set s-ports-v4 {
		type ipv4_addr . inet_proto . inet_service
		flags interval
		elements = {
			10.0.0.0/24 . tcp . 80-90,
			10.0.1.1 . udp . 53,
			10.0.2.1-10.0.2.5 . sctp . 7
		}
	}

	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state established,related accept
		icmpv6 type { nd-router-solicit, nd-neighbor-solicit } accept
		ip daddr vmap @ingress-v4
	}

	chain ing-1 {
		ct state invalid drop
		ip saddr . meta l4proto . th dport @s-ports-v4 counter accept comment "x/p#0"
		counter drop
	}
}
`
	if got := Render(r); got != want {
		t.Errorf("Render mismatch:\n%s\nwant:\n%s", got, want)
	}
}

func TestValidateCatchesBrokenReferences(t *testing.T) {
	r := &Ruleset{Table: "t", Chains: []Chain{{Name: "c", Rules: []Rule{
		{Matches: []Match{InSet("missing", KeyIPSaddr)}, Verdict: Verdict{Kind: Jump, Chain: "nowhere"}},
	}}}, Sets: []Set{{Name: "s", Type: []DataType{TypeIPv4Addr}, Elements: []Element{Elem(Addr(netip.MustParseAddr("fd00::1")))}}}}
	err := r.Validate()
	if err == nil {
		t.Fatal("want error")
	}
	for _, want := range []string{"@missing does not exist", `missing chain "nowhere"`, "does not fit ipv4_addr"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// TestValidateComments: Validate refuses the comments nft cannot list as they
// were written (Render quotes without escapes, as nft prints): quotes,
// backslashes, control characters, invalid UTF-8; Render writes the others
// byte for byte.
func TestValidateComments(t *testing.T) {
	table := func(c string) *Ruleset {
		return &Ruleset{Table: "t", Chains: []Chain{{Name: "c", Rules: []Rule{{Comment: c}}}}}
	}
	for _, bad := range []string{`a"b`, `a\b`, "a\tb", "a\nb", "a\x7fb", "caf\xc3", strings.Repeat("a", MaxCommentLen+1)} {
		if err := table(bad).Validate(); err == nil {
			t.Errorf("comment %q: want an error", bad)
		}
	}
	good := "x/a d\u00e9j\u00e0 \u200b\u00a0 $x #y {z}; 'q'"
	if err := table(good).Validate(); err != nil {
		t.Fatal(err)
	}
	if r := Render(table(good)); !strings.Contains(r, `comment "`+good+`"`) {
		t.Errorf("Render does not write the comment as nft lists it:\n%s", r)
	}
}

func TestObjectName(t *testing.T) {
	n := ObjectName("ing", "x/allow-a", "x/allow-a", "any-v4")
	if !ValidName(n) || !strings.HasPrefix(n, "ing-") || !strings.HasSuffix(n, "-x/allow-a-any-v4") {
		t.Errorf("bad name %q", n)
	}
	long := ObjectName("ing", "k", strings.Repeat("n", 300), "ports-v6")
	if len(long) > MaxNameLen || !strings.HasSuffix(long, "-ports-v6") || !ValidName(long) {
		t.Errorf("bad long name %q (%d)", long, len(long))
	}
	if ObjectName("ing", "a", "l", "") == ObjectName("ing", "b", "l", "") {
		t.Error("different keys must give different names")
	}
}

// TestObjectNames: a family of objects shares one label, cut for the longest
// suffix, and the count of the other policies behind it is never cut.
func TestObjectNames(t *testing.T) {
	names := ObjectNames("ing", "k", "x/"+strings.Repeat("n", 300), "_and_2", "", "ranges-v4", "reply")
	base := names[0]
	if !strings.HasSuffix(base, "nnn_and_2") || len(base)+len("-ranges-v4") != MaxNameLen {
		t.Errorf("base %q (%d): want the label cut before _and_2, room for -ranges-v4", base, len(base))
	}
	if names[1] != base+"-ranges-v4" || names[2] != base+"-reply" {
		t.Errorf("names %q: want <base>-ranges-v4 and <base>-reply", names)
	}
	for _, n := range names {
		if !ValidName(n) {
			t.Errorf("bad name %q", n)
		}
	}
	// Short labels are ObjectName's.
	if got, want := ObjectNames("ing", "k", "x/a", "_and_1", "", "any-v4"), []string{ObjectName("ing", "k", "x/a_and_1", ""), ObjectName("ing", "k", "x/a_and_1", "any-v4")}; !slices.Equal(got, want) {
		t.Errorf("short: %q, want %q", got, want)
	}
}

func TestLimitStatement(t *testing.T) {
	limit := Limit{Rate: 100, Per: PerSecond, Burst: 20}
	logRule := Rule{Statements: []Statement{limit}, Log: &Log{Group: 1, Prefix: "np-deny x"}}
	if got, want := RenderRule(logRule), `limit rate 100/second burst 20 packets log prefix "np-deny x" group 1`; got != want {
		t.Errorf("RenderRule = %s, want %s", got, want)
	}
	ok := &Ruleset{Table: "t", Chains: []Chain{{Name: "c", Rules: []Rule{logRule, {Counter: true, Verdict: Verdict{Kind: Drop}}}}}}
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	for _, c := range []struct {
		rule Rule
		want string
	}{
		{Rule{Statements: []Statement{limit}, Verdict: Verdict{Kind: Drop}}, "the limit would gate the verdict"},
		{Rule{Statements: []Statement{limit}, VMap: &VMap{Keys: []Key{KeyIPSaddr}, Map: "m"}}, "the limit would gate the verdict"},
		{Rule{Statements: []Statement{Limit{Rate: 0, Per: PerSecond, Burst: 1}}}, "at least 1"},
		{Rule{Statements: []Statement{Limit{Rate: 1, Per: PerSecond}}}, "at least 1"},
		{Rule{Statements: []Statement{Limit{Rate: 1, Per: 0, Burst: 1}}}, "limit per"},
		{Rule{Statements: []Statement{nil}}, "nil statement"},
		{Rule{Log: &Log{Prefix: strings.Repeat("x", MaxLogPrefixLen+1)}}, "log prefix"},
		{Rule{Log: &Log{Prefix: `a"b`}}, "log prefix"},
	} {
		r := &Ruleset{Table: "t", Sets: []Set{{Name: "m", Type: []DataType{TypeIPv4Addr}, Verdicts: true}},
			Chains: []Chain{{Name: "c", Rules: []Rule{c.rule}}}}
		if err := r.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate = %v, want %q", RenderRule(c.rule), err, c.want)
		}
	}
}
