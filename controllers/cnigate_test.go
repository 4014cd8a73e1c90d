package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
)

// nodeRecorder keeps the Events sent on Nodes.
type nodeRecorder struct {
	mu     sync.Mutex
	events []string
}

func (r *nodeRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%s %s %s: %s", eventtype, reason, regarding.(*corev1.Node).Name, fmt.Sprintf(note, args...)))
}

func (r *nodeRecorder) AnnotatedEventf(regarding, related runtime.Object, _ map[string]string, eventtype, reason, action, note string, args ...any) {
	r.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

func (r *nodeRecorder) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// The agent keeps the gate: not possible without a network configuration (the
// gauge at 0; one Warning Event once that lasted eventAfter, however many
// checks fail alike), in place once
// the CNI writes one (an entry with only its type and table: nothing of the
// boot is written on disk), and back after the CNI writes its list anew.
func TestCNIGateKept(t *testing.T) {
	root := t.TempDir()
	confDir, binDir := filepath.Join(root, "net.d"), filepath.Join(root, "bin")
	self := filepath.Join(root, "agent")
	for _, err := range []error{os.Mkdir(confDir, 0o755), os.Mkdir(binDir, 0o755), os.WriteFile(self, []byte("agent"), 0o755)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	rec := &nodeRecorder{}
	g := &cniGate{
		in:     &cnigate.Installer{ConfDir: confDir, BinDir: binDir, Table: "nftpolicy", Binary: self},
		period: 10 * time.Millisecond, eventAfter: 50 * time.Millisecond,
		own: func(context.Context) (*corev1.Node, error) {
			return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}, nil
		},
		recorder: rec, log: logr.Discard(),
	}
	start := time.Now() // before the first check, so before the first failure
	defer g.start(context.Background())()
	configWrites := func() float64 { return testutil.ToFloat64(cniGateWrites.WithLabelValues("config")) }
	writes0 := configWrites()

	eventually := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("not within 5s: %s (events %q)", what, rec.list())
			}
		}
	}
	eventually("a Warning Event for the missing configuration", func() bool { return len(rec.list()) == 1 })
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Errorf("the Event came %v after the first failure, before eventAfter", waited)
	}
	time.Sleep(100 * time.Millisecond) // ten more checks, alike
	if ev := rec.list(); len(ev) != 1 || !strings.Contains(ev[0], "Warning CNIGateNotInstalled node-1") || testutil.ToFloat64(cniGateInstalled.WithLabelValues()) != 0 {
		t.Fatalf("events %q, gauge %v", ev, testutil.ToFloat64(cniGateInstalled.WithLabelValues()))
	}

	conf := filepath.Join(confDir, "10-podnet.conflist")
	list := `{"cniVersion": "1.0.0", "name": "podnet", "plugins": [{"type": "ptp"}]}`
	if err := os.WriteFile(conf, []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	read := func() string { data, _ := os.ReadFile(conf); return string(data) }
	entry := `{
      "type": "nftpolicy",
      "table": "nftpolicy"
    }`
	hasGate := func() bool { return strings.Contains(read(), entry) }
	eventually("the entry in the configuration", hasGate)
	eventually("the gauge at 1", func() bool { return testutil.ToFloat64(cniGateInstalled.WithLabelValues()) == 1 })
	time.Sleep(50 * time.Millisecond) // five more checks: nothing to write
	if got := configWrites() - writes0; got != 1 {
		t.Errorf("config writes %v once in place, want 1:\n%s", got, read())
	}
	if err := os.WriteFile(conf, []byte(list), 0o644); err != nil { // the CNI's agent writes its list again
		t.Fatal(err)
	}
	eventually("the entry back", hasGate)
	if got := configWrites() - writes0; got != 2 {
		t.Errorf("config writes %v, want 2 (entry, entry again)", got)
	}
	if ev := rec.list(); len(ev) != 1 {
		t.Errorf("events %q: none expected once in place", ev)
	}
}
