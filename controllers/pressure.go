package controllers

import (
	"bytes"
	"os"
	"runtime/metrics"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Memory pressure: an agent below the memory it needs is not killed, it falls
// behind (docs/scale.md, "Under the DaemonSet's memory limit"). Two things show
// it before its syncs do, and these counters serve both:
//   - the kernel, at the container's limit, reclaims the agent's own binary text
//     and reads it back from disk over and over: major page faults, a few a
//     second or more, where a healthy agent has next to none after its start;
//   - the Go runtime, near its soft limit (80% of --memory-limit), collects over
//     and over: the garbage collector's share of the agent's CPU rises towards
//     the 50% it is allowed.
//
// Alert on either, e.g.
//
//	rate(nftpolicy_process_major_page_faults_total[5m]) > 1
//	rate(nftpolicy_gc_cpu_seconds_total[5m]) / rate(process_cpu_seconds_total[5m]) > 0.25
var (
	majorFaults = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "nftpolicy_process_major_page_faults_total",
		Help: "Major page faults of the agent process (pages read back from disk, such as its own binary text reclaimed under a memory limit too small).",
	}, func() float64 { return float64(selfMajorFaults()) })
	gcCPU = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "nftpolicy_gc_cpu_seconds_total",
		Help: "CPU time the Go garbage collector took from the agent's work (the runtime's estimate: mark assists, dedicated mark workers and pauses; not the marking it does on otherwise idle CPUs), to compare with process_cpu_seconds_total: near its soft memory limit the runtime collects over and over.",
	}, gcCPUSeconds)
)

func init() { crmetrics.Registry.MustRegister(majorFaults, gcCPU) }

// selfMajorFaults is majflt of /proc/self/stat; 0 when it cannot be read.
func selfMajorFaults() uint64 {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0
	}
	n, _ := majorFaultsOf(b)
	return n
}

// majorFaultsOf reads majflt, the 12th field of a /proc/PID/stat line. The
// second field (the command, in parentheses) may hold spaces and parentheses:
// fields are counted after its last ')'.
func majorFaultsOf(stat []byte) (uint64, bool) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(stat[i+1:]) // from field 3 (state) on
	const majflt = 12 - 3
	if len(f) <= majflt {
		return 0, false
	}
	n, err := strconv.ParseUint(string(f[majflt]), 10, 64)
	return n, err == nil
}

// gcCPUSeconds is the runtime's estimate of the CPU its collector took from the
// program: assists, dedicated mark workers and pauses. Marking on idle CPUs
// (/cpu/classes/gc/mark/idle) is left out: it costs the agent nothing, and it
// made up most of the total on an agent that kept up (a share of 0.23-0.28 of
// its CPU at any limit, test/bench/controlplane).
func gcCPUSeconds() float64 {
	s := []metrics.Sample{
		{Name: "/cpu/classes/gc/mark/assist:cpu-seconds"},
		{Name: "/cpu/classes/gc/mark/dedicated:cpu-seconds"},
		{Name: "/cpu/classes/gc/pause:cpu-seconds"},
	}
	metrics.Read(s)
	var sum float64
	for _, x := range s {
		if x.Value.Kind() == metrics.KindFloat64 {
			sum += x.Value.Float64()
		}
	}
	return sum
}
