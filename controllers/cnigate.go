package controllers

import (
	"context"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
)

// The CNI gate (controllers/cnigate): with --cni-gate-conf-dir and
// --cni-gate-bin-dir the agent keeps the gate's plugin and its entry in the
// node's CNI configuration, so that after the node's next reboot no pod's
// network comes up before the table is in force. They are put in place at
// once, first thing at the agent's start: before the manager is built, so
// before the apiserver answers and before any informer syncs (CNIs such as
// flannel, Calico, Cilium and kindnet write their configuration anew when they
// start, without the entry, and the pods the runtime sets up meanwhile are not
// held). The gate opens when the table holds this boot's set
// (compile.Options.SyncedBoot, which the agent's every table has with the
// gate on), so nothing is written here at a sync. Both are checked again every
// cniGatePeriod, by a goroutine of its own that waits for nothing of the
// manager: a CNI agent that writes its configuration anew drops the entry.

var (
	// A vector without labels: no series at all unless the gate is asked for.
	cniGateInstalled = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "nftpolicy_cni_gate",
		Help: "1 when the CNI gate's binary and entry are in place on this node, 0 when the agent, asked to keep them, cannot (see its log and the Node's Events); absent without --cni-gate-conf-dir.",
	}, nil)
	cniGateWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "nftpolicy_cni_gate_writes_total",
		Help: "Writes of the CNI gate's files, by what was written (binary, config): a config count that keeps growing is a CNI agent rewriting its configuration.",
	}, []string{"file"})
)

func init() { metrics.Registry.MustRegister(cniGateInstalled, cniGateWrites) }

// cniGatePeriod is how often the gate's files are checked: a stat and the read
// of one small file. cniGateEventAfter is how long a failure lasts before it
// becomes a Warning Event.
const (
	cniGatePeriod     = 2 * time.Second
	cniGateEventAfter = time.Minute
)

// cniGate keeps in's files in place until ctx is done.
type cniGate struct {
	in     *cnigate.Installer
	period time.Duration
	// eventAfter is how long a failure lasts before it is recorded as an
	// Event: on a new node the agent may start before the CNI has written its
	// configuration, and a few seconds of that are not worth an Event.
	eventAfter time.Duration
	log        logr.Logger

	mu sync.Mutex
	// own returns the agent's Node, for Events; recorder sends them. Both
	// nil until the manager exists (setEvents): the gate is kept before.
	own      func(ctx context.Context) (*corev1.Node, error)
	recorder recorder.EventRecorder
}

// gateState is what the checks remember between them.
type gateState struct {
	last         string    // the last state logged: "" in place, else the error
	failingSince time.Time // zero while in place
	recorded     string    // the failure last recorded as an Event
}

// setEvents names the Node and the recorder for the gate's Events.
func (g *cniGate) setEvents(own func(ctx context.Context) (*corev1.Node, error), rec recorder.EventRecorder) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.own, g.recorder = own, rec
}

// start checks once, before it returns, then keeps checking every period in
// a goroutine of its own until ctx is done or stop is called; stop waits for
// that goroutine.
func (g *cniGate) start(ctx context.Context) (stop func()) {
	cniGateWrites.WithLabelValues("binary")
	cniGateWrites.WithLabelValues("config")
	s := &gateState{last: "unset"}
	g.check(ctx, s)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.keep(ctx, s)
	}()
	return func() { cancel(); <-done }
}

// keep checks every period until ctx is done.
func (g *cniGate) keep(ctx context.Context, s *gateState) {
	tick := time.NewTicker(g.period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		g.check(ctx, s)
	}
}

// check puts the files in place if they are not. Each change of state (in
// place, or failing with another error) is logged once, not every period,
// and a failure that lasts eventAfter recorded as a Warning Event on the
// Node, once (as soon as the Node can be named).
func (g *cniGate) check(ctx context.Context, s *gateState) {
	st, err := g.in.Ensure()
	if st.BinaryWritten {
		cniGateWrites.WithLabelValues("binary").Inc()
	}
	if st.ConfigWritten {
		cniGateWrites.WithLabelValues("config").Inc()
		g.log.Info("CNI gate entry written", "config", st.Config)
	}
	state := ""
	if err != nil {
		state = err.Error()
		cniGateInstalled.WithLabelValues().Set(0)
	} else {
		cniGateInstalled.WithLabelValues().Set(1)
	}
	if state != s.last {
		g.report(st, err)
		s.last = state
	}
	switch {
	case err == nil:
		s.failingSince, s.recorded = time.Time{}, ""
	case s.failingSince.IsZero():
		s.failingSince = time.Now()
	}
	if err != nil && state != s.recorded && time.Since(s.failingSince) >= g.eventAfter && g.record(ctx, err) {
		s.recorded = state
	}
}

// report logs a change of state.
func (g *cniGate) report(st cnigate.State, err error) {
	if err != nil {
		g.log.Error(err, "CNI gate not in place: after this node's next reboot, its pods may start before their policies are in force",
			"confDir", g.in.ConfDir, "binDir", g.in.BinDir)
		return
	}
	// No Event when it is in place: every agent start on every node would make one.
	g.log.Info("CNI gate in place", "config", st.Config, "binary", filepath.Join(g.in.BinDir, cnigate.PluginType), "table", g.in.Table)
}

// record sends the Warning Event for a lasting failure; false when it could
// not (no manager yet, or the Node not in the cache yet): the next check
// tries again.
func (g *cniGate) record(ctx context.Context, failure error) bool {
	g.mu.Lock()
	own, rec := g.own, g.recorder
	g.mu.Unlock()
	if rec == nil || own == nil {
		return false
	}
	// The cache's read waits for its sync: not the gate's checks.
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	n, err := own(ctx)
	if err != nil {
		return false
	}
	rec.Eventf(n, nil, corev1.EventTypeWarning, "CNIGateNotInstalled", "InstallCNIGate",
		"the CNI gate is not in place (%v): after this node's next reboot, its pods may start before their policies are in force", failure)
	return true
}
