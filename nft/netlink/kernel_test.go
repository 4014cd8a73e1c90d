package netlink

import (
	"context"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// Kernel tests run in network namespaces that they create and delete; they never
// touch the host's ruleset.

func requireKernel(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping kernel test in -short mode")
	}
	nfttest.RequireRoot(t)
}

func newApplier(t testing.TB, ns *nfttest.NetNS, table string) *Applier {
	t.Helper()
	a, err := New(Options{Table: table, NetNSPath: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func nftRun(t testing.TB, ns *nfttest.NetNS, stdin string, args ...string) string {
	t.Helper()
	out, err := ns.NFT(stdin, args...)
	if err != nil {
		t.Fatalf("nft %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// listing is `nft list table inet NAME` with its top-level blocks (sets, maps,
// chains) sorted by their first line: the kernel lists objects in creation order,
// which differs between a table built in one go and one reached by transitions.
func listing(t testing.TB, ns *nfttest.NetNS, table string) string {
	t.Helper()
	return nfttest.SortBlocks(nftRun(t, ns, "", "list", "table", "inet", table))
}

var (
	ruleHandleRE = regexp.MustCompile(`(?m)^(inet \S+ \S+)( \d+)+$`)
	anonSetRE    = regexp.MustCompile(`__set\d+`)
	// nft marks an interval that runs to the top of the address space with an
	// element flag in the element's user data; the library cannot write element
	// user data other than a comment. Nothing else reads it: `nft list` is the same.
	openIntervalRE = regexp.MustCompile(`  userdata = \{ \\x01\\x04\\x01\\x00\\x00\\x00 \}`)
)

// netlinkListing is `nft --debug=netlink list table`: the kernel's own view of every
// set element and rule expression (registers, byte order conversions, set flags),
// then the usual listing. What depends on history rather than content is normalised
// away: rule handles, anonymous set numbers, the order of set elements (hash order),
// of sets and of chains (creation order).
func netlinkListing(t testing.TB, ns *nfttest.NetNS, table string) string {
	t.Helper()
	out := nftRun(t, ns, "", "--debug=netlink", "list", "table", "inet", table)
	out = ruleHandleRE.ReplaceAllString(out, "$1")
	out = openIntervalRE.ReplaceAllString(out, "")
	out = anonSetRE.ReplaceAllString(out, "__set")
	text := ""
	if i := strings.Index(out, "table inet "); i >= 0 {
		out, text = out[:i], nfttest.SortBlocks(out[i:])
	}
	var sets, rules []string
	var cur []string
	flush := func() {
		if len(cur) == 0 {
			return
		}
		block := strings.Join(cur, "\n")
		if strings.Contains(cur[0], " @") {
			slices.Sort(cur[1:]) // elements
			sets = append(sets, strings.Join(cur, "\n"))
		} else {
			rules = append(rules, block)
		}
		cur = nil
	}
	for _, l := range strings.Split(out, "\n") {
		switch {
		case l == "":
			flush()
		case strings.HasPrefix(l, "inet "):
			flush()
			cur = append(cur, l)
		default:
			cur = append(cur, l)
		}
	}
	flush()
	slices.Sort(sets)
	// Rules keep their order within a chain; chains are sorted by name.
	slices.SortStableFunc(rules, func(a, b string) int {
		return strings.Compare(strings.SplitN(a, "\n", 2)[0], strings.SplitN(b, "\n", 2)[0])
	})
	return strings.Join(sets, "\n") + "\n\n" + strings.Join(rules, "\n\n") + "\n\n" + text
}

func mustApply(t testing.TB, a *Applier, r *nft.Ruleset) nft.Stats {
	t.Helper()
	st, err := a.Apply(context.Background(), r)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return st
}

func diffText(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out = append(out, "- "+x, "+ "+y)
			if len(out) > 40 {
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// --- Models -------------------------------------------------------------------

func a4(s string) netip.Addr           { return netip.MustParseAddr(s) }
func p4(s string) nft.Value            { return nft.Prefix(netip.MustParsePrefix(s)) }
func ad(s string) nft.Value            { return nft.Addr(a4(s)) }
func rg(lo, hi string) nft.Value       { return nft.AddrRange(a4(lo), a4(hi)) }
func acc() nft.Verdict                 { return nft.Verdict{Kind: nft.Accept} }
func vd(k nft.VerdictKind) nft.Verdict { return nft.Verdict{Kind: k} }
func to(k nft.VerdictKind, c string) nft.Verdict {
	return nft.Verdict{Kind: k, Chain: c}
}

var (
	tInet4  = []nft.DataType{nft.TypeIPv4Addr}
	tInet6  = []nft.DataType{nft.TypeIPv6Addr}
	tPorts4 = []nft.DataType{nft.TypeIPv4Addr, nft.TypeInetProto, nft.TypeInetService}
	tPorts6 = []nft.DataType{nft.TypeIPv6Addr, nft.TypeInetProto, nft.TypeInetService}
	kPorts4 = []nft.Key{nft.KeyIPSaddr, nft.KeyL4Proto, nft.KeyTHDport}
	kPorts6 = []nft.Key{nft.KeyIP6Saddr, nft.KeyL4Proto, nft.KeyTHDport}
)

func rule(v nft.Verdict, ms ...nft.Match) nft.Rule { return nft.Rule{Matches: ms, Verdict: v} }

// oddComment is a comment of nft.MaxCommentLen bytes with what nft prints as
// it is and Go's %q does not: characters that are not printable in Go's sense
// (a zero-width space, a no-break space) and ones an nft parser might take for
// syntax. Render must quote it as nft lists it, within nft's length limit.
var oddComment = "x/odd \u200b\u00a0 $v #c {b}; 'q' caf\u00e9 \u2192 " + strings.Repeat("a", 128-len("x/odd \u200b\u00a0 $v #c {b}; 'q' caf\u00e9 \u2192 "))

// richModel uses every match, statement, verdict and set kind of the model.
func richModel(table string) *nft.Ruleset {
	tcp, udp := nft.Num(nft.ProtoTCP), nft.Num(nft.ProtoUDP)
	r := &nft.Ruleset{Table: table}
	r.Sets = []nft.Set{
		{Name: "vm4", Type: tInet4, Verdicts: true, Comment: "v4 map", Elements: []nft.Element{
			{Key: []nft.Value{ad("10.244.1.5")}, Verdict: to(nft.Goto, "c1"), Comment: "x/a"},
			{Key: []nft.Value{ad("10.244.1.6")}, Verdict: acc()},
			{Key: []nft.Value{ad("10.244.1.7")}, Verdict: vd(nft.Drop)},
			{Key: []nft.Value{ad("10.244.1.8")}, Verdict: to(nft.Jump, "c2"), Comment: "x/b"},
		}},
		{Name: "vm6", Type: tInet6, Verdicts: true, Elements: []nft.Element{
			{Key: []nft.Value{ad("fd00::5")}, Verdict: to(nft.Jump, "c1"), Comment: "x/b"},
			{Key: []nft.Value{ad("fd00::6")}, Verdict: vd(nft.Return)},
		}},
		{Name: "ivm", Type: tInet4, Verdicts: true, Interval: true, Elements: []nft.Element{
			{Key: []nft.Value{p4("10.0.0.0/24")}, Verdict: acc()},
			{Key: []nft.Value{p4("10.0.2.0/24")}, Verdict: vd(nft.Drop), Comment: "x"},
		}},
		{Name: "iv4", Type: tInet4, Interval: true, Comment: "cidrs", Elements: []nft.Element{
			nft.Elem(p4("0.0.0.0/8")), nft.Elem(p4("10.0.0.0/24")), nft.Elem(ad("10.0.1.1")),
			{Key: []nft.Value{rg("10.0.2.1", "10.0.2.5")}, Comment: "r"}, nft.Elem(ad("255.255.255.255")),
		}},
		{Name: "iv4b", Type: tInet4, Interval: true, Elements: []nft.Element{
			nft.Elem(p4("10.0.0.0/25")), nft.Elem(p4("10.0.0.128/25")), nft.Elem(p4("128.0.0.0/1")),
		}},
		{Name: "iv6", Type: tInet6, Interval: true, Elements: []nft.Element{
			nft.Elem(p4("fd00::/64")), nft.Elem(ad("fd01::1")), nft.Elem(rg("fd02::1", "fd02::5")), nft.Elem(p4("ffff::/16")),
		}},
		{Name: "s4", Type: tInet4, Comment: oddComment, Elements: []nft.Element{
			{Key: []nft.Value{ad("10.1.1.1")}, Comment: "p d\u00e9j\u00e0 vu \u2615"}, nft.Elem(ad("10.1.1.2")),
		}},
		{Name: "cc4", Type: tPorts4, Elements: []nft.Element{
			nft.Elem(ad("10.0.0.1"), tcp, nft.Num(80)), {Key: []nft.Value{ad("10.0.0.2"), udp, nft.Num(53)}, Comment: "dns"},
		}},
		{Name: "cc6", Type: tPorts6, Elements: []nft.Element{nft.Elem(ad("fd00::1"), tcp, nft.Num(443))}},
		{Name: "ci4", Type: tPorts4, Interval: true, Elements: []nft.Element{
			nft.Elem(p4("10.0.0.0/24"), tcp, nft.NumRange(80, 90)), nft.Elem(ad("10.0.1.1"), udp, nft.Num(53)),
			nft.Elem(p4("0.0.0.0/0"), nft.Num(nft.ProtoSCTP), nft.NumRange(0, 65535)),
		}},
		{Name: "ci6", Type: tPorts6, Interval: true, Elements: []nft.Element{
			nft.Elem(p4("fd00::/64"), tcp, nft.NumRange(80, 90)), {Key: []nft.Value{ad("fd00:1::1"), udp, nft.Num(53)}, Comment: "c"},
		}},
		{Name: "sv", Type: []nft.DataType{nft.TypeInetService}, Interval: true, Elements: []nft.Element{nft.Elem(nft.Num(80)), nft.Elem(nft.NumRange(1000, 2000))}},
		{Name: "ps", Type: []nft.DataType{nft.TypeInetProto}, Elements: []nft.Element{nft.Elem(tcp), nft.Elem(udp)}},
		{Name: "ifs", Type: []nft.DataType{nft.TypeIfName}, Elements: []nft.Element{nft.Elem(nft.Str("eth0"))}},
		{Name: "cts", Type: []nft.DataType{nft.TypeCtState}, Elements: []nft.Element{nft.Elem(nft.Num(nft.CtEstablished))}},
		{Name: "ic6", Type: []nft.DataType{nft.TypeICMPv6Type}, Elements: []nft.Element{nft.Elem(nft.Num(128))}},
		{Name: "nfs", Type: []nft.DataType{nft.TypeNFProto}, Elements: []nft.Element{nft.Elem(nft.Num(nft.NFProtoIPv4))}},
		{Name: "cx", Type: []nft.DataType{nft.TypeNFProto, nft.TypeCtState, nft.TypeInetProto, nft.TypeIfName, nft.TypeIPv4Addr}, Interval: true, Elements: []nft.Element{
			nft.Elem(nft.Num(nft.NFProtoIPv4), nft.Num(nft.CtEstablished), tcp, nft.Str("eth0"), p4("1.2.3.0/24")),
		}},
		{Name: "es", Type: tInet4, Interval: true},
		{Name: "emap", Type: tInet6, Verdicts: true},
	}
	fwd := []nft.Rule{
		rule(acc(), nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))),
		rule(vd(nft.Drop), nft.Is(nft.KeyCtState, nft.Num(nft.CtInvalid))),
		rule(acc(), nft.Not(nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished)))),
		rule(acc(), nft.Is(nft.KeyICMPv6Type, nft.Num(133), nft.Num(135))),
		rule(acc(), nft.Is(nft.KeyICMPv6Type, nft.Num(128))),
		rule(acc(), nft.Not(nft.Is(nft.KeyICMPv6Type, nft.Num(128)))),
		rule(acc(), nft.Is(nft.KeyL4Proto, nft.Num(nft.ProtoICMPv6)), nft.Is(nft.KeyICMPv6Type, nft.Num(128))),
		rule(acc(), nft.Is(nft.KeyNFProto, nft.Num(nft.NFProtoIPv6)), nft.Is(nft.KeyICMPv6Type, nft.Num(129))),
		{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPDaddr}, Map: "vm4"}},
		{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIP6Daddr}, Map: "vm6"}},
		{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPSaddr}, Map: "ivm"}, Counter: true},
		rule(acc(), nft.Is(nft.KeyIPSaddr, ad("10.0.0.1"))),
		rule(vd(nft.Drop), nft.Not(nft.Is(nft.KeyIPSaddr, p4("10.0.0.0/8")))),
		rule(acc(), nft.Is(nft.KeyIPSaddr, p4("10.16.0.0/12"))),
		rule(acc(), nft.Is(nft.KeyIPSaddr, rg("10.0.2.1", "10.0.2.5"))),
		rule(acc(), nft.Not(nft.Is(nft.KeyIPSaddr, rg("10.0.2.1", "10.0.2.5")))),
		rule(acc(), nft.Is(nft.KeyIPSaddr, p4("0.0.0.0/0"))),
		rule(vd(nft.Return), nft.Is(nft.KeyIP6Daddr, ad("fd00::1"))),
		rule(acc(), nft.Is(nft.KeyIP6Saddr, p4("fd00::/64"))),
		rule(acc(), nft.Not(nft.Is(nft.KeyIP6Saddr, p4("fd00::/60")))),
		rule(acc(), nft.Is(nft.KeyIPSaddr, ad("10.0.0.1"), ad("10.0.0.2"))),
		rule(acc(), nft.Is(nft.KeyIPSaddr, p4("10.0.0.0/24"), ad("10.1.0.1"))),
		rule(acc(), nft.Is(nft.KeyIPSaddr, p4("10.0.0.0/25"), p4("10.0.0.128/25"))),
		rule(acc(), nft.Is(nft.KeyIP6Daddr, ad("fd00::1"), p4("fd00::/64"), p4("::/0"))),
		{Matches: []nft.Match{nft.InSet("iv4", nft.KeyIPSaddr)}, Counter: true, Verdict: acc()},
		rule(acc(), nft.Not(nft.InSet("s4", nft.KeyIPSaddr))),
		{Matches: []nft.Match{nft.InSet("iv6", nft.KeyIP6Saddr)}, Log: &nft.Log{Group: 5}, Verdict: acc()},
		{Log: &nft.Log{Group: 3, Prefix: "hello "}, Verdict: vd(nft.Drop)},
		// Strict mode: the epoch fast path, the stamp, a mismatch, ct direction.
		{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))},
			CtMark: &nft.CtMarkMatch{Mask: 0x00ff0000, Value: 0x00070000}, Verdict: acc(), Comment: "epoch 7"},
		{CtMark: &nft.CtMarkMatch{Mask: 0x0000f000, Value: 0x00001000, Negate: true}, Counter: true, Verdict: vd(nft.Drop)},
		{Statements: []nft.Statement{nft.CtMarkSet{Mask: 0x00ff0000, Value: 0x00070000}}, Verdict: acc()},
		{Matches: []nft.Match{nft.InSet("s4", nft.KeyIPSaddr)}, Statements: []nft.Statement{nft.CtMarkSet{Mask: 0xff000000, Value: 0x01000000}}, Counter: true},
		rule(to(nft.Goto, "c1"), nft.Is(nft.KeyCtDirection, nft.Num(nft.CtReply))),
		rule(acc(), nft.Is(nft.KeyCtDirection, nft.Num(nft.CtOriginal))),
		{Statements: []nft.Statement{nft.Limit{Rate: 100, Per: nft.PerSecond, Burst: 20}}, Log: &nft.Log{Group: 1, Prefix: "np-deny ing-3fa9c2d1"}},
		{Matches: []nft.Match{nft.Is(nft.KeyL4Proto, tcp)}, Statements: []nft.Statement{nft.Limit{Rate: 7, Per: nft.PerMinute, Burst: 1}}, Counter: true, Log: &nft.Log{Group: 2}},
		{Statements: []nft.Statement{nft.Limit{Rate: 1, Per: nft.PerHour, Burst: 5}, nft.Limit{Rate: 3, Per: nft.PerDay, Burst: 2}}},
		{Matches: []nft.Match{nft.InSet("s4", nft.KeyIPSaddr)}, Statements: []nft.Statement{nft.CounterRef{Name: "pol-1/a-ingress-allow"}}, Verdict: acc()},
		{Statements: []nft.Statement{nft.LimitRef{Name: "deny-log"}}, Log: &nft.Log{Group: 100, Prefix: "np-deny ing-3fa9c2d1"}},
		{Statements: []nft.Statement{nft.LimitRef{Name: "slow"}, nft.CounterRef{Name: "pol-1/a-ingress-deny"}}},
		{Statements: []nft.Statement{nft.CounterRef{Name: "pol-1/a-ingress-deny"}, nft.CounterRef{Name: "pol-1/a-ingress-allow"}}, Counter: true, Verdict: vd(nft.Drop)},
		rule(acc(), nft.Is(nft.KeyL4Proto, tcp), nft.Is(nft.KeyTHDport, nft.Num(80))),
		rule(acc(), nft.Is(nft.KeyTHDport, nft.NumRange(1000, 2000))),
		rule(acc(), nft.Not(nft.Is(nft.KeyTHDport, nft.NumRange(1000, 2000)))),
		rule(acc(), nft.Is(nft.KeyTHDport, nft.Num(22), nft.Num(443))),
		rule(acc(), nft.Is(nft.KeyTHDport, nft.Num(22), nft.Num(23), nft.NumRange(1000, 2000))),
		rule(acc(), nft.Not(nft.Is(nft.KeyTHDport, nft.Num(22), nft.Num(443)))),
		rule(acc(), nft.Is(nft.KeyTHSport, nft.Num(53))),
		rule(acc(), nft.InSet("sv", nft.KeyTHDport)),
		rule(acc(), nft.Is(nft.KeyNFProto, nft.Num(nft.NFProtoIPv6))),
		rule(acc(), nft.Is(nft.KeyNFProto, nft.Num(nft.NFProtoIPv4), nft.Num(nft.NFProtoIPv6))),
		rule(acc(), nft.InSet("nfs", nft.KeyNFProto)),
		rule(acc(), nft.Is(nft.KeyL4Proto, tcp, udp)),
		rule(acc(), nft.Not(nft.Is(nft.KeyL4Proto, tcp))),
		rule(acc(), nft.Is(nft.KeyL4Proto, nft.NumRange(6, 17))),
		rule(acc(), nft.InSet("ps", nft.KeyL4Proto)),
		rule(to(nft.Jump, "c1"), nft.Is(nft.KeyIIFName, nft.Str("eth0")), nft.Is(nft.KeyOIFName, nft.Str("eth1"))),
		rule(acc(), nft.Not(nft.Is(nft.KeyIIFName, nft.Str("eth0")))),
		rule(acc(), nft.Is(nft.KeyIIFName, nft.Str("eth0"), nft.Str("eth1"))),
		rule(acc(), nft.InSet("ifs", nft.KeyOIFName)),
		rule(acc(), nft.InSet("cts", nft.KeyCtState)),
		rule(acc(), nft.InSet("ic6", nft.KeyICMPv6Type)),
		rule(acc(), nft.InSet("cc4", kPorts4...)),
		rule(acc(), nft.InSet("cc6", kPorts6...)),
		{Matches: []nft.Match{nft.InSet("ci4", kPorts4...)}, Verdict: acc(), Comment: "x/p#0 $x {z}; 'q' zero\u200bwidth no\u00a0break"},
		rule(to(nft.Goto, "c1"), nft.InSet("ci6", kPorts6...)),
		rule(acc(), nft.Match{Keys: kPorts4, Values: []nft.Element{nft.Elem(ad("10.0.0.1"), tcp, nft.Num(80)), nft.Elem(ad("10.0.0.2"), udp, nft.Num(53))}}),
		rule(acc(), nft.Match{Keys: kPorts6, Values: []nft.Element{nft.Elem(ad("fd00::1"), tcp, nft.Num(80)), nft.Elem(ad("fd00::2"), udp, nft.Num(53))}}),
		rule(acc(), nft.Match{Keys: []nft.Key{nft.KeyIPSaddr, nft.KeyTHDport}, Values: []nft.Element{nft.Elem(p4("10.0.0.0/24"), nft.Num(80)), nft.Elem(ad("10.0.1.1"), nft.NumRange(53, 54))}}),
		rule(acc(), nft.InSet("cx", nft.KeyNFProto, nft.KeyCtState, nft.KeyL4Proto, nft.KeyIIFName, nft.KeyIPSaddr)),
		rule(acc(), nft.Is(nft.KeyNFProto, nft.Num(nft.NFProtoIPv4)), nft.Is(nft.KeyL4Proto, tcp), nft.InSet("cc4", kPorts4...)),
		{Counter: true, Log: &nft.Log{Group: 0}, Verdict: acc(), Comment: "all"},
		rule(to(nft.Jump, "c2")),
		rule(to(nft.Goto, "c3")),
		{Counter: true, Verdict: vd(nft.Drop)},
	}
	r.Objects = []nft.Object{
		{Name: "pol-1/a-ingress-allow", Kind: nft.CounterObject},
		{Name: "pol-1/a-ingress-deny", Kind: nft.CounterObject},
		{Name: "deny-log", Kind: nft.LimitObject, Limit: nft.Limit{Rate: 50, Per: nft.PerSecond, Burst: 10}},
		{Name: "slow", Kind: nft.LimitObject, Limit: nft.Limit{Rate: 2, Per: nft.PerMinute, Burst: 1}},
	}
	r.Chains = []nft.Chain{
		{Name: "forward", Hook: &nft.Hook{Type: "filter", Hook: "forward", Priority: 0, Policy: nft.Accept}, Rules: fwd},
		{Name: "input2", Hook: &nft.Hook{Type: "filter", Hook: "input", Priority: 10, Policy: nft.Drop}, Rules: []nft.Rule{
			rule(acc(), nft.Is(nft.KeyCtState, nft.Num(nft.CtNew|nft.CtUntracked))),
		}},
		{Name: "c1", Rules: []nft.Rule{{Counter: true, Verdict: vd(nft.Drop)}}},
		{Name: "c2", Rules: []nft.Rule{rule(acc(), nft.InSet("es", nft.KeyIPSaddr)), rule(vd(nft.Return))}},
		{Name: "c3", Rules: []nft.Rule{{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIP6Saddr}, Map: "emap"}}}},
		{Name: "c4"},
	}
	return r
}

// --- Tests --------------------------------------------------------------------

// TestDifferential loads nft.Render(model) with the nft CLI in one namespace and
// applies the model over netlink in another: both kernels must hold the same table,
// down to the bytecode `nft --debug=netlink list` shows.
func TestDifferential(t *testing.T) {
	requireKernel(t)
	model := richModel("np")
	if err := model.Validate(); err != nil {
		t.Fatal(err)
	}
	nsA, nsB := nfttest.NewNetNS(t, "np3-diff-a"), nfttest.NewNetNS(t, "np3-diff-b")
	nftRun(t, nsA, nft.Render(model), "-f", "-")
	a := newApplier(t, nsB, "np")
	st := mustApply(t, a, model)
	if !st.Full || st.Operations == 0 || st.Bytes == 0 {
		t.Errorf("stats %+v", st)
	}
	want, got := listing(t, nsA, "np"), listing(t, nsB, "np")
	if got != want {
		t.Errorf("nft list differs (- nft -f, + netlink):\n%s\n\nnetlink:\n%s", diffText(want, got), got)
	}
	wantNL, gotNL := netlinkListing(t, nsA, "np"), netlinkListing(t, nsB, "np")
	if gotNL != wantNL {
		t.Errorf("nft --debug=netlink list differs (- nft -f, + netlink):\n%s", diffText(wantNL, gotNL))
	}
}
