package compile

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/nft/trace"
)

// tierDispatch are the tier dispatch chains: a family's verdict map each, then
// the other family's.
var tierDispatch = map[string]bool{
	nft.ChainAdminEgress: true, nft.ChainAdminIngress: true, nft.ChainBaselineEgress: true, nft.ChainBaselineIngress: true,
	nft.ChainAdminEgressReply: true, nft.ChainAdminIngressReply: true, nft.ChainBaselineEgressReply: true, nft.ChainBaselineIngressReply: true,
}

// tierFamilyWalk is "" when walk (a packet of family v6 or not through rs) walked
// no tier rule of the other family: no rule of a tier group chain (adm-…, bl-…)
// that reads the other family's addresses, and no rule of a dispatch chain after
// the packet went to a group chain (the rule after the packet's own map is the
// other family's: the maps go to group chains by goto, so a group chain that
// decides nothing returns past it). Else it says which rule.
func tierFamilyWalk(rs *nft.Ruleset, walk trace.Trace, v6 bool) string {
	other := map[nft.Key]bool{nft.KeyIP6Saddr: true, nft.KeyIP6Daddr: true}
	if v6 {
		other = map[nft.Key]bool{nft.KeyIPSaddr: true, nft.KeyIPDaddr: true}
	}
	for i, w := range walk.Walked {
		if tierDispatch[w.Chain] && w.Index > 0 && (i == 0 || walk.Walked[i-1] != trace.RuleRef{Chain: w.Chain, Index: w.Index - 1}) {
			return fmt.Sprintf("back in %s after its group chain: walks rule %d, %s", w.Chain, w.Index, nft.RenderRule(rs.Chain(w.Chain).Rules[w.Index]))
		}
		if !strings.HasPrefix(w.Chain, "adm-") && !strings.HasPrefix(w.Chain, "bl-") {
			continue
		}
		r := rs.Chain(w.Chain).Rules[w.Index]
		for _, m := range r.Matches {
			for _, k := range m.Keys {
				if other[k] {
					return fmt.Sprintf("walks %s rule %d of the other family: %s", w.Chain, w.Index, nft.RenderRule(r))
				}
			}
		}
	}
	return ""
}

// TestTierFamilyWalk: a new flow walks only its own family's tier rules
// (tierFamilyWalk, which TestCrosscheckRandomTiers and the goldens' crosschecks
// also apply to every packet they trace), and fewer rules than through the older
// shape (nfttest.ClusterTiersMixedFamily), which the check rejects: the check
// can fail.
func TestTierFamilyWalk(t *testing.T) {
	var walked, walkedOld, packets, oldCaught int
	for i := range 30 {
		w := randomTieredWorld(rand.New(rand.NewPCG(31, uint64(i))))
		for _, opts := range []Options{{}, {Established: EstablishedRecheck}} {
			rs, _ := Compile(w.snapshot("node-1"), opts)
			if rs.Chain(nft.ChainAdminEgress) == nil {
				continue
			}
			tr, old := trace.New(rs), trace.New(nfttest.ClusterTiersMixedFamily(rs.Clone()))
			var addrs []nft.Value
			for _, p := range w.pods {
				for _, ip := range refPodIPs(p) {
					addrs = append(addrs, nft.Addr(ip))
				}
			}
			for _, src := range addrs {
				for _, dst := range addrs {
					if src.Addr == dst.Addr || src.Addr.Is4() != dst.Addr.Is4() {
						continue
					}
					for _, port := range w.ports {
						pkt := trace.Packet{Saddr: src.Addr, Daddr: dst.Addr, L4Proto: nft.ProtoTCP, DPort: uint16(port), CtState: nft.CtNew}
						got, err := tr.Forward(pkt)
						if err != nil {
							t.Fatal(err)
						}
						if msg := tierFamilyWalk(rs, got, src.Addr.Is6()); msg != "" {
							t.Fatalf("world %d %v: %s\n%s", i, pkt, msg, got)
						}
						was, err := old.Forward(pkt)
						if err != nil {
							t.Fatal(err)
						}
						if was.Verdict != got.Verdict {
							t.Fatalf("world %d %v: %s through the older shape, %s now", i, pkt, was.Verdict, got.Verdict)
						}
						if tierFamilyWalk(old.Ruleset(), was, src.Addr.Is6()) != "" {
							oldCaught++
						}
						packets++
						walked += len(got.Walked)
						walkedOld += len(was.Walked)
					}
				}
			}
		}
	}
	if packets == 0 || oldCaught == 0 {
		t.Fatalf("%d packets, %d caught walking the other family through the older shape: the test proves nothing", packets, oldCaught)
	}
	if walked >= walkedOld {
		t.Errorf("%d rules walked, %d through the older shape: no fewer", walked, walkedOld)
	}
	t.Logf("%d packets: %.1f rules walked each (older shape %.1f; %d of its walks took the other family's rules)",
		packets, float64(walked)/float64(packets), float64(walkedOld)/float64(packets), oldCaught)
}
