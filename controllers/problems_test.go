package controllers

import (
	"context"
	"fmt"
	"testing"

	"github.com/go-logr/logr"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// recordingRecorder keeps the Events it is asked to send.
type recordingRecorder struct{ events []string }

func (r *recordingRecorder) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	obj := regarding.(*networkingv1.NetworkPolicy)
	r.events = append(r.events, fmt.Sprintf("%s %s %s/%s: %s", eventtype, reason, obj.Namespace, obj.Name, fmt.Sprintf(note, args...)))
}

func (r *recordingRecorder) AnnotatedEventf(regarding, related runtime.Object, _ map[string]string, eventtype, reason, action, note string, args ...any) {
	r.Eventf(regarding, related, eventtype, reason, action, note, args...)
}

// A problem becomes one Warning Event on its policy; the same problem on the next sync
// sends nothing; a changed problem sends again; pod-level problems send no Event.
func TestReportProblemsDeduplicatesEvents(t *testing.T) {
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "p"}}
	rec := &recordingRecorder{}
	r := &NodeReconciler{NodeName: "node-1", Recorder: rec,
		Reader: fake.NewClientBuilder().WithScheme(scheme).WithObjects(np).Build()}
	key := types.NamespacedName{Namespace: "x", Name: "p"}
	ctx := context.Background()

	r.reportProblems(ctx, logr.Discard(), []compile.Problem{{Policy: key, Reason: "ingress rule 0: bad"}, {Reason: "pods share 10.0.0.1"}})
	r.reportProblems(ctx, logr.Discard(), []compile.Problem{{Policy: key, Reason: "ingress rule 0: bad"}})
	r.reportProblems(ctx, logr.Discard(), []compile.Problem{{Policy: key, Reason: "ingress rule 1: worse"}})
	r.reportProblems(ctx, logr.Discard(), nil)
	r.reportProblems(ctx, logr.Discard(), []compile.Problem{{Policy: key, Reason: "ingress rule 1: worse"}})

	want := []string{
		"Warning NotEnforceable x/p: node node-1 cannot fully enforce this policy: ingress rule 0: bad",
		"Warning NotEnforceable x/p: node node-1 cannot fully enforce this policy: ingress rule 1: worse",
		"Warning NotEnforceable x/p: node node-1 cannot fully enforce this policy: ingress rule 1: worse",
	}
	if fmt.Sprint(rec.events) != fmt.Sprint(want) {
		t.Errorf("events:\n%q\nwant:\n%q", rec.events, want)
	}
}
