package compile

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
)

// TestKernelLoad loads compiled rulesets with `nft -f` into a private network
// namespace: every golden case (in keep and recheck mode), the upstream model with every golden policy at once,
// and random clusters. The kernel refuses what the model cannot check: overlapping
// interval elements, syntax nft does not take, types that do not fit.
func TestKernelLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: %v", tool, err)
		}
	}
	netns := fmt.Sprintf("nftpolicy-compile-%d-%d", os.Getpid(), time.Now().UnixNano()%1_000_000)
	if out, err := exec.Command("ip", "netns", "add", netns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", netns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", netns).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", netns, err, out)
		}
	})
	dir := t.TempDir()
	load := func(name string, rs *nft.Ruleset) {
		t.Helper()
		text := nft.Render(rs)
		file := filepath.Join(dir, strings.ReplaceAll(name, "/", "_")+".nft")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		nftIn := func(args ...string) (string, error) {
			out, err := exec.Command("ip", append([]string{"netns", "exec", netns, "nft"}, args...)...).CombinedOutput()
			return string(out), err
		}
		if out, err := nftIn("-f", file); err != nil {
			t.Errorf("%s: nft -f: %v\n%s", name, err, out)
			return
		}
		out, err := nftIn("list", "table", nft.Family, rs.Table)
		if err != nil {
			t.Errorf("%s: nft list: %v\n%s", name, err, out)
		}
		for _, s := range rs.Sets {
			if !strings.Contains(out, " "+s.Name+" {") {
				t.Errorf("%s: set %s missing from the kernel's table", name, s.Name)
			}
		}
		if out, err := nftIn("delete", "table", nft.Family, rs.Table); err != nil {
			t.Errorf("%s: nft delete table: %v\n%s", name, err, out)
		}
	}

	all := world{}
	all.namespaces, all.pods = upstreamModel()
	for _, c := range goldenCases {
		w := loadCase(t, c)
		rs, _ := Compile(w.snapshot(c.node), c.opts)
		load(c.name, rs)
		rs, _ = Compile(Snapshot{NodeName: c.node, Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}, Options{Established: EstablishedRecheck})
		load(c.name+"-recheck", rs)
		rs, _ = Compile(Snapshot{NodeName: c.node, Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies},
			Options{Established: EstablishedRecheck, UnknownLocalPods: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}})
		load(c.name+"-unknown", rs)
		if c.upstream {
			all.policies = append(all.policies, w.policies...)
			all.cnps = append(all.cnps, w.cnps...)
			all.nodes = append(all.nodes, w.nodes...)
		}
	}
	for _, node := range []string{"node-1", "node-2"} {
		rs, _ := Compile(all.snapshot(node), Options{})
		load("upstream-all-"+node, rs)
	}
	for i := range 20 {
		w := randomWorld(rand.New(rand.NewPCG(7, uint64(i))))
		rs, _ := Compile(w.snapshot("node-1"), Options{})
		load(fmt.Sprintf("random-%d", i), rs)
		w = randomTieredWorld(rand.New(rand.NewPCG(7, uint64(i))))
		rs, _ = Compile(w.snapshot("node-1"), Options{})
		load(fmt.Sprintf("random-tiered-%d", i), rs)
	}
}
