package netlink

import (
	"context"
	"net"
	"strconv"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestTableCtMark reads the epoch of strict mode's fast path back from the kernel.
func TestTableCtMark(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-ctm")
	a := newApplier(t, ns, "np")
	if _, found, err := a.TableCtMark(nft.ChainForward, 0x00ff0000); err != nil || found {
		t.Fatalf("no table: found %v, %v", found, err)
	}
	rs := &nft.Ruleset{Table: "np", Chains: []nft.Chain{{
		Name: nft.ChainForward,
		Hook: &nft.Hook{Type: "filter", Hook: "forward", Priority: 0, Policy: nft.Accept},
		Rules: []nft.Rule{
			{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtInvalid))}, Verdict: nft.Verdict{Kind: nft.Drop}},
			{Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))},
				CtMark: &nft.CtMarkMatch{Mask: 0x00ff0000, Value: 0x00050000}, Verdict: nft.Verdict{Kind: nft.Accept}},
		},
	}}}
	if _, err := a.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	if v, found, err := a.TableCtMark(nft.ChainForward, 0x00ff0000); err != nil || !found || v != 0x00050000 {
		t.Errorf("TableCtMark = 0x%x, %v, %v; want 0x50000, true", v, found, err)
	}
	if _, found, err := a.TableCtMark(nft.ChainForward, 0x0000ff00); err != nil || found {
		t.Errorf("another mask: found %v, %v", found, err)
	}
	if _, found, err := a.TableCtMark("nope", 0x00ff0000); err != nil || found {
		t.Errorf("missing chain: found %v, %v", found, err)
	}
}

// TestClearCtMark marks 100 connections with epoch 3, 100 with epoch 4 (and half of
// all with a bit that another component owns), clears every epoch but 4, and checks
// that exactly the epoch-3 connections lost theirs and that the other bit stayed.
func TestClearCtMark(t *testing.T) {
	requireKernel(t)
	ns := nfttest.NewNetNS(t, "np3-ctc")
	if _, err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
		t.Fatal(err)
	}
	nftRun(t, ns, `table inet marks {
	chain out {
		type filter hook output priority 0; policy accept;
		udp dport 9000-9099 ct mark set ct mark or 0x00000080
		udp dport 9000-9149 ct mark set ct mark and 0xff00ffff or 0x00030000
		udp dport 9150-9249 ct mark set ct mark and 0xff00ffff or 0x00040000
	}
}
`, "-f", "-")
	err := ns.Do(func() error {
		for port := 9000; port < 9250; port++ {
			c, err := net.Dial("udp4", "127.0.0.1:"+strconv.Itoa(port))
			if err != nil {
				return err
			}
			_, _ = c.Write([]byte("x"))
			c.Close()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Later packets must not mark again.
	nftRun(t, ns, "", "delete", "table", "inet", "marks")
	a := newApplier(t, ns, "np")
	// 9000-9149 carry epoch 3 (9000-9099 with the foreign bit), 9150-9249 epoch 4.
	if n, err := a.ClearCtMark(0x00ff0000, 0x00040000); err != nil || n != 150 {
		t.Errorf("cleared %d, %v; want 150", n, err)
	}
	if n, err := a.ClearCtMark(0x00ff0000, 0x00040000); err != nil || n != 0 {
		t.Errorf("cleared again: %d, %v; want 0", n, err)
	}
	if n, err := a.ClearCtMark(0x00ff0000, 0); err != nil || n != 100 {
		t.Errorf("epoch 4 cleared from %d connections, %v; want 100", n, err)
	}
	// The foreign bit is still there on the 100 connections that had it.
	if n, err := a.ClearCtMark(0x80, 0); err != nil || n != 100 {
		t.Errorf("foreign bit on %d connections, %v; want 100", n, err)
	}
}
