package compile

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go4.org/netipx"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

var update = flag.Bool("update", false, "rewrite the golden .nft files in testdata")

// goldenCase is testdata/<name>.yaml (objects) compiled for node: the ruleset must
// render as testdata/<name>.nft, with exactly these problems. With upstream, the
// upstream model's namespaces and pods come first (node-1 runs x/a, x/c, y/b, z/a and
// z/c).
type goldenCase struct {
	name     string
	upstream bool
	node     string
	problems []string
	// noCrosscheck says why the case cannot be judged packet by packet.
	noCrosscheck string
	// src names the objects file when it is another case's; opts are the options.
	src  string
	opts Options
}

var goldenCases = []goldenCase{
	{name: "no-policies", upstream: true, node: "node-1"},
	{name: "deny-all", upstream: true, node: "node-1"},
	{name: "defaulting", upstream: true, node: "node-1"},
	{name: "allow-all", upstream: true, node: "node-1"},
	{name: "peers-and-or", upstream: true, node: "node-1"},
	{name: "selector-operators", upstream: true, node: "node-1"},
	{name: "ipblock", upstream: true, node: "node-1"},
	{name: "named-ports-ingress", upstream: true, node: "node-1"},
	{name: "named-ports-egress", upstream: true, node: "node-1"},
	{name: "ports", upstream: true, node: "node-1"},
	{name: "union", upstream: true, node: "node-1"},
	{name: "problems", upstream: true, node: "node-1", problems: []string{
		`x/broken: ingress rule 0: peer 0: invalid ipBlock cidr "10.244.0/16"; the rule allows nothing`,
		`x/broken: ingress rule 1: port 0: unknown protocol "ICMP"; the rule allows nothing`,
		`x/broken: ingress rule 2: port 0: port "no_good!" is neither a number nor a valid port name; the rule allows nothing`,
		`x/broken: ingress rule 3: port 0: endPort with named port "serve-80-tcp"; the rule allows nothing`,
		`x/broken: ingress rule 4: port 0: endPort 80 below port 81; the rule allows nothing`,
		`x/broken: ingress rule 5: peer 0: invalid podSelector ("Bogus" is not a valid label selector operator); the rule allows nothing`,
		`x/broken: ingress rule 7: peer 0: ipBlock cannot be combined with podSelector or namespaceSelector; the rule allows nothing`,
		`x/broken: ingress rule 8: peer 0: empty peer (no podSelector, namespaceSelector or ipBlock); the rule allows nothing`,
		`x/broken: ingress rule 9: port 0: port 0 out of range 1-65535; the rule allows nothing`,
		`x/broken: ingress rule 9: port 1: endPort 70000 out of range 1-65535; the rule allows nothing`,
		`x/broken: ingress rule 10: port 0: endPort without port; the rule allows nothing`,
		`x/broken: egress rule 0: port 0: port "UPPER" is neither a number nor a valid port name; the rule allows nothing`,
		`y/bad-selector: invalid podSelector (values: Invalid value: null: for 'in', 'notin' operators, values set can't be empty): the policy selects no pod`,
		`y/bad-type: unknown policyType "Sideways" ignored`,
	}},
	{name: "cnp-admin", upstream: true, node: "node-1"},
	{name: "cnp-baseline", upstream: true, node: "node-1"},
	{name: "cnp-nodes-named", upstream: true, node: "node-1"},
	{name: "cnp-ports", upstream: true, node: "node-1"},
	// The port sets with counters, the deny log and strict mode: a rule's two
	// lookups (-ports, -ranges) count into its one counter, and their reply
	// twins read the reply's source port.
	{name: "cnp-ports-observe-strict", src: "cnp-ports", upstream: true, node: "node-1", opts: Options{
		DenyLog: DenyLog{Group: 100, Rate: 100, Burst: 20}, PolicyCounters: true, Established: EstablishedRecheck}},
	{name: "cnp-problems", upstream: true, node: "node-1", problems: []string{
		"cnp/accept-domains: egress rule 0: peer 0: domainNames peers are not implemented by nftpolicy; the rule matches nothing",
		"cnp/accept-domains: egress rule 1: peer 0: domainNames peers are not implemented by nftpolicy; the rule matches through its other peers only",
		"cnp/accept-unknown: egress rule 0: peer 0: no field set (an unknown field of a newer API version?); the rule matches nothing",
		`cnp/accept-unknown: egress rule 1: peer 0: invalid network "::ffff:10.0.0.0/104"; the rule matches nothing`,
		`cnp/bad-tier: unknown tier "Middle": the policy is not enforced`,
		"cnp/deny-domains: egress rule 0: peer 0: domainNames peers are not implemented by nftpolicy; the rule denies all",
		"cnp/pass-bad: ingress rule 0: protocol 0: port 70000 out of range 1-65535; the rule denies all",
	}},
	{name: "pod-eligibility", node: "node-1"},
	{name: "named-port-groups", node: "node-1"},
	{name: "namespaces", node: "node-1"},
	// The Admin case in strict mode: reply twins of the tier chains, ct-stamp ends.
	{name: "cnp-admin-strict", src: "cnp-admin", upstream: true, node: "node-1", opts: Options{Established: EstablishedRecheck}},
	// The union case with the deny log and the policy counters on.
	{name: "observe", src: "union", upstream: true, node: "node-1", opts: Options{
		DenyLog: DenyLog{Group: 100, Rate: 100, Burst: 20}, PolicyCounters: true}},
	// And with strict mode's recheck: the two rooms side by side.
	{name: "observe-strict", src: "union", upstream: true, node: "node-1", opts: Options{
		DenyLog: DenyLog{Group: 100, Rate: 100, Burst: 20}, PolicyCounters: true, Established: EstablishedRecheck}},
	// The tiers with the deny log and counters: per-rule counters, Deny rules
	// through their drop chains; in strict mode with the reply twins' own.
	{name: "cnp-observe", src: "cnp-admin", upstream: true, node: "node-1", opts: Options{
		DenyLog: DenyLog{Group: 100, Rate: 100, Burst: 20}, PolicyCounters: true}},
	{name: "cnp-observe-strict", src: "cnp-admin", upstream: true, node: "node-1", opts: Options{
		DenyLog: DenyLog{Group: 100, Rate: 100, Burst: 20}, PolicyCounters: true, Established: EstablishedRecheck}},
	// Rules that fail closed (deny all) are logged and counted like Deny rules.
	{name: "cnp-problems-observe", src: "cnp-problems", upstream: true, node: "node-1", opts: Options{
		DenyLog: DenyLog{Group: 100, Rate: 100, Burst: 20}, PolicyCounters: true}, problems: []string{
		"cnp/accept-domains: egress rule 0: peer 0: domainNames peers are not implemented by nftpolicy; the rule matches nothing",
		"cnp/accept-domains: egress rule 1: peer 0: domainNames peers are not implemented by nftpolicy; the rule matches through its other peers only",
		"cnp/accept-unknown: egress rule 0: peer 0: no field set (an unknown field of a newer API version?); the rule matches nothing",
		`cnp/accept-unknown: egress rule 1: peer 0: invalid network "::ffff:10.0.0.0/104"; the rule matches nothing`,
		`cnp/bad-tier: unknown tier "Middle": the policy is not enforced`,
		"cnp/deny-domains: egress rule 0: peer 0: domainNames peers are not implemented by nftpolicy; the rule denies all",
		"cnp/pass-bad: ingress rule 0: protocol 0: port 70000 out of range 1-65535; the rule denies all",
	}},
	{name: "duplicate-address", node: "node-1", noCrosscheck: "two pods, one address: no packet-level truth", problems: []string{
		"pods dup/five and dup/six on this node share address 10.9.1.3: a direction that isolates one of them judges the address by its policies; " +
			"one that isolates both by different policies, or in which different ClusterNetworkPolicies select them, drops its traffic",
		"pods dup/four and dup/three on this node share address 10.9.1.2: a direction that isolates one of them judges the address by its policies; " +
			"one that isolates both by different policies, or in which different ClusterNetworkPolicies select them, drops its traffic",
		"pods dup/one and dup/two on this node share address 10.9.1.1: a direction that isolates one of them judges the address by its policies; " +
			"one that isolates both by different policies, or in which different ClusterNetworkPolicies select them, drops its traffic",
	}},
}

func TestGolden(t *testing.T) {
	for _, c := range goldenCases {
		t.Run(c.name, func(t *testing.T) {
			w := loadCase(t, c)
			rs, problems := Compile(w.snapshot(c.node), c.opts)
			if err := rs.Validate(); err != nil {
				t.Fatalf("invalid ruleset: %v", err)
			}
			if err := checkDisjoint(rs); err != nil {
				t.Fatal(err)
			}
			var gotProblems []string
			for _, p := range problems {
				gotProblems = append(gotProblems, p.String())
			}
			if !slices.Equal(gotProblems, c.problems) {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(gotProblems, "\n"), strings.Join(c.problems, "\n"))
			}
			got := nft.Render(rs)
			golden := filepath.Join("testdata", c.name+".nft")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("%s differs (run with -update to rewrite it, then review the diff):\n%s", golden, lineDiff(string(want), got))
			}
			// The same objects, judged packet by packet on every node.
			if c.noCrosscheck != "" {
				t.Logf("no crosscheck: %s", c.noCrosscheck)
				return
			}
			n, errs := crosscheckOpts(t, w, c.opts, true)
			if len(errs) > 0 {
				t.Errorf("crosscheck:\n%s", strings.Join(errs, "\n"))
			}
			t.Logf("%d packets crosschecked", n)
		})
	}
}

// TestCompileIsDeterministic: the same snapshot in another order compiles alike.
func TestCompileIsDeterministic(t *testing.T) {
	for _, c := range goldenCases {
		w := loadCase(t, c)
		rs, p1 := Compile(w.snapshot(c.node), c.opts)
		slices.Reverse(w.pods)
		slices.Reverse(w.namespaces)
		slices.Reverse(w.policies)
		slices.Reverse(w.cnps)
		slices.Reverse(w.nodes)
		rs2, p2 := Compile(w.snapshot(c.node), c.opts)
		if nft.Render(rs) != nft.Render(rs2) || !slices.Equal(p1, p2) {
			t.Errorf("%s: result depends on input order", c.name)
		}
	}
}

func TestTableOption(t *testing.T) {
	rs, _ := Compile(Snapshot{NodeName: "n"}, Options{Table: "other"})
	if rs.Table != "other" {
		t.Errorf("table %q", rs.Table)
	}
	rs, _ = Compile(Snapshot{NodeName: "n"}, Options{})
	if rs.Table != nft.DefaultTable {
		t.Errorf("table %q", rs.Table)
	}
}

// loadCase reads the case's objects and picks the addresses and ports worth
// crosschecking: around every ipBlock bound and every port the policies name.
func loadCase(t *testing.T, c goldenCase) world {
	t.Helper()
	var w world
	if c.upstream {
		w.namespaces, w.pods = upstreamModel()
	}
	src := c.name
	if c.src != "" {
		src = c.src
	}
	objs, err := nfttest.LoadObjects(filepath.Join("testdata", src+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	w.namespaces = append(w.namespaces, objs.Namespaces...)
	w.pods = append(w.pods, objs.Pods...)
	w.policies = append(w.policies, objs.Policies...)
	w.cnps, w.nodes = objs.ClusterPolicies, objs.Nodes

	podAddr := map[netip.Addr]bool{}
	for _, p := range w.pods {
		for _, a := range refPodIPs(p) {
			podAddr[a] = true
		}
	}
	ext := map[netip.Addr]bool{}
	for _, a := range upstreamExternals {
		ext[a] = true
	}
	ports := map[int]bool{80: true, 81: true}
	addPort := func(n int) {
		for _, p := range []int{n - 1, n, n + 1} {
			if p >= 1 && p <= 65535 {
				ports[p] = true
			}
		}
	}
	for _, p := range w.pods {
		for _, ctr := range p.Spec.Containers {
			for _, cp := range ctr.Ports {
				ports[int(cp.ContainerPort)] = true
			}
		}
	}
	for _, pol := range w.policies {
		var peers []networkingv1.NetworkPolicyPeer
		var pps []networkingv1.NetworkPolicyPort
		for _, r := range pol.Spec.Ingress {
			peers, pps = append(peers, r.From...), append(pps, r.Ports...)
		}
		for _, r := range pol.Spec.Egress {
			peers, pps = append(peers, r.To...), append(pps, r.Ports...)
		}
		for _, pe := range peers {
			if pe.IPBlock == nil {
				continue
			}
			for _, s := range append([]string{pe.IPBlock.CIDR}, pe.IPBlock.Except...) {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					continue
				}
				p = p.Masked()
				for _, a := range []netip.Addr{p.Addr(), p.Addr().Prev(), netipx.PrefixLastIP(p), netipx.PrefixLastIP(p).Next()} {
					if a.IsValid() {
						ext[a] = true
					}
				}
			}
		}
		for _, pp := range pps {
			if pp.Port != nil && pp.Port.Type == 0 {
				addPort(int(pp.Port.IntVal))
			}
			if pp.EndPort != nil {
				addPort(int(*pp.EndPort))
			}
		}
	}
	for _, c := range w.cnps {
		var nets []cnpv1.CIDR
		var protos []cnpv1.ClusterNetworkPolicyProtocol
		for _, r := range c.Spec.Ingress {
			protos = append(protos, r.Protocols...)
		}
		for _, r := range c.Spec.Egress {
			protos = append(protos, r.Protocols...)
			for _, pe := range r.To {
				nets = append(nets, pe.Networks...)
			}
		}
		for _, n := range nets {
			p, err := netip.ParsePrefix(string(n))
			if err != nil {
				continue
			}
			p = p.Masked()
			for _, a := range []netip.Addr{p.Addr(), p.Addr().Prev(), netipx.PrefixLastIP(p), netipx.PrefixLastIP(p).Next()} {
				if a.IsValid() {
					ext[a] = true
				}
			}
		}
		for _, pp := range protos {
			_, dp := netpolref.CNPPort(pp)
			switch {
			case dp == nil:
			case dp.Range != nil:
				addPort(int(dp.Range.Start))
				addPort(int(dp.Range.End))
			default:
				addPort(int(dp.Number))
			}
		}
	}
	for _, n := range w.nodes {
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				podAddr[ip] = true // crosschecked as the node's
			}
		}
	}
	for a := range ext {
		if !podAddr[a] {
			w.externals = append(w.externals, a)
		}
	}
	slices.SortFunc(w.externals, netip.Addr.Compare)
	for p := range ports {
		w.ports = append(w.ports, p)
	}
	slices.Sort(w.ports)
	return w
}

// lineDiff shows the lines only in want (-) or only in got (+), in order: enough to
// see what changed in a golden file.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	// Longest common subsequence, fine for golden-sized files.
	lcs := make([][]int, len(w)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(g)+1)
	}
	for i := len(w) - 1; i >= 0; i-- {
		for j := len(g) - 1; j >= 0; j-- {
			if w[i] == g[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var b strings.Builder
	i, j := 0, 0
	for i < len(w) || j < len(g) {
		switch {
		case i < len(w) && j < len(g) && w[i] == g[j]:
			i, j = i+1, j+1
		case j < len(g) && (i == len(w) || lcs[i][j+1] >= lcs[i+1][j]):
			fmt.Fprintf(&b, "+%s\n", g[j])
			j++
		default:
			fmt.Fprintf(&b, "-%s\n", w[i])
			i++
		}
	}
	return b.String()
}
