package controllers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/go-logr/logr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// backoff is how long newManager waits after a failed attempt: First, doubled
// after each failure up to Most, each wait spread by up to a quarter so that
// the agents of a cluster's nodes, rebooted together, do not ask together.
type backoff struct{ First, Most time.Duration }

// managerRetry: a rebooted node's apiserver address answers once kube-proxy
// (or its replacement) has written its rules, seconds after the agent starts;
// 10 s at most between attempts keeps the agent's start within ~10 s of that,
// where the kubelet's crash-loop back-off reaches 5 minutes.
var managerRetry = backoff{First: 500 * time.Millisecond, Most: 10 * time.Second}

// newManager returns build's manager, calling build again, after a wait (r),
// while it fails because the apiserver cannot be reached or cannot answer
// yet (apiUnreachable), each failure logged once. Any other error is returned
// at once: no retry can fix it. Meanwhile, a server on healthAddr ("" or "0":
// none) answers /healthz (the process is alive: the kubelet's liveness probe
// must not kill it) and fails /readyz with the last error; it is closed
// before each attempt, since the manager binds that address itself. It
// returns ctx's error when ctx is done first.
func newManager(ctx context.Context, build func() (manager.Manager, error), healthAddr string, r backoff, log logr.Logger) (manager.Manager, error) {
	wait := r.First
	var waiting *waitingHealth
	defer func() { waiting.close() }()
	for attempt := 1; ; attempt++ {
		waiting.close()
		waiting = nil
		mgr, err := build()
		if err == nil {
			if attempt > 1 {
				log.Info("apiserver reached", "attempts", attempt)
			}
			return mgr, nil
		}
		if !apiUnreachable(err) {
			return nil, err
		}
		d := wait + rand.N(wait/4+1)
		log.Error(err, "cannot reach the apiserver; trying again", "attempt", attempt, "in", d.Round(time.Millisecond))
		waiting = serveWaiting(healthAddr, err, log)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(d):
		}
		wait = min(2*wait, r.Most)
	}
}

// apiUnreachable says whether err is one a later attempt may not meet: the
// apiserver not reached (a refused or timed out connection, a TLS handshake
// cut short: client-go returns those as *url.Error) or answering that it
// cannot serve yet (5xx, 429, timeouts). A configuration the apiserver
// refuses (401, 403), a certificate the agent does not trust, a bad option or
// an address the agent cannot bind (the manager's listeners: a *net.OpError
// too) is not.
func apiUnreachable(err error) bool {
	var op *net.OpError
	var verify *tls.CertificateVerificationError
	var authority x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &op) && op.Op == "listen",
		errors.As(err, &verify), errors.As(err, &authority), errors.As(err, &host), errors.As(err, &invalid):
		return false
	}
	var ue *url.Error
	var ne net.Error
	switch {
	case errors.As(err, &ue), errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	return apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) || apierrors.IsUnexpectedServerError(err)
}

// waitingHealth is the agent's health endpoint while it waits for the apiserver.
type waitingHealth struct{ srv *http.Server }

// serveWaiting serves /healthz (ok) and /readyz (failing with cause) on addr,
// or nothing when addr is "" or "0" or cannot be bound (logged: the manager
// will say it too).
func serveWaiting(addr string, cause error, log logr.Logger) *waitingHealth {
	if addr == "" || addr == "0" {
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Error(err, "health endpoint while waiting for the apiserver", "address", addr)
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "apiserver not reached: "+cause.Error(), http.StatusServiceUnavailable)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return &waitingHealth{srv: srv}
}

// close stops the server and frees its address; nil is a no-op.
func (w *waitingHealth) close() {
	if w == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := w.srv.Shutdown(ctx); err != nil {
		_ = w.srv.Close()
	}
}
