package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// An apiserver that refuses connections fails manager.New at once (the REST
// mapping of a cached kind): newManager takes that for "not reachable yet".
func TestManagerNewUnreachableIsRetried(t *testing.T) {
	_, err := manager.New(&rest.Config{Host: "https://" + freeAddr(t)}, manager.Options{
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   cache.Options{ByObject: map[client.Object]cache.ByObject{&corev1.Pod{}: {}}},
	})
	if err == nil || !apiUnreachable(err) {
		t.Fatalf("manager.New against a refused address: %v; apiUnreachable %v", err, apiUnreachable(err))
	}
	if apiUnreachable(errors.New(`kubeconfig: invalid configuration`)) {
		t.Error("an error no retry can fix is retried")
	}
}

// newManager tries again, after a growing wait, while the apiserver cannot be
// reached, and meanwhile answers /healthz (alive: no liveness restart) and
// fails /readyz with the reason; the address is free again for the manager's
// own server at each attempt. An error no retry can fix returns at once, and
// so does a done context.
func TestNewManagerRetries(t *testing.T) {
	health := freeAddr(t)
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	var attempts []time.Time
	probes := map[string]int{}
	build := func() (manager.Manager, error) {
		attempts = append(attempts, time.Now())
		// The manager binds the health address itself: it must be free.
		l, err := net.Listen("tcp", health)
		if err != nil {
			t.Errorf("attempt %d: health address not free: %v", len(attempts), err)
		} else {
			l.Close()
		}
		if len(attempts) < 4 {
			return nil, errors.Join(errors.New("failed to determine if *v1.Pod is namespaced"), refused)
		}
		return nil, nil
	}
	probe := func() {
		for _, path := range []string{"/healthz", "/readyz"} {
			resp, err := http.Get("http://" + health + path)
			if err != nil {
				continue // between two attempts' servers
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			probes[path+" "+resp.Status]++
			if path == "/readyz" && !strings.Contains(string(body), "connection refused") {
				t.Errorf("/readyz says %q, want the reason", body)
			}
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stop := make(chan struct{})
	probed := make(chan struct{})
	go func() {
		defer close(probed)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				probe()
			}
		}
	}()
	start := time.Now()
	_, err := newManager(ctx, build, health, backoff{First: 40 * time.Millisecond, Most: 100 * time.Millisecond}, logr.Discard())
	close(stop)
	<-probed
	if err != nil || len(attempts) != 4 {
		t.Fatalf("newManager: %v after %d attempts", err, len(attempts))
	}
	// Waits of 40, 80, 100 ms (each up to a quarter more).
	if took := time.Since(start); took < 220*time.Millisecond || took > 2*time.Second {
		t.Errorf("4 attempts in %v, want the waits 40+80+100ms", took)
	}
	if probes["/healthz 200 OK"] == 0 || probes["/readyz 503 Service Unavailable"] == 0 || len(probes) != 2 {
		t.Errorf("probes while waiting: %v, want /healthz ok and /readyz failing", probes)
	}
	if _, err := net.Listen("tcp", health); err != nil {
		t.Errorf("health address still taken after newManager returned: %v", err)
	}

	// No retry for what a retry cannot fix.
	attempts = nil
	bad := errors.New(`failed to create listener: listen tcp :8081: bind: permission denied`)
	if _, err := newManager(ctx, func() (manager.Manager, error) { attempts = append(attempts, time.Now()); return nil, bad }, "0", managerRetry, logr.Discard()); !errors.Is(err, bad) || len(attempts) != 1 {
		t.Errorf("newManager with a lasting error: %v after %d attempts", err, len(attempts))
	}
	// Stopped while waiting.
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	start = time.Now()
	if _, err := newManager(ctx, func() (manager.Manager, error) { return nil, refused }, "0", backoff{First: time.Hour, Most: time.Hour}, logr.Discard()); !errors.Is(err, context.Canceled) || time.Since(start) > time.Second {
		t.Errorf("newManager stopped while waiting: %v after %v", err, time.Since(start))
	}
}

// TestAPIUnreachableIsNarrow: what a retry cannot fix is not retried, though it
// comes as the same error types as an apiserver not reached: an address the
// manager cannot bind (a *net.OpError, which is a net.Error), a certificate the
// agent does not trust (a *url.Error). Both were retried for ever, with
// /healthz answering ok meanwhile. Real errors, not strings.
func TestAPIUnreachableIsNarrow(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, bindErr := net.Listen("tcp", l.Addr().String())
	if bindErr == nil {
		t.Fatal("a second listener on a taken address")
	}
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	_, tlsErr := http.Get(srv.URL) // its certificate is not trusted
	if tlsErr == nil {
		t.Fatal("an untrusted certificate was accepted")
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	_, refusedErr := http.Get(closed.URL)
	if refusedErr == nil {
		t.Fatal("a closed server answered")
	}
	for _, c := range []struct {
		what string
		err  error
		want bool
	}{
		{"health address taken", fmt.Errorf("error listening on %s: %w", l.Addr(), bindErr), false},
		{"untrusted certificate", fmt.Errorf("failed to get server groups: %w", tlsErr), false},
		{"connection refused", fmt.Errorf("failed to get server groups: %w", refusedErr), true},
	} {
		if got := apiUnreachable(c.err); got != c.want {
			t.Errorf("%s (%v): retried %v, want %v", c.what, c.err, got, c.want)
		}
	}
}
