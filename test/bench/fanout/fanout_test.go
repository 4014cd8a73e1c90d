// Package fanout measures what the agents' watches cost the apiserver (issue
// 16 §2 and §5): N agents' worth of watchers against one real kube-apiserver
// and etcd (envtest, through framework.StartControlPlane) under a steady pod
// churn, from the apiserver's side: bytes sent per pod change per watcher,
// apiserver CPU per pod change as N grows, its memory per watcher, and what N
// watchers cost when they all connect at once (a relist: a fresh streamed
// list) or all lose their connection at once (a resume from their last
// resourceVersion). Protobuf and JSON, next to kube-proxy's EndpointSlice
// watch, and a handful of real agents to check that the watchers model them.
//
// A watcher is not a whole agent: it runs the agent's five reflectors
// (client-go, as controller-runtime's informers do) on one connection with the
// agent's content type, and decodes every event into the typed object; it
// keeps keys, not objects. It needs KUBEBUILDER_ASSETS and NFTPOLICY_BENCH=1
// (root only for the real agents); `make bench-fanout` runs it. README.md has
// the method and the figures.
package fanout

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// The run's settings.
const (
	churnRate     = 40.0 // pod writes per second
	churnSlots    = 20   // pods in flight
	idleWindow    = 5 * time.Second
	settle        = 3 * time.Second
	deliveryLimit = 3 * time.Minute
	sliceServices = 5  // services the churn's pods belong to
	sliceBase     = 30 // ready endpoints each service has besides the churn's
	agentsK       = 3  // real agents per encoding
	createWorkers = 16
)

// churnWrites is the pod writes of each measured phase: 640 (16 s at
// churnRate) unless NFTPOLICY_BENCH_FANOUT_WRITES says otherwise (fewer only
// for trying things out), rounded to whole cycles of every slot, so that a
// phase is always the same mix: per slot and cycle a create, a status write,
// a label change and a delete, which is five pod events (a delete without
// grace is two: deletionTimestamp set, then gone).
var churnWrites = func() int {
	n, err := strconv.Atoi(os.Getenv("NFTPOLICY_BENCH_FANOUT_WRITES"))
	if err != nil || n < 4*churnSlots {
		n = 640
	}
	return n / (4 * churnSlots) * (4 * churnSlots)
}()

// churnEvents is the pod events a watcher gets for churnWrites writes.
func churnEvents() int { return churnWrites / 4 * 5 }

// fanoutShape is the cluster the watchers list: benchcluster's recipe at
// 2,000 pods (20 namespaces, 100 nodes, 200 policies) unless
// NFTPOLICY_BENCH_FANOUT_SHAPE=10k. A relist's cost grows with the pods; the
// churn's cost per event does not.
func fanoutShape() (benchcluster.Shape, string) {
	if os.Getenv("NFTPOLICY_BENCH_FANOUT_SHAPE") == "10k" {
		return benchcluster.Shape10k, "10k"
	}
	return benchcluster.Shape{Namespaces: 20, PodsPerNS: 100, Nodes: benchcluster.Nodes, Policies: 200}, "2k"
}

// watcherCounts is NFTPOLICY_BENCH_FANOUT_N, default 1,50,100.
func watcherCounts() []int {
	v := os.Getenv("NFTPOLICY_BENCH_FANOUT_N")
	if v == "" {
		v = "1,50,100"
	}
	var ns []int
	for f := range strings.SplitSeq(v, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil && n > 0 {
			ns = append(ns, n)
		}
	}
	return ns
}

type bench struct {
	t       *testing.T
	cp      *framework.ControlPlane
	c       client.Client
	api     int // the apiserver's pid
	cnp     string
	ch      *churn
	summary []string
	base    *phaseResult // the churn with no watcher of ours
}

func (b *bench) report(name, format string, args ...any) {
	line := fmt.Sprintf("%s: %s", name, fmt.Sprintf(format, args...))
	b.summary = append(b.summary, line)
	b.t.Log(line)
	if out := os.Getenv("NFTPOLICY_BENCH_OUT"); out != "" {
		if f, err := os.OpenFile(filepath.Join(out, "fanout.txt"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(f, line)
			f.Close()
		}
	}
}

func TestFanout(t *testing.T) {
	if os.Getenv("NFTPOLICY_BENCH") != "1" {
		t.Skip("fan-out benchmark: set NFTPOLICY_BENCH=1 (make bench-fanout)")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		t.Skip("fan-out benchmark: KUBEBUILDER_ASSETS is unset")
	}
	ctx := t.Context()
	dir := t.TempDir()
	cp, c := benchcluster.StartControlPlane(t, dir)
	api := cp.PID("kube-apiserver")
	if api == 0 {
		t.Fatal("the control plane has no kube-apiserver process")
	}
	b := &bench{t: t, cp: cp, c: c, api: api, ch: newChurn(c, churnRate, churnSlots)}
	var err error
	if b.cnp, err = servedCNPVersion(cp.Config); err != nil {
		t.Fatal(err)
	}

	shape, shapeName := fanoutShape()
	start := time.Now()
	if err := createCluster(ctx, c, shape); err != nil {
		t.Fatalf("setup: %v", err)
	}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: churnNS, Labels: map[string]string{"ns": churnNS, "team": "f"}}}); err != nil {
		t.Fatal(err)
	}
	b.report("fanout_setup_s", "%.1f (%s: %d pods, %d nodes, %d policies)", time.Since(start).Seconds(), shapeName, shape.Pods(), shape.Nodes, shape.Policies)
	b.objectSizes(ctx)

	// N = 0: what the churn costs the apiserver with nobody watching (its
	// writes, etcd's, the watch cache's), the intercept of every fit below.
	if err := b.ch.run(ctx, 2*churnSlots); err != nil { // warm up: every slot mid-cycle
		t.Fatal(err)
	}
	base, err := b.churnPhase(ctx, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.base = &base
	if m, err := cp.Metrics(ctx); err == nil {
		t.Logf("with no watcher of ours: %v pod watches open (apiserver_longrunning_requests), %.2f pod events sent per event",
			framework.SumMetrics(m, "apiserver_longrunning_requests", `resource="pods"`, `verb="WATCH"`), base.rawCount/float64(churnEvents()))
	}
	b.report("fanout_n0_cpu_us_per_change", "%.0f", base.cpuPerChange*1e6)

	var results []pointResult
	for _, json := range []bool{false, true} {
		for _, n := range watcherCounts() {
			r, err := b.point(ctx, n, json)
			if err != nil {
				// The other points, the fit and the comparisons still run.
				t.Errorf("N=%d %s: %v", n, encName(json), err)
				continue
			}
			results = append(results, r)
		}
	}
	b.fit(base, results)

	// kube-proxy's EndpointSlice watch under the same churn.
	if err := b.proxyPoint(ctx, 50); err != nil {
		t.Fatalf("endpointslice watchers: %v", err)
	}

	// A handful of real agents, against the watchers' bytes per event.
	if os.Geteuid() == 0 {
		for _, json := range []bool{false, true} {
			if err := b.agentsCheck(ctx, dir, agentsK, json, results); err != nil {
				t.Fatalf("agents: %v", err)
			}
		}
	} else {
		t.Log("not root: skipping the real agents (they need a network namespace each)")
	}
	fmt.Printf("\n--- fan-out benchmark summary ---\n%s\n", strings.Join(b.summary, "\n"))
}

func encName(json bool) string {
	if json {
		return "json"
	}
	return "protobuf"
}

// phaseResult is one measured churn phase. A change is one pod watch event
// (churnEvents for churnWrites writes).
type phaseResult struct {
	writes       int
	seconds      float64 // first write to last delivery
	cpuPerChange float64 // apiserver CPU seconds per pod event, idle rate subtracted
	wirePerEvent float64 // bytes read by the watchers per pod event per watcher
	metricPerEvt float64 // apiserver_watch_events_sizes per pod event sent to our watchers
	// The apiserver's own counters for the phase: every pod watch event it
	// sent and their bytes, its own watcher's (see base) included.
	rawSizes, rawCount float64
}

// churnPhase measures the apiserver's idle CPU rate with the sets connected,
// then churnWrites pod writes, until every set has received every one.
//
// The apiserver holds a pod watch of its own (present with none of ours:
// apiserver_watch_events_total counts the churn's events once at N = 0), so
// the bytes per event sent to our watchers are the phase's minus base's, the
// N = 0 phase (nil before it has run).
func (b *bench) churnPhase(ctx context.Context, sets []*watcherSet, w *wire, base *phaseResult) (phaseResult, error) {
	var r phaseResult
	c0, t0 := benchproc.CPUSeconds(b.api), time.Now()
	time.Sleep(idleWindow)
	idleRate := (benchproc.CPUSeconds(b.api) - c0) / time.Since(t0).Seconds()

	before := make([]int64, len(sets))
	for i, s := range sets {
		before[i] = s.pods.events.Load()
	}
	events := churnEvents()
	m0, err := b.cp.Metrics(ctx)
	if err != nil {
		return r, err
	}
	var wire0 int64
	if w != nil {
		wire0 = w.read.Load()
	}
	c0, t0 = benchproc.CPUSeconds(b.api), time.Now()
	if err := b.ch.run(ctx, churnWrites); err != nil {
		return r, err
	}
	if err := waitDelivered(ctx, sets, before, events); err != nil {
		return r, err
	}
	r.seconds = time.Since(t0).Seconds()
	cpu := benchproc.CPUSeconds(b.api) - c0
	r.writes = churnWrites
	r.cpuPerChange = (cpu - idleRate*r.seconds) / float64(events)
	if w != nil {
		r.wirePerEvent = float64(w.read.Load()-wire0) / float64(len(sets)*events)
	}
	for i, s := range sets {
		if got := s.pods.events.Load() - before[i]; got != int64(events) {
			return r, fmt.Errorf("watcher set %d got %d pod events for %d writes, want %d", i, got, churnWrites, events)
		}
	}
	m1, err := b.cp.Metrics(ctx)
	if err != nil {
		return r, err
	}
	sizes := framework.SumMetrics(m1, "apiserver_watch_events_sizes_sum", `resource="pods"`) - framework.SumMetrics(m0, "apiserver_watch_events_sizes_sum", `resource="pods"`)
	count := framework.SumMetrics(m1, "apiserver_watch_events_total", `resource="pods"`) - framework.SumMetrics(m0, "apiserver_watch_events_total", `resource="pods"`)
	r.rawSizes, r.rawCount = sizes, count
	if base != nil && count > base.rawCount {
		r.metricPerEvt = (sizes - base.rawSizes) / (count - base.rawCount)
	}
	b.t.Logf("churn phase: %d writes (%d events) in %.1f s, apiserver CPU %.2f s (idle %.3f/s), %.0f pod watch events sent, to %d watchers of ours",
		churnWrites, events, r.seconds, cpu, idleRate, count, len(sets))
	return r, nil
}

// waitDelivered waits until every set's pod (or slice) store has counted want
// events since before.
func waitDelivered(ctx context.Context, sets []*watcherSet, before []int64, want int) error {
	deadline := time.Now().Add(deliveryLimit)
	for {
		short := 0
		for i, s := range sets {
			if s.pods.events.Load() < before[i]+int64(want) {
				short++
			}
		}
		if short == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d watcher sets still short of %d events after %v", short, len(sets), want, deliveryLimit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// pointResult is what one (N, encoding) point measured.
type pointResult struct {
	n    int
	json bool
	// The relist: N sets started at once until all have listed everything.
	relistSeconds, relistCPU, relistWire, relistMetric float64
	// Churn on the first streams (watch-list, gzip-compressed by the
	// apiserver for the stream's life) and after a resume (plain watches).
	listStream, plain phaseResult
	// The resume: every connection cut at once until every set has the next
	// pod event; relists counts reflectors that listed again instead.
	resumeSeconds, resumeCPU float64
	relists                  int
	// Memory: apiserver RSS, heap in use and goroutines, sets connected minus
	// sets gone, per watcher set.
	rssKiB, heapKiB, goroutines float64
}

func (b *bench) point(ctx context.Context, n int, json bool) (pointResult, error) {
	r := pointResult{n: n, json: json}
	tag := fmt.Sprintf("%s_n%d", encName(json), n)
	w := newWire()
	var kinds [][]watchKind
	for range n {
		k, err := agentKinds(setConfig(b.cp.Config, w, json), b.cnp)
		if err != nil {
			return r, err
		}
		kinds = append(kinds, k)
	}

	// Relist: n sets start together.
	m0, err := b.cp.Metrics(ctx)
	if err != nil {
		return r, err
	}
	c0, t0 := benchproc.CPUSeconds(b.api), time.Now()
	sets := make([]*watcherSet, n)
	for i := range n {
		sets[i] = startSet(ctx, kinds[i])
	}
	defer func() {
		for _, s := range sets {
			s.stop()
		}
	}()
	// Generous: on the shared 2-core VM, 200 JSON sets decoding 2,300 objects
	// each took more than ten minutes (the test process, not the apiserver).
	sctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	for _, s := range sets {
		if err := s.waitSynced(sctx); err != nil {
			return r, err
		}
	}
	r.relistSeconds = time.Since(t0).Seconds()
	r.relistCPU = benchproc.CPUSeconds(b.api) - c0
	r.relistWire = float64(w.read.Load())
	m1, err := b.cp.Metrics(ctx)
	if err != nil {
		return r, err
	}
	r.relistMetric = framework.SumMetrics(m1, "apiserver_watch_events_sizes_sum") - framework.SumMetrics(m0, "apiserver_watch_events_sizes_sum") +
		framework.SumMetrics(m1, "apiserver_response_sizes_sum", `verb="LIST"`) - framework.SumMetrics(m0, "apiserver_response_sizes_sum", `verb="LIST"`)
	b.report("fanout_relist_"+tag, "%.1f s, apiserver CPU %.2f s, wire %.1f MB, encoded %.1f MB",
		r.relistSeconds, r.relistCPU, r.relistWire/1e6, r.relistMetric/1e6)

	// Churn on the streams the relist opened.
	if r.listStream, err = b.churnPhase(ctx, sets, w, b.base); err != nil {
		return r, err
	}
	b.report("fanout_churn_liststream_"+tag, "wire %.0f B/event/watcher, encoded %.0f B, apiserver %.0f µs CPU/change",
		r.listStream.wirePerEvent, r.listStream.metricPerEvt, r.listStream.cpuPerChange*1e6)

	// Resume: cut every connection; the reflectors watch again from their
	// last resourceVersion, on new connections (TCP and TLS handshakes).
	replaces0 := replaces(sets)
	before := make([]int64, n)
	for i, s := range sets {
		before[i] = s.pods.events.Load()
	}
	c0, t0 = benchproc.CPUSeconds(b.api), time.Now()
	cut := w.cut()
	if err := b.ch.one(ctx); err != nil { // one pod event every set must get
		return r, err
	}
	if err := waitDelivered(ctx, sets, before, 1); err != nil {
		return r, fmt.Errorf("after cutting %d connections: %w", cut, err)
	}
	r.resumeSeconds = time.Since(t0).Seconds()
	time.Sleep(time.Second) // the other kinds' watches come back meanwhile
	r.resumeCPU = benchproc.CPUSeconds(b.api) - c0
	r.relists = replaces(sets) - replaces0
	b.report("fanout_resume_"+tag, "%.2f s, apiserver CPU %.2f s (incl. 1 s after), %d connections cut, %d relists",
		r.resumeSeconds, r.resumeCPU, cut, r.relists)

	// Churn on plain watches: the steady state.
	if r.plain, err = b.churnPhase(ctx, sets, w, b.base); err != nil {
		return r, err
	}
	b.report("fanout_churn_"+tag, "wire %.0f B/event/watcher, encoded %.0f B, apiserver %.0f µs CPU/change",
		r.plain.wirePerEvent, r.plain.metricPerEvt, r.plain.cpuPerChange*1e6)

	// Memory per watcher set: connected, then gone.
	time.Sleep(settle)
	connected, err := b.memory(ctx)
	if err != nil {
		return r, err
	}
	for _, s := range sets {
		s.stop()
	}
	sets = nil
	w.cut()
	time.Sleep(2 * settle)
	gone, err := b.memory(ctx)
	if err != nil {
		return r, err
	}
	r.rssKiB = (connected.rss - gone.rss) / 1024 / float64(n)
	r.heapKiB = (connected.heap - gone.heap) / 1024 / float64(n)
	r.goroutines = (connected.goroutines - gone.goroutines) / float64(n)
	b.report("fanout_memory_"+tag, "per watcher set: RSS %.0f KiB, heap in use %.0f KiB, %.1f goroutines (apiserver RSS %.0f MiB connected)",
		r.rssKiB, r.heapKiB, r.goroutines, connected.rss/(1<<20))
	return r, nil
}

func replaces(sets []*watcherSet) int {
	n := 0
	for _, s := range sets {
		for _, st := range s.stores {
			n += int(st.replaces.Load())
		}
	}
	return n
}

type memSample struct{ rss, heap, goroutines float64 }

// memory reads the apiserver's RSS from /proc and, after making it collect
// its garbage (its heap profile endpoint with gc=1), its live heap and
// goroutines from its metrics.
func (b *bench) memory(ctx context.Context) (memSample, error) {
	cs, err := kubernetes.NewForConfig(b.cp.Config)
	if err != nil {
		return memSample{}, err
	}
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/debug/pprof/heap").Param("gc", "1").DoRaw(ctx); err != nil {
		return memSample{}, fmt.Errorf("forcing the apiserver's GC: %w", err)
	}
	m, err := b.cp.Metrics(ctx)
	if err != nil {
		return memSample{}, err
	}
	return memSample{rss: procRSS(b.api), heap: m["go_memstats_heap_inuse_bytes"], goroutines: m["go_goroutines"]}, nil
}

// fit reports, per encoding and stream kind, the least-squares line of the
// apiserver's CPU per pod change against N (N = 0 included): the slope is
// what one more watcher costs per event, the intercept the write itself.
func (b *bench) fit(base phaseResult, results []pointResult) {
	for _, json := range []bool{false, true} {
		for _, kind := range []string{"plain", "liststream"} {
			xs, ys := []float64{0}, []float64{base.cpuPerChange}
			var wire, enc, rss []float64
			for _, r := range results {
				if r.json != json {
					continue
				}
				p := r.plain
				if kind == "liststream" {
					p = r.listStream
				}
				xs, ys = append(xs, float64(r.n)), append(ys, p.cpuPerChange)
				wire, enc = append(wire, p.wirePerEvent), append(enc, p.metricPerEvt)
				if r.n >= 50 {
					rss = append(rss, r.heapKiB)
				}
			}
			slope, icept := leastSquares(xs, ys)
			suffix := "_" + encName(json)
			if kind == "liststream" {
				suffix += "_liststream"
			}
			b.report("fanout_cpu_us_per_event_watcher"+suffix, "%.1f", slope*1e6)
			b.report("fanout_cpu_us_per_change_intercept"+suffix, "%.0f", icept*1e6)
			b.report("fanout_wire_bytes_per_event_watcher"+suffix, "%.0f", benchproc.Median(wire))
			b.report("fanout_encoded_bytes_per_event"+suffix, "%.0f", benchproc.Median(enc))
			if kind == "plain" && len(rss) > 0 {
				b.report("fanout_heap_kib_per_watcher"+suffix, "%.0f", benchproc.Median(rss))
			}
		}
	}
}

// proxyPoint runs n kube-proxy EndpointSlice watchers (protobuf) under the
// same pod churn, now with every pod's readiness and deletion rewriting its
// service's slice.
func (b *bench) proxyPoint(ctx context.Context, n int) error {
	sl := &sliceSim{c: b.c, services: sliceServices, base: sliceBase}
	if err := sl.create(ctx); err != nil {
		return err
	}
	// Slots whose pod is up (status written, not yet deleted) join their slice.
	for s := range b.ch.slots {
		if st := b.ch.state[s]; st == 2 || st == 3 {
			if err := sl.set(ctx, s, b.ch.ips[s]); err != nil {
				return err
			}
		}
	}
	b.ch.slices = sl
	defer func() { b.ch.slices = nil }()

	// N = 0 with slices, then n watchers.
	base, err := b.churnPhase(ctx, nil, nil, nil)
	if err != nil {
		return err
	}
	w := newWire()
	sets := make([]*watcherSet, n)
	for i := range n {
		k, err := proxyKinds(setConfig(b.cp.Config, w, false))
		if err != nil {
			return err
		}
		sets[i] = startSet(ctx, k)
	}
	defer func() {
		for _, s := range sets {
			s.stop()
		}
	}()
	for _, s := range sets {
		if err := s.waitSynced(ctx); err != nil {
			return err
		}
	}
	// Cut once so the churn runs on plain watches, as for the agents' figure;
	// not at once, or the reflectors take the cut watch for a failed one and
	// list again (client-go's "very short watch").
	time.Sleep(3 * time.Second)
	r0 := replaces(sets)
	w.cut()
	time.Sleep(3 * time.Second)
	if r := replaces(sets) - r0; r > 0 {
		b.t.Logf("endpointslice watchers: %d relisted after the cut", r)
	}
	slices0 := b.ch.sliceWrites.Load()
	before := make([]int64, n)
	for i, s := range sets {
		before[i] = s.pods.events.Load()
	}
	wire0 := w.read.Load()
	m0, err := b.cp.Metrics(ctx)
	if err != nil {
		return err
	}
	c0, t0 := benchproc.CPUSeconds(b.api), time.Now()
	if err := b.ch.run(ctx, churnWrites); err != nil {
		return err
	}
	sliceWrites := int(b.ch.sliceWrites.Load() - slices0)
	if err := waitDelivered(ctx, sets, before, sliceWrites); err != nil {
		return err
	}
	podEvents := churnEvents()
	secs := time.Since(t0).Seconds()
	cpu := benchproc.CPUSeconds(b.api) - c0
	m1, err := b.cp.Metrics(ctx)
	if err != nil {
		return err
	}
	wire := float64(w.read.Load() - wire0)
	enc := framework.SumMetrics(m1, "apiserver_watch_events_sizes_sum", `resource="endpointslices"`) -
		framework.SumMetrics(m0, "apiserver_watch_events_sizes_sum", `resource="endpointslices"`)
	perPodChange := cpu/float64(podEvents) - base.cpuPerChange
	b.report("fanout_endpointslice_n"+strconv.Itoa(n), "%d slice writes for %d pod writes (%d pod events) in %.1f s; wire %.0f B/slice event/watcher, %.0f B/pod event/watcher; encoded %.0f B/slice event; apiserver %.0f µs CPU/pod event above the same churn unwatched (%.0f µs)",
		sliceWrites, churnWrites, podEvents, secs, wire/float64(n*sliceWrites), wire/float64(n*podEvents), enc/float64(n*sliceWrites),
		perPodChange*1e6, base.cpuPerChange*1e6)
	b.report("fanout_endpointslice_wire_bytes_per_pod_event_watcher", "%.0f", wire/float64(n*podEvents))
	b.report("fanout_endpointslice_cpu_us_per_pod_event_watcher", "%.1f", perPodChange*1e6/float64(n))
	return nil
}

// agentsCheck runs k real agents (the nftpolicy binary, each programming a
// network namespace of its own) and compares the bytes per pod event the
// apiserver counts for them with the watchers' figure, same encoding.
func (b *bench) agentsCheck(ctx context.Context, dir string, k int, json bool, results []pointResult) error {
	bin, how, err := framework.AgentBinary(ctx, dir)
	if err != nil {
		return err
	}
	b.t.Logf("agent binary: %s (%s)", bin, how)
	var procs []*exec.Cmd
	var waits sync.WaitGroup
	defer func() {
		for _, p := range procs {
			_ = p.Process.Kill()
		}
		waits.Wait()
	}()
	for i := range k {
		ns, err := nfttest.CreateNetNS("fanout-" + nfttest.RandomHex(4))
		if err != nil {
			return err
		}
		defer func() { _ = ns.Delete() }()
		port, err := freePort()
		if err != nil {
			return err
		}
		args := []string{"agent", "--kubeconfig", b.cp.Kubeconfig, "--node-name", fmt.Sprintf("node-%d", i+1),
			"--netns", ns.Path(), "--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", port), "--metrics-bind-address", "0"}
		if json {
			args = append(args, "--api-json")
		}
		log, err := os.Create(filepath.Join(dir, fmt.Sprintf("agent-%s-%d.log", encName(json), i)))
		if err != nil {
			return err
		}
		defer log.Close()
		cmd := exec.Command(bin, args...)
		cmd.Stdout, cmd.Stderr = log, log
		if err := framework.StartChild(cmd); err != nil {
			return err
		}
		procs = append(procs, cmd)
		waits.Go(func() { _ = cmd.Wait() })
		if err := waitReady(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", port), 3*time.Minute); err != nil {
			return fmt.Errorf("agent %d: %w (log %s)", i, err, log.Name())
		}
	}
	time.Sleep(settle)
	m0, err := b.cp.Metrics(ctx)
	if err != nil {
		return err
	}
	if err := b.ch.run(ctx, churnWrites); err != nil {
		return err
	}
	// Wait until the apiserver has sent every agent every event.
	want := float64(k*churnEvents()) + b.base.rawCount
	var m1 map[string]float64
	for deadline := time.Now().Add(deliveryLimit); ; time.Sleep(200 * time.Millisecond) {
		if m1, err = b.cp.Metrics(ctx); err != nil {
			return err
		}
		got := framework.SumMetrics(m1, "apiserver_watch_events_total", `resource="pods"`) - framework.SumMetrics(m0, "apiserver_watch_events_total", `resource="pods"`)
		if got >= want {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("apiserver sent %v pod events to %d agents, want %v", got, k, want)
		}
	}
	count := framework.SumMetrics(m1, "apiserver_watch_events_total", `resource="pods"`) - framework.SumMetrics(m0, "apiserver_watch_events_total", `resource="pods"`)
	sizes := framework.SumMetrics(m1, "apiserver_watch_events_sizes_sum", `resource="pods"`) - framework.SumMetrics(m0, "apiserver_watch_events_sizes_sum", `resource="pods"`)
	// Less the apiserver's own watcher (base).
	count -= b.base.rawCount
	sizes -= b.base.rawSizes
	var model []float64
	for _, r := range results {
		if r.json == json {
			model = append(model, r.listStream.metricPerEvt, r.plain.metricPerEvt)
		}
	}
	b.report("fanout_agents_"+encName(json), "%d real agents: %.0f pod events, encoded %.0f B/event; watchers %.0f B/event (ratio %.3f)",
		k, count, sizes/count, benchproc.Median(model), (sizes/count)/benchproc.Median(model))
	return nil
}

func waitReady(ctx context.Context, url string, timeout time.Duration) error {
	hc := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v (last: %v)", url, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// objectSizes reports the encoded size of a pod and a node of the cluster as
// the apiserver stores them (managedFields included), in protobuf and JSON,
// and of the same pod trimmed to what the agent's cache keeps
// (controllers/transform.go trimPod): what a watch could send if the
// apiserver could project objects.
func (b *bench) objectSizes(ctx context.Context) {
	pod, node := &corev1.Pod{}, &corev1.Node{}
	if err := errors.Join(
		b.c.Get(ctx, client.ObjectKey{Namespace: "ns-0", Name: "pod-0"}, pod),
		b.c.Get(ctx, client.ObjectKey{Name: "node-0"}, node)); err != nil {
		b.t.Fatal(err)
	}
	trimmed := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace, UID: pod.UID,
			ResourceVersion: pod.ResourceVersion, Labels: pod.Labels},
		Spec:   corev1.PodSpec{NodeName: pod.Spec.NodeName, HostNetwork: pod.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: pod.Status.Phase, PodIP: pod.Status.PodIP, PodIPs: pod.Status.PodIPs},
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name != "" {
				if trimmed.Spec.Containers == nil {
					trimmed.Spec.Containers = []corev1.Container{{}}
				}
				trimmed.Spec.Containers[0].Ports = append(trimmed.Spec.Containers[0].Ports, p)
			}
		}
	}
	for _, mt := range []string{runtime.ContentTypeProtobuf, runtime.ContentTypeJSON} {
		info, ok := runtime.SerializerInfoForMediaType(scheme.Codecs.SupportedMediaTypes(), mt)
		if !ok {
			b.t.Fatalf("no serializer for %s", mt)
		}
		enc := scheme.Codecs.EncoderForVersion(info.Serializer, corev1.SchemeGroupVersion)
		name := "protobuf"
		if mt == runtime.ContentTypeJSON {
			name = "json"
		}
		for _, o := range []struct {
			kind string
			obj  runtime.Object
		}{{"pod", pod}, {"node", node}, {"pod_trimmed", trimmed}} {
			data, err := runtime.Encode(enc, o.obj)
			if err != nil {
				b.t.Fatal(err)
			}
			b.report(fmt.Sprintf("fanout_object_bytes_%s_%s", o.kind, name), "%d", len(data))
		}
	}
}

// servedCNPVersion is the ClusterNetworkPolicy version the agent would watch.
func servedCNPVersion(cfg *rest.Config) (string, error) {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return "", err
	}
	for _, v := range []string{"v1beta1", "v1alpha2"} {
		res, err := dc.ServerResourcesForGroupVersion("policy.networking.k8s.io/" + v)
		if err != nil {
			continue
		}
		for _, r := range res.APIResources {
			if r.Name == "clusternetworkpolicies" {
				return v, nil
			}
		}
	}
	return "", nil
}

// createCluster creates the shape's namespaces, pods (with addresses),
// policies and nodes.
func createCluster(ctx context.Context, c client.Client, shape benchcluster.Shape) error {
	nss, pods, nps := shape.Objects()
	for _, ns := range nss {
		if err := c.Create(ctx, ns); err != nil {
			return err
		}
	}
	if err := benchcluster.CreatePods(ctx, c, pods, createWorkers); err != nil {
		return err
	}
	if err := benchproc.Parallel(createWorkers, len(nps), func(i int) error { return c.Create(ctx, nps[i]) }); err != nil {
		return err
	}
	return benchproc.Parallel(createWorkers, shape.Nodes, func(i int) error {
		n := nodeObject(i)
		status := n.Status
		if err := c.Create(ctx, n); err != nil {
			return err
		}
		n.Status = status
		return c.Status().Update(ctx, n)
	})
}

// nodeObject is node-i as a kubelet would report it, without the image list
// (which real nodes carry, tens of entries, and which makes their updates
// larger than shown here).
func nodeObject(i int) *corev1.Node {
	name := fmt.Sprintf("node-%d", i)
	ip := fmt.Sprintf("172.20.%d.%d", i>>8, i&255)
	res := corev1.ResourceList{
		corev1.ResourceCPU: resource.MustParse("16"), corev1.ResourceMemory: resource.MustParse("64Gi"),
		corev1.ResourcePods: resource.MustParse("110"), corev1.ResourceEphemeralStorage: resource.MustParse("200Gi"),
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: "kubelet reports " + reason,
			LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			corev1.LabelHostname: name, corev1.LabelOSStable: "linux", corev1.LabelArchStable: "amd64",
			corev1.LabelTopologyZone: fmt.Sprintf("zone-%d", i%3), corev1.LabelTopologyRegion: "region-1",
			corev1.LabelInstanceTypeStable: "m5.4xlarge",
		}},
		Spec: corev1.NodeSpec{PodCIDR: fmt.Sprintf("10.%d.%d.0/24", 128+i>>8, i&255)},
		Status: corev1.NodeStatus{
			Capacity: res, Allocatable: res,
			Conditions: []corev1.NodeCondition{
				cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
				cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
				cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
				cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady"),
			},
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}},
			NodeInfo: corev1.NodeSystemInfo{KubeletVersion: "v1.37.2", ContainerRuntimeVersion: "containerd://2.1.0",
				OSImage: "Debian GNU/Linux 12 (bookworm)", KernelVersion: "6.1.0-28-amd64", OperatingSystem: "linux", Architecture: "amd64"},
		},
	}
}

func leastSquares(xs, ys []float64) (slope, intercept float64) {
	var sx, sy, sxx, sxy float64
	n := float64(len(xs))
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return math.NaN(), math.NaN()
	}
	slope = (n*sxy - sx*sy) / d
	return slope, (sy - slope*sx) / n
}
