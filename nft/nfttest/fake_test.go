package nfttest

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
)

func fakeSample(pods ...string) *nft.Ruleset {
	r := &nft.Ruleset{
		Table: nft.DefaultTable,
		Sets:  []nft.Set{{Name: nft.MapIngressV4, Type: []nft.DataType{nft.TypeIPv4Addr}, Verdicts: true}},
		Chains: []nft.Chain{
			{Name: nft.ChainForward, Hook: &nft.Hook{Type: "filter", Hook: "forward", Policy: nft.Accept}, Rules: []nft.Rule{
				{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPDaddr}, Map: nft.MapIngressV4}},
			}},
			{Name: "ing-1", Rules: []nft.Rule{{Counter: true, Verdict: nft.Verdict{Kind: nft.Drop}}}},
		},
	}
	for _, p := range pods {
		r.Sets[0].Elements = append(r.Sets[0].Elements, nft.Element{
			Key:     []nft.Value{nft.Addr(netip.MustParseAddr(p))},
			Verdict: nft.Verdict{Kind: nft.Goto, Chain: "ing-1"},
		})
	}
	return r
}

func TestFakeRecordsAndCountsPlanOps(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	if f.Dump() != "" || f.Last() != nil {
		t.Fatal("new fake has a table")
	}
	a := fakeSample("10.0.0.1")
	st, err := f.Apply(ctx, a)
	if err != nil || !st.Full || st.ChainsRewritten != 2 {
		t.Fatalf("first apply: %+v %v", st, err)
	}
	if f.Dump() != nft.Render(a) {
		t.Errorf("dump:\n%s", f.Dump())
	}
	// The fake keeps a copy: changing the caller's ruleset changes nothing.
	a.Chains[1].Rules = nil
	if !strings.Contains(f.Dump(), "counter drop") {
		t.Error("fake shares memory with the caller")
	}
	st, err = f.Apply(ctx, fakeSample("10.0.0.1", "10.0.0.2"))
	if err != nil || st.Full || st.Operations != 1 || st.Elements != 1 || st.ChainsRewritten != 0 {
		t.Errorf("pod churn: %+v %v", st, err)
	}
	st, err = f.Apply(ctx, fakeSample("10.0.0.1", "10.0.0.2"))
	if err != nil || st.Operations != 0 {
		t.Errorf("same again: %+v %v", st, err)
	}
	if c := f.Calls(); c.Apply != 3 || c.Full != 1 || c.FullSync != 0 {
		t.Errorf("calls %+v", c)
	}
	if st, err := f.FullSync(ctx, fakeSample()); err != nil || !st.Full || len(st.Drift) != 0 {
		t.Errorf("full sync: %+v %v", st, err)
	}
	if h := f.History(); len(h) != 4 || f.LastStats().Full != true {
		t.Errorf("history %+v", h)
	}
	if err := f.Delete(ctx); err != nil || f.Last() != nil {
		t.Errorf("delete: %v", err)
	}
}

func TestFakeFailNext(t *testing.T) {
	ctx := context.Background()
	f := &Fake{}
	if _, err := f.Apply(ctx, fakeSample("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	f.FailNext(boom)
	if _, err := f.Apply(ctx, fakeSample("10.0.0.2")); !errors.Is(err, boom) {
		t.Fatalf("want boom, got %v", err)
	}
	if f.Last() != nil {
		t.Error("a failed apply must forget the table")
	}
	st, err := f.Apply(ctx, fakeSample("10.0.0.2"))
	if err != nil || !st.Full {
		t.Errorf("apply after failure must be full: %+v %v", st, err)
	}
	bad := fakeSample()
	bad.Chains[0].Rules[0].VMap.Map = "missing"
	if _, err := f.Apply(ctx, bad); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("invalid ruleset: %v", err)
	}
	if c := f.Calls(); c.Failed != 2 {
		t.Errorf("calls %+v", c)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := f.Apply(cctx, fakeSample()); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestFakeConcurrent(t *testing.T) {
	f := NewFake()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				_, _ = f.Apply(context.Background(), fakeSample("10.0.0.1"))
				_ = f.Dump()
				_ = f.Last()
				_ = f.Calls()
			}
		}()
	}
	wg.Wait()
	if c := f.Calls(); c.Apply != 400 || c.Full != 1 {
		t.Errorf("calls %+v", c)
	}
}
