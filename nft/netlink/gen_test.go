package netlink

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestCountersDuringApplies: a scrape of the counters while transactions
// delete other counters (groups going away) returns every counter that exists
// before and after each of them. The kernel's dump resumes by position, so a
// deletion between two of its rounds made it skip a counter, with no error
// (57 of 128 scrapes, before the generation check).
func TestCountersDuringApplies(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-gen")
	a := newApplier(t, ns, "np")
	pad := strings.Repeat("x", 120) // longer names: more rounds per dump
	const churn, stable = 400, 600
	model := func(from int) *nft.Ruleset {
		rs := &nft.Ruleset{Table: "np"}
		for i := from; i < churn; i++ {
			rs.Objects = append(rs.Objects, nft.Object{Name: fmt.Sprintf("churn-%03d-%s", i, pad), Kind: nft.CounterObject})
		}
		for i := range stable {
			rs.Objects = append(rs.Objects, nft.Object{Name: fmt.Sprintf("stable-%03d-%s", i, pad), Kind: nft.CounterObject})
		}
		return rs
	}
	// The churning counters first: they come before the stable ones in the kernel's list.
	if _, err := a.Apply(ctx, &nft.Ruleset{Table: "np", Objects: model(0).Objects[:churn]}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Apply(ctx, model(0)); err != nil {
		t.Fatal(err)
	}
	scrapes, failed, short := readWhile(t, "a scrape", stable, func() {
		for i := 1; i <= churn; i++ { // one counter deleted per transaction
			if _, err := a.Apply(ctx, model(i)); err != nil {
				t.Error(err)
				return
			}
		}
	}, func() (int, error) {
		c, err := a.Counters(ctx)
		n := 0
		for name := range c {
			if strings.HasPrefix(name, "stable-") {
				n++
			}
		}
		return n, err
	})
	t.Logf("%d scrapes (%d more failed: the table changed during each read) during %d transactions", scrapes, failed, churn)
	if short > 0 {
		t.Errorf("%d scrapes missed counters that existed before and after every transaction", short)
	}
	if c, err := a.Counters(ctx); err != nil || len(c) != stable {
		t.Errorf("a scrape after: %d counters, %v; want %d", len(c), err, stable)
	}
}

// TestReadDuringApplies: explain --live reads the table from another process
// than the agent's, while the agent commits. Each set is read as some
// transaction left it: never missing elements present throughout (16 of 83
// reads, one of them with 1,995 of 2,000, before the generation check).
func TestReadDuringApplies(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-gen2")
	agent := newApplier(t, ns, "np")
	explain := newApplier(t, ns, "np")
	const churn, stable = 2000, 2000
	addr := func(i int) nft.Element {
		return nft.Elem(nft.Addr(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})))
	}
	// A window of churn elements slides by 10 each transaction (10 deleted, 10
	// added), so that the set keeps its size: a hash set that shrinks or grows
	// is rehashed by the kernel outside any transaction, which no generation
	// check sees (docs/explain.md), and a read may then miss an element.
	model := func(from int) *nft.Ruleset {
		s := nft.Set{Name: "peers", Type: []nft.DataType{nft.TypeIPv4Addr}}
		for i := from; i < from+churn; i++ {
			s.Elements = append(s.Elements, addr(i))
		}
		for i := range stable {
			s.Elements = append(s.Elements, addr(100000+i))
		}
		return &nft.Ruleset{Table: "np", Sets: []nft.Set{s}}
	}
	if _, err := agent.Apply(ctx, model(0)); err != nil {
		t.Fatal(err)
	}
	reads, failed, short := readWhile(t, "a read", stable, func() {
		for i := 10; i <= churn; i += 10 {
			if _, err := agent.Apply(ctx, model(i)); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}, func() (int, error) {
		rs, err := explain.Read(ctx, model(0))
		if err != nil {
			return 0, err
		}
		n := 0
		for _, e := range rs.Sets[0].Elements {
			if e.Key[0].Addr.As4()[1] >= 1 { // 10.1.x.x and up: the stable ones
				n++
			}
		}
		return n, nil
	})
	t.Logf("%d reads (%d more gave up) during %d transactions", reads, failed, churn/10)
	if short > 0 {
		t.Errorf("%d reads missed elements present before and after every transaction", short)
	}
	if reads == 0 {
		t.Error("no read succeeded while the agent committed")
	}
}

// readWhile runs read over and over on another goroutine while apply runs,
// and counts its outcomes: read returns how many of the want things that
// exist throughout it found, or an error when the table changed during each
// of its tries (gen.go).
func readWhile(t *testing.T, what string, want int, apply func(), read func() (int, error)) (reads, gaveUp, short int) {
	t.Helper()
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			n, err := read()
			switch {
			case errors.Is(err, errGenerationMoved):
				gaveUp++
			case err != nil:
				t.Errorf("%s: %v", what, err)
				return
			case n != want:
				if short++; short == 1 {
					t.Logf("%s found %d of the %d that exist throughout", what, n, want)
				}
				reads++
			default:
				reads++
			}
		}
	}()
	apply()
	stop.Store(true)
	<-done
	return reads, gaveUp, short
}
