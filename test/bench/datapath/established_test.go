package datapath

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// Variants of TestEstablished.
const (
	estNone    = "none"    // no table at all (no conntrack either)
	estCt      = "ct"      // a table that only accepts established packets: conntrack's own cost
	estKeep    = "keep"    // the typical scenario's table, --established=keep
	estRecheck = "recheck" // the same, --established=recheck
)

// established10k is the number of open connections a policy change rechecks.
const established10k = 10_000

// TestEstablished is B7 (issue 14, strict mode): what established connections pay
// for the table while nothing changes, in one run, as ratios to no table: request/
// response and bulk on one connection (b1_rr_ratio, b1_bulk_ratio: recheck ÷ none),
// next to keep and to a table that only turns conntrack on (what kube-proxy's
// presence costs anyway); and the one-time cost of a policy change across 10,000
// open connections: the commit, then one round trip on each connection (each
// walks the policy chains once and is stamped again), against the same round
// trips without a change.
func TestEstablished(t *testing.T) {
	gate(t)
	rounds := envInt("NFTPOLICY_BENCH_ROUNDS", minRounds)
	rrRounds := rounds
	if os.Getenv("NFTPOLICY_BENCH_EST_CHANGE_ONLY") != "" {
		rrRounds = 0
	}
	sum := &summary{t: t, file: "established.txt"}
	ctx := t.Context()

	// The server of the 10,000 connections, selected by the same policies.
	node, pods := oneNode(t, "npest", cluster.PodSpec{Namespace: benchNS, Name: "many", Node: 0, Labels: map[string]string{"app": "server"}})
	server, client, manyPod := pods[0], pods[1], pods[2]
	serve(t, server, false)
	applier, err := netlink.New(netlink.Options{NetNSPath: node.NetNSPath()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = applier.Delete(bg); _ = applier.Close() })

	var real []realPod
	for _, p := range pods {
		real = append(real, realPod{name: p.Name, node: p.Node, ip: p.IPv4, labels: p.Labels})
	}
	o := build(scenario{name: "typical", selecting: 5}, real)
	snap := compile.Snapshot{NodeName: node.Name, Pods: o.pods, Namespaces: o.namespaces, Policies: o.policies}
	tables := map[string]*nft.Ruleset{
		estCt: {Table: nft.DefaultTable, Chains: []nft.Chain{{Name: nft.ChainForward,
			Hook: &nft.Hook{Type: "filter", Hook: "forward", Priority: 0, Policy: nft.Accept},
			Rules: []nft.Rule{{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))},
				Verdict: nft.Verdict{Kind: nft.Accept}}}}}},
	}
	for v, mode := range map[string]compile.Established{estKeep: compile.EstablishedKeep, estRecheck: compile.EstablishedRecheck} {
		rs, problems := compile.Compile(snap, compile.Options{Established: mode})
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		tables[v] = rs
	}
	// inline: the keep table with the dispatch rules in forward itself (no jump to
	// pod-egress and pod-ingress): an experiment of issue 16.
	inline := tables[estKeep].Clone()
	fwd := inline.Chain(nft.ChainForward)
	fwd.Rules = append(fwd.Rules[:2:2], append(slices.Clone(inline.Chain(nft.ChainEgress).Rules), inline.Chain(nft.ChainIngress).Rules...)...)
	inline.Chains = slices.DeleteFunc(inline.Chains, func(c nft.Chain) bool { return c.Name == nft.ChainEgress || c.Name == nft.ChainIngress })
	tables["inline"] = inline
	load := func(v string) {
		t.Helper()
		if err := applier.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		if v == estNone {
			return
		}
		if _, err := applier.Apply(ctx, tables[v]); err != nil {
			t.Fatalf("loading %s: %v", v, err)
		}
		if !canConnect(client.NetNS, server.IPv4, time.Second) {
			t.Fatalf("%s: the client cannot connect", v)
		}
	}

	// NFTPOLICY_BENCH_PROFILE=variant:seconds only sends new flows through one
	// variant for that long, for a profiler watching the machine (perf record -a).
	if v, secs, ok := strings.Cut(os.Getenv("NFTPOLICY_BENCH_PROFILE"), ":"); ok {
		d, _ := strconv.Atoi(secs)
		load(v)
		ns, n, err := flowLoad(client.NetNS, client.IPv4, server.IPv4, time.Duration(d)*time.Second)
		t.Logf("profile %s: %d new flows, %.0f ns CPU each (%v)", v, n, ns, err)
		return
	}

	variants := []string{estNone, estCt, estKeep, estRecheck}
	samples := map[string]map[string][]float64{} // metric -> variant -> per round
	add := func(m, v string, x float64) {
		if samples[m] == nil {
			samples[m] = map[string][]float64{}
		}
		samples[m][v] = append(samples[m][v], x)
	}
	for r := range rrRounds {
		// A B C D D C B A, rotated each round; a variant's value is the mean of its two windows.
		order := slices.Clone(variants)
		for range r {
			order = append(order[1:], order[0])
		}
		for i := len(variants) - 1; i >= 0; i-- {
			order = append(order, order[i])
		}
		visit := map[[2]string][]float64{}
		for _, v := range order {
			load(v)
			rr, rrRes, err := rrLoad(client.NetNS, server.IPv4, rrWindow)
			if err != nil {
				t.Fatalf("round %d, %s: rr: %v", r, v, err)
			}
			bulk, err := bulkLoad(client.NetNS, server.IPv4, bulkWindow)
			if err != nil {
				t.Fatalf("round %d, %s: bulk: %v", r, v, err)
			}
			flow, _, err := flowLoad(client.NetNS, client.IPv4, server.IPv4, flowWindow)
			if err != nil {
				t.Fatalf("round %d, %s: new flows: %v", r, v, err)
			}
			for m, x := range map[string]float64{"rr": rrRes.cpuRate(), "rr_wall": rr, "bulk": bulk.cpuRate(), "bulk_wall": bulk.rate(), "flow_ns": flow} {
				visit[[2]string{m, v}] = append(visit[[2]string{m, v}], x)
			}
		}
		for k, x := range visit {
			add(k[0], k[1], (x[0]+x[len(x)-1])/2)
		}
	}
	ratio := func(m, a, b string) []float64 {
		x, y := samples[m][a], samples[m][b]
		var out []float64
		for i := range min(len(x), len(y)) {
			out = append(out, x[i]/y[i])
		}
		return out
	}
	for _, m := range []string{"rr", "rr_wall", "bulk", "bulk_wall"} {
		t.Logf("b7 %-9s none %s | ct %s | keep %s | recheck %s | recheck/none %s | keep/none %s | ct/none %s | recheck/keep %s | recheck/ct %s",
			m, mmm(samples[m][estNone]), mmm(samples[m][estCt]), mmm(samples[m][estKeep]), mmm(samples[m][estRecheck]),
			mmm(ratio(m, estRecheck, estNone)), mmm(ratio(m, estKeep, estNone)), mmm(ratio(m, estCt, estNone)),
			mmm(ratio(m, estRecheck, estKeep)), mmm(ratio(m, estRecheck, estCt)))
	}
	// Where a new flow's CPU goes (issue 16): conntrack (ct - none), the policy
	// chains (keep - ct), strict mode (recheck - keep).
	added := func(a, b string) float64 {
		x, y := samples["flow_ns"][a], samples["flow_ns"][b]
		var d []float64
		for i := range min(len(x), len(y)) {
			d = append(d, x[i]-y[i])
		}
		return benchproc.Median(d)
	}
	t.Logf("b7 flow_ns  none %s | ct %s | keep %s | recheck %s", mmm(samples["flow_ns"][estNone]), mmm(samples["flow_ns"][estCt]),
		mmm(samples["flow_ns"][estKeep]), mmm(samples["flow_ns"][estRecheck]))
	sum.emit("b7_flow_ns_conntrack", "%.0f", added(estCt, estNone))
	sum.emit("b7_flow_ns_chains", "%.0f", added(estKeep, estCt))
	sum.emit("b7_flow_ns_recheck", "%.0f", added(estRecheck, estKeep))
	sum.emit("b1_rr_ratio", "%.3f", benchproc.Median(ratio("rr", estRecheck, estNone)))
	sum.emit("b1_bulk_ratio", "%.3f", benchproc.Median(ratio("bulk", estRecheck, estNone)))
	sum.emit("b7_rr_ratio_keep", "%.3f", benchproc.Median(ratio("rr", estKeep, estNone)))
	sum.emit("b7_bulk_ratio_keep", "%.3f", benchproc.Median(ratio("bulk", estKeep, estNone)))
	sum.emit("b7_rr_ratio_ct_only", "%.3f", benchproc.Median(ratio("rr", estCt, estNone)))
	sum.emit("b7_bulk_ratio_ct_only", "%.3f", benchproc.Median(ratio("bulk", estCt, estNone)))
	sum.emit("b7_rr_recheck_vs_keep", "%.3f", benchproc.Median(ratio("rr", estRecheck, estKeep)))
	sum.emit("b7_bulk_recheck_vs_keep", "%.3f", benchproc.Median(ratio("bulk", estRecheck, estKeep)))

	// The one-time cost of a policy change across 10,000 open connections.
	load(estRecheck)
	stopMany, err := startManyServer(manyPod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopMany)
	fds, err := openConns(client, manyPod, established10k)
	t.Cleanup(func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	mask := compile.DefaultCtMarkMask
	epoch := uint32(1)
	var quiet, changed, commit, commitCPU []float64
	var quietCPU, changedCPU []float64
	for r := range rounds {
		// pass, change, pass, pass: the pass after the change walks the policy
		// chains once per connection; the two others do not.
		w0, c0, err := roundTrips(client, fds)
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		epoch = compile.NextEpoch(epoch, mask)
		rs := tables[estRecheck]
		compile.StampEpoch(rs, mask, epoch)
		cpu0, t0 := cpuTime(), time.Now()
		if _, err := applier.Apply(ctx, rs); err != nil {
			t.Fatal(err)
		}
		commit = append(commit, ms(time.Since(t0)))
		commitCPU = append(commitCPU, ms(cpuTime()-cpu0))
		w1, c1, err := roundTrips(client, fds)
		if err != nil {
			t.Fatalf("round %d after the change: %v", r, err)
		}
		w2, c2, err := roundTrips(client, fds)
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		quiet = append(quiet, ms(w0+w2)/2)
		quietCPU = append(quietCPU, ms(c0+c2)/2)
		changed = append(changed, ms(w1))
		changedCPU = append(changedCPU, ms(c1))
	}
	extra := func(a, b []float64) float64 {
		var d []float64
		for i := range a {
			d = append(d, a[i]-b[i])
		}
		return benchproc.Median(d)
	}
	// What the sweep before an epoch comes round again costs (once at start-up
	// and once per cycle of epochs) with 10,000 connections open: all of them of
	// the current epoch (nothing to clear: the dump alone), then all of them of an
	// older one (each cleared). The new-flow windows above left up to 4,096
	// unreplied UDP entries of other variants, alive for conntrack's 30 s: a first
	// sweep clears them, so that the measured one has nothing to clear.
	if _, err := applier.ClearCtMark(mask, compile.EpochMark(epoch, mask)); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if n, err := applier.ClearCtMark(mask, compile.EpochMark(epoch, mask)); err != nil || n != 0 {
		t.Fatalf("sweep keeping the current epoch: %d, %v", n, err)
	}
	clearNone := time.Since(t0)
	t0 = time.Now()
	n, err := applier.ClearCtMark(mask, 0)
	if err != nil || n < established10k {
		t.Fatalf("sweep clearing every epoch: %d, %v", n, err)
	}
	clearAll := time.Since(t0)
	t.Logf("b7 sweeping epochs with %d connections open: none to clear %v, %d cleared %v", established10k, clearNone, n, clearAll)
	sum.emit("b7_sweep_10k_ms", "%.2f", ms(clearNone))
	sum.emit("b7_sweep_clear_10k_ms", "%.1f", ms(clearAll))
	t.Logf("b7 10k connections, one round trip each: quiet %s ms (CPU %s), after a policy change %s ms (CPU %s); commit %s ms (CPU %s)",
		mmm(quiet), mmm(quietCPU), mmm(changed), mmm(changedCPU), mmm(commit), mmm(commitCPU))
	sum.emit("b7_change_10k_commit_ms", "%.2f", benchproc.Median(commit))
	sum.emit("b7_change_10k_extra_ms", "%.2f", extra(changed, quiet))
	sum.emit("b7_change_10k_extra_cpu_ms", "%.2f", extra(changedCPU, quietCPU))
	sum.emit("b7_change_ns_per_conn", "%.0f", extra(changedCPU, quietCPU)*1e6/established10k)
}

// openConns opens n connections from client to the server's echo port.
func openConns(client, server *cluster.Pod, n int) ([]int, error) {
	var fds []int
	err := client.NetNS.Do(func() error {
		for range n {
			fd, err := dialIn(server.IPv4, manyPort, ioTimeout)
			if err != nil {
				return fmt.Errorf("after %d connections: %w", len(fds), err)
			}
			fds = append(fds, fd)
		}
		return nil
	})
	return fds, err
}

// roundTrips makes one 1-byte round trip on each connection, one after another,
// and returns the wall-clock and CPU time (see cpuTime) it took.
func roundTrips(client *cluster.Pod, fds []int) (time.Duration, time.Duration, error) {
	var wall, cpu time.Duration
	err := client.NetNS.Do(func() error {
		b := []byte{'x'}
		cpu0, t0 := cpuTime(), time.Now()
		for _, fd := range fds {
			if _, err := write(fd, b); err != nil {
				return err
			}
			if n, err := read(fd, b); err != nil || n != 1 {
				return errors.Join(errors.New("no reply"), err)
			}
		}
		wall, cpu = time.Since(t0), cpuTime()-cpu0
		return nil
	})
	return wall, cpu, err
}

// manyPort is the echo port of the 10,000 connections, on their own server pod: a
// Go server, one goroutine per connection (the blocking servers have a thread per
// connection). The policies allow it like rrPort.
const manyPort = rrPort

// manyEnv makes the test binary the echo server of the 10,000 connections, in a
// process of its own: both ends in this one would need 20,000 descriptors, more
// than a container may allow.
const manyEnv = "NFTPOLICY_BENCH_MANY_ECHO"

func init() {
	if addr := os.Getenv(manyEnv); addr != "" {
		if err := serveMany(addr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// serveMany echoes on addr, one goroutine per connection, until killed.
func serveMany(addr string) error {
	l, err := net.Listen("tcp4", addr)
	if err != nil {
		return err
	}
	fmt.Println("listening")
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 1)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
	}
}

// startManyServer starts serveMany in the server pod and waits until it listens.
func startManyServer(server *cluster.Pod) (func(), error) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), manyEnv+"="+netip.AddrPortFrom(server.IPv4, manyPort).String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := server.NetNS.Start(cmd); err != nil {
		return nil, err
	}
	stop := func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }
	line := make([]byte, len("listening\n"))
	if _, err := io.ReadFull(out, line); err != nil {
		stop()
		return nil, fmt.Errorf("echo server: %w", err)
	}
	return stop, nil
}
