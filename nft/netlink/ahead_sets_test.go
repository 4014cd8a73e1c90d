package netlink

import (
	"context"
	"net"
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
