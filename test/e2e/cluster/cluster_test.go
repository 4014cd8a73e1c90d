package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// requireCluster skips tests that build namespaces when not root or with -short.
func requireCluster(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipping: builds network namespaces (drop -short to run)")
	}
	nfttest.RequireRoot(t)
}

func TestCluster(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	start := time.Now()
	c, err := New(ctx, Config{Prefix: "npt", Nodes: 2, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	newTook := time.Since(start)

	// x/a on node 0, x/b on node 1, ...: same-node and cross-node pairs in every namespace.
	var specs []PodSpec
	for i, ns := range []string{"x", "y", "z"} {
		for j, name := range []string{"a", "b", "c"} {
			specs = append(specs, PodSpec{Namespace: ns, Name: name, Node: (i + j) % 2,
				Labels: map[string]string{"pod": name}})
		}
	}
	specs[0].ExtraPorts = []int{3306}
	start = time.Now()
	pods, err := c.AddPods(ctx, specs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster with 2 nodes in %v, 9 pods in %v", newTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	for _, p := range pods {
		t.Logf("pod %s on %s: %s %s via %s", p, c.Node(p.Node).Name, p.IPv4, p.IPv6, p.HostVeth)
	}
	peers := make([]Endpoint, len(pods))
	for i, p := range pods {
		peers[i] = p
	}

	t.Run("pods", func(t *testing.T) {
		res, err := c.Matrix(ctx, MatrixSpec{From: peers})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("full pod matrix: %s", res.Summary())
		if res.Probes != 9*9*2*2*2 {
			t.Errorf("ran %d probes, want 648", res.Probes)
		}
		if d := res.Diff(NewReachability(peers, true)); d != "" {
			t.Errorf("without policies every pod reaches every pod:\n%s", d)
		}
		// Once more, warm: this is the cost a policy test pays per matrix.
		if res, err = c.Matrix(ctx, MatrixSpec{From: peers}); err != nil {
			t.Fatal(err)
		}
		t.Logf("full pod matrix again: %s", res.Summary())
	})

	t.Run("nodes and external", func(t *testing.T) {
		all := append([]Endpoint{c.Node(0), c.Node(1), c.External()}, peers...)
		res, err := c.Matrix(ctx, MatrixSpec{From: all})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("nodes, external and pods: %s", res.Summary())
		if d := res.Diff(NewReachability(all, true)); d != "" {
			t.Errorf("node, external and pods should all reach each other:\n%s", d)
		}
	})

	t.Run("ports", func(t *testing.T) {
		xa, xb := pods[0], pods[1]
		for _, tc := range []struct {
			to    *Pod
			proto Protocol
			port  int
			want  string // "" for allowed
		}{
			{xa, TCP, 3306, ""},
			{xa, UDP, 3306, ""},
			{xb, TCP, 3306, "refused"},
			{xb, UDP, 3306, "refused"},
		} {
			for _, fam := range []Family{V4, V6} {
				r, err := c.Probe(ctx, pods[4], tc.to, tc.proto, fam, tc.port, 0)
				if err != nil {
					t.Fatal(err)
				}
				if r.OK != (tc.want == "") || r.Err != tc.want {
					t.Errorf("%s -> %s %s/%d/%s: %s, want %q", pods[4], tc.to, tc.proto, tc.port, fam, r, tc.want)
				}
			}
		}
	})

	// An nft table in a node namespace filters that node's forwarded pod
	// traffic: the way an agent will, and what timeouts and rejects look like.
	t.Run("filtered", func(t *testing.T) {
		xa := pods[0]
		node := c.Node(xa.Node)
		rules := fmt.Sprintf(`table inet cluster_test {
	chain forward {
		type filter hook forward priority 0;
		ip daddr %s tcp dport 81 drop
		ip6 daddr %s tcp dport 81 drop
		ip daddr %s udp dport 81 reject
		ip6 daddr %s udp dport 81 reject
	}
}
`, xa.IPv4, xa.IPv6, xa.IPv4, xa.IPv6)
		if _, err := node.NetNS.NFT(rules, "-f", "-"); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if _, err := node.NetNS.NFT("", "delete", "table", "inet", "cluster_test"); err != nil {
				t.Error(err)
			}
		}()

		all := NewReachability(peers, true)
		toXA := all.Clone()
		toXA.ExpectAllIngress(xa, false)
		toXA.AllowLoopback()
		if toXA.Connected(xa, xa) != true || toXA.Connected(pods[1], xa) != false {
			t.Fatalf("expectation builder:\n%s", toXA)
		}
		res, err := c.Matrix(ctx, MatrixSpec{From: peers, Ports: []int{80, 81}})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("matrix with drops: %s", res.Summary())
		if d := res.DiffEach(func(k Case) *Reachability {
			if k.Port == 81 {
				return toXA
			}
			return all
		}); d != "" {
			t.Errorf("port 81 to %s is filtered by its node, nothing else:\n%s", xa, d)
		}
		for _, k := range res.Cases {
			if k.Port != 81 {
				continue
			}
			want := map[Protocol]string{TCP: "timeout", UDP: "refused"}[k.Protocol] // reject: ICMP port unreachable
			if got := res.Table(k).Reason(pods[1], xa); got != want {
				t.Errorf("%s: %s -> %s failed with %q, want %q", k, pods[1], xa, got, want)
			}
		}
		// What a failing test prints.
		t.Logf("expecting everything to connect would report:\n%s", all.Diff(res.Table(Case{TCP, V4, 81})))
		if got := res.Diff(all); !strings.Contains(got, "x/b -> x/a: want allowed, got denied (timeout)") {
			t.Errorf("Diff does not name the wrong cell:\n%s", got)
		}
	})

	t.Run("remove and re-add", func(t *testing.T) {
		yc := c.Pod("y", "c")
		if yc == nil {
			t.Fatal("no pod y/c")
		}
		if err := c.RemovePod(ctx, yc); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(yc.NetNSPath()); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pod namespace %s still exists: %v", yc.NetNSPath(), err)
		}
		if c.Pod("y", "c") != nil {
			t.Error("removed pod still listed")
		}
		if _, err := c.AddPod(ctx, PodSpec{Namespace: "y", Name: "a", Node: 1}); err == nil {
			t.Error("added a second y/a")
		}
		yc2, err := c.AddPod(ctx, PodSpec{Namespace: "y", Name: "c", Node: yc.Node})
		if err != nil {
			t.Fatal(err)
		}
		if yc2.IPv4 == yc.IPv4 {
			t.Errorf("re-added pod got the removed pod's address %s at once", yc.IPv4)
		}
		for _, fam := range []Family{V4, V6} {
			if r, err := c.Probe(ctx, pods[0], yc2, TCP, fam, 80, 0); err != nil || !r.OK {
				t.Errorf("x/a -> re-added y/c %s: %v, %v", fam, r, err)
			}
		}
	})

	t.Run("close", func(t *testing.T) {
		var pids []int
		for _, p := range c.Pods() {
			pids = append(pids, p.agent.pid())
		}
		for _, n := range c.Nodes() {
			pids = append(pids, n.agent.pid())
		}
		pids = append(pids, c.External().agent.pid())

		start := time.Now()
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("closed in %v", time.Since(start).Round(time.Millisecond))
		if err := c.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if left := namespacesWithPrefix(t, c.ID()); len(left) > 0 {
			t.Errorf("namespaces left after Close: %v", left)
		}
		if _, err := os.Stat(c.tmpDir); c.tmpDir == "" || !errors.Is(err, os.ErrNotExist) {
			t.Errorf("podagent build directory %q still exists after Close: %v", c.tmpDir, err)
		}
		for _, pid := range pids {
			if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("podagent %d still exists after Close", pid)
			}
		}
		if _, err := c.AddPod(ctx, PodSpec{Namespace: "x", Name: "late"}); err == nil {
			t.Error("AddPod after Close succeeded")
		}
		if _, err := c.Probe(ctx, pods[0], pods[1], TCP, V4, 80, 0); err == nil {
			t.Error("Probe after Close succeeded")
		}
	})
}

// TestNewCanceled checks that New leaves nothing behind when its context ends.
func TestNewCanceled(t *testing.T) {
	requireCluster(t)
	bin, err := BuildPodAgent(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, after := range []time.Duration{0, 20 * time.Millisecond, 60 * time.Millisecond, 150 * time.Millisecond} {
		ctx, cancel := context.WithTimeout(t.Context(), after)
		c, err := New(ctx, Config{Prefix: "nptc", PodAgent: bin})
		cancel()
		t.Logf("New with a %v deadline: %v", after, err)
		if err == nil {
			// Fast machine: it finished in time. That is fine too.
			if err := c.Close(); err != nil {
				t.Error(err)
			}
		}
		prefix := fmt.Sprintf("nptc-%d-", os.Getpid())
		if left := namespacesWithPrefix(t, prefix); len(left) > 0 {
			t.Errorf("cancelled after %v (err %v): namespaces left: %v", after, err, left)
		}
	}
}

func namespacesWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(nfttest.NetNSDir, prefix+"*"))
	if err != nil {
		t.Fatal(err)
	}
	return matches
}
