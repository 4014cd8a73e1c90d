package controllers

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// nodeAddr is the InternalIP test Node i gets: one address per /24, so that no
// two merge into an interval of the rendered set and each can be counted.
func nodeAddr(base string, i int) string { return fmt.Sprintf("%s.%d.7", base, i) }

// testNode is a Node shaped as a kubelet registers it: labels, addresses, pod
// CIDRs, and a status of realistic weight (50 images, the kubelet's default
// --node-status-max-images; five conditions; node info), which is what every
// status rewrite sends to every watcher of every Node.
func testNode(name, addr string, labels map[string]string) *corev1.Node {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.NodeSpec{ProviderID: "test://" + name},
	}
	n.Status = benchcluster.NodeStatus(name, addr, time.Unix(1_700_000_000, 0))
	return n
}

// nodesPolicy is a v1beta1 ClusterNetworkPolicy denying every pod egress to
// the Nodes labelled sel (a nodes peer).
func nodesPolicy(name string, sel map[string]string) *cnpv1beta1.ClusterNetworkPolicy {
	return &cnpv1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnpv1beta1.ClusterNetworkPolicySpec{
			Tier: cnpv1beta1.AdminTier, Priority: 5,
			Subject: cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
			Egress: []cnpv1beta1.ClusterNetworkPolicyEgressRule{{Name: "nodes", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
				To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: sel}}}}},
		},
	}
}

// nodeAddrsIn counts which of addrs the rendered table holds.
func nodeAddrsIn(rs *nft.Ruleset, addrs []string) int {
	if rs == nil {
		return 0
	}
	text := nft.Render(rs)
	n := 0
	for _, a := range addrs {
		if strings.Contains(text, a+",") || strings.Contains(text, a+" ") || strings.Contains(text, a+"\n") || strings.Contains(text, a+"}") {
			n++
		}
	}
	return n
}

// The all-node watch and the reconciler's node scope, without an apiserver:
// a sync that needs every Node applies nothing until the watch's list has
// arrived, while the list goes unanswered apiLink retries it and /readyz names
// it; then every Node is compiled; remote status rewrites are filtered, label
// changes are not; the last nodes peer's going stops the watch, drops the other
// nodes and forgets the watch's kind.
func TestNodeScopeWaitsForEveryNode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	sel := map[string]string{"nodewatch": "unit"}
	own := testNode("nw-own", nodeAddr("10.203", 0), sel)
	own.Spec.PodCIDRs = []string{"10.90.0.0/24"}
	nodes := []corev1.Node{*own}
	addrs := []string{nodeAddr("10.203", 0)}
	for i := 1; i <= 5; i++ {
		nodes = append(nodes, *testNode(fmt.Sprintf("nw-%d", i), nodeAddr("10.203", i), sel))
		addrs = append(addrs, nodeAddr("10.203", i))
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a", Labels: map[string]string{"app": "a"}},
		Spec:   corev1.PodSpec{NodeName: "nw-own", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.90.0.5", PodIPs: []corev1.PodIP{{IP: "10.90.0.5"}}}}
	policy := nodesPolicy("to-nodes", sel)
	rd := fake.NewClientBuilder().WithScheme(scheme).WithObjects(own,
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}}},
		pod, policy).Build()

	// The all-node ListWatch: refused until answer, then the six Nodes and a watch the test drives.
	var answer atomic.Bool
	fw := watch.NewFakeWithChanSize(10, false)
	lw := &toolscache.ListWatch{
		ListWithContextFunc: func(context.Context, metav1.ListOptions) (runtime.Object, error) {
			if !answer.Load() {
				return nil, &transportErr{err: syscall.ECONNREFUSED}
			}
			return &corev1.NodeList{ListMeta: metav1.ListMeta{ResourceVersion: "1"}, Items: nodes}, nil
		},
		WatchFuncWithContext: func(_ context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			if opts.SendInitialEvents != nil && *opts.SendInitialEvents {
				return nil, apierrors.NewBadRequest("this fake serves no watch-list") // the reflector lists instead
			}
			return fw, nil
		},
	}
	link := newAPILink(logr.Discard())
	all := newAllNodes(ctx, link, lw, logr.Discard())
	applier := nfttest.NewFake()
	r := &NodeReconciler{Reader: rd, NodeName: "nw-own", Table: nft.DefaultTable, Applier: applier, Log: logr.Discard(),
		Nodes: all, cnp: &clusterPolicyAPI{}}
	r.cnp.version.Store("v1beta1")
	var sunkMu sync.Mutex
	sunk := map[string]int{} // Node events passed, by node
	passed := func(name string) int {
		sunkMu.Lock()
		defer sunkMu.Unlock()
		return sunk[name]
	}
	all.setSink(func(obj client.Object) {
		if obj != nil {
			r.noteDirty(obj)
			sunkMu.Lock()
			sunk[obj.GetName()]++
			sunkMu.Unlock()
		}
	})
	gauge := func(scope string) float64 { return testutil.ToFloat64(nodeWatchScope.WithLabelValues(scope)) }
	lost := func() bool {
		link.mu.Lock()
		defer link.mu.Unlock()
		_, ok := link.lost[allNodesKind]
		return ok
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	sync := func() time.Duration {
		t.Helper()
		res, err := r.Reconcile(ctx, r.request())
		if err != nil {
			t.Fatalf("sync: %v", err)
		}
		return res.RequeueAfter
	}

	// A nodes peer at the first sync: the watch starts, its list is refused, nothing is applied.
	if after := sync(); after != nodeWaitRetry {
		t.Errorf("first sync asked to be retried after %v, want %v", after, nodeWaitRetry)
	}
	if c := applier.Calls(); c.FullSync+c.Apply != 0 || !all.running() || gauge("all") != 1 || gauge("own") != 0 {
		t.Fatalf("first sync: applied %+v, watch running %v, gauges all=%v own=%v; want nothing applied and the watch running",
			c, all.running(), gauge("all"), gauge("own"))
	}
	waitFor("the refused list to be reported", lost)
	link.mu.Lock()
	link.lost[allNodesKind] = time.Now().Add(-apiGrace - time.Second)
	link.mu.Unlock()
	if err := link.check(&http.Request{}); err == nil || !strings.Contains(err.Error(), "node-all") {
		t.Errorf("/readyz with the all-node list refused for longer than apiGrace: %v, want an error naming node-all", err)
	}
	sync()
	if c := applier.Calls(); c.FullSync+c.Apply != 0 {
		t.Fatalf("a sync while the list is refused applied %+v", c)
	}

	// The apiserver answers: every Node is compiled at the first applied table.
	answer.Store(true)
	waitFor("the all-node watch to sync", func() bool { _, ok := all.list(); return ok })
	if after := sync(); after != 0 {
		t.Errorf("sync after the list asked to be retried after %v", after)
	}
	if c := applier.Calls(); c.FullSync != 1 || c.Apply != 0 {
		t.Fatalf("applied %+v after the list, want one full sync", c)
	}
	if got := nodeAddrsIn(applier.Last(), addrs); got != len(addrs) {
		t.Fatalf("the first applied table holds %d of the %d nodes' addresses:\n%s", got, len(addrs), nft.Render(applier.Last()))
	}
	if err := link.check(&http.Request{}); err != nil {
		t.Errorf("/readyz once the list was answered: %v", err)
	}

	// A status rewrite of a remote Node is filtered out; a label change is not.
	beat := nodes[1].DeepCopy()
	beat.ResourceVersion = "2"
	beat.Status = benchcluster.NodeStatus(beat.Name, nodeAddr("10.203", 1), time.Unix(1_700_000_300, 0))
	fw.Modify(beat)
	relabel := nodes[2].DeepCopy()
	relabel.ResourceVersion = "3"
	relabel.Labels = map[string]string{"nodewatch": "other"}
	fw.Modify(relabel)
	// Events arrive in order: once the relabel's has passed, the rewrite's has been judged.
	waitFor("the relabelled Node's event", func() bool { return passed("nw-2") == 2 })
	if n := passed("nw-1"); n != 1 {
		t.Errorf("%d events of the rewritten Node passed, want 1 (its add; not the status rewrite)", n)
	}
	sync()
	if got := nodeAddrsIn(applier.Last(), addrs); got != len(addrs)-1 || strings.Contains(nft.Render(applier.Last()), nodeAddr("10.203", 2)) {
		t.Errorf("after the relabel the table holds %d addresses, want %d without %s", got, len(addrs)-1, nodeAddr("10.203", 2))
	}

	// The policy goes: the watch stops, the other nodes leave the compiler, the kind is forgotten.
	if err := rd.Delete(ctx, policy); err != nil {
		t.Fatal(err)
	}
	r.noteDirty(policy)
	sync()
	if all.running() || len(r.remoteNodes) != 0 || r.nodesLoaded || gauge("own") != 1 || gauge("all") != 0 {
		t.Errorf("after the last nodes peer: watch running %v, %d remote nodes held, gauges own=%v all=%v",
			all.running(), len(r.remoteNodes), gauge("own"), gauge("all"))
	}
	if got := nodeAddrsIn(applier.Last(), addrs); got != 0 {
		t.Errorf("the table still holds %d node addresses", got)
	}
	if held, runs := all.stats(); held != 0 || runs != 1 {
		t.Errorf("all-node store holds %d, %d watches started; want 0 and 1", held, runs)
	}
	waitFor("node-all to be forgotten", func() bool {
		link.mu.Lock()
		defer link.mu.Unlock()
		_, ok := link.lost[allNodesKind]
		return !ok
	})
	if err := link.check(&http.Request{}); err != nil {
		t.Errorf("/readyz after the watch stopped: %v", err)
	}
	// The compiler holds only the own Node: a fresh full read agrees with it.
	want := nft.Render(applier.Last())
	r.needFull = true
	sync()
	if got := nft.Render(applier.Last()); got != want {
		t.Errorf("a full sync after the stop differs from the incremental result:\n%s\nwant\n%s", got, want)
	}
}
