package controllers

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/types"

	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// collectSum is the sum of the samples one Collect sends.
func collectSum(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 16)
	go func() { c.Collect(ch); close(ch) }()
	var sum float64
	for m := range ch {
		sum += testutil.ToFloat64(oneMetric{m})
	}
	return sum
}

// oneMetric is a Collector of one metric, for testutil.ToFloat64.
type oneMetric struct{ m prometheus.Metric }

func (c oneMetric) Describe(ch chan<- *prometheus.Desc) { ch <- c.m.Desc() }
func (c oneMetric) Collect(ch chan<- prometheus.Metric) { ch <- c.m }

// TestPolicyCollectorConcurrentScrapes: two scrapes at once (two Prometheus
// replicas) must not take the older read for a reset. Scrape A reads 100, B
// reads 150 and records it, A records 100 after: the counter then seemed to
// restart, and every scrape after read 150 too high.
func TestPolicyCollectorConcurrentScrapes(t *testing.T) {
	p := types.NamespacedName{Namespace: "x", Name: "p"}
	at := &attribution{}
	at.store(&compile.Attribution{Counters: map[string]compile.GroupCounter{
		"ing-1-allow": {Group: compile.Group{Chain: "ing-1", Ingress: true, Policies: []types.NamespacedName{p}}, Verdict: compile.VerdictAllow},
	}})
	var mu sync.Mutex
	kernel, calls := uint64(50), 0
	aRead, bDone := make(chan struct{}), make(chan struct{})
	c := newPolicyCollector(packetsOnly(func(context.Context) (map[string]uint64, error) {
		mu.Lock()
		v := kernel
		calls++
		n := calls
		mu.Unlock()
		if n == 2 { // scrape A: has read, and is slow to record
			close(aRead)
			<-bDone
		}
		return map[string]uint64{"ing-1-allow": v}, nil
	}), at)
	if v := collectSum(c); v != 50 {
		t.Fatalf("first scrape: %v", v)
	}
	mu.Lock()
	kernel = 100
	mu.Unlock()
	doneA := make(chan float64)
	go func() { doneA <- collectSum(c) }()
	<-aRead
	mu.Lock()
	kernel = 150
	mu.Unlock()
	doneB := make(chan float64)
	go func() { doneB <- collectSum(c) }()
	select {
	case v := <-doneB: // B ran beside A
		close(bDone)
		t.Logf("scrape B: %v, then scrape A: %v", v, <-doneA)
	case <-time.After(200 * time.Millisecond): // B waits for A
		close(bDone)
		t.Logf("scrape A: %v, then scrape B: %v", <-doneA, <-doneB)
	}
	if v := collectSum(c); v != 150 {
		t.Errorf("the kernel's counter is 150 and never reset; the policy's total reads %v", v)
	}
}

// TestPolicyCollectorReadMissesCounter: a counter of the table in force
// missing from one read is not gone: its value is not carried, so the next
// read does not count it twice.
func TestPolicyCollectorReadMissesCounter(t *testing.T) {
	p := types.NamespacedName{Namespace: "x", Name: "p"}
	g := compile.Group{Chain: "ing-1", Ingress: true, Policies: []types.NamespacedName{p}}
	at := &attribution{}
	at.store(&compile.Attribution{Counters: map[string]compile.GroupCounter{
		"ing-1-allow": {Group: g, Verdict: compile.VerdictAllow},
		"ing-1-deny":  {Group: g, Verdict: compile.VerdictDeny},
	}})
	reads := []map[string]uint64{{"ing-1-allow": 100, "ing-1-deny": 1}, {"ing-1-deny": 1}, {"ing-1-allow": 110, "ing-1-deny": 1}}
	i := 0
	c := newPolicyCollector(packetsOnly(func(context.Context) (map[string]uint64, error) {
		v := reads[min(i, len(reads)-1)]
		i++
		return v, nil
	}), at)
	for range reads {
		t.Logf("scrape: allow+deny = %v", collectSum(c))
	}
	if v := collectSum(c); v != 111 {
		t.Errorf("the kernel's counters are 110 and 1 and never reset; the policy's totals read %v", v)
	}
}

// TestAttributionDuringApplies: the deny logger names a packet of the table
// just committed, however its lookup interleaves with the reconciler's applied.
// When the three tables were read one by one, a table applied between two of
// the reads was in neither (995 of 200,000 lookups under the race detector;
// the window is nanoseconds without it).
func TestAttributionDuringApplies(t *testing.T) {
	n := 200000
	if testing.Short() {
		n = 20000
	}
	tables := make([]*compile.Attribution, n+1)
	for i := range tables {
		p := "p" + strconv.Itoa(i)
		tables[i] = &compile.Attribution{Groups: map[string]compile.Group{p: {Chain: p}}}
	}
	at := &attribution{}
	at.store(tables[0])
	var committed, acked atomic.Int64
	go func() { // the reconciler
		for i := 1; i <= n; i++ {
			for acked.Load() < int64(i-1) { // one table at a time: k stays cur or prev while read
				runtime.Gosched()
			}
			at.applying(tables[i])
			committed.Store(int64(i)) // the kernel may log k's packets from here on
			at.applied(true)
		}
	}()
	misses := 0
	for k := int64(1); k <= int64(n); k++ { // the deny logger: one packet of each table
		for committed.Load() < k {
			runtime.Gosched()
		}
		if _, ok := at.group("p" + strconv.FormatInt(k, 10)); !ok {
			misses++
		}
		acked.Store(k)
	}
	if misses > 0 {
		t.Errorf("%d of %d packets logged by the table in force were named by no table", misses, n)
	}
}
