package netlink

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestNewIntervalSetsGoAhead: a rule that starts to look in an interval set
// created in its own batch misses, for a moment, what the set holds (the
// kernel makes the set's elements visible after the commit switched the
// rules). The Applier creates such sets a batch ahead (sendAhead), so that a
// change that moves a lookup to a new interval set (a pod's new group) drops
// nothing the set allows. Here an output chain looks up every datagram sent to
// 10.9.0.5 in an interval set holding it and drops what misses; a flood of
// datagrams runs while the set is swapped for a new one (another name, the
// same elements), 400 times. Without the batch ahead this counted 100-300
// misses on the 2-core CI machine (tried); with it, none may miss.
func TestNewIntervalSetsGoAhead(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np-ahead")
	for _, args := range [][]string{
		{"ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"},
		{"ip", "link", "set", "d0", "up"}, {"ip", "link", "set", "d1", "up"},
		{"ip", "addr", "add", "10.9.0.1/24", "dev", "d0"},
		{"ip", "neigh", "add", "10.9.0.5", "lladdr", "02:00:00:00:00:05", "dev", "d0"},
	} {
		if out, err := ns.Run(args...); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	model := func(set string) *nft.Ruleset {
		return &nft.Ruleset{Table: "np",
			Objects: []nft.Object{{Name: "miss", Kind: nft.CounterObject}},
			Sets: []nft.Set{{Name: set, Type: tInet4, Interval: true,
				Elements: []nft.Element{nft.Elem(ad("10.9.0.5")), nft.Elem(ad("10.9.0.6"))}}},
			Chains: []nft.Chain{
				{Name: "out", Hook: &nft.Hook{Type: "filter", Hook: "output", Priority: 0, Policy: nft.Accept},
					Rules: []nft.Rule{rule(to(nft.Jump, "judge"), nft.Is(nft.KeyIPDaddr, p4("10.9.0.0/24")))}},
				{Name: "judge", Rules: []nft.Rule{
					rule(acc(), nft.InSet(set, nft.KeyIPDaddr)),
					{Statements: []nft.Statement{nft.CounterRef{Name: "miss"}}, Verdict: vd(nft.Drop)},
				}},
			},
		}
	}
	a := newApplier(t, ns, "np")
	mustApply(t, a, model("peers-a"))

	var sent atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		err := ns.Do(func() error {
			c, err := net.Dial("udp4", "10.9.0.5:9")
			if err != nil {
				return err
			}
			defer c.Close()
			for {
				select {
				case <-stop:
					return nil
				default:
				}
				for range 64 {
					if _, err := c.Write([]byte{'x'}); err == nil {
						sent.Add(1)
					}
				}
			}
		})
		if err != nil {
			t.Error(err)
		}
	})
	for sent.Load() < 1000 {
		time.Sleep(time.Millisecond)
	}
	split := 0
	for i := range 400 {
		time.Sleep(2 * time.Millisecond) // the flood fills the gaps
		name := "peers-a"
		if i%2 == 0 {
			name = "peers-b"
		}
		if ahead, _ := setsAhead(nft.Plan(a.last, model(name)), a.last); len(ahead.Ops) > 0 {
			split++
		}
		mustApply(t, a, model(name))
	}
	close(stop)
	wg.Wait()
	counters, err := a.Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d datagrams sent during 400 swaps of the set (%d created a batch ahead); %d missed it", sent.Load(), split, counters["miss"].Packets)
	if split != 400 {
		t.Errorf("%d of 400 swaps created the new set a batch ahead", split)
	}
	if counters["miss"].Packets != 0 {
		t.Errorf("%d datagrams missed the set they are in", counters["miss"].Packets)
	}
	if sent.Load() < 1000 {
		t.Errorf("only %d datagrams sent: the test did not test", sent.Load())
	}
}

// TestSetsAhead: which sets a transaction creates a batch ahead.
func TestSetsAhead(t *testing.T) {
	ipv4 := func(name string, interval bool, elems ...string) nft.Set {
		s := nft.Set{Name: name, Type: tInet4, Interval: interval}
		for _, e := range elems {
			s.Elements = append(s.Elements, nft.Elem(ad(e)))
		}
		return s
	}
	base := func(sets ...nft.Set) *nft.Ruleset {
		r := &nft.Ruleset{Table: "np", Sets: sets, Chains: []nft.Chain{{Name: "c"}}}
		for _, s := range sets {
			r.Chains[0].Rules = append(r.Chains[0].Rules, rule(acc(), nft.InSet(s.Name, nft.KeyIPSaddr)))
		}
		return r
	}
	names := func(tx nft.Transaction) (out []string) {
		for _, op := range tx.Ops {
			out = append(out, fmt.Sprintf("%d:%s", op.Kind, op.Name))
		}
		return out
	}
	last := base(ipv4("old", true, "10.0.0.1"))
	for _, tc := range []struct {
		name    string
		last    *nft.Ruleset
		desired *nft.Ruleset
		ahead   []string // set names created ahead
	}{
		{"a new filled interval set", last, base(ipv4("new", true, "10.0.0.1")), []string{"new"}},
		{"two, and a hash set that stays in the change", last,
			base(ipv4("new", true, "10.0.0.1"), ipv4("new2", true, "10.0.0.2"), ipv4("h", false, "10.0.0.3")), []string{"new", "new2"}},
		{"an empty new interval set", last, base(ipv4("new", true)), nil},
		{"a kept set gaining elements", last, base(ipv4("old", true, "10.0.0.1", "10.0.0.2")), nil},
		{"a set re-created under its name", last, base(ipv4("old", false, "10.0.0.1")), nil},
		{"the kernel's table unknown", nil, base(ipv4("new", true, "10.0.0.1")), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx := nft.Plan(tc.last, tc.desired)
			ahead, rest := setsAhead(tx, tc.last)
			var got []string
			for _, op := range ahead.Ops {
				if op.Kind == nft.OpAddSet {
					got = append(got, op.Name)
				}
			}
			if !slices.Equal(got, tc.ahead) {
				t.Fatalf("created ahead %v, want %v (ahead %v, rest %v)", got, tc.ahead, names(ahead), names(rest))
			}
			if len(ahead.Ops) == 0 {
				if !slices.Equal(names(rest), names(tx)) {
					t.Errorf("not split, but the transaction changed: %v, want %v", names(rest), names(tx))
				}
				return
			}
			// Together they are the transaction, each op once, in its order.
			all := append(names(ahead), names(rest)...)
			want := names(tx)
			slices.Sort(all)
			slices.Sort(want)
			if !slices.Equal(all, want) {
				t.Errorf("ahead %v and rest %v are not the transaction %v", names(ahead), names(rest), names(tx))
			}
			for _, op := range rest.Ops {
				if (op.Kind == nft.OpAddSet || op.Kind == nft.OpAddElements) && slices.Contains(tc.ahead, op.Name) {
					t.Errorf("%s is created ahead and again in the change", op.Name)
				}
			}
		})
	}
}
