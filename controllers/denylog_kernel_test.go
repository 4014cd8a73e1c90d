package controllers

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nflog"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// floodEnv makes the test binary a flood sender (TestFloodHelper): UDP
// datagrams to ADDR:PORT for DURATION, as fast as it can, then the count on stdout.
const floodEnv = "NFTPOLICY_TEST_FLOOD"

// TestFloodHelper is the flood sender, run in a child process inside the pod
// namespace so that its CPU is not the agent's.
func TestFloodHelper(t *testing.T) {
	spec := os.Getenv(floodEnv)
	if spec == "" {
		t.Skip("helper process for TestDenyLogFlood")
	}
	parts := strings.Split(spec, ",")
	d, _ := time.ParseDuration(parts[1])
	c, err := net.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	to, err := net.ResolveUDPAddr("udp", parts[0])
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 64)
	sent := 0
	for end := time.Now().Add(d); time.Now().Before(end); {
		for range 256 {
			if _, err := c.WriteTo(payload, to); err == nil {
				sent++
			}
		}
	}
	fmt.Printf("sent %d\n", sent)
}

// TestDenyLogFlood floods a pod with denied packets through a node's forward
// hook (real kernel, netns), with the deny log on at 100/second and the
// policy counters on, while allowed TCP connections to the same pod go on.
// The agent's side (the NFLOG reader and the logger, in this process) must stay
// within a bounded CPU and memory, every allowed connection must succeed, the
// log must stay within its rate, every line must be right, and the kernel's
// counters must add up.
func TestDenyLogFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	nfttest.RequireRoot(t)
	node := nfttest.NewNetNS(t, "np-flood-node")
	podA := nfttest.NewNetNS(t, "np-flood-a")
	podB := nfttest.NewNetNS(t, "np-flood-b")
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, l := range []struct {
		pod        *nfttest.NetNS
		dev, sub   string
		nodeDevice string
	}{{podA, "eth0", "1", "va"}, {podB, "eth0", "2", "vb"}} {
		run("ip", "link", "add", l.nodeDevice, "netns", node.Name, "type", "veth", "peer", "name", l.dev, "netns", l.pod.Name)
		run("ip", "-n", node.Name, "addr", "add", "10.77."+l.sub+".1/24", "dev", l.nodeDevice)
		run("ip", "-n", node.Name, "link", "set", l.nodeDevice, "up")
		run("ip", "-n", l.pod.Name, "addr", "add", "10.77."+l.sub+".2/24", "dev", l.dev)
		run("ip", "-n", l.pod.Name, "link", "set", l.dev, "up")
		run("ip", "-n", l.pod.Name, "route", "add", "default", "via", "10.77."+l.sub+".1")
	}
	if err := node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}

	// The cluster: x/a and y/b on node-1; y's pods take TCP 80 from namespace x only.
	pods := []*corev1.Pod{testPod("x", "a", "10.77.1.2", false), testPod("y", "b", "10.77.2.2", false)}
	for _, p := range pods {
		p.Spec.NodeName = "node-1"
		p.Status.Phase = corev1.PodRunning
	}
	nss := []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "y", Labels: map[string]string{"kubernetes.io/metadata.name": "y"}}},
	}
	tcp := corev1.ProtocolTCP
	port80 := intstr.FromInt32(80)
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "web-from-x"},
		Spec: networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "x"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port80}},
			}},
		}}
	const rate, group = 100, 7601
	c := compile.NewCompiler("node-1", compile.Options{Table: "npflood", DenyLog: compile.DenyLog{Group: group, Rate: rate}, PolicyCounters: true})
	for _, ns := range nss {
		c.SetNamespace(ns)
	}
	for _, p := range pods {
		c.SetPod(p)
	}
	c.SetPolicy(pol)
	rs, problems := c.Compile()
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	applier, err := netlink.New(netlink.Options{Table: "npflood", NetNSPath: node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer applier.Close()
	if _, err := applier.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}

	// The agent's side: the reader and the logger, as RunAgent wires them.
	scheme, err := newScheme()
	if err != nil {
		t.Fatal(err)
	}
	cache := fake.NewClientBuilder().WithScheme(scheme).WithIndex(&corev1.Pod{}, podIPIndex, indexPodIPs).
		WithObjects(pods[0], pods[1]).Build()
	at := &attribution{}
	at.store(c.Attribution())
	var lines lineLog
	nsFile, err := os.Open(node.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer nsFile.Close()
	d := &denyLogger{open: func() (DenyLogSource, error) {
		return nflog.Open(nflog.Config{Group: group, NetNS: int(nsFile.Fd()), ReadBuffer: 1 << 20, QueueThreshold: 16})
	}, pods: cache, attrib: at, log: lines.logger(), retry: time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	loggerDone := make(chan error)
	go func() { loggerDone <- d.Start(ctx) }()
	stopLogger := func() {
		if cancel != nil {
			cancel()
			cancel = nil
			if err := <-loggerDone; err != nil {
				t.Errorf("deny logger: %v", err)
			}
		}
	}
	defer stopLogger()

	// y/b serves TCP 80.
	var ln net.Listener
	if err := podB.Do(func() error { ln, err = net.Listen("tcp", "10.77.2.2:80"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	// probe connects from x/a to y/b:80, one every 5 ms, for d; it returns
	// the successes, the failures and the slowest connect. (Paced, so that its
	// own CPU does not hide the agent side's in this process's figures.)
	probe := func(d time.Duration) (ok, failed int, slowest time.Duration) {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
			start := time.Now()
			err := podA.Do(func() error {
				conn, err := net.DialTimeout("tcp", "10.77.2.2:80", 3*time.Second)
				if err == nil {
					conn.Close()
				}
				return err
			})
			if err != nil {
				failed++
				continue
			}
			ok++
			slowest = max(slowest, time.Since(start))
		}
		return ok, failed, slowest
	}

	const floodFor = 4 * time.Second
	var rb0, rb1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &rb0)
	baseStart := time.Now()
	baseOK, baseFailed, baseSlowest := probe(floodFor / 2)
	baseWall := time.Since(baseStart)
	_ = unix.Getrusage(unix.RUSAGE_SELF, &rb1)
	baseCPU := time.Duration(rb1.Utime.Nano() - rb0.Utime.Nano() + rb1.Stime.Nano() - rb0.Stime.Nano())

	var ru0, ru1 unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru0); err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapBefore := ms.HeapInuse
	var heapMax atomic.Uint64
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(100 * time.Millisecond):
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				if m.HeapInuse > heapMax.Load() {
					heapMax.Store(m.HeapInuse)
				}
			}
		}
	})

	// floodWhileProbing floods y/b:9000 from x/a for d while probing; it returns
	// the datagrams sent and the probes' figures.
	floodWhileProbing := func(d time.Duration) (sent, ok, failed int, slowest time.Duration) {
		flood := exec.Command(os.Args[0], "-test.run=^TestFloodHelper$")
		flood.Env = append(os.Environ(), floodEnv+"=10.77.2.2:9000,"+d.String())
		out, err := flood.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := podA.Start(flood); err != nil {
			t.Fatal(err)
		}
		ok, failed, slowest = probe(d)
		floodOut, _ := io.ReadAll(out)
		if err := flood.Wait(); err != nil {
			t.Fatalf("flood sender: %v: %s", err, floodOut)
		}
		if m := regexp.MustCompile(`sent (\d+)`).FindSubmatch(floodOut); m != nil {
			sent, _ = strconv.Atoi(string(m[1]))
		}
		return sent, ok, failed, slowest
	}
	start := time.Now()
	sent, floodOK, floodFailed, floodSlowest := floodWhileProbing(floodFor)
	wall := time.Since(start)
	time.Sleep(500 * time.Millisecond) // the kernel's last batch (100 ms timeout)
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru1); err != nil {
		t.Fatal(err)
	}
	close(stopSampling)
	sampler.Wait()
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()+ru1.Stime.Nano()-ru0.Stime.Nano()) * time.Nanosecond

	// The kernel's view: the policy's deny counter saw every flood datagram
	// that reached the node; its allow counter every allowed connection.
	counters, err := applier.Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	counterOf := func(verdict string) string {
		for name, gc := range c.Attribution().Counters {
			if gc.Verdict == verdict && gc.Ingress && len(gc.Policies) == 1 && gc.Policies[0].String() == "y/web-from-x" {
				return name
			}
		}
		t.Fatalf("no %s counter for y/web-from-x in %v", verdict, c.Attribution().Counters)
		return ""
	}
	deny := counters[counterOf(compile.VerdictDeny)].Packets
	allow := counters[counterOf(compile.VerdictAllow)].Packets
	// ... and as Prometheus scrapes them.
	collector := newPolicyCollector(netlinkCounters(applier), at)
	scraped := fmt.Sprintf(`
# HELP nftpolicy_policy_packets_total Packets the group chains of a policy allowed or dropped for isolation, by direction, read from the kernel's counters (a packet allowed in a group of several policies counts for each: see nft/doc.go); for a ClusterNetworkPolicy (tier admin or baseline, no namespace), the packets its rules accepted, denied or passed.
# TYPE nftpolicy_policy_packets_total counter
nftpolicy_policy_packets_total{direction="ingress",namespace="y",policy="web-from-x",tier="networkpolicy",verdict="allow"} %d
nftpolicy_policy_packets_total{direction="ingress",namespace="y",policy="web-from-x",tier="networkpolicy",verdict="deny"} %d
`, allow, deny)
	if err := testutil.CollectAndCompare(collector, strings.NewReader(scraped)); err != nil {
		t.Errorf("scrape: %v", err)
	}

	got := lines.get()
	want := `"level"=0 "msg"="packet denied" "direction"="ingress" "src"="x/a" "dst"="y/b" "srcIP"="10.77.1.2" "dstIP"="10.77.2.2" "proto"="udp" "srcPort"=* "dstPort"=9000 "policies"=["y/web-from-x"]`
	srcPort := regexp.MustCompile(`"srcPort"=\d+`)
	bad := 0
	for _, l := range got {
		if srcPort.ReplaceAllString(l, `"srcPort"=*`) != want {
			if bad++; bad <= 3 {
				t.Errorf("wrong line: %s", l)
			}
		}
	}
	// The limit lets through `rate` per second plus a burst of `rate`.
	maxLines := int(float64(rate)*(wall+time.Second).Seconds()) + rate
	t.Logf("flood: %d datagrams sent in %v, %d reached the drop (deny counter), %d log lines (max %d), lost %v",
		sent, floodFor, deny, len(got), maxLines, testutil.ToFloat64(denyLogLost))
	t.Logf("this process (reader, logger, and the TCP prober): CPU %.1f%% of one core during the flood (%v over %v), %.1f%% without it; heap in use %d KiB before, at most %d KiB during",
		100*cpu.Seconds()/wall.Seconds(), cpu.Round(time.Millisecond), wall.Round(time.Millisecond),
		100*baseCPU.Seconds()/baseWall.Seconds(), heapBefore>>10, heapMax.Load()>>10)
	t.Logf("allowed TCP connects: %d ok, %d failed, slowest %v without flood (over %v); %d ok, %d failed, slowest %v during it; allow counter %d",
		baseOK, baseFailed, baseSlowest.Round(time.Microsecond), floodFor/2, floodOK, floodFailed, floodSlowest.Round(time.Microsecond), allow)

	if sent < 10*maxLines || deny < uint64(10*maxLines) {
		t.Errorf("the flood was too weak to test anything: %d sent, %d denied", sent, deny)
	}
	if deny > uint64(sent) || deny < uint64(sent)*95/100 {
		t.Errorf("deny counter %d for %d denied datagrams sent", deny, sent)
	}
	if len(got) > maxLines || len(got) < rate {
		t.Errorf("%d log lines, want between %d and %d", len(got), rate, maxLines)
	}
	if baseFailed+floodFailed > 0 || floodOK == 0 {
		t.Errorf("allowed connections failed: %d without the flood, %d during it (%d ok)", baseFailed, floodFailed, floodOK)
	}
	if allow < uint64(baseOK+floodOK) {
		t.Errorf("allow counter %d < %d allowed connections", allow, baseOK+floodOK)
	}
	// Generous bounds for a loaded 2-core machine: the reader handles ~100
	// packets a second, the prober ~200 connects.
	if cpu > wall/4 {
		t.Errorf("agent side used %v CPU over %v", cpu, wall)
	}
	if heapMax.Load() > heapBefore+64<<20 {
		t.Errorf("heap grew from %d to %d bytes", heapBefore, heapMax.Load())
	}

	// A dead reader: nobody has the group. The kernel discards the log
	// messages; allowed connections and drops are as before.
	stopLogger()
	linesBefore := len(lines.get())
	sent2, ok2, failed2, slowest2 := floodWhileProbing(floodFor / 2)
	counters, err = applier.Counters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	deny2 := counters[counterOf(compile.VerdictDeny)].Packets - deny
	t.Logf("without a reader: %d datagrams sent, %d dropped (deny counter); allowed TCP connects %d ok, %d failed, slowest %v",
		sent2, deny2, ok2, failed2, slowest2.Round(time.Microsecond))
	if failed2 > 0 || ok2 == 0 || deny2 < uint64(sent2)*95/100 || deny2 > uint64(sent2) {
		t.Errorf("without a reader: %d allowed ok, %d failed; %d dropped of %d sent", ok2, failed2, deny2, sent2)
	}
	if n := len(lines.get()); n != linesBefore {
		t.Errorf("%d lines logged without a reader", n-linesBefore)
	}
}
