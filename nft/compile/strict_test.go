package compile

import (
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/trace"
)

// TestStrictGolden compiles the ports case (ingress and egress groups, both
// families) in recheck mode at epoch 5: testdata/strict-ports.nft.
func TestStrictGolden(t *testing.T) {
	w := loadCase(t, goldenCase{name: "ports", upstream: true, node: "node-1"})
	c := NewCompiler("node-1", Options{Established: EstablishedRecheck})
	for _, ns := range w.namespaces {
		c.SetNamespace(ns)
	}
	for _, p := range w.pods {
		c.SetPod(p)
	}
	for _, p := range w.policies {
		c.SetPolicy(p)
	}
	c.SetEpoch(5)
	rs, _ := c.Compile()
	if err := rs.Validate(); err != nil {
		t.Fatal(err)
	}
	got := nft.Render(rs)
	// StampEpoch makes an epoch-1 ruleset equal to the epoch-5 one.
	c.SetEpoch(1)
	rs1, _ := c.Compile()
	StampEpoch(rs1, DefaultCtMarkMask, 5)
	if r := nft.Render(rs1); r != got {
		t.Errorf("StampEpoch(5) of an epoch-1 ruleset differs:\n%s", lineDiff(got, r))
	}
	golden := filepath.Join("testdata", "strict-ports.nft")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update to rewrite it):\n%s", golden, lineDiff(string(want), got))
	}
	// Keep mode is the table without any of it.
	keep, _ := Compile(Snapshot{NodeName: "node-1", Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}, Options{})
	if k := nft.Render(keep); strings.Contains(k, "ct mark") || strings.Contains(k, "ct direction") || strings.Contains(k, nft.ChainStamp) {
		t.Errorf("keep mode has strict rules:\n%s", k)
	}
}

func TestEpochs(t *testing.T) {
	for _, m := range []uint32{0, 0x1, 0x00ff00f0, 0x80000001} {
		if CheckCtMarkMask(m) == nil {
			t.Errorf("mask 0x%x accepted", m)
		}
	}
	for _, m := range []uint32{DefaultCtMarkMask, 0x3, 0xc0000000, 0xffffffff} {
		if err := CheckCtMarkMask(m); err != nil {
			t.Errorf("mask 0x%x: %v", m, err)
		}
	}
	if MaxEpoch(DefaultCtMarkMask) != 255 || EpochMark(3, DefaultCtMarkMask) != 0x00030000 {
		t.Errorf("MaxEpoch %d, EpochMark(3) 0x%x", MaxEpoch(DefaultCtMarkMask), EpochMark(3, DefaultCtMarkMask))
	}
	e := uint32(1)
	seen := map[uint32]bool{}
	for range 255 {
		if e == 0 || e > 255 || seen[e] {
			t.Fatalf("epoch %d out of range or repeated before the wrap", e)
		}
		seen[e] = true
		e = NextEpoch(e, DefaultCtMarkMask)
	}
	if e != 1 {
		t.Errorf("after 255 epochs: %d, want 1", e)
	}
}

// TestNarrows: only element additions to allow sets leave open connections alone.
func TestNarrows(t *testing.T) {
	w := loadCase(t, goldenCase{name: "ports", upstream: true, node: "node-1"})
	opts := Options{Established: EstablishedRecheck}
	snap := Snapshot{NodeName: "node-1", Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}
	base, _ := Compile(snap, opts)
	if Narrows(base, base) {
		t.Error("no change narrows")
	}
	if !Narrows(nil, base) {
		t.Error("nothing known in force: must narrow")
	}
	var setName string
	for _, s := range base.Sets {
		if !s.Verdicts && len(s.Elements) > 0 && len(s.Type) == 1 && s.Type[0] == nft.TypeIPv4Addr {
			setName = s.Name
			break
		}
	}
	if setName == "" {
		t.Fatal("no IPv4 allow set in the case")
	}
	change := func(f func(rs *nft.Ruleset)) *nft.Ruleset {
		rs := base.Clone()
		f(rs)
		return rs
	}
	more := change(func(rs *nft.Ruleset) {
		s := rs.FindSet(setName)
		s.Elements = append(s.Elements, nft.Elem(nft.Addr(mustAddr("10.99.0.1"))))
	})
	if Narrows(base, more) {
		t.Error("an element added to an allow set narrows")
	}
	if !Narrows(more, base) {
		t.Error("an element removed from an allow set does not narrow")
	}
	isolated := change(func(rs *nft.Ruleset) {
		m := rs.FindSet(nft.MapIngressV4)
		e := m.Elements[0]
		e.Key = []nft.Value{nft.Addr(mustAddr("10.244.99.2"))}
		m.Elements = append(m.Elements, e)
	})
	if !Narrows(base, isolated) {
		t.Error("a new isolated address does not narrow")
	}
	rules := change(func(rs *nft.Ruleset) {
		c := rs.Chain(nft.ChainForward)
		c.Rules = c.Rules[1:]
	})
	if !Narrows(base, rules) {
		t.Error("a rule change does not narrow")
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestUnknownLocalPods: with the node's pod CIDRs given, a packet from an address
// of them that no known local pod has is dropped, whatever the policies; known
// local pods, isolated or not, and other nodes' pods are judged as before.
func TestUnknownLocalPods(t *testing.T) {
	w := loadCase(t, goldenCase{name: "no-policies", upstream: true, node: "node-1"})
	snap := Snapshot{NodeName: "node-1", Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	for _, mode := range []Established{EstablishedKeep, EstablishedRecheck} {
		rs, _ := Compile(snap, Options{UnknownLocalPods: cidrs, Established: mode})
		if err := rs.Validate(); err != nil {
			t.Fatal(err)
		}
		tr := trace.New(rs)
		for _, c := range []struct {
			src, dst string
			want     nft.VerdictKind
		}{
			{"10.244.1.10", "10.244.2.10", nft.Accept},           // x/a, a known local pod
			{"10.244.1.200", "10.244.2.10", nft.Drop},            // unknown, this node's CIDR
			{"fd00:10:244:1::c8", "fd00:10:244:2::a", nft.Drop},  // likewise, IPv6
			{"10.244.2.10", "10.244.1.10", nft.Accept},           // from another node
			{"10.244.2.10", "10.244.1.200", nft.Accept},          // to an unknown address: its egress is not ours
			{"fd00:10:244:1::a", "fd00:10:244:2::a", nft.Accept}, // known, IPv6
			{"10.244.1.99", "10.244.2.10", nft.Drop},             // an address no pod has
		} {
			p := trace.Packet{Saddr: netip.MustParseAddr(c.src), Daddr: netip.MustParseAddr(c.dst), L4Proto: nft.ProtoTCP, DPort: 80, CtState: nft.CtNew}
			got, err := tr.Forward(p)
			if err != nil {
				t.Fatal(err)
			}
			if got.Verdict != c.want {
				t.Errorf("%v: %s -> %s: %v, want %v\n%s", mode, c.src, c.dst, got.Verdict, c.want, got)
			}
		}
	}
	// Without CIDRs, nothing of it.
	rs, _ := Compile(snap, Options{})
	if rs.FindSet(nft.SetLocalPodsV4) != nil {
		t.Error("local pod sets without UnknownLocalPods")
	}
}

// TestWithEpoch: moving to the next epoch (the reconciler's second transaction)
// rewrites only the chains that name the epoch, touches no set, and leaves the
// ruleset it starts from as it was (an Applier holds that one as in force).
func TestWithEpoch(t *testing.T) {
	w := loadCase(t, goldenCase{name: "cnp-admin", upstream: true})
	rs, _ := Compile(w.snapshot("node-1"), Options{Established: EstablishedRecheck, DenyLog: DenyLog{Group: 100, Rate: 100}})
	if rs.Chain(nft.ChainInput) == nil {
		t.Fatal("no input chain: the case should have the tiers")
	}
	before := nft.Render(rs)
	moved := WithEpoch(rs, DefaultCtMarkMask, 2)
	if nft.Render(rs) != before {
		t.Fatal("WithEpoch changed the ruleset it was given")
	}
	if !strings.Contains(nft.Render(moved), "ct mark and 0x00ff0000 == 0x00020000") {
		t.Fatalf("not stamped with epoch 2:\n%s", nft.Render(moved))
	}
	touched := map[string]bool{}
	for _, op := range nft.Plan(rs, moved).Ops {
		switch op.Kind {
		case nft.OpFlushChain, nft.OpAddRule:
			touched[op.Name] = true
		default:
			t.Errorf("the move has %s", op)
		}
	}
	want := map[string]bool{nft.ChainForward: true, nft.ChainInput: true, nft.ChainStamp: true}
	if !maps.Equal(touched, want) {
		t.Errorf("the move rewrites chains %v, want %v", touched, want)
	}
}
