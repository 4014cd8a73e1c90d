package controllers

import (
	"errors"
	"io"
	"testing"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/apimachinery/pkg/util/uuid"
	ctrlzap "sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// TestDeferValuesWritesTheSameRecords: through zap (the agent's logger), a
// record written through the deferred logger has the message, values, name,
// caller and level it has through the logger itself.
func TestDeferValuesWritesTheSameRecords(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	base := zapr.NewLogger(zap.New(core, zap.AddCaller())).WithValues("node", "n1")
	for _, l := range []logr.Logger{base, deferValues(base)} {
		l = l.WithName("sync").WithValues("kind", "incremental", "n", 3)
		l.WithValues("reconcileID", "abc").Info("synced", "elapsed", 2)
		l.V(1).Info("detail")
		l.Error(errors.New("boom"), "apply failed", "retry", true)
		l.WithCallDepth(0).Info("depth")
	}
	entries := logs.AllUntimed()
	if len(entries) != 8 {
		t.Fatalf("%d records, want 8", len(entries))
	}
	for i := range 4 {
		want, got := entries[i], entries[i+4]
		want.Caller.PC, got.Caller.PC = 0, 0
		if got.Message != want.Message || got.LoggerName != want.LoggerName || got.Level != want.Level ||
			got.Caller.String() != want.Caller.String() {
			t.Errorf("record %d: %q %q %v %s, want %q %q %v %s", i, got.Message, got.LoggerName, got.Level, got.Caller,
				want.Message, want.LoggerName, want.Level, want.Caller)
		}
		if g, w := got.ContextMap(), want.ContextMap(); len(g) != len(w) {
			t.Errorf("record %d: values %v, want %v", i, g, w)
		} else {
			for k, v := range w {
				if g[k] != v && k != "error" {
					t.Errorf("record %d: %s=%v, want %v", i, k, g[k], v)
				}
			}
		}
	}
}

// countingSink counts the calls a logger makes to its sink.
type countingSink struct {
	withValues, records int
}

func (s *countingSink) Init(logr.RuntimeInfo)                 {}
func (s *countingSink) Enabled(level int) bool                { return level == 0 }
func (s *countingSink) Info(int, string, ...any)              { s.records++ }
func (s *countingSink) Error(error, string, ...any)           { s.records++ }
func (s *countingSink) WithValues(...any) logr.LogSink        { s.withValues++; return s }
func (s *countingSink) WithName(string) logr.LogSink          { return s }
func (s *countingSink) WithCallDepth(depth int) logr.LogSink  { return s }
func (s *countingSink) withValuesCalls() (calls, records int) { return s.withValues, s.records }

// TestDeferValuesDefers: values added to a deferred logger reach its sink only
// with a record written, and a disabled level writes none.
func TestDeferValuesDefers(t *testing.T) {
	s := &countingSink{}
	l := deferValues(logr.New(s))
	for range 100 {
		l.WithValues("reconcileID", "x").WithValues("kind", "unchanged").V(2).Info("synced: nothing to change")
	}
	if calls, records := s.withValuesCalls(); calls != 0 || records != 0 {
		t.Fatalf("%d WithValues and %d records reached the sink for lines never written", calls, records)
	}
	l.WithValues("kind", "full").Info("repaired drift")
	if calls, records := s.withValuesCalls(); calls != 1 || records != 1 {
		t.Fatalf("a record written: %d WithValues and %d records reached the sink, want 1 and 1", calls, records)
	}
	if deferValues(l).GetSink() != l.GetSink() {
		t.Errorf("deferring a deferred logger wrapped it again")
	}
}

// BenchmarkSyncLogger is what the loggers of one sync that writes no line
// cost: controller-runtime's reconcileID and the sync's kind added to the node
// controller's logger, through the agent's zap (JSON, sampled), as added and
// deferred.
func BenchmarkSyncLogger(b *testing.B) {
	base := ctrlzap.New(ctrlzap.WriteTo(io.Discard)).WithValues("node", "node-0").WithValues("controller", "node")
	for _, bc := range []struct {
		name string
		l    logr.Logger
	}{{"added", base}, {"deferred", deferValues(base)}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				l := bc.l.WithValues("reconcileID", uuid.NewUUID())
				l.WithValues("kind", "unchanged").V(2).Info("synced: nothing to change", "changes", 1)
			}
		})
	}
}
