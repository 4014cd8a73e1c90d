package controllers

import (
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// TestLeanGoMetrics: the registry the agent serves holds the Go runtime's
// classic metrics, and none of the runtime's full set that controller-runtime
// registers (scheduler and allocation histograms, GODEBUG counters).
func TestLeanGoMetrics(t *testing.T) {
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series, names := 0, map[string]bool{}
	for _, f := range families {
		name := f.GetName()
		if !strings.HasPrefix(name, "go_") {
			continue
		}
		names[name] = true
		for _, m := range f.GetMetric() {
			series++
			if h := m.GetHistogram(); h != nil {
				series += len(h.GetBucket()) + 1 // +Inf, _sum and _count
			}
			if s := m.GetSummary(); s != nil {
				series += len(s.GetQuantile()) + 1
			}
		}
		for _, full := range []string{"go_sched_latencies_", "go_sched_pauses_", "go_godebug_", "go_gc_heap_allocs_by_size", "go_cpu_classes_"} {
			if strings.HasPrefix(name, full) {
				t.Errorf("%s served: the runtime's full metric set is registered", name)
			}
		}
	}
	for _, want := range []string{"go_memstats_heap_inuse_bytes", "go_gc_duration_seconds", "go_goroutines", "go_threads", "go_info"} {
		if !names[want] {
			t.Errorf("%s not served", want)
		}
	}
	if series > 50 {
		t.Errorf("%d go_* series served, want at most 50", series)
	}
	t.Logf("%d go_* series in %d families", series, len(names))
}
