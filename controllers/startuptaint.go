package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
)

// The startup taint. A node is not protected before its agent's first full sync:
// pods that start on a new node ahead of it talk without their policies. A node
// registered with the startup taint (the kubelet's --register-with-taints, a
// node pool's taints, Karpenter's startupTaints) gets no pod that does not
// tolerate it until its agent has put the node's table in force; the agent then
// removes the taint from its own Node, and nothing else of it. Without the taint
// on the Node the agent writes nothing.
//
// The one write the agent makes to the API besides Events: patch on nodes.
// config/rbac's ValidatingAdmissionPolicy narrows it to what this file does:
// the agent's own Node (the node its service account token is bound to), and
// only the removal of this taint.
// +kubebuilder:rbac:groups="",resources=nodes,verbs=patch

// DefaultStartupTaint is the agent's --startup-taint.
const DefaultStartupTaint = "nftpolicy.io/agent-not-ready"

var startupTaintRemovals = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "nftpolicy_startup_taint_removals_total",
	Help: "Removals of the startup taint from this agent's Node, by result (removed, error).",
}, []string{"result"})

func init() { metrics.Registry.MustRegister(startupTaintRemovals) }

// startupTaint removes the taint key from the Node named node once synced is
// closed, and again whenever the Node carries it later (changed is signalled on
// every event of the agent's own Node).
type startupTaint struct {
	key, node string
	// own returns the agent's Node as the cache holds it (trimNode keeps its taints).
	own func(ctx context.Context) (*corev1.Node, error)
	// nodes sends the patch; the cache is never written.
	nodes    corev1client.NodeInterface
	synced   <-chan struct{}
	changed  <-chan struct{}
	recorder recorder.EventRecorder // may be nil
	log      logr.Logger
	// retry is the first wait after a failed removal; it doubles up to maxRetry.
	retry, maxRetry time.Duration
}

// Start waits for the first full sync, then keeps the taint off the Node until
// ctx is done.
func (t *startupTaint) Start(ctx context.Context) error {
	select {
	case <-t.synced:
	case <-ctx.Done():
		return nil
	}
	wait := t.retry
	reported := false
	for {
		n, err := t.remove(ctx)
		if ctx.Err() != nil {
			return nil
		}
		var retry <-chan time.Time
		var timer *time.Timer
		if err != nil {
			if apierrors.IsInvalid(err) || apierrors.IsConflict(err) {
				// The patch's test failed: the cache is behind the Node.
				t.log.V(1).Info("the Node changed under the taint's removal: trying again", "error", err.Error())
			} else {
				startupTaintRemovals.WithLabelValues("error").Inc()
				t.log.Error(err, "cannot remove the startup taint: no pod that does not tolerate it is scheduled to this node", "taint", t.key, "retryIn", wait)
				if !reported && n != nil && t.recorder != nil {
					reported = true
					t.recorder.Eventf(n, nil, corev1.EventTypeWarning, "StartupTaintKept", "RemoveTaint",
						"nftpolicy agent on %s enforces this node's policies but cannot remove its taint %s: %v", t.node, t.key, err)
				}
			}
			timer = time.NewTimer(wait)
			retry = timer.C
			wait = min(2*wait, t.maxRetry)
		} else {
			wait = t.retry
		}
		select {
		case <-ctx.Done():
		case <-t.changed:
		case <-retry:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// remove patches the taint out of the Node when the cache shows it there. The
// patch tests that each removed entry still holds the key: a cache behind the
// API fails it, and the Node's next event brings the try again. It returns the
// cached Node, when there is one.
func (t *startupTaint) remove(ctx context.Context) (*corev1.Node, error) {
	n, err := t.own(ctx)
	if apierrors.IsNotFound(err) {
		return nil, nil // no Node yet: its creation is an event
	}
	if err != nil {
		return nil, err
	}
	patch, removed := taintRemoval(n.Spec.Taints, t.key)
	if len(removed) == 0 {
		return n, nil
	}
	if _, err := t.nodes.Patch(ctx, t.node, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: "nftpolicy-agent"}); err != nil {
		return n, fmt.Errorf("patching Node %s: %w", t.node, err)
	}
	startupTaintRemovals.WithLabelValues("removed").Inc()
	t.log.Info("removed the startup taint: this node's policies are in force", "taint", removed)
	return n, nil
}

// taintRemoval returns the JSON patch that removes every taint of key from
// taints (last first, each behind a test of its key), and the taints it removes.
func taintRemoval(taints []corev1.Taint, key string) ([]byte, []string) {
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value string `json:"value,omitempty"`
	}
	var ops []op
	var removed []string
	for i := len(taints) - 1; i >= 0; i-- {
		if taints[i].Key != key {
			continue
		}
		p := fmt.Sprintf("/spec/taints/%d", i)
		ops = append(ops, op{Op: "test", Path: p + "/key", Value: key}, op{Op: "remove", Path: p})
		removed = append(removed, taints[i].ToString())
	}
	if len(ops) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(ops)
	if err != nil {
		panic(err) // strings only
	}
	return b, removed
}
