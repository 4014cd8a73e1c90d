package netlink

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// Benchmarks need root (they program a namespace of their own) and skip otherwise:
//
//	go test -run '^$' -bench . -benchtime 20x ./nft/netlink/
//
// They report netlink bytes per operation next to the time. BenchmarkApply prints
// the ratio of a full apply to a one-pod incremental apply at the end.

const benchPods, benchChains = 10000, 1000

var benchModel = func() func() *nft.Ruleset {
	var m *nft.Ruleset
	return func() *nft.Ruleset {
		if m == nil {
			m = scaleModel("np", benchPods, benchChains)
		}
		return m
	}
}()

func benchApplier(b *testing.B) *Applier {
	b.Helper()
	nfttest.RequireRoot(b)
	ns := nfttest.NewNetNS(b, "np3-bench")
	return newApplier(b, ns, "np")
}

func BenchmarkApply(b *testing.B) {
	var full, incr time.Duration
	b.Run("full-10k-pods-1k-chains", func(b *testing.B) {
		a := benchApplier(b)
		model := benchModel()
		var bytes int
		b.ResetTimer()
		for range b.N {
			a.last = nil // force a full replace
			st, err := a.Apply(context.Background(), model)
			if err != nil {
				b.Fatal(err)
			}
			bytes = st.Bytes
		}
		full = b.Elapsed() / time.Duration(b.N)
		b.ReportMetric(float64(bytes), "netlink-bytes/op")
	})
	b.Run("incremental-one-pod", func(b *testing.B) {
		a := benchApplier(b)
		model := benchModel()
		if _, err := a.Apply(context.Background(), model); err != nil {
			b.Fatal(err)
		}
		with := withPod(model, 60000)
		var bytes, ops int
		b.ResetTimer()
		for i := range b.N {
			r := model
			if i%2 == 0 {
				r = with
			}
			st, err := a.Apply(context.Background(), r)
			if err != nil {
				b.Fatal(err)
			}
			bytes, ops = st.Bytes, st.Operations
		}
		incr = b.Elapsed() / time.Duration(b.N)
		b.ReportMetric(float64(bytes), "netlink-bytes/op")
		b.ReportMetric(float64(ops), "messages/op")
	})
	if full > 0 && incr > 0 {
		fmt.Printf("BenchmarkApply: full apply %v / one-pod incremental apply %v = %.0fx\n", full, incr, float64(full)/float64(incr))
	}
}

// BenchmarkIncrementalParts splits a one-pod apply into its parts: planning (pure),
// keeping a copy of what was applied, and the kernel transaction (for a verdict map
// element, whose goto makes the kernel re-validate the chains the map reaches, and
// for a plain set element).
func BenchmarkIncrementalParts(b *testing.B) {
	model := benchModel()
	with := withPod(model, 60000)
	b.Run("plan", func(b *testing.B) {
		for range b.N {
			if tx := nft.Plan(model, with); len(tx.Ops) != 1 {
				b.Fatal(tx)
			}
		}
	})
	b.Run("keep-copy", func(b *testing.B) {
		last, tx := model.Clone(), nft.Plan(model, with)
		b.ResetTimer()
		for range b.N {
			_ = keepApplied(with, last, tx)
		}
	})
	b.Run("transaction", func(b *testing.B) {
		a := benchApplier(b)
		if _, err := a.Apply(context.Background(), model); err != nil {
			b.Fatal(err)
		}
		txs := []nft.Transaction{nft.Plan(model, with), nft.Plan(with, model)}
		benchSend(b, a, txs, with)
	})
	// The same for an element of a plain set: no verdict, so the kernel need not
	// re-validate the chains the map's elements jump to.
	b.Run("transaction-set-element", func(b *testing.B) {
		a := benchApplier(b)
		if _, err := a.Apply(context.Background(), model); err != nil {
			b.Fatal(err)
		}
		s := model.FindSet("ing-0000-ports-v4")
		more := *s
		more.Elements = append(append([]nft.Element(nil), s.Elements...), nft.Elem(nft.Addr(podV4(60001)), nft.Num(nft.ProtoTCP), nft.Num(80)))
		other := *model
		other.Sets = append([]nft.Set(nil), model.Sets...)
		for i := range other.Sets {
			if other.Sets[i].Name == s.Name {
				other.Sets[i] = more
			}
		}
		txs := []nft.Transaction{nft.Plan(model, &other), nft.Plan(&other, model)}
		benchSend(b, a, txs, &other)
	})
}

func benchSend(b *testing.B, a *Applier, txs []nft.Transaction, desired *nft.Ruleset) {
	for _, tx := range txs {
		if len(tx.Ops) != 1 {
			b.Fatalf("want one op:\n%s", tx)
		}
	}
	var bytes int
	b.ResetTimer()
	for i := range b.N {
		st, err := a.send(context.Background(), txs[i%2], nil, desired)
		if err != nil {
			b.Fatal(err)
		}
		bytes = st.Bytes
	}
	b.ReportMetric(float64(bytes), "netlink-bytes/op")
}

func ExampleApplier() {
	a, err := New(Options{Table: "nftpolicy", NetNSPath: "/var/run/netns/node-1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer a.Close()
	// desired comes from nft/compile; Apply sends only what changed since the last call.
	desired := &nft.Ruleset{Table: "nftpolicy"}
	if _, err := a.Apply(context.Background(), desired); err != nil {
		fmt.Println(err)
	}
}
