// Package datapath benchmarks what nftpolicy's table costs traffic (B1, B6), next
// to the same policies rendered the kube-router way with iptables and ipset (the
// peer), and what changes cost on netlink (B4). Pods are network namespaces of the
// end-to-end topology (test/e2e/cluster); the tables describe a cluster of 10,000
// pods and 1,000 policies compiled by nft/compile and programmed by nft/netlink.
//
// It needs root and NFTPOLICY_BENCH=1, so `make test` skips it; `make bench` runs
// it. ../README.md has the method and the figures.
package datapath

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

var bg = context.Background()

// Measurement windows, per scenario, variant and round.
const (
	connWorkers = 4
	connWindow  = 400 * time.Millisecond
	latWindow   = 300 * time.Millisecond
	rrWindow    = 300 * time.Millisecond
	bulkWindow  = 300 * time.Millisecond
	flowWindow  = 200 * time.Millisecond
	denyTimeout = 150 * time.Millisecond
	minRounds   = 5
)

var scenarios = []scenario{
	{name: "sel-1", selecting: 1},
	{name: "typical", selecting: 5},
	{name: "sel-10", selecting: 10},
	{name: "sel-100", selecting: 100},
	{name: "adversarial", selecting: 1000},
	{name: "cidr-10", selecting: 1, cidrs: 10},
	{name: "cidr-100", selecting: 1, cidrs: 100},
	{name: "cidr-1000", selecting: 1, cidrs: 1000},
	{name: "cidr-10000", selecting: 1, cidrs: 10000},
}

// full says whether a scenario gets the whole B1 treatment (cross-node, rr, bulk).
func (s scenario) full() bool { return s.name == "typical" || s.name == "adversarial" }

const (
	none = "none"
	ours = "nftpolicy"
	peer = "peer"
)

var variants = []string{none, ours, peer}

// gate skips unless the benchmark was asked for and can run.
func gate(t *testing.T) {
	if os.Getenv("NFTPOLICY_BENCH") != "1" {
		t.Skip("datapath benchmark: set NFTPOLICY_BENCH=1 (make bench)")
	}
	nfttest.RequireRoot(t)
}

// summary collects a test's `name: value` lines and appends them to
// $NFTPOLICY_BENCH_OUT/<file> for make bench's summary.
type summary struct {
	t    *testing.T
	file string
	mu   sync.Mutex
}

func (s *summary) emit(name, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	line := name + ": " + fmt.Sprintf(format, args...)
	s.t.Log(line)
	dir := os.Getenv("NFTPOLICY_BENCH_OUT")
	if dir == "" {
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, s.file), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		s.t.Errorf("summary: %v", err)
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// envInt reads a positive integer from the environment, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// prepared is one scenario ready to load: per node, our ruleset and the peer's.
type prepared struct {
	scenario
	ours   []*nft.Ruleset
	peer   []peerRender
	counts nft.Counts // node-0's table
}

// sampleKey names a series of per-round values: scenario, variant, metric.
type sampleKey struct{ scenario, variant, metric string }

func TestDatapath(t *testing.T) {
	gate(t)
	if missing := peerTools(); len(missing) > 0 {
		t.Fatalf("the iptables+ipset peer needs %s: apt-get install iptables ipset (make bench does)", strings.Join(missing, ", "))
	}
	// At least minRounds; more only while the time budget lasts.
	rounds := envInt("NFTPOLICY_BENCH_ROUNDS", minRounds)
	budget := time.Duration(envInt("NFTPOLICY_BENCH_DATAPATH_SECONDS", 420)) * time.Second
	sum := &summary{t: t, file: "datapath.txt"}
	ctx := t.Context()
	start := time.Now()

	cl, err := cluster.New(ctx, cluster.Config{Prefix: "npbench", Nodes: 2, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Close(); err != nil {
			t.Error(err)
		}
	})
	specs := []cluster.PodSpec{
		{Namespace: benchNS, Name: "server", Node: 0, Labels: map[string]string{"app": "server"}},
		{Namespace: benchNS, Name: "client", Node: 0, Labels: map[string]string{"role": "client"}},
		{Namespace: benchNS, Name: "xclient", Node: 1, Labels: map[string]string{"role": "client"}},
		{Namespace: benchNS, Name: "stranger", Node: 1, Labels: map[string]string{"role": "stranger"}},
	}
	pods, err := cl.AddPods(ctx, specs...)
	if err != nil {
		t.Fatal(err)
	}
	server, client, xclient, stranger := pods[0], pods[1], pods[2], pods[3]
	var real []realPod
	for _, p := range pods {
		real = append(real, realPod{name: p.Name, node: p.Node, ip: p.IPv4, labels: p.Labels})
	}
	nodes := cl.Nodes()
	for _, n := range nodes {
		// Conntrack keeps closed connections in TIME_WAIT for 120 s by default:
		// at tens of thousands of connections a second that fills the table.
		// Both enforcers use conntrack, so both get the same setting.
		if err := n.NetNS.Sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"); err != nil {
			t.Fatal(err)
		}
		// The empty legacy filter table: see emptyFilter.
		if _, err := n.NetNS.RunContext(ctx, emptyFilter, peerIptablesRestore); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.NetNS.Sysctl("net.ipv4.ip_local_port_range", "1024 65000"); err != nil {
		t.Fatal(err)
	}
	serve(t, server, true)
	appliers := make([]*netlink.Applier, len(nodes))
	for i, n := range nodes {
		if appliers[i], err = netlink.New(netlink.Options{NetNSPath: n.NetNSPath()}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = appliers[i].Close() })
	}
	t.Logf("topology: 2 nodes, server %s and client %s on node-0, xclient %s and stranger %s on node-1",
		server.IPv4, client.IPv4, xclient.IPv4, stranger.IPv4)

	// Compile and render every scenario once.
	var prep []*prepared
	for _, s := range scenarios {
		o := build(s, real)
		p := &prepared{scenario: s}
		var names []string
		for _, n := range nodes {
			names = append(names, n.Name)
		}
		t0 := time.Now()
		if p.peer, err = renderPeer(o, names); err != nil {
			t.Fatal(err)
		}
		renderTime := time.Since(t0)
		for _, n := range nodes {
			t0 := time.Now()
			rs, problems := compile.Compile(compile.Snapshot{NodeName: n.Name, Pods: o.pods, Namespaces: o.namespaces, Policies: o.policies}, compile.Options{})
			if len(problems) > 0 {
				t.Fatalf("%s: compile: %v", s.name, problems)
			}
			compileTime := time.Since(t0)
			p.ours = append(p.ours, rs)
			if n.Index == 0 {
				p.counts = rs.Counts()
				t.Logf("%-12s node-0: nftpolicy %d chains, %d rules, %d sets, %d elements (compiled in %v); peer %d ipsets, %d members, %d iptables rules (rendered in %v)",
					s.name, p.counts.Chains, p.counts.Rules, p.counts.Sets, p.counts.Elements, compileTime.Round(time.Millisecond), len(p.peer[0].sets), p.peer[0].members, p.peer[0].rules, renderTime.Round(time.Millisecond))
			}
		}
		prep = append(prep, p)
	}

	// What the nodes hold now, so that switching does only what is needed.
	peers := make([]*peerNode, len(nodes))
	for i, n := range nodes {
		peers[i] = &peerNode{ns: n.NetNS, sets: map[string]bool{}}
	}
	loaded := none
	var loadedScenario *prepared
	load := func(p *prepared, v string) (time.Duration, error) {
		t0 := time.Now()
		if loaded == v && (v == none || loadedScenario == p) {
			return 0, nil
		}
		for i := range nodes {
			if loaded == ours {
				if err := appliers[i].Delete(ctx); err != nil {
					return 0, err
				}
			}
			if loaded == peer && v != peer {
				if err := peers[i].unload(); err != nil {
					return 0, err
				}
			}
			switch v {
			case ours:
				if _, err := appliers[i].Apply(ctx, p.ours[i]); err != nil {
					return 0, err
				}
			case peer:
				if err := peers[i].load(p.peer[i]); err != nil {
					return 0, err
				}
			}
		}
		loaded, loadedScenario = v, p
		return time.Since(t0), nil
	}
	t.Cleanup(func() {
		for i, n := range nodes {
			_ = appliers[i].Delete(bg)
			_ = peers[i].unload()
			_, _ = n.NetNS.Run(peerIpset, "destroy")
		}
	})

	// Each visit of a scenario measures the variants in the order A B C C B A
	// (rotated from visit to visit), so that a neighbour's load rising or falling
	// during the visit weighs on every variant alike; a variant's value for the
	// visit is the mean of its two windows.
	samples := map[sampleKey][]float64{}
	loadTimes := map[string][]float64{}
	done := 0
	for r := range rounds {
		roundStart := time.Now()
		for si := range prep {
			p := prep[(si+r)%len(prep)]
			order := make([]string, 0, 2*len(variants))
			for vi := range variants {
				order = append(order, variants[(vi+r+si)%len(variants)])
			}
			for vi := len(variants) - 1; vi >= 0; vi-- {
				order = append(order, order[vi])
			}
			visit := map[sampleKey][]float64{}
			add := func(v, m string, x float64) {
				k := sampleKey{p.name, v, m}
				visit[k] = append(visit[k], x)
			}
			for _, v := range order {
				lt, err := load(p, v)
				if err != nil {
					t.Fatalf("round %d, %s, loading %s: %v", r, p.name, v, err)
				}
				if lt > 0 && v != none {
					loadTimes[v] = append(loadTimes[v], ms(lt))
				}
				// The variant enforces what it should: clients in, stranger out
				// (checked on the first round; it takes a timeout).
				if !canConnect(client.NetNS, server.IPv4, time.Second) || !canConnect(xclient.NetNS, server.IPv4, time.Second) {
					t.Fatalf("round %d, %s, %s: a client cannot connect to the server", r, p.name, v)
				}
				if r == 0 {
					if got := canConnect(stranger.NetNS, server.IPv4, denyTimeout); got != (v == none) {
						t.Fatalf("round %d, %s, %s: stranger connects = %v", r, p.name, v, got)
					}
				}
				res, err := connLoad(client.NetNS, server.IPv4, connWorkers, connWindow)
				if err != nil || res.errs > 0 {
					t.Fatalf("round %d, %s, %s: conn: %v (%d errors)", r, p.name, v, err, res.errs)
				}
				add(v, "conn_same_wall", res.rate())
				add(v, "conn_same", res.cpuRate())
				lat, latCPU, err := latLoad(client.NetNS, server.IPv4, latWindow)
				if err != nil {
					t.Fatalf("round %d, %s, %s: latency: %v", r, p.name, v, err)
				}
				add(v, "lat_wall_ns", lat)
				add(v, "lat_ns", latCPU)
				flow, _, err := flowLoad(client.NetNS, client.IPv4, server.IPv4, flowWindow)
				if err != nil {
					t.Fatalf("round %d, %s, %s: new flows: %v", r, p.name, v, err)
				}
				add(v, "flow_ns", flow)
				if !p.full() {
					continue
				}
				res, err = connLoad(xclient.NetNS, server.IPv4, connWorkers, connWindow)
				if err != nil || res.errs > 0 {
					t.Fatalf("round %d, %s, %s: cross-node conn: %v (%d errors)", r, p.name, v, err, res.errs)
				}
				add(v, "conn_cross_wall", res.rate())
				add(v, "conn_cross", res.cpuRate())
				rr, rrRes, err := rrLoad(client.NetNS, server.IPv4, rrWindow)
				if err != nil {
					t.Fatalf("round %d, %s, %s: rr: %v", r, p.name, v, err)
				}
				add(v, "rr_wall", rr)
				add(v, "rr", rrRes.cpuRate())
				if res, err = bulkLoad(client.NetNS, server.IPv4, bulkWindow); err != nil {
					t.Fatalf("round %d, %s, %s: bulk: %v", r, p.name, v, err)
				}
				add(v, "bulk_wall", res.rate())
				add(v, "bulk", res.cpuRate())
			}
			for k, x := range visit {
				samples[k] = append(samples[k], (x[0]+x[len(x)-1])/2)
			}
		}
		done++
		took := time.Since(roundStart)
		t.Logf("round %d done in %v", r, took.Round(time.Millisecond))
		if done >= minRounds && done < rounds && time.Since(start)+took > budget {
			t.Logf("stopping after %d rounds: the next would pass the %v budget", done, budget)
			break
		}
	}

	// Per-round ratios, then their min/median/max.
	ratio := func(s, m, a, b string) []float64 {
		x, y := samples[sampleKey{s, a, m}], samples[sampleKey{s, b, m}]
		var out []float64
		for i := range min(len(x), len(y)) {
			out = append(out, x[i]/y[i])
		}
		return out
	}
	t.Logf("rounds: %d; load times ms (median): nftpolicy %.0f, peer %.0f", done, benchproc.Median(loadTimes[ours]), benchproc.Median(loadTimes[peer]))
	for _, p := range prep {
		metrics := []string{"conn_same", "conn_same_wall", "lat_ns", "lat_wall_ns", "flow_ns"}
		if p.full() {
			metrics = append(metrics, "conn_cross", "conn_cross_wall", "rr", "rr_wall", "bulk", "bulk_wall")
		}
		for _, m := range metrics {
			t.Logf("%-12s %-10s none %s | nftpolicy %s | peer %s | nftpolicy/none %s | peer/none %s | nftpolicy/peer %s",
				p.name, m, mmm(samples[sampleKey{p.name, none, m}]), mmm(samples[sampleKey{p.name, ours, m}]), mmm(samples[sampleKey{p.name, peer, m}]),
				mmm(ratio(p.name, m, ours, none)), mmm(ratio(p.name, m, peer, none)), mmm(ratio(p.name, m, ours, peer)))
		}
	}
	for _, s := range []string{"typical", "adversarial"} {
		for _, m := range []string{"conn_same_wall", "conn_cross", "conn_cross_wall", "rr", "rr_wall", "bulk", "bulk_wall"} {
			sum.emit(fmt.Sprintf("b1_%s_ratio_%s", m, s), "%.3f", benchproc.Median(ratio(s, m, ours, none)))
		}
		sum.emit("b1_peer_conn_ratio_"+s, "%.3f", benchproc.Median(ratio(s, "conn_same", peer, none)))
	}
	sum.emit("b1_vs_peer_adversarial_wall", "%.2f", benchproc.Median(ratio("adversarial", "conn_same_wall", ours, peer)))
	sum.emit("b1_vs_peer_adversarial_cross", "%.2f", benchproc.Median(ratio("adversarial", "conn_cross", ours, peer)))
	sum.emit("b1_rounds", "%d", done)
	sum.emit("b1_conn_ratio_typical", "%.3f", benchproc.Median(ratio("typical", "conn_same", ours, none)))
	sum.emit("b1_conn_ratio_adversarial", "%.3f", benchproc.Median(ratio("adversarial", "conn_same", ours, none)))
	sum.emit("b1_vs_peer_adversarial", "%.2f", benchproc.Median(ratio("adversarial", "conn_same", ours, peer)))

	// B6: added latency per connection (variant minus none, same round) against
	// the number of policies selecting the server, and of CIDRs.
	addedBy := func(s, v, m string) float64 {
		x, y := samples[sampleKey{s, v, m}], samples[sampleKey{s, none, m}]
		var d []float64
		for i := range min(len(x), len(y)) {
			d = append(d, x[i]-y[i])
		}
		return benchproc.Median(d)
	}
	added := func(s, v string) float64 { return addedBy(s, v, "flow_ns") }
	addedConn := func(s, v string) float64 { return addedBy(s, v, "lat_ns") }
	addedWall := func(s, v string) float64 { return addedBy(s, v, "lat_wall_ns") }
	var polX, polOurs, polPeer, polConn, polWall, cidrX, cidrOurs, cidrPeer []float64
	for _, p := range prep {
		if p.cidrs > 0 {
			cidrX = append(cidrX, float64(p.cidrs))
			cidrOurs, cidrPeer = append(cidrOurs, added(p.name, ours)), append(cidrPeer, added(p.name, peer))
		} else {
			polX = append(polX, float64(p.selecting))
			polOurs, polPeer = append(polOurs, added(p.name, ours)), append(polPeer, added(p.name, peer))
			polConn, polWall = append(polConn, addedConn(p.name, ours)), append(polWall, addedWall(p.name, ours))
		}
		t.Logf("b6 %-12s added CPU per new flow: nftpolicy %+.0f ns, peer %+.0f ns; per TCP connection: CPU nftpolicy %+.0f ns, peer %+.0f ns, median wall-clock nftpolicy %+.0f ns, peer %+.0f ns",
			p.name, added(p.name, ours), added(p.name, peer), addedConn(p.name, ours), addedConn(p.name, peer), addedWall(p.name, ours), addedWall(p.name, peer))
	}
	sum.emit("b6_peer_ns_per_policy", "%.1f", slope(polX, polPeer))
	sum.emit("b6_conn_cpu_ns_per_policy", "%.1f", slope(polX, polConn))
	sum.emit("b6_conn_wall_ns_per_policy", "%.1f", slope(polX, polWall))
	sum.emit("b6_ns_per_cidr", "%.3f", slope(cidrX, cidrOurs))
	sum.emit("b6_peer_ns_per_cidr", "%.3f", slope(cidrX, cidrPeer))
	sum.emit("b6_ns_per_policy", "%.2f", slope(polX, polOurs))

	// The plot: connections per CPU-second against policies selecting the server.
	var series []plotSeries
	for _, v := range variants {
		ps := plotSeries{name: map[string]string{none: "no policy", ours: "nftpolicy", peer: "iptables+ipset (kube-router style)"}[v]}
		for _, p := range prep {
			if p.cidrs == 0 {
				ps.x = append(ps.x, float64(p.selecting))
				ps.y = append(ps.y, benchproc.Median(samples[sampleKey{p.name, v, "conn_same"}]))
			}
		}
		series = append(series, ps)
	}
	if out := os.Getenv("NFTPOLICY_BENCH_PLOT"); out != "" {
		title := fmt.Sprintf("New TCP connections per CPU-second, pod to pod on one node, 10k pods / 1k policies (median of %d rounds)", done)
		if err := writePlot(out, title, "policies selecting the server pod (log scale)", "connections per CPU-second", series); err != nil {
			t.Errorf("plot: %v", err)
		} else {
			t.Logf("plot written to %s", out)
		}
	}
}

// TestNetlinkCost is B4: netlink bytes and messages for one pod add and one
// policy add to the typical scenario's table, against a full rewrite of it.
func TestNetlinkCost(t *testing.T) {
	gate(t)
	sum := &summary{t: t, file: "netlink.txt"}
	ns := nfttest.NewNetNS(t, "npb4")
	a, err := netlink.New(netlink.Options{NetNSPath: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	real := []realPod{
		{name: "server", node: 0, ip: netip.MustParseAddr("10.244.0.2"), labels: map[string]string{"app": "server"}},
		{name: "client", node: 0, ip: netip.MustParseAddr("10.244.0.3"), labels: map[string]string{"role": "client"}},
	}
	o := build(scenario{name: "typical", selecting: 5}, real)
	var prev *nft.Ruleset
	apply := func(what string) nft.Stats {
		t.Helper()
		rs, problems := compile.Compile(compile.Snapshot{NodeName: "node-0", Pods: o.pods, Namespaces: o.namespaces, Policies: o.policies}, compile.Options{})
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		st, err := a.Apply(bg, rs)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		t.Logf("%-22s full=%v messages=%d elements=%d chains_rewritten=%d bytes=%d", what, st.Full, st.Operations, st.Elements, st.ChainsRewritten, st.Bytes)
		if prev != nil {
			t.Logf("%-22s %s", "", strings.ReplaceAll(strings.TrimSpace(nft.Plan(prev, rs).String()), "\n", "; "))
		}
		prev = rs
		return st
	}
	first := apply("initial full apply")
	if !first.Full {
		t.Fatal("the first apply was not a full one")
	}
	var podBytes, podOps, newBytes, polBytes, polOps []float64
	for i := range 5 {
		// A node-0 pod in ns-000 like pod-0 already there (same labels, so the
		// same policies and chain): a verdict map element, and peer set elements
		// (its grp makes it a peer of one of the server's policies).
		o.pods = append(o.pods, pod("ns-000", fmt.Sprintf("more-%d", i), "node-0",
			netip.MustParseAddr(fmt.Sprintf("10.104.1.%d", i+1)),
			map[string]string{"app": "app-0", "tier": "web", "grp": fmt.Sprintf("g-%d", i%5)}))
		st := apply(fmt.Sprintf("pod add %d", i))
		podBytes, podOps = append(podBytes, float64(st.Bytes)), append(podOps, float64(st.Operations))
		// A node-0 pod that is the first one here selected by its namespace's
		// app-N policies: a new chain and its sets.
		o.pods = append(o.pods, pod(fmt.Sprintf("ns-%03d", i+1), fmt.Sprintf("new-%d", i), "node-0",
			netip.MustParseAddr(fmt.Sprintf("10.104.0.%d", i+1)),
			map[string]string{"app": fmt.Sprintf("app-%d", i+1), "tier": "api", "grp": fmt.Sprintf("g-%d", i%5)}))
		st = apply(fmt.Sprintf("pod add, new chain %d", i))
		newBytes = append(newBytes, float64(st.Bytes))
		// A policy selecting that pod alone.
		np := o.policies[len(o.policies)-1].DeepCopy()
		np.Namespace, np.Name = fmt.Sprintf("ns-%03d", i+1), fmt.Sprintf("extra-%d", i)
		np.Spec.PodSelector.MatchLabels = map[string]string{"app": fmt.Sprintf("app-%d", i+1), "tier": "api"}
		o.policies = append(o.policies, np)
		st = apply(fmt.Sprintf("policy add %d", i))
		polBytes, polOps = append(polBytes, float64(st.Bytes)), append(polOps, float64(st.Operations))
	}
	rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-0", Pods: o.pods, Namespaces: o.namespaces, Policies: o.policies}, compile.Options{})
	// The running agent's periodic full sync: without drift nothing is sent
	// (rules compared by bytecode; until 2026-12-04 every chain was rewritten).
	resync, err := a.FullSync(bg, rs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%-22s full=%v messages=%d elements=%d bytes=%d", "periodic full sync", resync.Full, resync.Operations, resync.Elements, resync.Bytes)
	// The whole table written: what a node without a table gets (a new node,
	// or after nftpolicy cleanup), and what a replacement sends.
	if err := a.Delete(bg); err != nil {
		t.Fatal(err)
	}
	b, err := netlink.New(netlink.Options{NetNSPath: ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	full, err := b.FullSync(bg, rs)
	if err != nil || !full.Full {
		t.Fatalf("writing the whole table: %+v %v", full, err)
	}
	t.Logf("%-22s full=%v messages=%d elements=%d bytes=%d", "full rewrite", full.Full, full.Operations, full.Elements, full.Bytes)
	sum.emit("b4_resync_bytes", "%d", resync.Bytes)
	sum.emit("b4_resync_messages", "%d", resync.Operations)
	sum.emit("b4_pod_add_messages", "%.0f", benchproc.Median(podOps))
	sum.emit("b4_pod_add_new_chain_bytes", "%.0f", benchproc.Median(newBytes))
	sum.emit("b4_policy_add_bytes", "%.0f", benchproc.Median(polBytes))
	sum.emit("b4_policy_add_messages", "%.0f", benchproc.Median(polOps))
	sum.emit("b4_full_rewrite_messages", "%d", full.Operations)
	sum.emit("b4_pod_add_bytes", "%.0f", benchproc.Median(podBytes))
	sum.emit("b4_full_rewrite_bytes", "%d", full.Bytes)
}

// mmm formats min/median/max.
func mmm(v []float64) string {
	if len(v) == 0 {
		return "-"
	}
	return fmt.Sprintf("%s/%s/%s", short(slices.Min(v)), short(benchproc.Median(v)), short(slices.Max(v)))
}

func short(x float64) string {
	switch a := math.Abs(x); {
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", x/1e6)
	case a >= 1e4:
		return fmt.Sprintf("%.1fk", x/1e3)
	case a >= 10:
		return fmt.Sprintf("%.0f", x)
	default:
		return fmt.Sprintf("%.3f", x)
	}
}

// slope is the least-squares slope of y against x.
func slope(x, y []float64) float64 {
	n := float64(len(x))
	if len(x) < 2 || len(x) != len(y) {
		return math.NaN()
	}
	var sx, sy, sxx, sxy float64
	for i := range x {
		sx, sy, sxx, sxy = sx+x[i], sy+y[i], sxx+x[i]*x[i], sxy+x[i]*y[i]
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
