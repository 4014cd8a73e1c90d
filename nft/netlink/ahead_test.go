package netlink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// withS4 returns model with set s4's elements replaced by addrs.
func withS4(model *nft.Ruleset, addrs ...string) *nft.Ruleset {
	out := *model
	out.Sets = slices.Clone(model.Sets)
	for i := range out.Sets {
		if out.Sets[i].Name == "s4" {
			out.Sets[i].Elements = nil
			for _, a := range addrs {
				out.Sets[i].Elements = append(out.Sets[i].Elements, nft.Elem(ad(a)))
			}
		}
	}
	return &out
}

// TestReadAheadReportsDrift: after ReadAhead, FullSync reads nothing and
// reports and repairs what the read found, as its own read would; a change
// made behind the Applier's back after the read is the next full sync's.
func TestReadAheadReportsDrift(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-ahead")
	a := newApplier(t, ns, "np")
	model := richModel("np")
	if err := a.ReadAhead(ctx); !errors.Is(err, errNothingApplied) {
		t.Fatalf("read ahead before the first sync: %v, want %v", err, errNothingApplied)
	}
	if st, err := a.FullSync(ctx, model); err != nil || st.ReadAhead || !st.Full {
		t.Fatalf("first full sync: %+v %v", st, err)
	}

	if err := a.ReadAhead(ctx); err != nil {
		t.Fatal(err)
	}
	// After the read: the next full sync's, as a change after FullSync's own
	// read would be.
	nftRun(t, ns, "", "add", "element", "inet", "np", "iv4b", "{ 10.8.8.8 }")
	st, err := a.FullSync(ctx, model)
	if err != nil || !st.ReadAhead || st.Full || len(st.Drift) != 0 || st.Operations != 0 {
		t.Fatalf("full sync read ahead, no drift: %+v %v; want nothing sent", st, err)
	}
	st, err = a.FullSync(ctx, model) // an interval: two elements, its start and end
	if want := []string{"set iv4b: 2 elements unexpected"}; err != nil || st.ReadAhead || st.Full || !slices.Equal(st.Drift, want) {
		t.Fatalf("the full sync after: %+v %v, want its own read and drift %q, repaired in place", st, err, want)
	}

	// TestFullSyncReportsDrift's edits, before the read.
	want := tamper(t, ns)
	if err := a.ReadAhead(ctx); err != nil {
		t.Fatal(err)
	}
	if a.ahead == nil || !slices.Equal(a.ahead.lines, want) {
		t.Fatalf("the read ahead found %+v\nwant drift:\n%s", a.ahead, strings.Join(want, "\n"))
	}
	// More than rules drifted: the full sync reads the table itself and mends it
	// in place (the sets that only hold other elements patched).
	st, err = a.FullSync(ctx, model)
	if err != nil || st.ReadAhead || st.Full || !slices.Equal(st.Drift, want) {
		t.Fatalf("full sync after the read ahead: %+v %v\nwant drift:\n%s", st, err, strings.Join(want, "\n"))
	}
	if st, err := a.Apply(ctx, model); err != nil || st.Operations != 0 {
		t.Errorf("apply after the repair: %+v %v", st, err)
	}
	if err := a.ReadAhead(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err = a.FullSync(ctx, model); err != nil || !st.ReadAhead || len(st.Drift) != 0 {
		t.Fatalf("full sync read ahead after the repair: %+v %v", st, err)
	}

	// A read ahead of a table replaced or deleted since is not used.
	if err := a.ReadAhead(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err = a.FullSync(ctx, model); err != nil || st.ReadAhead || !st.Full {
		t.Fatalf("full sync after a read ahead and a delete: %+v %v; want its own read", st, err)
	}
}

// TestReadAheadWithAppliesMeanwhile: transactions committed while ReadAhead
// reads. One that changes a set while that set is being read makes it read
// again (compared with the set as applied then, so no difference is invented),
// one that changes a set read before is no difference either, and one that
// changes the table's shape makes ReadAhead fail, FullSync then reading itself.
// Real drift is found through all of it.
func TestReadAheadWithAppliesMeanwhile(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-ahead2")
	a := newApplier(t, ns, "np")
	model := richModel("np")
	if _, err := a.FullSync(ctx, model); err != nil {
		t.Fatal(err)
	}
	apply := func(r *nft.Ruleset) {
		if _, err := a.Apply(ctx, r); err != nil {
			t.Error(err)
		}
	}
	nftRun(t, ns, "", "delete", "element", "inet", "np", "vm4", "{ 10.244.1.5 }") // real drift

	// s4 changes just before its read (from the read's point of view, during
	// it), and again once read (sets are read in name order: vm4 after s4).
	cur := model
	var reads []string
	a.aheadHook = func(key string) {
		reads = append(reads, key)
		switch {
		case key == "set s4" && cur == model:
			cur = withS4(model, "10.1.1.1", "10.1.1.2", "10.1.1.3")
			apply(cur)
		case key == "set vm4" && cur != model && !slices.Contains(reads[:len(reads)-1], "set vm4"):
			apply(withS4(model, "10.1.1.4")) // s4 again, after its read
			cur = withS4(model, "10.1.1.4")
		}
	}
	if err := a.ReadAhead(ctx); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.Join(reads, ","), "set s4"); n != 2 {
		t.Errorf("set s4 read %d times, want 2 (changed during the first read): %q", n, reads)
	}
	a.aheadHook = nil
	want := []string{"set vm4: 1 elements missing"}
	if a.ahead == nil || !slices.Equal(a.ahead.lines, want) {
		t.Fatalf("the read ahead found %+v, want drift %q", a.ahead, want)
	}
	// Drift in elements needs the kernel's table itself: the full sync reads it.
	st, err := a.FullSync(ctx, cur)
	if err != nil || st.ReadAhead || st.Full || !slices.Equal(st.Drift, want) {
		t.Fatalf("full sync after the read ahead: %+v %v, want its own read, drift %q, repaired in place", st, err, want)
	}

	// A new set while the table is read: ReadAhead fails, FullSync reads.
	withSet := *cur
	withSet.Sets = append(slices.Clone(cur.Sets), nft.Set{Name: "late", Type: tInet4})
	a.aheadHook = func(key string) {
		if key == "set s4" {
			apply(&withSet)
		}
	}
	if err := a.ReadAhead(ctx); !errors.Is(err, errShapeChanged) {
		t.Fatalf("read ahead while a set is added: %v, want %v", err, errShapeChanged)
	}
	a.aheadHook = nil
	nftRun(t, ns, "", "add", "element", "inet", "np", "s4", "{ 10.9.9.9 }")
	st, err = a.FullSync(ctx, &withSet)
	if want := []string{"set s4: 1 elements unexpected"}; err != nil || st.ReadAhead || !slices.Equal(st.Drift, want) {
		t.Fatalf("full sync after a failed read ahead: %+v %v, want its own read and drift %q", st, err, want)
	}

	// A set that changes during every read of it.
	n := 0
	a.aheadHook = func(key string) {
		if key == "set s4" {
			n++
			apply(withS4(&withSet, "10.1.1.1", "10.7.7."+string(rune('0'+n))))
		}
	}
	if err := a.ReadAhead(ctx); err == nil || !strings.Contains(err.Error(), "set s4 changed during each of") {
		t.Fatalf("read ahead of a set changed during every read: %v", err)
	}
	a.aheadHook = nil
	if st, err := a.FullSync(ctx, &withSet); err != nil || st.ReadAhead || len(st.Drift) != 0 {
		t.Fatalf("full sync after it: %+v %v", st, err)
	}
}

// TestReadAheadUnderChurn: ReadAhead while another goroutine keeps applying
// element changes (a pod coming and going in the ingress map, as pod churn
// does), on a table of 20,000 elements. Each Apply that changes the map while
// it is being read waits for that read; ReadAhead completes, and the full
// sync it read for finds no difference.
func TestReadAheadUnderChurn(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-ahead3")
	a := newApplier(t, ns, "np")
	model := scaleModel("np", 10000, 50)
	with := withPod(model, 60000)
	if _, err := a.FullSync(ctx, model); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		stop, done := make(chan struct{}), make(chan int)
		var longest time.Duration
		go func() {
			n := 0
			for {
				select {
				case <-stop:
					done <- n
					return
				default:
				}
				r := model
				if n%2 == 0 {
					r = with
				}
				start := time.Now()
				if _, err := a.Apply(ctx, r); err != nil {
					t.Error(err)
				}
				longest = max(longest, time.Since(start))
				n++
				time.Sleep(time.Duration(round) * time.Millisecond)
			}
		}()
		aheadErr := a.ReadAhead(ctx)
		close(stop)
		n := <-done
		last := model
		if n%2 == 1 {
			last = with
		}
		st, err := a.FullSync(ctx, last)
		t.Logf("round %d: %d applies meanwhile, the longest %v", round, n, longest)
		if aheadErr != nil || err != nil || len(st.Drift) != 0 || !st.ReadAhead {
			t.Fatalf("round %d: read ahead %v; full sync %+v %v", round, aheadErr, st, err)
		}
	}
}

// TestReadAheadWithCounterScrapes: Prometheus scrapes the table's counters
// (Counters) at any time, also while ReadAhead reads the table through the same
// socket. Neither may read the other's replies: every read ahead succeeds, the
// full sync after it uses it, and every scrape returns every counter.
func TestReadAheadWithCounterScrapes(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-ahead4")
	a := newApplier(t, ns, "np")
	model := scaleModel("np", 10000, 50)
	for i := range 200 {
		model.Objects = append(model.Objects, nft.Object{Name: fmt.Sprintf("pol-%03d/ingress-allow", i), Kind: nft.CounterObject})
	}
	if _, err := a.FullSync(ctx, model); err != nil {
		t.Fatal(err)
	}
	for round := range 5 {
		stop, done := make(chan struct{}), make(chan int)
		go func() {
			n := 0
			defer func() { done <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := a.Counters(ctx)
				if err != nil || len(c) != 200 {
					t.Errorf("round %d: scrape %d: %d counters, %v; want 200", round, n, len(c), err)
					return
				}
				n++
			}
		}()
		aheadErr := a.ReadAhead(ctx)
		close(stop)
		n := <-done
		st, err := a.FullSync(ctx, model)
		t.Logf("round %d: %d scrapes meanwhile", round, n)
		if aheadErr != nil || err != nil || len(st.Drift) != 0 || !st.ReadAhead {
			t.Fatalf("round %d: read ahead %v; full sync %+v %v", round, aheadErr, st, err)
		}
		if n == 0 {
			t.Fatalf("round %d: no scrape while reading ahead", round)
		}
	}
}
