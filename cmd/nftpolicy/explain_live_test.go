package main

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"

	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/explain"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestExplainLive: --live walks the table the kernel holds in --netns. The table
// the agent would write reads back as exactly the compile; after tampering (the
// destination pod's map element deleted, a rule inserted by hand), the answer walks
// the tampered table, lists every difference, and says where the kernel decides
// otherwise than the policies.
func TestExplainLive(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	nfttest.RequireRoot(t)
	ns := nfttest.NewNetNS(t, "np-explain-live")

	var objs []runtime.Object
	for _, f := range []string{"cluster.yaml", "policies.yaml"} {
		o, err := readManifests(filepath.Join(explainData, f), nil)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	var c explain.Cluster
	overlay(&c, objs)
	// The table as the DaemonSet's agent writes it: deny log and policy counters
	// on, recheck mode, some epoch after a few changes, unknown local addresses
	// dropped by the Node's pod CIDRs.
	rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-2", Pods: c.Pods, Namespaces: c.Namespaces, Policies: c.Policies},
		compile.Options{DenyLog: compile.DenyLog{Group: 7600, Rate: 10, Burst: 20}, PolicyCounters: true, Established: compile.EstablishedRecheck,
			UnknownLocalPods: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:10:244:2::/64")}})
	compile.StampEpoch(rs, compile.DefaultCtMarkMask, 3)
	applyIn(t, ns.Path(), rs)

	ask := func(extra ...string) (string, map[string]any) {
		t.Helper()
		args := append([]string{"explain", "-f", explainData + "/cluster.yaml", "-f", explainData + "/policies.yaml", "--live", "--netns", ns.Path(),
			"--node-name", "node-2", "--from", "monitoring/prometheus", "--to", "shop/db", "--port", "5432"}, extra...)
		code, stdout, stderr := runBin(t, "", args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		_, js, _ := runBin(t, "", append(args, "-o", "json")...)
		var m map[string]any
		if err := json.Unmarshal([]byte(js), &m); err != nil {
			t.Fatalf("%v: %s", err, js)
		}
		return stdout, m
	}
	text, m := ask()
	if !strings.HasPrefix(text, "DENY") || !strings.Contains(text, "live: the kernel's table on node-2 is exactly the fresh compile") ||
		!strings.Contains(text, "walk on node node-2 (kernel table") ||
		!strings.Contains(text, `limit name "deny-log" log prefix "nftpolicy-deny ing-`) || !strings.Contains(text, `counter name "ing-dde97daf-shop/db-from-web-deny"`) {
		t.Errorf("untouched table:\n%s", text)
	}
	if live := m["live"].(map[string]any); len(live["differences"].([]any)) != 0 {
		t.Errorf("differences on an untouched table: %v", live)
	}

	// Back to a pod of node-1: node-1's table is compiled, and the unknown-address
	// drops of node-2's CIDRs are node-2's alone (node-1 would drop node-2's pods).
	if text, _ := ask("--from", "shop/db", "--to", "shop/web", "--port", "8080"); !strings.HasPrefix(text, "ALLOW") ||
		strings.Contains(text, "does not know yet") {
		t.Errorf("shop/db -> shop/web, across nodes:\n%s", text)
	}

	// A connection node-2 does not judge (an external address to shop/web, on
	// node-1): node-2's table is still compared, and found exact, and the answer
	// says it was not walked (it listed that as a difference).
	text, m = ask("--from", "192.0.2.9", "--to", "shop/web", "--port", "8080")
	if live := m["live"].(map[string]any); len(live["differences"].([]any)) != 0 ||
		!strings.Contains(text, "note: node node-2 does not judge this connection: its table was compared with the fresh compile, not walked") ||
		!strings.Contains(text, "live: the kernel's table on node-2 is exactly the fresh compile") {
		t.Errorf("a connection node-2 does not judge:\n%s", text)
	}

	// Tamper: shop/db leaves the ingress map: its isolation is gone.
	if out, err := ns.NFT("", "delete", "element", "inet", rs.Table, "ingress-v4", "{ 10.244.2.7 }"); err != nil {
		t.Fatalf("nft delete element: %v: %s", err, out)
	}
	text, m = ask()
	for _, want := range []string{
		"ALLOW: monitoring/prometheus -> shop/db tcp/5432 (IPv4): egress not isolated; ingress on node-2 passed by its table although shop/db-from-web isolates it",
		"differs from the fresh compile (1 difference)",
		"yet the table lets it through",
		"set ingress-v4: element 10.244.2.7 : goto ing-",
		"live: ingress tcp/5432: the kernel's table on node-2 says allow, the policies say deny",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("tampered table: no %q in\n%s", want, text)
		}
	}
	if strings.Contains(text, "BUG") {
		t.Errorf("a tampered table is no explain bug:\n%s", text)
	}
	if m["verdict"] != "allow" || len(m["live"].(map[string]any)["differences"].([]any)) != 1 {
		t.Errorf("json: %v", m)
	}

	// A rule written by hand that explain cannot read: the answer says so, with the
	// differences, and the command fails.
	if out, err := ns.NFT("", "insert", "rule", "inet", rs.Table, "forward", "ip", "saddr", "192.0.2.1", "drop"); err != nil {
		t.Fatalf("nft insert rule: %v: %s", err, out)
	}
	code, stdout, stderr := runBin(t, "", "explain", "-f", explainData, "--live", "--netns", ns.Path(), "--node-name", "node-2",
		"--from", "monitoring/prometheus", "--to", "shop/db", "--port", "5432")
	if code != 1 || !strings.HasPrefix(stdout, "UNKNOWN") || !strings.Contains(stdout, `chain forward rule 0: kernel has key255 0 comment "nftpolicy: rule not understood"`) ||
		strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "walking the kernel's table of node node-2: chain forward rule 0") {
		t.Errorf("unreadable rule: exit %d\nstdout:\n%s\nstderr: %s", code, stdout, stderr)
	}
}

// TestExplainLiveTiers: --live over a table with the tiers as the agent writes
// it (strict mode, deny log, counters: the input chain, per-rule counters, drop
// chains and reply twins) reads back as exactly the compile, and the walks of
// the kernel's table name the Admin rules that decide, at forward and at input.
func TestExplainLiveTiers(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	nfttest.RequireRoot(t)
	ns := nfttest.NewNetNS(t, "np-explain-livet")
	files := []string{"explain/cluster.yaml", "explain/policies.yaml", "explain-cnp.yaml"}
	var objs []runtime.Object
	for _, f := range files {
		o, err := readManifests(filepath.Join("testdata", f), nil)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	var c explain.Cluster
	overlay(&c, objs)
	rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-2", Pods: c.Pods, Namespaces: c.Namespaces, Policies: c.Policies,
		ClusterNetworkPolicies: c.ClusterPolicies, Nodes: c.Nodes},
		compile.Options{DenyLog: compile.DenyLog{Group: 7600, Rate: 10, Burst: 20}, PolicyCounters: true, Established: compile.EstablishedRecheck})
	compile.StampEpoch(rs, compile.DefaultCtMarkMask, 4)
	applyIn(t, ns.Path(), rs)
	for _, q := range []struct {
		from, to, port string
		want           []string
	}{
		{"monitoring/prometheus", "shop/db", "9187", []string{"ALLOW", "allowed by Admin cnp/scrape (priority 5) rule 0 (from-monitoring)"}},
		{"shop/db", "node/node-2", "22", []string{"DENY", "denied by Admin cnp/node-guard (priority 10) rule 0 (no-ssh-to-nodes)", "from hook input",
			`log prefix "nftpolicy-deny cnp-`, "-ports tcp . 22"}},
		// A port range: the rule's -ranges interval set, read back from the kernel.
		{"shop/db", "node/node-2", "31000", []string{"DENY", "denied by Admin cnp/node-guard (priority 10) rule 1 (no-nodeports-to-nodes)",
			"-ranges tcp . 30000-32767"}},
	} {
		args := []string{"explain", "--live", "--netns", ns.Path(), "--node-name", "node-2", "--from", q.from, "--to", q.to, "--port", q.port}
		for _, f := range files {
			args = append(args, "-f", filepath.Join("testdata", f))
		}
		code, stdout, stderr := runBin(t, "", args...)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, stderr)
		}
		for _, w := range append(q.want, "live: the kernel's table on node-2 is exactly the fresh compile", "(kernel table") {
			if !strings.Contains(stdout, w) {
				t.Errorf("%s -> %s: no %q in\n%s", q.from, q.to, w, stdout)
			}
		}
		if strings.Contains(stdout, "BUG") {
			t.Errorf("%s -> %s:\n%s", q.from, q.to, stdout)
		}
	}
}
