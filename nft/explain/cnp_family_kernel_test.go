package explain

import (
	"bytes"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// syncBuffer is an io.Writer a process writes to while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var traceLineRE = regexp.MustCompile(`^trace id ([0-9a-f]+) inet (\S+) (\S+) (.*)$`)

// TestTierFamilyInKernel: the kernel's own trace (nft monitor trace) of new
// flows through the tiers, IPv4 and IPv6, ingress (y/a on node-2 to x/a on
// node-1, cnp-ports' x-ports-in) and egress (x/b on node-2 to z/a): each flow's
// tier map sends it by goto to its own family's group chain, and every tier
// group chain its trace names is of its family, chains that hold no rule of the
// other family (checked in the kernel's listing). The older shape
// (nfttest.ClusterTiersMixedFamily) fails it: its maps jump to chains of both
// families.
func TestTierFamilyInKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	nss, pods := netpolref.UpstreamModel()
	lab := newKernelLab(t, []int{80, 81})
	for _, n := range []struct {
		ns   *nfttest.NetNS
		node string
	}{{lab.a, "node-2"}, {lab.b, "node-1"}} {
		rs, problems := compile.Compile(compile.Snapshot{NodeName: n.node, Pods: pods, Namespaces: nss, ClusterNetworkPolicies: portsPolicies(),
			Nodes: netpolref.ModelNodes()}, compile.Options{})
		if len(problems) > 0 {
			t.Fatal(problems)
		}
		lab.load(n.ns, rs)
		// A table of the test's own sets nftrace on every packet (before ours).
		if out, err := n.ns.NFT("table inet npx-trace {\n chain pre {\n type filter hook prerouting priority raw; meta nftrace set 1\n }\n}\n", "-f", "-"); err != nil {
			t.Fatalf("trace table: %v: %s", err, out)
		}
		t.Cleanup(func() { _, _ = n.ns.NFT("", "delete", "table", "inet", "npx-trace") })
		list, err := n.ns.NFT("", "list", "table", "inet", nft.DefaultTable)
		if err != nil {
			t.Fatal(err)
		}
		for _, block := range strings.Split(list, "\tchain ")[1:] {
			name, _, _ := strings.Cut(block, " ")
			if !strings.HasPrefix(name, "adm-") && !strings.HasPrefix(name, "bl-") {
				continue
			}
			if (strings.HasSuffix(name, "-v4") && strings.Contains(block, "ip6 ")) || (strings.HasSuffix(name, "-v6") && strings.Contains(block, "ip ")) {
				t.Fatalf("%s: chain %s holds a rule of the other family:\n%s", n.node, name, block)
			}
		}
	}
	monitors := map[string]*syncBuffer{}
	for name, ns := range map[string]*nfttest.NetNS{"node-2": lab.a, "node-1": lab.b} {
		out := &syncBuffer{}
		cmd := exec.Command("nft", "monitor", "trace")
		cmd.Stdout, cmd.Stderr = out, out
		if err := ns.Start(cmd); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		monitors[name] = out
	}
	time.Sleep(300 * time.Millisecond) // the monitors subscribe
	var pkts []labPacket
	for _, v6 := range []bool{false, true} {
		for _, port := range []int{80, 81} {
			pkts = append(pkts,
				labPacket{firstFamilyIP(t, pods, "y/a", v6), firstFamilyIP(t, pods, "x/a", v6), corev1.ProtocolTCP, port},
				labPacket{firstFamilyIP(t, pods, "x/b", v6), firstFamilyIP(t, pods, "z/a", v6), corev1.ProtocolTCP, port})
		}
	}
	lab.send(pkts)
	time.Sleep(300 * time.Millisecond)

	gotos := 0
	for node, out := range monitors {
		family := map[string]string{} // trace id -> "ip" or "ip6"
		for _, line := range strings.Split(out.String(), "\n") {
			m := traceLineRE.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			id, table, chain, rest := m[1], m[2], m[3], m[4]
			if strings.HasPrefix(rest, "packet: ") {
				switch {
				case strings.Contains(rest, " ip6 saddr "):
					family[id] = "v6"
				case strings.Contains(rest, " ip saddr "):
					family[id] = "v4"
				}
				continue
			}
			fam := family[id]
			if table != nft.DefaultTable || fam == "" {
				continue
			}
			if strings.HasPrefix(chain, "adm-") || strings.HasPrefix(chain, "bl-") {
				if !strings.HasSuffix(chain, "-"+fam) {
					t.Errorf("%s: an IP%s flow in chain %s: %s", node, fam, chain, line)
				}
			}
			if strings.Contains(rest, "vmap @admin-") || strings.Contains(rest, "vmap @baseline-") {
				if !strings.Contains(rest, "(verdict goto ") || !strings.HasSuffix(rest, "-"+fam+")") {
					t.Errorf("%s: an IP%s flow's tier map does not go to its family's chain by goto: %s", node, fam, line)
				}
				gotos++
			}
		}
		if len(family) == 0 {
			t.Fatalf("%s: no trace:\n%s", node, out.String())
		}
	}
	if gotos < 4 {
		t.Fatalf("%d tier map verdicts traced, want one per family and direction at least", gotos)
	}
	t.Logf("%d tier map gotos traced, each to its family's chain", gotos)
}

// firstFamilyIP is the pod's address of the family.
func firstFamilyIP(t *testing.T, pods []*corev1.Pod, key string, v6 bool) netip.Addr {
	t.Helper()
	for _, p := range pods {
		if p.Namespace+"/"+p.Name == key {
			for _, ip := range netpolref.PodIPs(p) {
				if ip.Is6() == v6 {
					return ip
				}
			}
		}
	}
	t.Fatalf("no pod %s", key)
	return netip.Addr{}
}
