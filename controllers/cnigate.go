package controllers

import (
	"context"
	"path/filepath"
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
// once, before the first sync; the gate opens when the table holds this boot's
// set (compile.Options.SyncedBoot, which the agent's every table has with the
// gate on), so nothing is written here at a sync. Both are checked again every
// cniGatePeriod: a CNI agent that writes its configuration anew drops the entry.

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
	// own returns the agent's Node, for Events.
	own func(ctx context.Context) (*corev1.Node, error)
	// eventAfter is how long a failure lasts before it is recorded as an
	// Event: on a new node the agent may start before the CNI has written its
	// configuration, and a few seconds of that are not worth an Event.
	eventAfter time.Duration
	recorder   recorder.EventRecorder // may be nil
	log        logr.Logger
}

// Start checks at once, then every period. Each change of state (in place, or
// failing with another error) is logged once, not every period, and a failure
// that lasts eventAfter recorded as a Warning Event on the Node, once.
func (g *cniGate) Start(ctx context.Context) error {
	cniGateWrites.WithLabelValues("binary")
	cniGateWrites.WithLabelValues("config")
	last := "unset"
	var failingSince time.Time // zero while in place
	recorded := ""             // the failure last recorded as an Event
	tick := time.NewTicker(g.period)
	defer tick.Stop()
	for {
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
		if state != last {
			g.report(st, err)
			last = state
		}
		switch {
		case err == nil:
			failingSince, recorded = time.Time{}, ""
		case failingSince.IsZero():
			failingSince = time.Now()
		}
		if err != nil && state != recorded && time.Since(failingSince) >= g.eventAfter {
			g.record(ctx, err)
			recorded = state
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
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

// record sends the Warning Event for a lasting failure.
func (g *cniGate) record(ctx context.Context, failure error) {
	if g.recorder == nil || g.own == nil {
		return
	}
	if n, err := g.own(ctx); err == nil {
		g.recorder.Eventf(n, nil, corev1.EventTypeWarning, "CNIGateNotInstalled", "InstallCNIGate",
			"the CNI gate is not in place (%v): after this node's next reboot, its pods may start before their policies are in force", failure)
	}
}
