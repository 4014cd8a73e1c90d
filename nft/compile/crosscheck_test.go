package compile

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/trace"
)

var (
	seedFlag  = flag.Uint64("seed", 0, "seed of TestCrosscheckRandom (0: a new one, printed)")
	casesFlag = flag.Int("cases", 2000, "number of TestCrosscheckRandom cases")
)

// crossEndpoint is an address, with its pod (and so its node) when a pod has it.
type crossEndpoint struct {
	ref  refEndpoint
	node string
	name string
}

var crossProtos = []struct {
	name  corev1.Protocol
	v4    uint8
	v6    uint8
	ports bool
}{
	{corev1.ProtocolTCP, nft.ProtoTCP, nft.ProtoTCP, true},
	{corev1.ProtocolUDP, nft.ProtoUDP, nft.ProtoUDP, true},
	{corev1.ProtocolSCTP, nft.ProtoSCTP, nft.ProtoSCTP, true},
	{"ICMP", nft.ProtoICMP, nft.ProtoICMPv6, false},
}

// crosscheck compiles w for each node and checks, for every pair of addresses (not
// both external), protocol and port, that the first packet of a connection gets
// through the hooks it crosses exactly when the reference evaluator allows it: the
// source pod's node's forward hook, then the destination pod's node's forward hook
// when different; for a node's address as destination, that node's input hook
// instead (a pod's traffic to its own node crosses only input). A node's own traffic
// to its pods crosses no hook nftpolicy filters. It also checks each ruleset's
// validity and the disjointness of its interval sets. With strictToo, every packet
// that crosses only forward hooks is also checked against the EstablishedRecheck
// rulesets (crossStrict). It returns the number of packets compared and the first
// failures.
func crosscheck(t testing.TB, w world, strictToo bool) (int, []string) {
	return crosscheckOpts(t, w, Options{}, strictToo)
}

// crosscheckOpts is crosscheck compiling with opts (Established set to recheck for
// the strict rulesets).
func crosscheckOpts(t testing.TB, w world, opts Options, strictToo bool) (int, []string) {
	var nodes []string
	for _, p := range w.pods {
		if p.Spec.NodeName != "" && !slices.Contains(nodes, p.Spec.NodeName) {
			nodes = append(nodes, p.Spec.NodeName)
		}
	}
	for _, n := range w.nodes {
		if !slices.Contains(nodes, n.Name) {
			nodes = append(nodes, n.Name)
		}
	}
	slices.Sort(nodes)
	tracers := map[string]*trace.Tracer{}
	strict := map[string]*trace.Tracer{} // EstablishedRecheck at epoch crossEpoch
	var errs []string
	for _, n := range nodes {
		snap := w.snapshot(n)
		rs, _ := Compile(snap, opts)
		sopts := opts
		sopts.Established = EstablishedRecheck
		srs, _ := Compile(snap, sopts)
		StampEpoch(srs, DefaultCtMarkMask, crossEpoch)
		for _, r := range []*nft.Ruleset{rs, srs} {
			if err := r.Validate(); err != nil {
				errs = append(errs, fmt.Sprintf("node %s: invalid ruleset: %v", n, err))
			}
			if err := checkDisjoint(r); err != nil {
				errs = append(errs, fmt.Sprintf("node %s: %v", n, err))
			}
		}
		tracers[n] = trace.New(rs)
		strict[n] = trace.New(srs)
	}
	if len(errs) > 0 {
		return 0, errs
	}
	var eps []crossEndpoint
	for _, p := range w.pods {
		switch {
		case p.Spec.HostNetwork: // the node's address: see the nodes below
		case refActive(p):
			for _, ip := range refPodIPs(p) {
				eps = append(eps, crossEndpoint{refEndpoint{Pod: p, IP: ip}, p.Spec.NodeName, p.Namespace + "/" + p.Name})
			}
		default: // a finished pod's address is just an address
			for _, ip := range refPodIPs(p) {
				eps = append(eps, crossEndpoint{refEndpoint{IP: ip}, "", "finished " + p.Namespace + "/" + p.Name})
			}
		}
	}
	for _, n := range w.nodes {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				eps = append(eps, crossEndpoint{refEndpoint{IP: ip, Node: n.Name}, "", "node " + n.Name})
			}
		}
	}
	for _, ip := range w.externals {
		eps = append(eps, crossEndpoint{refEndpoint{IP: ip}, "", "external"})
	}
	ref := newRefCluster(w.pods, w.namespaces, w.policies).WithTiers(w.cnps, w.nodes)
	count := 0
	for _, src := range eps {
		for _, dst := range eps {
			if src.ref.IP == dst.ref.IP || src.ref.IP.Is4() != dst.ref.IP.Is4() || (src.node == "" && dst.node == "") {
				continue
			}
			var crossed []crossing
			switch {
			case src.ref.Node != "" && src.ref.Node == dst.node:
				// A node to its own pod: output, not filtered.
			case src.node != "" && dst.ref.Node != "":
				crossed = append(crossed, crossing{dst.ref.Node, "input"})
				if src.node != dst.ref.Node {
					crossed = []crossing{{src.node, "forward"}, {dst.ref.Node, "input"}}
				}
			default:
				for _, n := range []string{src.node, dst.node} {
					if n != "" && !slices.Contains(crossed, crossing{n, "forward"}) {
						crossed = append(crossed, crossing{n, "forward"})
					}
				}
			}
			forwardOnly := len(crossed) > 0
			for _, c := range crossed {
				forwardOnly = forwardOnly && c.hook == "forward"
			}
			// A pod to its own node: strict mode rechecks it at input too.
			ownNode := len(crossed) == 1 && crossed[0].hook == "input"
			for _, proto := range crossProtos {
				ports := w.ports
				if !proto.ports {
					ports = []int{0}
				}
				for _, port := range ports {
					pkt := trace.Packet{Saddr: src.ref.IP, Daddr: dst.ref.IP, L4Proto: proto.v4, DPort: uint16(port), CtState: nft.CtNew}
					if src.ref.IP.Is6() {
						pkt.L4Proto = proto.v6
						if !proto.ports {
							pkt.ICMPType = 128 // echo-request
						}
					}
					want := ref.Allowed(src.ref, dst.ref, proto.name, port)
					got := true
					var traces []trace.Trace
					for _, c := range crossed {
						tr, err := tracers[c.node].Hook(c.hook, pkt)
						if err != nil {
							return count, append(errs, fmt.Sprintf("node %s %s: %v: %v", c.node, c.hook, pkt, err))
						}
						traces = append(traces, tr)
						if msg := tierFamilyWalk(tracers[c.node].Ruleset(), tr, pkt.Saddr.Is6()); msg != "" && len(errs) < 5 {
							errs = append(errs, fmt.Sprintf("node %s %s: %v: %s", c.node, c.hook, pkt, msg))
						}
						if tr.Verdict != nft.Accept {
							got = false
							break
						}
					}
					count++
					if strictToo && (forwardOnly || ownNode) && len(errs) < 5 {
						if msg := crossStrict(strict, crossed, pkt, want); msg != "" {
							errs = append(errs, fmt.Sprintf("%s (%s) -> %s (%s) %s/%d: strict mode: %s",
								src.name, src.ref.IP, dst.name, dst.ref.IP, proto.name, port, msg))
						}
					}
					if got != want && len(errs) < 5 {
						var b strings.Builder
						for i, tr := range traces {
							fmt.Fprintf(&b, "node %s %s:\n%s", crossed[i].node, crossed[i].hook, tr)
						}
						errs = append(errs, fmt.Sprintf("%s (%s) -> %s (%s) %s/%d: ruleset allows=%v, evaluator allows=%v\n%s",
							src.name, src.ref.IP, dst.name, dst.ref.IP, proto.name, port, got, want, b.String()))
					}
				}
			}
		}
	}
	return count, errs
}

// crossEpoch is the epoch of the strict rulesets of crosscheck; crossForeign is a
// bit of the connection mark that another component owns.
// crossing is a node and the hook a packet crosses there.
type crossing struct{ node, hook string }

const (
	crossEpoch   = 7
	crossForeign = 0x80
)

// crossStrict checks the recheck rulesets of the nodes a connection crosses against
// the reference verdict want of its first packet pkt: the first packet is judged
// alike and stamped with the current epoch; a packet of a connection stamped in the
// current epoch passes; a packet of an older epoch (or of no epoch), in either
// direction, is judged as the connection's first packet and, when allowed, stamped;
// the other bits of the mark are never changed. It returns "" or what failed.
// A pod's connection to its own node (crossed: that node's input) is checked
// alike, but for replies, which leave by output.
func crossStrict(tracers map[string]*trace.Tracer, crossed []crossing, pkt trace.Packet, want bool) string {
	cur := EpochMark(crossEpoch, DefaultCtMarkMask) | crossForeign
	reply := trace.Packet{Saddr: pkt.Daddr, Daddr: pkt.Saddr, L4Proto: pkt.L4Proto, SPort: pkt.DPort, DPort: 40000,
		CtState: nft.CtEstablished, CtReply: true}
	if pkt.L4Proto == nft.ProtoICMPv6 {
		reply.ICMPType = 129 // echo-reply
	}
	orig := pkt
	orig.CtState = nft.CtEstablished
	cases := []struct {
		what       string
		p          trace.Packet
		want       bool
		judged     bool // walks the policy chains (stamped where it passes)
		markBefore uint32
	}{
		{"first packet", pkt, want, true, crossForeign},
		{"current epoch", orig, true, false, cur},
		{"older epoch", orig, want, true, EpochMark(crossEpoch-1, DefaultCtMarkMask) | crossForeign},
		{"no epoch", orig, want, true, crossForeign},
		{"reply of an older epoch", reply, want, true, EpochMark(1, DefaultCtMarkMask) | crossForeign},
		{"reply of the current epoch", reply, true, false, cur},
	}
	for _, c := range cases {
		if c.p.CtReply && crossed[0].hook == "input" {
			continue // the reply of a pod's connection to its node leaves by output: not filtered
		}
		p := c.p
		p.CtMark = c.markBefore
		got := true
		for _, cr := range crossed {
			n := cr.node
			tr, err := tracers[n].Hook(cr.hook, p)
			if err != nil {
				return fmt.Sprintf("%s: node %s: %v", c.what, n, err)
			}
			if msg := tierFamilyWalk(tracers[n].Ruleset(), tr, p.Saddr.Is6()); msg != "" {
				return fmt.Sprintf("%s: node %s: %s", c.what, n, msg)
			}
			wantMark := c.markBefore
			if c.judged && tr.Verdict == nft.Accept {
				wantMark = cur
			}
			if tr.CtMark != wantMark {
				return fmt.Sprintf("%s: node %s: mark 0x%08x after the walk, want 0x%08x\n%s", c.what, n, tr.CtMark, wantMark, tr)
			}
			if tr.Verdict != nft.Accept {
				got = false
				break
			}
		}
		if got != c.want {
			return fmt.Sprintf("%s: allows=%v, want %v", c.what, got, c.want)
		}
	}
	return ""
}

// checkDisjoint fails when two elements of an interval set overlap (the kernel
// refuses them) or a map has a key twice.
func checkDisjoint(rs *nft.Ruleset) error {
	for _, s := range rs.Sets {
		for i := range s.Elements {
			for j := i + 1; j < len(s.Elements); j++ {
				if elementsOverlap(s.Elements[i], s.Elements[j]) {
					return fmt.Errorf("set %s: elements %s and %s overlap", s.Name,
						nft.RenderElement(s.Type, s.Elements[i], false), nft.RenderElement(s.Type, s.Elements[j], false))
				}
			}
		}
	}
	return nil
}

func elementsOverlap(a, b nft.Element) bool {
	for f := range a.Key {
		x, y := a.Key[f], b.Key[f]
		if x.Addr.IsValid() {
			xe, ye := x.Addr, y.Addr
			if x.Range {
				xe = x.AddrEnd
			}
			if y.Range {
				ye = y.AddrEnd
			}
			if xe.Less(y.Addr) || ye.Less(x.Addr) {
				return false
			}
			continue
		}
		xe, ye := x.Num, y.Num
		if x.Range {
			xe = x.NumEnd
		}
		if y.Range {
			ye = y.NumEnd
		}
		if xe < y.Num || ye < x.Num {
			return false
		}
	}
	return true
}

// TestCrosscheckUpstreamAll: every hand-written policy of the golden cases on the
// upstream model at once (the golden test crosschecks each case on its own).
func TestCrosscheckUpstreamAll(t *testing.T) {
	w := world{ports: []int{1, 53, 79, 80, 81, 82, 85, 90, 91, 100, 101, 443, 8080, 65535}}
	w.namespaces, w.pods = upstreamModel()
	ext := map[netip.Addr]bool{}
	for _, c := range goldenCases {
		if !c.upstream {
			continue
		}
		cw := loadCase(t, c)
		w.policies = append(w.policies, cw.policies...)
		w.cnps = append(w.cnps, cw.cnps...)
		w.nodes = append(w.nodes, cw.nodes...)
		for _, a := range cw.externals {
			ext[a] = true
		}
	}
	for a := range ext {
		w.externals = append(w.externals, a)
	}
	slices.SortFunc(w.externals, netip.Addr.Compare)
	n, errs := crosscheck(t, w, true)
	if len(errs) > 0 {
		t.Fatal(strings.Join(errs, "\n"))
	}
	t.Logf("%d policies, %d packets compared", len(w.policies), n)
}

// TestCrosscheckRandom compares compiled rulesets and the evaluator on random
// clusters and policies. Reproduce a failure with -seed (and -cases).
func TestCrosscheckRandom(t *testing.T) { crosscheckRandom(t, "TestCrosscheckRandom", randomWorld, 1) }

// TestCrosscheckRandomTiers is TestCrosscheckRandom on clusters with
// ClusterNetworkPolicies of both tiers (and NetworkPolicies, in most), nodes and
// their addresses: pod to own node through the input hook included. A tenth of
// -cases: each case walks more packets (the nodes' addresses).
func TestCrosscheckRandomTiers(t *testing.T) {
	crosscheckRandom(t, "TestCrosscheckRandomTiers", randomTieredWorld, 10)
}

func crosscheckRandom(t *testing.T, name string, gen func(*rand.Rand) world, div int) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	cases := *casesFlag / div
	if testing.Short() {
		cases /= 10
	}
	// Cases are independent (each has its own generator, from seed and its number):
	// run them on every CPU, and report the lowest failing case.
	var (
		mu       sync.Mutex
		total    int
		failCase = -1
		failMsg  string
		next     atomic.Int64
		wg       sync.WaitGroup
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cases {
					return
				}
				w := gen(rand.New(rand.NewPCG(seed, uint64(i))))
				// Strict mode on one case in four: it quadruples the walks.
				n, errs := crosscheck(t, w, i%4 == 0)
				mu.Lock()
				total += n
				if len(errs) > 0 && (failCase < 0 || i < failCase) {
					pols, _ := yaml.Marshal(w.policies)
					if len(w.cnps) > 0 {
						cnps, _ := yaml.Marshal(w.cnps)
						pols = append(pols, "\ncluster network policies:\n"+string(cnps)...)
					}
					failCase, failMsg = i, fmt.Sprintf("%s\npolicies:\n%s", strings.Join(errs, "\n"), pols)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if failCase >= 0 {
		t.Fatalf("seed %d case %d (rerun: go test ./nft/compile -run %s -seed %d -cases %d):\n%s",
			seed, failCase, name, seed, failCase+1, failMsg)
	}
	t.Logf("seed %d: %d random cases, %d packets compared", seed, cases, total)
}
