package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Metrics of the agent, registered with controller-runtime's registry and served on
// the metrics endpoint. Programming latency is the headline figure: the time from the
// first API event a sync serves to the end of the kernel transaction that enforces it.
var (
	programmingLatency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "nftpolicy_programming_latency_seconds",
		Help:    "Time from the earliest watch event a sync serves to its kernel transaction being committed.",
		Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5, 10},
	})
	syncDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "nftpolicy_sync_duration_seconds",
		Help: "Duration of one sync (snapshot, compile, apply), by kind (full, incremental, repair: the kernel's table read and put back after another process changed it, " +
			"or unchanged: its events could not change the table, so nothing was compiled or applied); " +
			"rebuild: a periodic full sync's read of the cache and first compile, off the sync path (the full sync that follows is counted as full).",
		Buckets: []float64{.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2},
	}, []string{"kind"})
	syncsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_syncs_total",
		Help: "Syncs by kind (full, incremental, repair, unchanged) and result (ok, error).",
	}, []string{"kind", "result"})
	applyFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_apply_failures_total",
		Help: "Kernel transactions that failed (the previous table stays in force).",
	})
	rulesetSize = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nftpolicy_ruleset_objects",
		Help: "Size of the last applied ruleset, by object kind (chains, rules, sets, elements).",
	}, []string{"object"})
	netlinkBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_netlink_bytes_total",
		Help: "Bytes of netlink messages sent to the kernel.",
	})
	policyProblems = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "nftpolicy_policy_problems",
		Help: "Policy rules the compiler could not (fully) enforce, as of the last sync.",
	})
	fullSyncReads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_full_sync_kernel_reads_total",
		Help: "Full syncs by where the kernel's table was read for them: ahead (off the sync path, with the cache's, before a periodic one) or sync (inside it, holding up events).",
	}, []string{"read"})
	driftTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_drift_total",
		Help: "Differences found between the kernel's table and the last applied one by full syncs (periodic, or repairs of other processes' changes).",
	})
	// The deny log (observe.go). Bounded labels: no pod names, no addresses.
	deniedPackets = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_denied_packets_total",
		Help: "Denied packets the deny log delivered, by direction and namespace of the isolated pod " +
			"(a sample: the kernel logs at most --deny-log-rate; nftpolicy_policy_packets_total counts them all).",
	}, []string{"direction", "namespace"})
	denyLogLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_deny_log_lost_total",
		Help: "Denied packets the kernel logged that the agent never received (its socket buffer was full).",
	})
	foreignChanges = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_table_foreign_changes_total",
		Help: "Transactions of other processes that changed the node's table (an nft command, a firewall's flush ruleset), each repaired at once; lost: notifications were lost, so the table was read and repaired in case.",
	}, []string{"kind"})
	counterReadErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "nftpolicy_counter_read_errors_total",
		Help: "Scrapes that could not read the kernel's policy counters.",
	})
)

func init() {
	metrics.Registry.MustRegister(programmingLatency, syncDuration, syncsTotal, applyFailures,
		rulesetSize, netlinkBytes, policyProblems, fullSyncReads, driftTotal, deniedPackets, denyLogLost, counterReadErrors, foreignChanges)
	leanGoMetrics(metrics.Registry)
}

// leanGoMetrics serves the Go runtime's classic metrics (go_memstats_*,
// go_gc_duration_seconds, go_goroutines, go_threads, go_info, GOGC, GOMEMLIMIT,
// GOMAXPROCS: 35 series) instead of every metric the runtime has, which
// controller-runtime registers (collectors.MetricsAll: 217 series, half of all
// an idle agent served: scheduler latency and allocation size histograms, 47
// GODEBUG counters). Every node runs an agent: at 5,000 nodes those were 0.9
// million series in Prometheus that no alert or dashboard of ours reads
// (docs/scale.md, "Metrics").
func leanGoMetrics(r metrics.RegistererGatherer) {
	// Unregister finds a collector by its descriptors: another collector of the
	// same metrics names controller-runtime's.
	if !r.Unregister(collectors.NewGoCollector(collectors.WithGoCollectorRuntimeMetrics(collectors.MetricsAll))) {
		return // not registered (another controller-runtime): leave it as it is
	}
	r.MustRegister(collectors.NewGoCollector())
}
