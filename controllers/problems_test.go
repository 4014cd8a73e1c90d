package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
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
// (No pods at all: every node is its own reporter.)
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
		"Warning NotEnforceable x/p: node node-1 reports for every node: this policy cannot be fully enforced: ingress rule 0: bad",
		"Warning NotEnforceable x/p: node node-1 reports for every node: this policy cannot be fully enforced: ingress rule 1: worse",
		"Warning NotEnforceable x/p: node node-1 reports for every node: this policy cannot be fully enforced: ingress rule 1: worse",
	}
	if fmt.Sprint(rec.events) != fmt.Sprint(want) {
		t.Errorf("events:\n%q\nwant:\n%q", rec.events, want)
	}
}

// Of several nodes seeing the same problem, exactly one records the Event: one
// that hosts a pod the policy selects; or, for a policy that selects no pod,
// one that hosts any pod. Nodes without such pods never do.
func TestOneReporterPerPolicy(t *testing.T) {
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	pod := func(ns, name, node string, labels map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec: corev1.PodSpec{NodeName: node}}
	}
	objs := []client.Object{
		pod("x", "a1", "node-1", map[string]string{"app": "a"}),
		pod("x", "a2", "node-2", map[string]string{"app": "a"}),
		pod("x", "b", "node-3", map[string]string{"app": "b"}),
		pod("y", "c", "node-4", map[string]string{"app": "a"}),
	}
	host := pod("x", "host", "node-5", map[string]string{"app": "a"})
	host.Spec.HostNetwork = true
	done := pod("x", "done", "node-6", map[string]string{"app": "a"})
	done.Status.Phase = corev1.PodSucceeded
	objs = append(objs, host, done)
	var keys []types.NamespacedName
	for i := range 40 { // enough policies that the rendezvous choice varies
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: fmt.Sprintf("sel-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}}
		none := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: fmt.Sprintf("none-%d", i)},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "nothing"}}}}
		objs = append(objs, np, none)
		keys = append(keys, client.ObjectKeyFromObject(np), client.ObjectKeyFromObject(none))
	}
	reader := fake.NewClientBuilder().WithScheme(scheme).WithObjects(objs...).Build()
	reporters := map[string]map[string]int{} // policy -> node -> events
	for _, node := range []string{"node-1", "node-2", "node-3", "node-4", "node-5", "node-6", "node-7"} {
		rec := &recordingRecorder{}
		r := &NodeReconciler{NodeName: node, Recorder: rec, Reader: reader}
		var problems []compile.Problem
		for _, k := range keys {
			problems = append(problems, compile.Problem{Policy: k, Reason: "ingress rule 0: bad"})
		}
		r.reportProblems(context.Background(), logr.Discard(), problems)
		r.reportProblems(context.Background(), logr.Discard(), problems)
		for _, e := range rec.events {
			policy := strings.TrimSuffix(strings.Fields(e)[2], ":")
			if reporters[policy] == nil {
				reporters[policy] = map[string]int{}
			}
			reporters[policy][node]++
		}
	}
	seen := map[string]bool{}
	for _, k := range keys {
		got := reporters[k.String()]
		if len(got) != 1 {
			t.Errorf("%s: reported by %v, want exactly one node once", k, got)
			continue
		}
		for node, n := range got {
			seen[node] = true
			want := []string{"node-1", "node-2"} // the nodes of the pods it selects
			if strings.HasPrefix(k.Name, "none-") {
				want = []string{"node-1", "node-2", "node-3", "node-4", "node-5", "node-6"} // any pod's
			}
			if n != 1 || !slices.Contains(want, node) {
				t.Errorf("%s: reported %d times by %s, want once by one of %v", k, n, node, want)
			}
		}
	}
	if len(seen) < 3 {
		t.Errorf("80 policies reported by only %v: the choice should spread over nodes", seen)
	}
}

var _ = Describe("problem reporting", func() {
	It("records one Warning Event per broken policy, not one per node", func(ctx SpecContext) {
		f := newFixture()
		nodes := []string{"rep-a-" + f.sfx, "rep-b-" + f.sfx, "rep-c-" + f.sfx, "rep-d-" + f.sfx}
		f.namespace(ctx, "rep", map[string]string{})
		// app=a on the first two nodes, app=b on the third; the fourth has no pod.
		f.pod(ctx, "rep", "a1", podOpts{node: nodes[0], ips: []string{"10.77.0.1"}})
		f.pod(ctx, "rep", "a2", podOpts{node: nodes[1], ips: []string{"10.77.0.2"}})
		f.pod(ctx, "rep", "b", podOpts{node: nodes[2], ips: []string{"10.77.0.3"}})
		f.relabel(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("rep"), Name: "a1"}}, "app", "a")
		f.relabel(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("rep"), Name: "a2"}}, "app", "a")
		f.relabel(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("rep"), Name: "b"}}, "app", "b")
		fakes := make([]*nfttest.Fake, len(nodes))
		for i, n := range nodes {
			fakes[i] = nfttest.NewFake()
			startAgentOn(n, fakes[i], 0)
		}
		for i := range fakes {
			Eventually(func() int { return fakes[i].Calls().FullSync }, time.Minute, 50*time.Millisecond).Should(BeNumerically(">=", 1), "agent %s synced", nodes[i])
		}

		broken := func(name string, sel map[string]string) *networkingv1.NetworkPolicy {
			return &networkingv1.NetworkPolicy{
				ObjectMeta: metav1.ObjectMeta{Namespace: f.ns("rep"), Name: name},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: sel},
					Ingress: []networkingv1.NetworkPolicyIngressRule{{
						From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "010.0.0.0/8"}}},
					}},
				},
			}
		}
		cases := []struct {
			np        *networkingv1.NetworkPolicy
			reporters []string // who may report it
		}{
			{broken("selects-a", map[string]string{"app": "a"}), nodes[:2]},
			{broken("selects-none", map[string]string{"app": "none"}), nodes[:3]},
		}
		syncs := func(f *nfttest.Fake) int { return f.Calls().Apply + f.Calls().FullSync }
		before := make([]int, len(fakes))
		for i := range fakes {
			before[i] = syncs(fakes[i])
		}
		for _, c := range cases {
			Expect(k8sClient.Create(ctx, c.np)).To(Succeed())
		}
		events := func(policy string) []string {
			var list eventsv1.EventList
			Expect(k8sClient.List(ctx, &list, client.InNamespace(f.ns("rep")))).To(Succeed())
			var notes []string
			for _, e := range list.Items {
				if e.Reason == "NotEnforceable" && e.Regarding.Name == policy {
					n := 1
					if e.Series != nil {
						n = int(e.Series.Count)
					}
					for range n {
						notes = append(notes, e.Note)
					}
				}
			}
			return notes
		}
		for _, c := range cases {
			Eventually(func() []string { return events(c.np.Name) }, 30*time.Second, 100*time.Millisecond).Should(HaveLen(1), "policy %s", c.np.Name)
		}
		// Give every agent a sync after both policies exist, and stragglers time
		// to report too, if they were going to.
		for i := range fakes {
			Eventually(func() int { return syncs(fakes[i]) }, 30*time.Second, 50*time.Millisecond).Should(BeNumerically(">", before[i]), "agent %s synced after the policies", nodes[i])
		}
		for _, c := range cases {
			Consistently(func() []string { return events(c.np.Name) }, 3*time.Second, 200*time.Millisecond).Should(HaveLen(1), "policy %s", c.np.Name)
			note := events(c.np.Name)[0]
			reporter := strings.Fields(note)[1]
			Expect(c.reporters).To(ContainElement(reporter), "policy %s reported by %s: %s", c.np.Name, reporter, note)
			AddReportEntry("reporter of "+c.np.Name, fmt.Sprintf("%s of %d agents: %s", reporter, len(nodes), note))
		}
	}, SpecTimeout(3*time.Minute))
})
