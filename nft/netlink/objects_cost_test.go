package netlink

import (
	"context"
	"fmt"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestCounterCost measures what named counters cost a packet: datagrams sent
// to 127.0.0.1 in a namespace cross 64 rules, each with an anonymous counter
// and 0, 1, 4 or 16 `counter name` statements (a group chain of that many
// policies has one such rule per packet; 64 makes the difference stand out of
// the sendto's cost), in interleaved rounds. It reports the median time per
// datagram of each variant and the cost per counter update it implies, and
// checks that every counter counted every datagram 64 times.
func TestCounterCost(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-ctrcost")
	a := newApplier(t, ns, "np")
	const packets, rounds, ruleCopies = 10000, 7, 64
	variants := []int{-1, 0, 1, 4, 16} // -1: no counter at all, not even the anonymous one
	model := func(refs int) *nft.Ruleset {
		r := &nft.Ruleset{Table: "np"}
		var sts []nft.Statement
		for i := range 16 {
			r.Objects = append(r.Objects, nft.Object{Name: fmt.Sprintf("pol-%02d", i), Kind: nft.CounterObject})
			if i < refs {
				sts = append(sts, nft.CounterRef{Name: fmt.Sprintf("pol-%02d", i)})
			}
		}
		rule := nft.Rule{Matches: []nft.Match{nft.Is(nft.KeyIPDaddr, nft.Addr(a4("127.0.0.1"))), nft.Is(nft.KeyL4Proto, nft.Num(nft.ProtoUDP)), nft.Is(nft.KeyTHDport, nft.Num(9999))},
			Statements: sts, Counter: refs >= 0}
		out := nft.Chain{Name: "out", Hook: &nft.Hook{Type: "filter", Hook: "output", Policy: nft.Accept}}
		for range ruleCopies {
			out.Rules = append(out.Rules, rule)
		}
		r.Chains = []nft.Chain{out}
		return r
	}
	var sink, src net.PacketConn
	if err := ns.Do(func() (err error) {
		if sink, err = net.ListenPacket("udp", "127.0.0.1:9999"); err != nil {
			return err
		}
		src, err = net.ListenPacket("udp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	defer src.Close()
	// Nobody reads the sink: once its buffer is full, datagrams are dropped at
	// the socket, after the hook, without waking anyone.
	to := sink.LocalAddr()
	payload := make([]byte, 16)
	perPacket := map[int][]float64{}
	for range rounds {
		for _, refs := range variants {
			mustApply(t, a, model(refs))
			start := time.Now()
			for range packets {
				if _, err := src.WriteTo(payload, to); err != nil {
					t.Fatal(err)
				}
			}
			perPacket[refs] = append(perPacket[refs], float64(time.Since(start).Nanoseconds())/packets)
		}
	}
	cs, err := a.Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// pol-00 was in 3 variants of every round, pol-15 in one; 64 times per datagram.
	if got, want := cs["pol-00"].Packets, uint64(3*rounds*packets*ruleCopies); got != want {
		t.Errorf("pol-00 counted %d, want %d", got, want)
	}
	if got, want := cs["pol-15"].Packets, uint64(rounds*packets*ruleCopies); got != want {
		t.Errorf("pol-15 counted %d, want %d", got, want)
	}
	median := func(xs []float64) float64 { s := slices.Clone(xs); slices.Sort(s); return s[len(s)/2] }
	bare, base := median(perPacket[-1]), median(perPacket[0])
	t.Logf("counter_cost_none: %.0f ns/datagram through %d rules without counters (median of %d rounds)", bare, ruleCopies, rounds)
	t.Logf("counter_cost_anonymous: %.0f ns/datagram with one anonymous counter per rule (%+.1f ns per counter update)", base, (base-bare)/ruleCopies)
	for _, refs := range variants[2:] {
		m := median(perPacket[refs])
		t.Logf("counter_cost_named_%d: %.0f ns/datagram with %d named counters per rule too (%+.1f ns per named counter update)",
			refs, m, refs, (m-base)/float64(refs*ruleCopies))
	}
}
