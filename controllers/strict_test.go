package controllers

import (
	"context"
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestEpochAdvance: no epoch comes round again without a sweep in between that
// left only the epoch then current, over several wraps, from a fresh start and
// from a restart that found an epoch in force.
func TestEpochAdvance(t *testing.T) {
	const mask = 0x00000700 // epochs 1-7: wraps come quickly
	for _, start := range []uint32{0, 1, 5, 7} {
		e := epochState{epoch: start}
		// onConns: the epochs connections may carry (idle ones keep theirs).
		onConns := map[uint32]bool{}
		for v := uint32(1); v <= compile.MaxEpoch(mask); v++ {
			onConns[v] = true // a previous agent's connections: anything
		}
		sweeps := 0
		for i := range 100 {
			cur := e.epoch
			prior, next, sweep := e.advance(mask)
			if sweep {
				sweeps++
				for v := range onConns {
					if v != cur {
						delete(onConns, v)
					}
				}
			}
			if onConns[next] {
				t.Fatalf("start %d, change %d: epoch %d comes round while connections may carry it", start, i, next)
			}
			// The change's own transaction stamps prior (the one in force, or
			// with none a spare one), the move next.
			if prior == next || prior == 0 || (cur != 0 && prior != cur) {
				t.Fatalf("start %d, change %d: from %d the change stamps %d, then the move %d", start, i, cur, prior, next)
			}
			onConns[prior], onConns[next] = true, true
		}
		// One sweep at the start, then one per cycle of 7 epochs (6 changes after it).
		if sweeps < 100/7 || sweeps > 100/6+1 {
			t.Errorf("start %d: %d sweeps in 100 changes", start, sweeps)
		}
	}
}

// TestStrictModePlansEachChangeOnce: in strict mode, a change that keeps the
// epoch is applied with the plan that weighed it (the Applier plans ahead from
// the table in force); one that moves the epoch is planned again after the
// stamp. Either way the kernel then holds exactly the table in force.
func TestStrictModePlansEachChangeOnce(t *testing.T) {
	nfttest.RequireRoot(t)
	f := newRebuildFixture(t)
	applier := &planCounter{kernelApplier: newKernelApplier(t, "np-plan-once")}
	f.r.Applier, f.r.Established, f.r.needFull = applier, compile.EstablishedRecheck, true
	f.sync()
	fresh := nfttest.NewNetNS(t, "np-plan-once-b")
	for _, step := range []struct {
		name          string
		change        func()
		narrows       bool // moves the epoch
		planned, sent int  // ApplyPlanned calls; those that sent the plan given
	}{
		{"a new peer", func() { f.pod("peer-2", "node-1", "10.60.1.3", "peer", false) }, false, 1, 1},
		{"a peer leaves", func() { f.pod("peer-1", "node-1", "10.60.1.2", "stranger", false) }, true, 0, 0},
		{"another new peer", func() { f.pod("peer-3", "node-1", "10.60.1.4", "peer", false) }, false, 1, 1},
		{"a new local pod", func() { f.pod("target-2", "node-0", "10.60.0.3", "target", false) }, true, 0, 0},
		{"a stale plan", func() {
			f.pod("peer-4", "node-1", "10.60.1.5", "peer", false)
			applier.before = func() { // another transaction between plan and apply
				other := f.r.strict.inForce.Clone()
				other.FindSet(nft.MapIngressV4).Elements = nil
				if _, err := applier.Applier.Apply(context.Background(), other); err != nil {
					t.Fatal(err)
				}
			}
		}, false, 1, 0},
	} {
		epoch := f.r.strict.epoch
		applier.planned, applier.sent = 0, 0
		step.change()
		f.sync()
		if moved := f.r.strict.epoch != epoch; moved != step.narrows {
			t.Errorf("%s: epoch %d -> %d, want it moved: %v", step.name, epoch, f.r.strict.epoch, step.narrows)
		}
		if applier.planned != step.planned || applier.sent != step.sent {
			t.Errorf("%s: %d applies of a weighed plan, %d sent as planned; want %d, %d", step.name, applier.planned, applier.sent, step.planned, step.sent)
		}
		if _, err := fresh.NFT("", "flush", "ruleset"); err != nil {
			t.Fatal(err)
		}
		if _, err := fresh.NFT(nft.Render(f.r.strict.inForce), "-f", "-"); err != nil {
			t.Fatal(err)
		}
		if got, want := kernelListing(t, applier.ns), kernelListing(t, fresh); got != want {
			t.Fatalf("%s: the kernel's table is not the table in force:\n%s\nwant:\n%s", step.name, got, want)
		}
	}
}

// planCounter counts the Applies that were handed a plan, and those of them
// that sent it (nothing applied since it was made); before, when set, runs once
// before the next of them.
type planCounter struct {
	*kernelApplier
	planned, sent int
	before        func()
}

func (a *planCounter) ApplyPlanned(ctx context.Context, p nft.Planned) (nft.Stats, error) {
	a.planned++
	if a.before != nil {
		a.before()
		a.before = nil
	}
	if _, current := a.PlanFrom(p.From, p.Desired); current {
		a.sent++
	}
	return a.kernelApplier.ApplyPlanned(ctx, p)
}

func kernelListing(t *testing.T, ns *nfttest.NetNS) string {
	t.Helper()
	out, err := ns.NFT("", "list", "table", "inet", nft.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	return nfttest.SortBlocks(out)
}

// TestEpochMovesAlone: a peer whose address a change removes from an allow set
// (an interval set) is cut for good, while it floods the target. The kernel makes
// a transaction's rules visible before it commits its interval sets' new
// elements: within one transaction, a packet between the two walked the new
// rules (the new epoch) with the old elements, and ct-stamp gave its connection
// the new epoch, so that it lived on (29 of 100 such commits with nft(8); 30 of
// these 40 rounds). The reconciler moves the epoch in a transaction of its own
// after the change, and no round may leak. In every fourth round the move's
// transaction fails (the kernel Applier given a cancelled context): the change
// stays in force (OnApplied says so, its attribution current), and the retry,
// a full sync, moves the epoch, after which the connection may not pass.
func TestEpochMovesAlone(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	nfttest.RequireRoot(t)
	applier := newKernelApplier(t, "np-epoch")
	node := applier.ns
	pods := map[string]*nfttest.NetNS{}
	for _, p := range []struct{ name, sub string }{{"target", "0"}, {"peer", "1"}} {
		ns := nfttest.NewNetNS(t, "np-epoch-"+p.name)
		if err := node.Attach(ns, "v"+p.name, "10.60."+p.sub+".1", "10.60."+p.sub+".2"); err != nil {
			t.Fatal(err)
		}
		pods[p.name] = ns
	}
	if err := node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}

	f := newRebuildFixture(t) // rb/target (10.60.0.2, this node) admits role=peer; rb/peer-1 (10.60.1.2) is one
	mf := &moveFailer{kernelApplier: applier}
	f.r.Applier, f.r.Established, f.r.needFull = mf, compile.EstablishedRecheck, true
	var inForce []bool
	f.r.OnApplied = func(ok bool) { inForce = append(inForce, ok) }
	f.sync()

	// The target echoes; the peer sends numbered datagrams as fast as it can on
	// one connection and keeps the highest number echoed. A number drawn after a
	// sync returned was sent after it: its echo says the connection passes then,
	// however late the reader is.
	var srv, cli *net.UDPConn
	if err := pods["target"].Do(func() (err error) {
		srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 60, 0, 2), Port: 7000})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := pods["peer"].Do(func() (err error) {
		cli, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(10, 60, 0, 2), Port: 7000})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteToUDP(buf[:n], from)
		}
	}()
	var sent, echoed, echoes atomic.Uint64
	go func() {
		buf := make([]byte, 64)
		for {
			n, err := cli.Read(buf)
			if err != nil {
				return
			}
			if n == 8 {
				if seq := binary.BigEndian.Uint64(buf); seq > echoed.Load() {
					echoed.Store(seq) // one reader: no race
				}
			}
			echoes.Add(1)
		}
	}()
	done := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(done); wg.Wait() }()
	wg.Go(func() {
		msg := make([]byte, 8)
		for {
			select {
			case <-done:
				return
			default:
			}
			binary.BigEndian.PutUint64(msg, sent.Add(1))
			_, _ = cli.Write(msg)
		}
	})
	// passes reports whether a datagram sent after now is echoed within d.
	passes := func(d time.Duration) bool {
		after := sent.Load()
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(2 * time.Millisecond) {
			if echoed.Load() > after {
				return true
			}
		}
		return false
	}

	const rounds = 40
	leaks := 0
	for i := range rounds {
		f.pod("peer-1", "node-1", "10.60.1.2", "peer", false)
		f.sync()
		if !passes(2 * time.Second) {
			t.Fatalf("round %d: the peer's echoes do not flow while a peer", i)
		}
		epoch := f.r.strict.epoch
		f.pod("peer-1", "node-1", "10.60.1.2", "stranger", false) // its address leaves the allow set
		if i%4 == 3 {
			mf.armed = true
			if _, err := f.r.Reconcile(f.ctx, f.r.request()); err == nil || mf.armed {
				t.Fatalf("round %d: the failed move went unnoticed (%v)", i, err)
			}
			if !inForce[len(inForce)-1] {
				t.Fatalf("round %d: the change's table is in force, OnApplied said it is not", i)
			}
		}
		f.sync()
		if f.r.strict.epoch == epoch {
			t.Fatalf("round %d: the epoch did not move", i)
		}
		if passes(100 * time.Millisecond) {
			leaks++
		}
	}
	if leaks > 0 {
		t.Fatalf("%d of %d rounds: the peer's connection lived on after its address left the allow set", leaks, rounds)
	}
	t.Logf("%d rounds: the peer's connection cut each time, %d echoes in all", rounds, echoes.Load())
}

// moveFailer is a kernel Applier whose next transaction after the change fails
// while armed: the epoch's move (the change goes by ApplyPlanned or Apply, the
// move by Apply), refused as the real Applier refuses a cancelled context.
type moveFailer struct {
	*kernelApplier
	armed   bool
	changed bool // the armed sync's change went in
}

func (m *moveFailer) ApplyPlanned(ctx context.Context, p nft.Planned) (nft.Stats, error) {
	m.changed = m.armed
	return m.kernelApplier.ApplyPlanned(ctx, p)
}

func (m *moveFailer) Apply(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	if m.armed && m.changed {
		m.armed, m.changed = false, false
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		return m.kernelApplier.Apply(cancelled, desired)
	}
	m.changed = m.armed
	return m.kernelApplier.Apply(ctx, desired)
}
