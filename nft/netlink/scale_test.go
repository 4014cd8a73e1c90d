package netlink

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// scaleModel is a table in the compiler's shape at the size of a large cluster: pods
// pod addresses (half IPv4, half IPv6) in the two ingress verdict maps and in
// per-chain concatenated address . protocol . port sets, chains policy chains, and one
// CIDR interval per chain.
func scaleModel(table string, pods, chains int) *nft.Ruleset {
	r := &nft.Ruleset{Table: table}
	v4 := nft.Set{Name: nft.MapIngressV4, Type: tInet4, Verdicts: true}
	v6 := nft.Set{Name: nft.MapIngressV6, Type: tInet6, Verdicts: true}
	type chainSets struct{ any4, ports4, ports6 nft.Set }
	per := make([]chainSets, chains)
	for i := range per {
		name := fmt.Sprintf("ing-%04d", i)
		per[i] = chainSets{
			any4:   nft.Set{Name: name + "-any-v4", Type: tInet4, Interval: true},
			ports4: nft.Set{Name: name + "-ports-v4", Type: tPorts4, Interval: true},
			ports6: nft.Set{Name: name + "-ports-v6", Type: tPorts6, Interval: true},
		}
		per[i].any4.Elements = []nft.Element{nft.Elem(nft.Prefix(netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i/256), byte(i), 0}), 24)))}
	}
	for p := 0; p < pods; p++ {
		c := p % chains
		chain := fmt.Sprintf("ing-%04d", c)
		el := nft.Element{Verdict: nft.Verdict{Kind: nft.Goto, Chain: chain}, Comment: fmt.Sprintf("ns-%d/pod-%d", p%97, p)}
		if p%2 == 0 {
			a := podV4(p)
			el.Key = []nft.Value{nft.Addr(a)}
			v4.Elements = append(v4.Elements, el)
			per[c].ports4.Elements = append(per[c].ports4.Elements, nft.Elem(nft.Addr(a), nft.Num(nft.ProtoTCP), nft.NumRange(8000, 8080)))
		} else {
			a := podV6(p)
			el.Key = []nft.Value{nft.Addr(a)}
			v6.Elements = append(v6.Elements, el)
			per[c].ports6.Elements = append(per[c].ports6.Elements, nft.Elem(nft.Addr(a), nft.Num(nft.ProtoTCP), nft.Num(443)))
		}
	}
	r.Sets = append(r.Sets, v4, v6)
	r.Chains = []nft.Chain{
		{Name: nft.ChainForward, Hook: &nft.Hook{Type: "filter", Hook: "forward", Policy: nft.Accept}, Rules: []nft.Rule{
			rule(acc(), nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))),
			rule(acc(), nft.Is(nft.KeyICMPv6Type, nft.Num(133), nft.Num(134), nft.Num(135), nft.Num(136))),
			rule(to(nft.Jump, nft.ChainIngress)),
		}},
		{Name: nft.ChainIngress, Rules: []nft.Rule{
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPDaddr}, Map: nft.MapIngressV4}},
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIP6Daddr}, Map: nft.MapIngressV6}},
		}},
	}
	for i, s := range per {
		r.Sets = append(r.Sets, s.any4, s.ports4, s.ports6)
		r.Chains = append(r.Chains, nft.Chain{Name: fmt.Sprintf("ing-%04d", i), Rules: []nft.Rule{
			rule(vd(nft.Drop), nft.Is(nft.KeyCtState, nft.Num(nft.CtInvalid))),
			{Matches: []nft.Match{nft.InSet(s.any4.Name, nft.KeyIPSaddr)}, Verdict: acc(), Comment: fmt.Sprintf("ns-%d/policy-%d#0", i%97, i)},
			{Matches: []nft.Match{nft.InSet(s.ports4.Name, kPorts4...)}, Verdict: acc(), Comment: fmt.Sprintf("ns-%d/policy-%d#1", i%97, i)},
			{Matches: []nft.Match{nft.InSet(s.ports6.Name, kPorts6...)}, Verdict: acc(), Comment: fmt.Sprintf("ns-%d/policy-%d#1", i%97, i)},
			{Counter: true, Verdict: vd(nft.Drop)},
		}})
	}
	return r
}

func podV4(p int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, 244, byte(p >> 8), byte(p)})
}

func podV6(p int) netip.Addr {
	return netip.AddrFrom16([16]byte{0xfd, 0, 0x10, 0x24, 14: byte(p >> 8), 15: byte(p)})
}

// withPod returns r with one more IPv4 pod in the ingress map.
func withPod(r *nft.Ruleset, p int) *nft.Ruleset {
	out := *r
	out.Sets = append([]nft.Set(nil), r.Sets...)
	for i := range out.Sets {
		if out.Sets[i].Name == nft.MapIngressV4 {
			s := &out.Sets[i]
			s.Elements = append(append([]nft.Element(nil), s.Elements...), nft.Element{
				Key: []nft.Value{nft.Addr(podV4(p))}, Verdict: nft.Verdict{Kind: nft.Goto, Chain: "ing-0000"}, Comment: fmt.Sprintf("new/pod-%d", p),
			})
		}
	}
	return &out
}

func TestScale(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-scale")
	a := newApplier(t, ns, "np")
	model := scaleModel("np", 10000, 1000)
	c := model.Counts()
	start := time.Now()
	st := mustApply(t, a, model)
	t.Logf("full apply of %d chains, %d rules, %d sets, %d elements: %v, %d messages, %d bytes in one batch",
		c.Chains, c.Rules, c.Sets, c.Elements, time.Since(start), st.Operations, st.Bytes)
	if !st.Full || st.ChainsRewritten != c.Chains {
		t.Errorf("stats %+v", st)
	}

	start = time.Now()
	st = mustApply(t, a, withPod(model, 60000))
	t.Logf("one pod added: %v, %d messages, %d bytes", time.Since(start), st.Operations, st.Bytes)
	if st.Full || st.Operations != 1 || st.Elements != 1 || st.ChainsRewritten != 0 || st.Bytes > 200 {
		t.Errorf("one pod added: %+v", st)
	}
	st = mustApply(t, a, model)
	if st.Operations != 1 || st.Elements != 1 {
		t.Errorf("one pod removed: %+v", st)
	}

	// What the kernel holds is what nft makes of the rendered text.
	fresh := nfttest.NewNetNS(t, "np3-scale-b")
	start = time.Now()
	nftRun(t, fresh, nft.Render(model), "-f", "-")
	t.Logf("nft -f of the same table: %v", time.Since(start))
	if got, want := listing(t, ns, "np"), listing(t, fresh, "np"); got != want {
		t.Errorf("scale table differs from nft -f (- nft, + netlink):\n%s", diffText(want, got))
	}
	st, err := a.FullSync(context.Background(), model)
	if err != nil || len(st.Drift) != 0 {
		t.Errorf("full sync: drift %q, %v", st.Drift, err)
	}
}
