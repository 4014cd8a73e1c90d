package trace

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
)

var (
	mustAddr   = netip.MustParseAddr
	mustPrefix = netip.MustParsePrefix
	accept     = nft.Verdict{Kind: nft.Accept}
	drop       = nft.Verdict{Kind: nft.Drop}
	ret        = nft.Verdict{Kind: nft.Return}
)

func jump(c string) nft.Verdict  { return nft.Verdict{Kind: nft.Jump, Chain: c} }
func gotoV(c string) nft.Verdict { return nft.Verdict{Kind: nft.Goto, Chain: c} }
func base(name, policy string) *nft.Hook {
	p := nft.Accept
	if policy == "drop" {
		p = nft.Drop
	}
	return &nft.Hook{Type: "filter", Hook: name, Policy: p}
}

func tcp(src, dst string, dport uint16) Packet {
	return Packet{Saddr: mustAddr(src), Daddr: mustAddr(dst), L4Proto: nft.ProtoTCP, DPort: dport, CtState: nft.CtNew}
}

// testRuleset exercises every kind of match and verdict the tracer knows.
func testRuleset() *nft.Ruleset {
	return &nft.Ruleset{
		Table: "t",
		Sets: []nft.Set{
			{Name: "blocked", Type: []nft.DataType{nft.TypeIPv4Addr}, Interval: true, Elements: []nft.Element{
				nft.Elem(nft.Prefix(mustPrefix("192.0.2.0/24"))),
				nft.Elem(nft.AddrRange(mustAddr("198.51.100.10"), mustAddr("198.51.100.20"))),
			}},
			{Name: "svc", Type: []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}, Interval: true, Elements: []nft.Element{
				nft.Elem(nft.Prefix(mustPrefix("10.0.0.0/24")), nft.Num(nft.ProtoTCP), nft.NumRange(80, 90)),
				nft.Elem(nft.Addr(mustAddr("10.0.1.1")), nft.Num(nft.ProtoUDP), nft.Num(53)),
			}},
			{Name: "svc6", Type: []nft.DataType{nft.TypeIPv6Addr}, Elements: []nft.Element{
				nft.Elem(nft.Addr(mustAddr("fd00::1"))),
			}},
			{Name: "dispatch", Type: []nft.DataType{nft.TypeIPv4Addr}, Verdicts: true, Elements: []nft.Element{
				{Key: []nft.Value{nft.Addr(mustAddr("10.0.0.5"))}, Verdict: jump("pod-a")},
				{Key: []nft.Value{nft.Addr(mustAddr("10.0.0.6"))}, Verdict: gotoV("pod-b")},
				{Key: []nft.Value{nft.Addr(mustAddr("10.0.0.7"))}, Verdict: drop},
			}},
		},
		Chains: []nft.Chain{
			{Name: "forward", Hook: base("forward", "accept"), Rules: []nft.Rule{
				{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))}, Verdict: accept},
				{Matches: []nft.Match{nft.Is(nft.KeyICMPv6Type, nft.Num(135), nft.Num(136))}, Verdict: accept},
				{Matches: []nft.Match{nft.InSet("blocked", nft.KeyIPSaddr)}, Counter: true, Verdict: drop},
				{Matches: []nft.Match{nft.Is(nft.KeyIP6Saddr, nft.Prefix(mustPrefix("2001:db8::/32")))}, Verdict: drop},
				{Matches: []nft.Match{nft.Is(nft.KeyL4Proto, nft.Num(nft.ProtoTCP)), nft.Is(nft.KeyTHDport, nft.Num(22), nft.NumRange(6000, 6010))}, Verdict: drop},
				{Counter: true}, // no verdict: continue
				{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPDaddr}, Map: "dispatch"}},
				{Matches: []nft.Match{nft.Not(nft.Is(nft.KeyIIFName, nft.Str("eth*")))}, Verdict: drop},
				{Matches: []nft.Match{nft.Is(nft.KeyIPDaddr, nft.Addr(mustAddr("10.9.9.9")))}, Verdict: jump("deny")},
			}},
			{Name: "pod-a", Rules: []nft.Rule{
				{Matches: []nft.Match{nft.InSet("svc", nft.KeyIPSaddr, nft.KeyL4Proto, nft.KeyTHDport)}, Verdict: ret},
				{Verdict: jump("deny")},
			}},
			{Name: "pod-b", Rules: []nft.Rule{
				{Matches: []nft.Match{nft.Not(nft.InSet("svc", nft.KeyIPSaddr, nft.KeyL4Proto, nft.KeyTHDport))}, Verdict: drop},
				// End of a goto chain: back to forward's caller, i.e. the policy.
			}},
			{Name: "deny", Rules: []nft.Rule{
				{Matches: []nft.Match{nft.Is(nft.KeyIPSaddr, nft.Addr(mustAddr("10.0.0.200")))}, Verdict: ret},
				{Verdict: drop},
			}},
			// A later base chain on the same hook: sees what the first accepted.
			{Name: "zz-later", Hook: &nft.Hook{Type: "filter", Hook: "forward", Priority: 10, Policy: nft.Accept}, Rules: []nft.Rule{
				{Matches: []nft.Match{nft.InSet("svc6", nft.KeyIP6Daddr)}, Verdict: drop},
				{Matches: []nft.Match{nft.Is(nft.KeyL4Proto, nft.Num(nft.ProtoSCTP))}, Verdict: accept},
			}},
			{Name: "in", Hook: base("input", "drop")},
		},
	}
}

func TestTracer(t *testing.T) {
	rs := testRuleset()
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	tr := New(rs)
	withIf := func(p Packet, iif string) Packet { p.IIFName = iif; return p }
	cases := []struct {
		name string
		p    Packet
		hook string
		want nft.VerdictKind
		path string // chain[rule] of each step, space separated
	}{
		{"established passes", Packet{Saddr: mustAddr("192.0.2.1"), Daddr: mustAddr("10.0.0.5"), L4Proto: nft.ProtoTCP, DPort: 1, CtState: nft.CtEstablished}, "forward", nft.Accept, "forward[0] zz-later[-1]"},
		{"interval prefix", withIf(tcp("192.0.2.77", "10.0.0.5", 80), "eth0"), "forward", nft.Drop, "forward[2]"},
		{"interval range", withIf(tcp("198.51.100.20", "10.0.0.5", 80), "eth0"), "forward", nft.Drop, "forward[2]"},
		{"past range end", withIf(tcp("198.51.100.21", "10.1.0.5", 80), "eth0"), "forward", nft.Accept, "forward[5] forward[-1] zz-later[-1]"},
		{"anonymous set of ports", withIf(tcp("10.0.0.1", "10.1.0.1", 6005), "eth0"), "forward", nft.Drop, "forward[4]"},
		{"literal port", withIf(tcp("10.0.0.1", "10.1.0.1", 22), "eth0"), "forward", nft.Drop, "forward[4]"},
		{"udp is not tcp", withIf(Packet{Saddr: mustAddr("10.0.0.1"), Daddr: mustAddr("10.1.0.1"), L4Proto: nft.ProtoUDP, DPort: 22, CtState: nft.CtNew}, "eth1"), "forward", nft.Accept, "forward[5] forward[-1] zz-later[-1]"},
		{"vmap jump, concat set, return", withIf(tcp("10.0.0.9", "10.0.0.5", 85), "eth0"), "forward", nft.Accept, "forward[5] forward[6] pod-a[0] forward[-1] zz-later[-1]"},
		{"vmap jump, fall to deny", withIf(tcp("10.0.0.9", "10.0.0.5", 91), "eth0"), "forward", nft.Drop, "forward[5] forward[6] pod-a[1] deny[1]"},
		{"return from nested jump", withIf(tcp("10.0.0.200", "10.0.0.5", 91), "eth0"), "forward", nft.Accept, "forward[5] forward[6] pod-a[1] deny[0] forward[-1] zz-later[-1]"},
		{"vmap goto, end of goto chain is policy", withIf(tcp("10.0.0.9", "10.0.0.6", 80), "veth9"), "forward", nft.Accept, "forward[5] forward[6] forward[-1] zz-later[-1]"},
		{"vmap goto, negated set", withIf(tcp("10.0.0.9", "10.0.0.6", 79), "eth0"), "forward", nft.Drop, "forward[5] forward[6] pod-b[0]"},
		{"vmap drop element", withIf(tcp("10.0.0.9", "10.0.0.7", 80), "eth0"), "forward", nft.Drop, "forward[5] forward[6]"},
		{"no vmap element continues, negated wildcard", withIf(tcp("10.0.0.9", "10.0.0.8", 80), "veth0"), "forward", nft.Drop, "forward[5] forward[7]"},
		{"jump from base chain", withIf(tcp("10.0.0.9", "10.9.9.9", 80), "eth0"), "forward", nft.Drop, "forward[5] forward[8] deny[1]"},
		{"concat set udp element", withIf(Packet{Saddr: mustAddr("10.0.1.1"), Daddr: mustAddr("10.0.0.5"), L4Proto: nft.ProtoUDP, DPort: 53, CtState: nft.CtNew}, "eth0"), "forward", nft.Accept, "forward[5] forward[6] pod-a[0] forward[-1] zz-later[-1]"},
		{"second base chain drops", Packet{Saddr: mustAddr("fd00::9"), Daddr: mustAddr("fd00::1"), L4Proto: nft.ProtoTCP, DPort: 80, CtState: nft.CtNew, IIFName: "eth0"}, "forward", nft.Drop, "forward[5] forward[-1] zz-later[0]"},
		{"ipv4 keys skip ipv6 packets", Packet{Saddr: mustAddr("fd00::9"), Daddr: mustAddr("fd00::2"), L4Proto: nft.ProtoSCTP, DPort: 80, CtState: nft.CtNew, IIFName: "eth0"}, "forward", nft.Accept, "forward[5] forward[-1] zz-later[1]"},
		{"ip6 prefix literal", Packet{Saddr: mustAddr("2001:db8::1"), Daddr: mustAddr("fd00::2"), L4Proto: nft.ProtoUDP, DPort: 80, CtState: nft.CtNew}, "forward", nft.Drop, "forward[3]"},
		{"icmpv6 type set", Packet{Saddr: mustAddr("2001:db8::1"), Daddr: mustAddr("fd00::2"), L4Proto: nft.ProtoICMPv6, ICMPType: 135, CtState: nft.CtNew}, "forward", nft.Accept, "forward[1] zz-later[-1]"},
		{"icmp has no ports", withIf(Packet{Saddr: mustAddr("10.0.0.9"), Daddr: mustAddr("10.1.0.1"), L4Proto: nft.ProtoICMP, CtState: nft.CtNew}, "eth0"), "forward", nft.Accept, "forward[5] forward[-1] zz-later[-1]"},
		{"other hook, drop policy", tcp("10.0.0.1", "10.0.0.2", 80), "input", nft.Drop, "in[-1]"},
		{"hook without base chain", tcp("10.0.0.1", "10.0.0.2", 80), "output", nft.Accept, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := tr.Hook(c.hook, c.p)
			if err != nil {
				t.Fatal(err)
			}
			var path []string
			for _, s := range got.Steps {
				path = append(path, s.Chain+"["+strconv.Itoa(s.Index)+"]")
			}
			if got.Verdict != c.want || strings.Join(path, " ") != c.path {
				t.Errorf("%v: got %v via %q, want %v via %q\n%s", c.p, got.Verdict, strings.Join(path, " "), c.want, c.path, got)
			}
		})
	}
}

func TestTracerErrors(t *testing.T) {
	loop := &nft.Ruleset{Table: "t", Chains: []nft.Chain{
		{Name: "forward", Hook: base("forward", "accept"), Rules: []nft.Rule{{Verdict: jump("a")}}},
		{Name: "a", Rules: []nft.Rule{{Verdict: jump("a")}}},
	}}
	if _, err := New(loop).Forward(tcp("10.0.0.1", "10.0.0.2", 1)); err == nil || !strings.Contains(err.Error(), "jump stack") {
		t.Errorf("jump loop: err = %v", err)
	}
	gotoLoop := &nft.Ruleset{Table: "t", Chains: []nft.Chain{
		{Name: "forward", Hook: base("forward", "accept"), Rules: []nft.Rule{{Verdict: gotoV("a")}}},
		{Name: "a", Rules: []nft.Rule{{Verdict: gotoV("a")}}},
	}}
	if _, err := New(gotoLoop).Forward(tcp("10.0.0.1", "10.0.0.2", 1)); err == nil {
		t.Error("goto loop: no error")
	}
	missing := &nft.Ruleset{Table: "t", Chains: []nft.Chain{
		{Name: "forward", Hook: base("forward", "accept"), Rules: []nft.Rule{{Matches: []nft.Match{nft.InSet("nope", nft.KeyIPSaddr)}, Verdict: drop}}},
	}}
	if _, err := New(missing).Forward(tcp("10.0.0.1", "10.0.0.2", 1)); err == nil {
		t.Error("missing set: no error")
	}
}

func TestTraceString(t *testing.T) {
	tr, err := New(testRuleset()).Forward(Packet{Saddr: mustAddr("192.0.2.1"), Daddr: mustAddr("10.0.0.5"), L4Proto: nft.ProtoTCP, CtState: nft.CtNew})
	if err != nil {
		t.Fatal(err)
	}
	want := "forward[2]: ip saddr @blocked counter drop => drop\n    matched @blocked 192.0.2.0/24\nverdict: drop\n"
	if tr.String() != want {
		t.Errorf("got %q, want %q", tr.String(), want)
	}
}

// TestStepDetail: a step names the statements the rule applied, the set and map
// elements it hit (with their comments), and renders the rule with its comment.
func TestStepDetail(t *testing.T) {
	rs := testRuleset()
	rs.Sets[3].Elements[0].Comment = "x/a"
	rs.Chains[0].Rules[5] = nft.Rule{Counter: true, Log: &nft.Log{Group: 7}, Comment: "count and log"}
	tr, err := New(rs).Forward(withIIF(tcp("10.0.0.9", "10.0.0.5", 85), "eth0"))
	if err != nil {
		t.Fatal(err)
	}
	want := `forward[5]: counter log group 7 comment "count and log" => continue
forward[6]: ip daddr vmap @dispatch => jump pod-a
    matched @dispatch 10.0.0.5 comment "x/a" : jump pod-a
pod-a[0]: ip saddr . meta l4proto . th dport @svc return => return
    matched @svc 10.0.0.0/24 . tcp . 80-90
forward[-1]: policy accept => accept
zz-later[-1]: policy accept => accept
verdict: accept
`
	if got := tr.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if s := tr.Steps[0].Statements; strings.Join(s, ",") != "counter,log group 7" {
		t.Errorf("statements %q", s)
	}
}

func withIIF(p Packet, iif string) Packet { p.IIFName = iif; return p }

// TestNegatedCtState: `ct state != established,related` compares the whole state, as
// the kernel does, unlike the bitmask test of the positive form.
func TestNegatedCtState(t *testing.T) {
	rs := &nft.Ruleset{Table: "t", Chains: []nft.Chain{
		{Name: "forward", Hook: base("forward", "accept"), Rules: []nft.Rule{
			{Matches: []nft.Match{nft.Not(nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated)))}, Verdict: drop},
		}},
	}}
	p := tcp("10.0.0.1", "10.0.0.2", 1)
	p.CtState = nft.CtEstablished
	if tr, err := New(rs).Forward(p); err != nil || tr.Verdict != nft.Drop {
		t.Errorf("established vs != established,related: %v %v", tr.Verdict, err)
	}
}

func TestUnknownKey(t *testing.T) {
	rs := &nft.Ruleset{Table: "t", Chains: []nft.Chain{
		{Name: "forward", Hook: base("forward", "accept"), Rules: []nft.Rule{
			{Matches: []nft.Match{nft.Is(nft.Key(200), nft.Num(1))}, Verdict: drop},
		}},
	}}
	if _, err := New(rs).Forward(tcp("10.0.0.1", "10.0.0.2", 1)); err == nil || !strings.Contains(err.Error(), "does not know key") {
		t.Errorf("err = %v", err)
	}
}

func TestChain(t *testing.T) {
	tr := New(testRuleset())
	got, err := tr.Chain("forward", "pod-a", tcp("10.0.0.9", "10.0.0.5", 91))
	if err != nil {
		t.Fatal(err)
	}
	if got.Verdict != nft.Drop || len(got.Steps) != 2 || got.Steps[1].Chain != "deny" {
		t.Errorf("pod-a, port 91: %s", got)
	}
	got, err = tr.Chain("forward", "pod-a", tcp("10.0.0.9", "10.0.0.5", 85))
	if err != nil {
		t.Fatal(err)
	}
	if got.Verdict != nft.Accept || len(got.Steps) != 1 || got.Steps[0].Verdict.Kind != nft.Return {
		t.Errorf("pod-a, port 85: %s", got)
	}
	if _, err := tr.Chain("forward", "nope", tcp("10.0.0.9", "10.0.0.5", 85)); err == nil {
		t.Error("missing chain: no error")
	}
}

// TestLimitAndNamedCounter: the deny log's shape (a rule of a named limit and a
// log, then a drop that counts into a named counter): the limit is taken as within
// its rate, the walk goes on to the drop, and both steps name their statements.
func TestLimitAndNamedCounter(t *testing.T) {
	rs := &nft.Ruleset{Table: "t", Chains: []nft.Chain{
		{Name: "forward", Hook: base("forward", "accept"), Rules: []nft.Rule{
			{Statements: []nft.Statement{nft.LimitRef{Name: "deny-log"}}, Log: &nft.Log{Group: 7600, Prefix: "deny"}},
			{Statements: []nft.Statement{nft.CounterRef{Name: "pol-x"}}, Counter: true, Verdict: drop},
		}},
	}}
	tr, err := New(rs).Forward(tcp("10.0.0.1", "10.0.0.2", 80))
	if err != nil {
		t.Fatal(err)
	}
	if tr.Verdict != nft.Drop || len(tr.Steps) != 2 {
		t.Fatalf("%s", tr)
	}
	if got := strings.Join(tr.Steps[0].Statements, ","); got != `limit name "deny-log" (taken as within its rate),log group 7600` {
		t.Errorf("limit step statements %q", got)
	}
	if got := strings.Join(tr.Steps[1].Statements, ","); got != `counter name "pol-x",counter` {
		t.Errorf("drop step statements %q", got)
	}
}
