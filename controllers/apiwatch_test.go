package controllers

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
)

// A watch the apiserver does not answer is retried within the ListerWatcher,
// so the reflector never sees it (and never backs off); /readyz reports the
// kind once it has been out of contact for apiGrace; the apiserver's own
// answers (a 410) go to the reflector at once.
func TestAPILinkRetriesUnansweredRequests(t *testing.T) {
	refused := &transportErr{err: syscall.ECONNREFUSED}
	var calls int
	lw := &toolscache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			calls++
			switch {
			case calls <= 3:
				return nil, refused
			case opts.ResourceVersion == "old":
				return nil, apierrors.NewResourceExpired("too old")
			}
			return watch.NewFake(), nil
		},
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return &corev1.PodList{}, nil
		},
	}
	l := newAPILink(logr.Discard())
	w := &linkedLW{l: l, kind: "pod", lw: toolscache.ToListerWatcherWithContext(lw)}
	start := time.Now()
	got, err := w.WatchWithContext(context.Background(), metav1.ListOptions{ResourceVersion: "5"})
	if err != nil || got == nil {
		t.Fatalf("watch: %v", err)
	}
	if calls != 4 {
		t.Errorf("%d attempts, want 4 (3 refused, then answered)", calls)
	}
	if d := time.Since(start); d < 3*apiRetryMin/2 || d > 3*apiRetryMax {
		t.Errorf("3 retries took %v, want between %v and %v", d, 3*apiRetryMin/2, 3*apiRetryMax)
	}
	if err := l.check(&http.Request{}); err != nil {
		t.Errorf("readyz after the answer: %v", err)
	}

	// An answer that refuses the watch is the reflector's to handle (it relists).
	_, err = w.WatchWithContext(context.Background(), metav1.ListOptions{ResourceVersion: "old"})
	if !apierrors.IsResourceExpired(err) {
		t.Errorf("a 410 should reach the reflector, got %v", err)
	}

	// Out of contact for longer than apiGrace: /readyz says so, naming the kind.
	l.unanswered("pod", refused)
	l.lost["pod"] = time.Now().Add(-apiGrace - time.Second)
	if err := l.check(&http.Request{}); err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("readyz out of contact: %v, want an error wrapping the refusal", err)
	}
	l.answered("pod")
	if err := l.check(&http.Request{}); err != nil {
		t.Errorf("readyz after contact again: %v", err)
	}

	// A cancelled context ends the retries.
	calls = 0
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	if _, err := w.WatchWithContext(ctx, metav1.ListOptions{}); err == nil {
		t.Error("watch with a cancelled context succeeded")
	}
}

// transportErr is a transport error, as net/http returns for a refused connection.
type transportErr struct{ err error }

func (u *transportErr) Error() string { return "dial tcp: " + u.err.Error() }
func (u *transportErr) Unwrap() error { return u.err }

// TestAPILinkForgetsADroppedInformer: an informer dropped on purpose (the
// ClusterNetworkPolicy CRD removed) stops asynchronously. A request of it that
// the apiserver does not answer after the drop must not mark its kind lost:
// nothing would answer for it again, and /readyz would fail for good.
func TestAPILinkForgetsADroppedInformer(t *testing.T) {
	l := newAPILink(logr.Discard())
	started, release := make(chan struct{}), make(chan struct{})
	var first sync.Once
	lw := &toolscache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			first.Do(func() {
				close(started)
				<-release // in flight while the informer is dropped
			})
			return nil, &transportErr{err: syscall.ECONNRESET}
		},
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			return &corev1.PodList{}, nil
		},
	}
	l.newInformerAs("clusternetworkpolicy", lw, &corev1.Pod{}, 0, toolscache.Indexers{})
	w := l.live["clusternetworkpolicy"]
	done := make(chan error)
	go func() {
		_, err := w.WatchWithContext(context.Background(), metav1.ListOptions{ResourceVersion: "5"})
		done <- err
	}()
	<-started
	l.forget("clusternetworkpolicy")
	close(release)
	select {
	case err := <-done:
		if err == nil {
			t.Error("the dropped informer's watch succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the dropped informer's watch is still retried")
	}
	l.mu.Lock()
	_, lost := l.lost["clusternetworkpolicy"]
	l.mu.Unlock()
	if lost {
		t.Error("a request of a dropped informer marked its kind lost")
	}
}
