package datapath

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/nft/trace"
	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
)

// TestShapes is B10 (issue 16 §4): where a new flow's CPU goes, and what other
// shapes of the same table would cost, side by side in one run. One node, the
// server and client of B1, the typical and adversarial scenarios and tiered
// (typical with ClusterNetworkPolicies: withTiers); per round and
// scenario the variants in the order A B ... B A (rotated), each measured for new
// TCP connections, new flows (flow_ns), request/response and bulk, all per
// CPU-second (see cpuTime). The variants:
//
//   - none: no table, so no conntrack in the node's namespace either;
//   - ct: a table whose only rule accepts established packets: conntrack turned
//     on, which any node running kube-proxy or a NATing CNI pays already;
//   - the shapes of shapeVariants, each the scenario's compiled table reshaped.
//
// NFTPOLICY_BENCH_SHAPES=a,b,c picks the variants (default none, ct, current and
// interval, for tiered cnpmixed instead of interval; the others are experiments
// that were not adopted, or older shapes: ../README.md);
// NFTPOLICY_BENCH_SHAPES_SCENARIOS=a,b picks the scenarios (default all three);
// NFTPOLICY_BENCH_SHAPES_PROFILE=scenario:variant:workload:seconds only runs one
// workload (conn or flow) through one variant for that long, for perf record -a.
func TestShapes(t *testing.T) {
	gate(t)
	rounds := envInt("NFTPOLICY_BENCH_ROUNDS", minRounds)
	sum := &summary{t: t, file: "shapes.txt"}
	ctx := t.Context()

	node, pods := oneNode(t, "npshp")
	server, client := pods[0], pods[1]
	if err := client.NetNS.Sysctl("net.ipv4.ip_local_port_range", "1024 65000"); err != nil {
		t.Fatal(err)
	}
	serve(t, server, true)
	applier, err := netlink.New(netlink.Options{NetNSPath: node.NetNSPath()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = applier.Delete(bg); _ = applier.Close() })
	var real []realPod
	for _, p := range pods {
		real = append(real, realPod{name: p.Name, node: p.Node, ip: p.IPv4, labels: p.Labels})
	}

	// By default the table against an older shape (and the two baselines): the
	// NetworkPolicy groups' ports sets before issue 16 for typical and
	// adversarial, the tier chains before the family split for tiered. The
	// experiments only when asked for.
	type scen struct {
		name   string
		names  []string // variants
		tables map[string]*nft.Ruleset
	}
	var scens []scen
	only := map[string]bool{}
	if o := os.Getenv("NFTPOLICY_BENCH_SHAPES_SCENARIOS"); o != "" {
		for _, n := range strings.Split(o, ",") {
			only[n] = true
		}
	}
	for _, s := range []scenario{{name: "typical", selecting: 5}, {name: "adversarial", selecting: 1000}, {name: "tiered", selecting: 5}} {
		if len(only) > 0 && !only[s.name] {
			continue
		}
		names := []string{estNone, estCt, "current", "interval"}
		o := build(s, real)
		if s.name == "tiered" {
			o = withTiers(o)
			names = []string{estNone, estCt, "current", "cnpmixed"}
		}
		if v := os.Getenv("NFTPOLICY_BENCH_SHAPES"); v != "" {
			names = strings.Split(v, ",")
		}
		rs, problems := compile.Compile(compile.Snapshot{NodeName: node.Name, Pods: o.pods, Namespaces: o.namespaces, Policies: o.policies,
			ClusterNetworkPolicies: o.cnps}, compile.Options{})
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		tables := map[string]*nft.Ruleset{estCt: ctOnly()}
		for _, v := range shapeVariants {
			if !slices.Contains(names, v.name) {
				continue // inline, say, expects the table without tiers
			}
			tables[v.name] = v.shape(rs.Clone())
			if err := tables[v.name].Validate(); err != nil {
				t.Fatalf("%s %s: %v", s.name, v.name, err)
			}
		}
		if s.name == "tiered" {
			t.Logf("tiered: %d rules, %d sets; ClusterNetworkPolicy sets: %s", rs.Counts().Rules, len(rs.Sets), cnpSetShapes(rs))
			t.Logf("tiered before the ports split (cnpinterval): %s", cnpSetShapes(nfttest.ClusterPortsAsIntervals(rs.Clone())))
			t.Logf("tiered before the family split (cnpmixed): %d rules", nfttest.ClusterTiersMixedFamily(rs.Clone()).Counts().Rules)
		}
		if s.name == "tiered" {
			// What one of the benchmark's new flows walks through each table.
			pkt := trace.Packet{Saddr: client.IPv4, Daddr: server.IPv4, L4Proto: nft.ProtoUDP, DPort: flowPort, CtState: nft.CtNew}
			for _, v := range names {
				if tables[v] == nil || v == estCt {
					continue
				}
				tr, err := trace.New(tables[v]).Forward(pkt)
				if err != nil || tr.Verdict != nft.Accept {
					t.Fatalf("tiered %s: the benchmark's flow: %v %v", v, tr.Verdict, err)
				}
				t.Logf("tiered %s: a new flow walks %d rules", v, len(tr.Walked))
			}
		}
		scens = append(scens, scen{s.name, names, tables})
	}

	loaded := ""
	load := func(s scen, v string) {
		t.Helper()
		if loaded == s.name+"/"+v {
			return
		}
		if err := applier.Delete(ctx); err != nil {
			t.Fatal(err)
		}
		loaded = s.name + "/" + v
		if v == estNone {
			return
		}
		rs := s.tables[v]
		if rs == nil {
			t.Fatalf("no variant %q", v)
		}
		if _, err := applier.Apply(ctx, rs); err != nil {
			t.Fatalf("loading %s: %v", loaded, err)
		}
		if !canConnect(client.NetNS, server.IPv4, time.Second) {
			t.Fatalf("%s: the client cannot connect", loaded)
		}
	}

	if p := strings.Split(os.Getenv("NFTPOLICY_BENCH_SHAPES_PROFILE"), ":"); len(p) == 4 {
		secs, _ := strconv.Atoi(p[3])
		d := time.Duration(secs) * time.Second
		for _, s := range scens {
			if s.name != p[0] {
				continue
			}
			load(s, p[1])
			t.Logf("profile: start")
			switch p[2] {
			case "conn":
				res, err := connLoad(client.NetNS, server.IPv4, connWorkers, d)
				t.Logf("profile %s %s conn: %d connections, %.0f ns CPU each (%v)", s.name, p[1], res.ops, float64(res.cpu.Nanoseconds())/float64(res.ops), err)
			default:
				ns, n, err := flowLoad(client.NetNS, client.IPv4, server.IPv4, d)
				t.Logf("profile %s %s flow: %d new flows, %.0f ns CPU each (%v)", s.name, p[1], n, ns, err)
			}
		}
		return
	}

	// metric -> scenario/variant -> per round
	samples := map[string]map[string][]float64{}
	for r := range rounds {
		for si := range scens {
			s := scens[(si+r)%len(scens)]
			names := s.names
			order := slices.Clone(names)
			for range r + si {
				order = append(order[1:], order[0])
			}
			for i := len(names) - 1; i >= 0; i-- {
				order = append(order, order[i])
			}
			visit := map[[2]string][]float64{}
			for _, v := range order {
				load(s, v)
				conn, err := connLoad(client.NetNS, server.IPv4, connWorkers, connWindow)
				if err != nil || conn.errs > 0 {
					t.Fatalf("round %d, %s: conn: %v (%d errors)", r, loaded, err, conn.errs)
				}
				flow, _, err := flowLoad(client.NetNS, client.IPv4, server.IPv4, flowWindow)
				if err != nil {
					t.Fatalf("round %d, %s: new flows: %v", r, loaded, err)
				}
				_, rr, err := rrLoad(client.NetNS, server.IPv4, rrWindow)
				if err != nil {
					t.Fatalf("round %d, %s: rr: %v", r, loaded, err)
				}
				bulk, err := bulkLoad(client.NetNS, server.IPv4, bulkWindow)
				if err != nil {
					t.Fatalf("round %d, %s: bulk: %v", r, loaded, err)
				}
				for m, x := range map[string]float64{"conn": conn.cpuRate(), "conn_ns": float64(conn.cpu.Nanoseconds()) / float64(max(conn.ops, 1)),
					"flow_ns": flow, "rr": rr.cpuRate(), "bulk": bulk.cpuRate()} {
					visit[[2]string{m, v}] = append(visit[[2]string{m, v}], x)
				}
			}
			for k, x := range visit {
				if samples[k[0]] == nil {
					samples[k[0]] = map[string][]float64{}
				}
				key := s.name + "/" + k[1]
				samples[k[0]][key] = append(samples[k[0]][key], (x[0]+x[len(x)-1])/2)
			}
		}
		t.Logf("round %d done", r)
	}
	// Per-round ratios (rates) and differences (ns), then min/median/max.
	per := func(m, a, b string, f func(x, y float64) float64) []float64 {
		x, y := samples[m][a], samples[m][b]
		var out []float64
		for i := range min(len(x), len(y)) {
			out = append(out, f(x[i], y[i]))
		}
		return out
	}
	div := func(x, y float64) float64 { return x / y }
	sub := func(x, y float64) float64 { return x - y }
	for _, s := range scens {
		for _, v := range s.names {
			k, none, ct := s.name+"/"+v, s.name+"/"+estNone, s.name+"/"+estCt
			t.Logf("b10 %-11s %-10s conn %s (÷none %s, ÷ct %s) | conn_ns %s (-none %s, -ct %s) | flow_ns %s (-none %s, -ct %s) | rr ÷none %s ÷ct %s | bulk ÷none %s ÷ct %s",
				s.name, v, mmm(samples["conn"][k]), mmm(per("conn", k, none, div)), mmm(per("conn", k, ct, div)),
				mmm(samples["conn_ns"][k]), mmm(per("conn_ns", k, none, sub)), mmm(per("conn_ns", k, ct, sub)),
				mmm(samples["flow_ns"][k]), mmm(per("flow_ns", k, none, sub)), mmm(per("flow_ns", k, ct, sub)),
				mmm(per("rr", k, none, div)), mmm(per("rr", k, ct, div)), mmm(per("bulk", k, none, div)), mmm(per("bulk", k, ct, div)))
			if v == estNone {
				continue
			}
			sum.emit(fmt.Sprintf("b10_%s_%s_conn_ratio", s.name, v), "%.3f", benchproc.Median(per("conn", k, none, div)))
			sum.emit(fmt.Sprintf("b10_%s_%s_conn_ratio_vs_ct", s.name, v), "%.3f", benchproc.Median(per("conn", k, ct, div)))
			sum.emit(fmt.Sprintf("b10_%s_%s_flow_ns", s.name, v), "%.0f", benchproc.Median(per("flow_ns", k, none, sub)))
			sum.emit(fmt.Sprintf("b10_%s_%s_flow_ns_vs_ct", s.name, v), "%.0f", benchproc.Median(per("flow_ns", k, ct, sub)))
			sum.emit(fmt.Sprintf("b10_%s_%s_rr_ratio", s.name, v), "%.3f", benchproc.Median(per("rr", k, none, div)))
			sum.emit(fmt.Sprintf("b10_%s_%s_bulk_ratio", s.name, v), "%.3f", benchproc.Median(per("bulk", k, none, div)))
		}
	}
}

// ctOnly is a table whose one rule accepts established and related packets: it
// turns conntrack on in the namespace and judges nothing else.
func ctOnly() *nft.Ruleset {
	return &nft.Ruleset{Table: nft.DefaultTable, Chains: []nft.Chain{{Name: nft.ChainForward,
		Hook: &nft.Hook{Type: "filter", Hook: "forward", Priority: 0, Policy: nft.Accept},
		Rules: []nft.Rule{{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))},
			Verdict: nft.Verdict{Kind: nft.Accept}}}}}}
}

// shapeVariants are the table shapes B10 compares: each takes the compiled table
// (keep mode, no counters: what B1 measures) and returns the variant.
var shapeVariants = []struct {
	name  string
	shape func(*nft.Ruleset) *nft.Ruleset
}{
	{"current", func(rs *nft.Ruleset) *nft.Ruleset { return rs }},
	{"interval", oneIntervalSet},
	{"inline", inlineDispatch},
	{"portsfirst", portsFirst},
	{"cnpinterval", nfttest.ClusterPortsAsIntervals},
	{"cnpmixed", nfttest.ClusterTiersMixedFamily}, // the tier chains before the family split
}

// cnpSetShapes says how many of the table's ClusterNetworkPolicy port sets
// (-ports, -ranges, -named-v4/v6) are interval sets and how many hashes.
func cnpSetShapes(rs *nft.Ruleset) string {
	var interval, hash int
	for _, s := range rs.Sets {
		if strings.HasPrefix(s.Name, "cnp-") && len(s.Type) >= 2 {
			if s.Interval {
				interval++
			} else {
				hash++
			}
		}
	}
	return fmt.Sprintf("%d interval sets of concatenated fields, %d hashes", interval, hash)
}

// oneIntervalSet is the shape before issue 16: each group's ports and ranges sets
// as one interval set of concatenated fields (the kernel's pipapo), adjacent ports
// of one peer and protocol merged into ranges as the compiler then did.
func oneIntervalSet(rs *nft.Ruleset) *nft.Ruleset {
	drop := map[string]bool{}
	for i := range rs.Sets {
		s := &rs.Sets[i]
		if s.Interval || len(s.Type) != 3 || s.Verdicts || !strings.HasSuffix(s.Name, "-ports-v4") && !strings.HasSuffix(s.Name, "-ports-v6") {
			continue // not a group's ports set (a ClusterNetworkPolicy named port set, ...)
		}
		name := strings.Replace(s.Name, "-ports-", "-ranges-", 1)
		ranges := rs.FindSet(name)
		if ranges == nil {
			continue
		}
		drop[name] = true
		var elems []nft.Element
		for _, e := range s.Elements {
			if n := len(elems); n > 0 {
				last := elems[n-1].Key
				if last[0] == e.Key[0] && last[1] == e.Key[1] && max(last[2].Num, last[2].NumEnd)+1 == e.Key[2].Num {
					elems[n-1].Key = []nft.Value{last[0], last[1], nft.NumRange(last[2].Num, e.Key[2].Num)}
					continue
				}
			}
			elems = append(elems, nft.Element{Key: slices.Clone(e.Key)})
		}
		s.Interval, s.Elements = true, append(elems, ranges.Elements...)
	}
	rs.Sets = slices.DeleteFunc(rs.Sets, func(s nft.Set) bool { return drop[s.Name] })
	for i := range rs.Chains {
		c := &rs.Chains[i]
		c.Rules = slices.DeleteFunc(c.Rules, func(r nft.Rule) bool { return len(r.Matches) == 1 && drop[r.Matches[0].Set] })
	}
	return rs
}

// inlineDispatch puts the dispatch in forward itself, IPv4 first: no jump to
// pod-egress and pod-ingress, and the ICMPv6 rule after the IPv4 lookups.
func inlineDispatch(rs *nft.Ruleset) *nft.Ruleset {
	fwd := rs.Chain(nft.ChainForward)
	eg, in := rs.Chain(nft.ChainEgress).Rules, rs.Chain(nft.ChainIngress).Rules
	fwd.Rules = []nft.Rule{fwd.Rules[0], eg[0], in[0], fwd.Rules[1], eg[1], in[1]}
	rs.Chains = slices.DeleteFunc(rs.Chains, func(c nft.Chain) bool { return c.Name == nft.ChainEgress || c.Name == nft.ChainIngress })
	return rs
}

// portsFirst swaps each group chain's any and ports rules, so a peer allowed on
// a port meets its set first.
func portsFirst(rs *nft.Ruleset) *nft.Ruleset {
	for i := range rs.Chains {
		c := &rs.Chains[i]
		for j := 0; j+1 < len(c.Rules); j++ {
			a, b := c.Rules[j], c.Rules[j+1]
			if len(a.Matches) == 1 && len(a.Matches[0].Keys) == 1 && strings.HasSuffix(a.Matches[0].Set, "-any-v4") &&
				len(b.Matches) == 1 && len(b.Matches[0].Keys) == 3 {
				c.Rules[j], c.Rules[j+1] = b, a
				j++
			}
		}
	}
	return rs
}
