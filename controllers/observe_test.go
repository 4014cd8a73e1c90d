package controllers

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nflog"
)

// fakeSource delivers batches, then fails with net.ErrClosed once closed.
type fakeSource struct {
	batches chan []nflog.Packet
	lost    uint64
	once    sync.Once
	closed  chan struct{}
}

func newFakeSource() *fakeSource {
	return &fakeSource{batches: make(chan []nflog.Packet, 16), closed: make(chan struct{})}
}

func (f *fakeSource) Read() ([]nflog.Packet, error) {
	select {
	case b := <-f.batches:
		return b, nil
	case <-f.closed:
		return nil, net.ErrClosed
	}
}
func (f *fakeSource) Lost() uint64 { return f.lost }
func (f *fakeSource) Close() error { f.once.Do(func() { close(f.closed) }); return nil }

// lineLog collects the logger's lines.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.lines = append(l.lines, args)
	}, funcr.Options{})
}

func (l *lineLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func testPod(ns, name, ip string, hostNetwork bool) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{HostNetwork: hostNetwork},
		Status:     corev1.PodStatus{PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

func udpPacket(prefix, src, dst string, sport, dport uint16) nflog.Packet {
	return nflog.Packet{Prefix: prefix, Family: 4, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst),
		Protocol: nflog.ProtoUDP, SrcPort: sport, DstPort: dport, HasL4: true}
}

// runDenyLogger runs d until stop, which returns what Start returned.
func runDenyLogger(d *denyLogger) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Start(ctx) }()
	return func() error {
		cancel()
		return <-done
	}
}

// TestDenyLogger: each packet is one line with both ends named (pod when one pod
// has the address, else the address), ports, direction and the isolating
// policies; a prefix of an older table still resolves; an unknown one says so.
func TestDenyLogger(t *testing.T) {
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	pods := fake.NewClientBuilder().WithScheme(scheme).WithIndex(&corev1.Pod{}, podIPIndex, indexPodIPs).WithObjects(
		testPod("x", "a", "10.0.1.1", false), testPod("y", "b", "10.0.2.2", false),
		testPod("kube-system", "node-agent", "192.168.0.10", true), // hostNetwork: names no address
	).Build()
	at := &attribution{}
	old := "nftpolicy-deny ing-00000001"
	at.store(&compile.Attribution{Groups: map[string]compile.Group{old: {Chain: "ing-00000001-y/old", Ingress: true,
		Policies: []types.NamespacedName{{Namespace: "y", Name: "old"}}}}})
	at.store(&compile.Attribution{Groups: map[string]compile.Group{
		"nftpolicy-deny ing-3fa9c2d1": {Chain: "ing-3fa9c2d1-y/a_and_1", Ingress: true,
			Policies: []types.NamespacedName{{Namespace: "y", Name: "allow-web"}, {Namespace: "y", Name: "deny-all"}}},
		"nftpolicy-deny eg-12345678": {Chain: "eg-12345678-x/egress", Ingress: false,
			Policies: []types.NamespacedName{{Namespace: "x", Name: "egress"}}},
		"nftpolicy-deny cnp-0000000a in1": {Chain: "cnp-0000000a-cnp/guard-in1-drop", Ingress: true,
			Cluster: &compile.ClusterRule{Policy: "guard", Tier: "Admin", Priority: 10, Ingress: true, Index: 1, Name: "no-z", Action: "Deny"}},
		"nftpolicy-deny ing-3fa9c2d1 reply": {Chain: "ing-3fa9c2d1-y/a_and_1-reply", Ingress: true, Reply: true,
			Policies: []types.NamespacedName{{Namespace: "y", Name: "allow-web"}, {Namespace: "y", Name: "deny-all"}}},
	}})
	var lines lineLog
	src := newFakeSource()
	d := &denyLogger{open: func() (DenyLogSource, error) { return src, nil }, pods: pods, attrib: at, log: lines.logger(), retry: time.Hour}
	before := testutil.ToFloat64(deniedPackets.WithLabelValues("ingress", "y"))
	lostBefore := testutil.ToFloat64(denyLogLost)

	src.batches <- []nflog.Packet{
		udpPacket("nftpolicy-deny ing-3fa9c2d1", "10.0.1.1", "10.0.2.2", 40000, 53),
		udpPacket("nftpolicy-deny eg-12345678", "10.0.1.1", "203.0.113.7", 40001, 443),
	}
	src.lost = 3
	src.batches <- []nflog.Packet{
		{Prefix: old, Family: 4, Src: netip.MustParseAddr("192.168.0.10"), Dst: netip.MustParseAddr("10.0.2.2"),
			Protocol: nflog.ProtoICMP, ICMPType: 8, HasL4: true},
		udpPacket("somebody else", "10.9.9.9", "10.0.2.2", 1, 2),
		udpPacket("nftpolicy-deny cnp-0000000a in1", "10.0.1.1", "10.0.2.2", 40002, 80),
		udpPacket("nftpolicy-deny ing-3fa9c2d1 reply", "10.0.2.2", "10.0.1.1", 53, 40000),
	}
	stop := runDenyLogger(d)
	deadline := time.Now().Add(10 * time.Second)
	for len(lines.get()) < 6 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	got := lines.get()
	want := []string{
		`"level"=0 "msg"="packet denied" "direction"="ingress" "src"="x/a" "dst"="y/b" "srcIP"="10.0.1.1" "dstIP"="10.0.2.2" "proto"="udp" "srcPort"=40000 "dstPort"=53 "policies"=["y/allow-web" "y/deny-all"]`,
		`"level"=0 "msg"="packet denied" "direction"="egress" "src"="x/a" "dst"="203.0.113.7" "srcIP"="10.0.1.1" "dstIP"="203.0.113.7" "proto"="udp" "srcPort"=40001 "dstPort"=443 "policies"=["x/egress"]`,
		`"level"=0 "msg"="packet denied" "direction"="ingress" "src"="192.168.0.10" "dst"="y/b" "srcIP"="192.168.0.10" "dstIP"="10.0.2.2" "proto"="icmp" "icmpType"=8 "icmpCode"=0 "policies"=["y/old"]`,
		`"level"=0 "msg"="packet denied" "direction"="unknown" "src"="10.9.9.9" "dst"="y/b" "srcIP"="10.9.9.9" "dstIP"="10.0.2.2" "proto"="udp" "srcPort"=1 "dstPort"=2 "prefix"="somebody else" "policies"=[]`,
		`"level"=0 "msg"="packet denied" "direction"="ingress" "src"="x/a" "dst"="y/b" "srcIP"="10.0.1.1" "dstIP"="10.0.2.2" "proto"="udp" "srcPort"=40002 "dstPort"=80 "policies"=["cnp/guard"] "tier"="Admin" "priority"=10 "rule"=1 "ruleName"="no-z"`,
		`"level"=0 "msg"="packet denied" "direction"="ingress" "src"="y/b" "dst"="x/a" "srcIP"="10.0.2.2" "dstIP"="10.0.1.1" "proto"="udp" "srcPort"=53 "dstPort"=40000 "policies"=["y/allow-web" "y/deny-all"] "reply"=true`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if n := testutil.ToFloat64(deniedPackets.WithLabelValues("ingress", "y")) - before; n != 3 {
		t.Errorf("denied packets {ingress, y}: +%v, want +3", n)
	}
	if n := testutil.ToFloat64(denyLogLost) - lostBefore; n != 3 {
		t.Errorf("lost: +%v, want +3", n)
	}
}

// TestDenyLoggerWaitsForTheFirstTable: packets read before the agent's first
// table is in force (a restarted agent reads what its predecessor's table
// logged) are held until its attribution can name them, and no longer than
// firstWait.
func TestDenyLoggerWaitsForTheFirstTable(t *testing.T) {
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	pods := fake.NewClientBuilder().WithScheme(scheme).WithIndex(&corev1.Pod{}, podIPIndex, indexPodIPs).Build()
	prefix := "nftpolicy-deny ing-3fa9c2d1"
	for _, tc := range []struct {
		name      string
		firstWait time.Duration
		store     bool
		want      string
	}{
		{"named once the first table is in force", time.Minute, true, `"direction"="ingress"`},
		{"unnamed when no table comes in time", 100 * time.Millisecond, false, `"direction"="unknown"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := &attribution{}
			var lines lineLog
			src := newFakeSource()
			d := &denyLogger{open: func() (DenyLogSource, error) { return src, nil }, pods: pods, attrib: at,
				log: lines.logger(), retry: time.Hour, firstWait: tc.firstWait}
			src.batches <- []nflog.Packet{udpPacket(prefix, "10.0.1.1", "10.0.2.2", 40000, 53)}
			stop := runDenyLogger(d)
			defer func() {
				if err := stop(); err != nil {
					t.Errorf("Start: %v", err)
				}
			}()
			if tc.store {
				time.Sleep(300 * time.Millisecond)
				if n := len(lines.get()); n != 0 {
					t.Fatalf("%d lines before the first table: %q", n, lines.get())
				}
				at.store(&compile.Attribution{Groups: map[string]compile.Group{prefix: {Chain: "ing-3fa9c2d1-y/a", Ingress: true,
					Policies: []types.NamespacedName{{Namespace: "y", Name: "deny-all"}}}}})
			}
			deadline := time.Now().Add(10 * time.Second)
			for len(lines.get()) < 1 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			got := lines.get()
			if len(got) != 1 || !strings.Contains(got[0], tc.want) {
				t.Fatalf("lines %q, want one with %s", got, tc.want)
			}
		})
	}
}

// TestDenyLoggerRetries: a group that cannot be opened is retried, never fatal.
// store records a table applied, as the reconciler does: applying, then applied.
func (a *attribution) store(at *compile.Attribution) {
	a.applying(at)
	a.applied(true)
}

// TestAttributionInFlight: a table's prefixes are named from the moment it is
// about to be applied (the kernel logs its packets as soon as the transaction
// commits, before Apply returns), its predecessor's for one change after, and
// a table that failed to apply is forgotten.
func TestAttributionInFlight(t *testing.T) {
	table := func(prefix string) *compile.Attribution {
		return &compile.Attribution{Groups: map[string]compile.Group{prefix: {Chain: prefix}}}
	}
	at := &attribution{}
	known := func(prefixes ...string) string {
		var out []string
		for _, p := range prefixes {
			if g, ok := at.group(p); ok && g.Chain == p {
				out = append(out, p)
			}
		}
		return strings.Join(out, " ")
	}
	at.store(table("a"))
	at.applying(table("b"))
	if got := known("a", "b"); got != "a b" {
		t.Fatalf("while b is applied over a: known %q, want both", got)
	}
	at.applied(false)
	if got := known("a", "b"); got != "a" {
		t.Fatalf("after b failed: known %q, want a", got)
	}
	at.applying(table("c"))
	at.applied(true)
	if got := known("a", "b", "c"); got != "a c" {
		t.Fatalf("after c replaced a: known %q, want a c", got)
	}
	if _, ok := at.load().Groups["c"]; !ok {
		t.Fatalf("the table in force is not c")
	}
	at.applying(table("d"))
	if _, ok := at.load().Groups["c"]; !ok {
		t.Fatalf("while d is applied, the table in force is still c (its counters)")
	}
	at.applied(true)
	if got := known("a", "b", "c", "d"); got != "c d" {
		t.Fatalf("after d replaced c: known %q, want c d", got)
	}
}

func TestDenyLoggerRetries(t *testing.T) {
	var lines lineLog
	opens := 0
	src := newFakeSource()
	d := &denyLogger{open: func() (DenyLogSource, error) {
		opens++
		if opens < 3 {
			return nil, errors.New("group taken")
		}
		return src, nil
	}, attrib: &attribution{}, log: lines.logger(), retry: 10 * time.Millisecond}
	stop := runDenyLogger(d)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-src.closed:
			t.Fatal("closed before cancel")
		default:
		}
		if len(lines.get()) >= 2 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if opens != 3 || !strings.Contains(strings.Join(lines.get(), "\n"), "group taken") {
		t.Errorf("opens %d, lines %q", opens, lines.get())
	}
}

// TestPolicyCollector: each policy is credited with its groups' counters; a
// policy's total never decreases when its group changes or its counters start
// again from zero; policies gone from the table are forgotten.
func TestPolicyCollector(t *testing.T) {
	at := &attribution{}
	vals := map[string]uint64{}
	c := newPolicyCollector(packetsOnly(func(context.Context) (map[string]uint64, error) { return vals, nil }), at)
	if n := testutil.CollectAndCount(c); n != 0 {
		t.Errorf("%d samples before the first sync", n)
	}
	p, q := types.NamespacedName{Namespace: "x", Name: "p"}, types.NamespacedName{Namespace: "x", Name: "q"}
	group := func(chain string, ingress bool, pols ...types.NamespacedName) compile.Group {
		return compile.Group{Chain: chain, Ingress: ingress, Policies: pols}
	}
	header := `
# HELP nftpolicy_policy_packets_total Packets the group chains of a policy allowed or dropped for isolation, by direction, read from the kernel's counters (a packet allowed in a group of several policies counts for each: see nft/doc.go); for a ClusterNetworkPolicy (tier admin or baseline, no namespace), the packets its rules accepted, denied or passed.
# TYPE nftpolicy_policy_packets_total counter
`
	check := func(step, want string) {
		t.Helper()
		if err := testutil.CollectAndCompare(c, strings.NewReader(header+want)); err != nil {
			t.Errorf("%s: %v", step, err)
		}
	}
	// Two groups: ing-1 (p alone) and ing-2 (p and q); eg-1 (q).
	at.store(&compile.Attribution{Counters: map[string]compile.GroupCounter{
		"ing-1-allow": {Group: group("ing-1", true, p), Verdict: compile.VerdictAllow},
		"ing-2-allow": {Group: group("ing-2", true, p, q), Verdict: compile.VerdictAllow},
		"ing-2-deny":  {Group: group("ing-2", true, p, q), Verdict: compile.VerdictDeny},
		"eg-1-deny":   {Group: group("eg-1", false, q), Verdict: compile.VerdictDeny},
		// A ClusterNetworkPolicy rule's counter: cluster-scoped, its tier.
		"cnp-1-guard-in1-deny": {Group: compile.Group{Ingress: true, Cluster: &compile.ClusterRule{Policy: "guard", Tier: "Admin", Priority: 10,
			Ingress: true, Index: 1, Action: "Deny"}}, Verdict: compile.VerdictDeny},
		"cnp-2-base-eg0-pass": {Group: compile.Group{Cluster: &compile.ClusterRule{Policy: "base", Tier: "Baseline", Action: "Pass"}}, Verdict: compile.VerdictPass},
	}})
	vals = map[string]uint64{"ing-1-allow": 7, "ing-2-allow": 3, "ing-2-deny": 2, "eg-1-deny": 4, "stray": 9, "cnp-1-guard-in1-deny": 6, "cnp-2-base-eg0-pass": 1}
	check("two groups", `nftpolicy_policy_packets_total{direction="egress",namespace="",policy="base",tier="baseline",verdict="pass"} 1
nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="guard",tier="admin",verdict="deny"} 6
nftpolicy_policy_packets_total{direction="egress",namespace="x",policy="q",tier="networkpolicy",verdict="deny"} 4
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="p",tier="networkpolicy",verdict="allow"} 10
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="p",tier="networkpolicy",verdict="deny"} 2
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="q",tier="networkpolicy",verdict="allow"} 3
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="q",tier="networkpolicy",verdict="deny"} 2
`)
	// Regrouping: ing-2 is gone (its pods moved to ing-3, p alone); eg-1 was
	// re-created and counts from zero.
	at.store(&compile.Attribution{Counters: map[string]compile.GroupCounter{
		"ing-1-allow": {Group: group("ing-1", true, p), Verdict: compile.VerdictAllow},
		"ing-3-allow": {Group: group("ing-3", true, p), Verdict: compile.VerdictAllow},
		"eg-1-deny":   {Group: group("eg-1", false, q), Verdict: compile.VerdictDeny},
	}})
	vals = map[string]uint64{"ing-1-allow": 8, "ing-3-allow": 1, "eg-1-deny": 1}
	// p and q are still in the table: the series they no longer count into keep
	// their totals (a counter never goes back while its policy is here).
	check("regrouped", `nftpolicy_policy_packets_total{direction="egress",namespace="x",policy="q",tier="networkpolicy",verdict="deny"} 5
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="p",tier="networkpolicy",verdict="allow"} 12
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="p",tier="networkpolicy",verdict="deny"} 2
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="q",tier="networkpolicy",verdict="allow"} 3
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="q",tier="networkpolicy",verdict="deny"} 2
`)
	// q is gone from the table: forgotten, whatever it counted.
	at.store(&compile.Attribution{Counters: map[string]compile.GroupCounter{
		"ing-1-allow": {Group: group("ing-1", true, p), Verdict: compile.VerdictAllow},
	}})
	check("q gone", `nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="p",tier="networkpolicy",verdict="allow"} 12
nftpolicy_policy_packets_total{direction="ingress",namespace="x",policy="p",tier="networkpolicy",verdict="deny"} 2
`)
	failing := newPolicyCollector(packetsOnly(func(context.Context) (map[string]uint64, error) { return nil, errors.New("netlink") }), at)
	before := testutil.ToFloat64(counterReadErrors)
	if n := testutil.CollectAndCount(failing); n != 0 {
		t.Errorf("%d samples from a failed read", n)
	}
	if testutil.ToFloat64(counterReadErrors)-before != 1 {
		t.Error("read error not counted")
	}
}

// packetsOnly is read as a CounterPackets whose counters are never created
// again (Created 0).
func packetsOnly(read func(context.Context) (map[string]uint64, error)) CounterPackets {
	return func(ctx context.Context) (map[string]CounterRead, error) {
		vals, err := read(ctx)
		out := make(map[string]CounterRead, len(vals))
		for k, v := range vals {
			out[k] = CounterRead{Packets: v}
		}
		return out, err
	}
}

// netlinkCounters reads a kernel Applier's counters as the binary does.
func netlinkCounters(a *netlink.Applier) CounterPackets {
	return func(ctx context.Context) (map[string]CounterRead, error) {
		vals, err := a.Counters(ctx)
		out := make(map[string]CounterRead, len(vals))
		for k, v := range vals {
			out[k] = CounterRead{Packets: v.Packets, Created: v.Created}
		}
		return out, err
	}
}

// TestPolicyCollectorCounterCreatedAgain: a counter created again between two
// scrapes (its group gone and back, the table replaced) counts from zero; when
// it has passed its old value by the next scrape, the old value is carried all
// the same (it was lost: a decrease was the only sign of a new life).
func TestPolicyCollectorCounterCreatedAgain(t *testing.T) {
	at := &attribution{}
	p := types.NamespacedName{Namespace: "x", Name: "p"}
	at.store(&compile.Attribution{Counters: map[string]compile.GroupCounter{
		"ing-1-deny": {Group: compile.Group{Chain: "ing-1", Ingress: true, Policies: []types.NamespacedName{p}}, Verdict: compile.VerdictDeny},
	}})
	reads := []CounterRead{{Packets: 3, Created: 1}, {Packets: 5, Created: 2}, {Packets: 6, Created: 2}}
	i := 0
	c := newPolicyCollector(func(context.Context) (map[string]CounterRead, error) {
		v := reads[min(i, len(reads)-1)]
		i++
		return map[string]CounterRead{"ing-1-deny": v}, nil
	}, at)
	for _, want := range []float64{3, 8, 9} {
		if got := collectSum(c); got != want {
			t.Errorf("scrape %d: total %v, want %v", i, got, want)
		}
	}
}

// TestDenyLogSkipsFinishedPods: a finished pod (Succeeded, Failed) keeps
// status.podIPs, but the CNI has released its address, which a new pod may
// have. The deny log's address indexes (the agent's pod records, and pods in a
// plain cache) leave finished pods out: the completed Job pod was named for the
// new pod's packets until the agent knew the new pod (an unknown-pod drop of
// its first packets), and then neither was (two pods, one address).
func TestDenyLogSkipsFinishedPods(t *testing.T) {
	in := &podInterner{}
	idx := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{podIPIndex: indexRecordIPs})
	job := testPod("batch", "job-abc12", "10.0.1.7", false)
	job.Spec.NodeName = "n1"
	job.Status.Phase = corev1.PodSucceeded
	if err := idx.Add(in.record(job)); err != nil {
		t.Fatal(err)
	}
	d := &denyLogger{pods: podIPReader{idx}}
	a := netip.MustParseAddr("10.0.1.7")
	got1 := d.endpoint(context.Background(), a) // the new pod not yet known

	web := testPod("shop", "web-7d9f", "10.0.1.7", false)
	web.Spec.NodeName = "n1"
	web.Status.Phase = corev1.PodRunning
	if err := idx.Add(in.record(web)); err != nil {
		t.Fatal(err)
	}
	got2 := d.endpoint(context.Background(), a)
	if got1 != "10.0.1.7" || got2 != "shop/web-7d9f" {
		t.Errorf("want the finished pod never named (10.0.1.7), and the running pod named (shop/web-7d9f); got %q, %q", got1, got2)
	}
	// The index over whole pods likewise.
	if got := indexPodIPs(job); len(got) != 0 {
		t.Errorf("indexPodIPs(a finished pod) = %v, want none", got)
	}
	if got := indexPodIPs(web); len(got) != 1 || got[0] != "10.0.1.7" {
		t.Errorf("indexPodIPs(a running pod) = %v", got)
	}
}
