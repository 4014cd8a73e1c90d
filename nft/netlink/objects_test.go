package netlink

import (
	"context"
	"net"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// objectModel counts UDP datagrams to 127.0.0.1:port in the output hook with
// a named counter, and logs them through a named limit.
func objectModel(rate uint32, extraRule bool) *nft.Ruleset {
	udpTo := func(port uint32) []nft.Match {
		return []nft.Match{nft.Is(nft.KeyIPDaddr, nft.Addr(a4("127.0.0.1"))), nft.Is(nft.KeyL4Proto, nft.Num(nft.ProtoUDP)), nft.Is(nft.KeyTHDport, nft.Num(port))}
	}
	rules := []nft.Rule{
		{Matches: udpTo(9999), Statements: []nft.Statement{nft.CounterRef{Name: "x/p-egress-allow"}}},
		{Matches: udpTo(9999), Statements: []nft.Statement{nft.LimitRef{Name: "deny-log"}}, Log: &nft.Log{Group: 9, Prefix: "np-deny"}},
	}
	if extraRule {
		rules = append(rules, nft.Rule{Matches: udpTo(9998), Counter: true})
	}
	return &nft.Ruleset{
		Table: "np",
		Objects: []nft.Object{
			{Name: "x/p-egress-allow", Kind: nft.CounterObject},
			{Name: "deny-log", Kind: nft.LimitObject, Limit: nft.Limit{Rate: rate, Per: nft.PerSecond, Burst: 5}},
		},
		Chains: []nft.Chain{{Name: "out", Hook: &nft.Hook{Type: "filter", Hook: "output", Policy: nft.Accept}, Rules: rules}},
	}
}

func sendLoopback(t *testing.T, ns *nfttest.NetNS, n int) {
	t.Helper()
	if err := ns.Do(func() error {
		c, err := net.ListenPacket("udp", "127.0.0.1:0") // unconnected: no ECONNREFUSED
		if err != nil {
			return err
		}
		defer c.Close()
		to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9999}
		for range n {
			if _, err := c.WriteTo([]byte("x"), to); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func counterPackets(t *testing.T, a *Applier, name string) uint64 {
	t.Helper()
	cs, err := a.Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c, ok := cs[name]
	if !ok {
		t.Fatalf("counter %s not read back: %v", name, cs)
	}
	return c.Packets
}

// TestNamedObjects: named counters count real packets, keep counting across
// rule rewrites, full syncs and a restarted agent's adoption; a changed limit is
// re-created; drift names objects added or changed behind the applier's back.
func TestNamedObjects(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-objs")
	a := newApplier(t, ns, "np")
	if cs, err := a.Counters(ctx); err != nil || len(cs) != 0 {
		t.Fatalf("counters of a missing table: %v %v", cs, err)
	}
	mustApply(t, a, objectModel(50, false))
	sendLoopback(t, ns, 5)
	if got := counterPackets(t, a, "x/p-egress-allow"); got != 5 {
		t.Fatalf("counter after 5 datagrams: %d", got)
	}

	// A rule change rewrites the chain; the counter keeps its count.
	st := mustApply(t, a, objectModel(50, true))
	if st.ChainsRewritten != 1 {
		t.Errorf("rule change: %+v", st)
	}
	if got := counterPackets(t, a, "x/p-egress-allow"); got != 5 {
		t.Errorf("counter after a chain rewrite: %d, want 5", got)
	}
	// A full sync rewrites every chain and keeps the objects.
	st, err := a.FullSync(ctx, objectModel(50, true))
	if err != nil || st.Full || len(st.Drift) != 0 {
		t.Fatalf("full sync: %+v %v", st, err)
	}
	sendLoopback(t, ns, 2)
	if got := counterPackets(t, a, "x/p-egress-allow"); got != 7 {
		t.Errorf("counter after a full sync and 2 more: %d, want 7", got)
	}

	// A changed limit is deleted and created again, its users refilled.
	mustApply(t, a, objectModel(80, true))
	if out := nftRun(t, ns, "", "list", "limit", "inet", "np", "deny-log"); !strings.Contains(out, "rate 80/second") {
		t.Errorf("limit not changed:\n%s", out)
	}
	if got := counterPackets(t, a, "x/p-egress-allow"); got != 7 {
		t.Errorf("counter after a limit change: %d, want 7", got)
	}

	// Objects added or changed behind the applier's back are drift, and repaired.
	nftRun(t, ns, "", "add", "counter", "inet", "np", "intruder")
	st, err = a.FullSync(ctx, objectModel(80, true))
	if want := []string{"object intruder unexpected"}; err != nil || !slices.Equal(st.Drift, want) {
		t.Errorf("drift: %q %v, want %q", st.Drift, err, want)
	}
	if out := nftRun(t, ns, "", "list", "counters", "table", "inet", "np"); strings.Contains(out, "intruder") {
		t.Errorf("intruder kept:\n%s", out)
	}
	// Drift is repaired in place (the intruder deleted): counters keep their counts.
	if st.Full {
		t.Errorf("the intruder's repair replaced the table: %+v", st)
	}
	sendLoopback(t, ns, 3)
	if got := counterPackets(t, a, "x/p-egress-allow"); got != 10 {
		t.Errorf("counter after the repair and 3 more: %d, want 10", got)
	}

	// A restarted agent adopts the table: the counter keeps its count.
	b := newApplier(t, ns, "np")
	st, err = b.FullSync(ctx, objectModel(80, true))
	if err != nil || st.Full {
		t.Fatalf("adoption: %+v %v", st, err)
	}
	if got := counterPackets(t, b, "x/p-egress-allow"); got != 10 {
		t.Errorf("counter after adoption: %d, want 10", got)
	}
	// ... and a limit the model does not hold is re-created.
	st, err = newApplier(t, ns, "np").FullSync(ctx, objectModel(30, true))
	if err != nil || st.Full {
		t.Fatalf("adoption with another limit: %+v %v", st, err)
	}
	if out := nftRun(t, ns, "", "list", "limit", "inet", "np", "deny-log"); !strings.Contains(out, "rate 30/second") {
		t.Errorf("limit not re-created on adoption:\n%s", out)
	}
	// The table equals a fresh load of the model.
	fresh := nfttest.NewNetNS(t, "np3-objs-b")
	nftRun(t, fresh, nft.Render(objectModel(30, true)), "-f", "-")
	counts := regexp.MustCompile(`packets \d+ bytes \d+`)
	want := counts.ReplaceAllString(listing(t, fresh, "np"), "")
	got := counts.ReplaceAllString(listing(t, ns, "np"), "")
	if got != want {
		t.Errorf("adopted table differs from a fresh load:\n%s", diffText(want, got))
	}
}

// TestCounterCreated: Counters says which life of a counter it read. Rule
// rewrites, full syncs that keep the object and an adoption keep it; the
// counter deleted and created again, or the table replaced whole, give it a
// new one, counting from zero (the collector carries the old life's count).
func TestCounterCreated(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-created")
	a := newApplier(t, ns, "np")
	created := func() uint64 {
		t.Helper()
		cs, err := a.Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return cs["x/p-egress-allow"].Created
	}
	mustApply(t, a, objectModel(50, false))
	first := created()
	if first == 0 {
		t.Fatal("a counter this Applier created reads as not created by it")
	}
	mustApply(t, a, objectModel(50, true)) // a rule rewrite
	if _, err := a.FullSync(ctx, objectModel(50, true)); err != nil {
		t.Fatal(err)
	}
	if got := created(); got != first {
		t.Errorf("the counter kept through a rewrite and a full sync reads as created again (%d, was %d)", got, first)
	}
	without := objectModel(50, true)
	without.Objects = without.Objects[1:]
	without.Chains[0].Rules = without.Chains[0].Rules[1:]
	mustApply(t, a, without)
	if _, kept := a.createdNow()["x/p-egress-allow"]; kept {
		t.Error("a deleted counter's creation is still remembered")
	}
	mustApply(t, a, objectModel(50, true))
	second := created()
	if second == first || second == 0 {
		t.Errorf("the counter deleted and created again reads as the same life (%d)", second)
	}
	nftRun(t, ns, "", "delete", "table", "inet", "np")
	if _, err := a.FullSync(ctx, objectModel(50, true)); err != nil {
		t.Fatal(err)
	}
	if got := created(); got == second || got == 0 {
		t.Errorf("the table replaced whole: the counter reads as the same life (%d)", got)
	}
	b := newApplier(t, ns, "np") // a restarted agent adopts it
	if st, err := b.FullSync(ctx, objectModel(50, true)); err != nil || st.Full {
		t.Fatalf("adoption: %+v %v", st, err)
	}
	if cs, err := b.Counters(ctx); err != nil || cs["x/p-egress-allow"].Created != 0 {
		t.Errorf("an adopted counter reads as created by the new Applier: %v %v", cs, err)
	}
}
