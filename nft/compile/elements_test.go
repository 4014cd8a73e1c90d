package compile

import (
	"net/netip"
	"testing"

	"go4.org/netipx"

	"github.com/nftpolicy/nftpolicy/nft"
)

// TestSplitPortElems: one address with at most maxExactPorts ports is spelled out
// port by port for the hash set; an address range or a wider port range stays whole
// in the ranges set; nothing is lost or added.
func TestSplitPortElems(t *testing.T) {
	one := netipx.IPRangeFrom(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.1"))
	block := netipx.IPRangeFrom(netip.MustParseAddr("10.1.0.0"), netip.MustParseAddr("10.1.0.255"))
	in := []portElem{
		{one, 6, 80, 80},                       // one port
		{one, 6, 100, 100 + maxExactPorts - 1}, // the widest range spelled out
		{one, 6, 200, 200 + maxExactPorts},     // one port wider: a range
		{one, 17, 0, 65535},                    // a whole protocol
		{block, 6, 443, 443},                   // an ipBlock: a range of addresses
	}
	// The key of element i of what splitPortElems handed the key function is i.
	var handed []portElem
	key := func(e portElem) []nft.Value {
		handed = append(handed, e)
		return []nft.Value{nft.Num(uint32(len(handed) - 1))}
	}
	keyed := func(es []nft.Element) []portElem {
		var out []portElem
		for _, e := range es {
			out = append(out, handed[e.Key[0].Num])
		}
		return out
	}
	exactElems, rangeElems := splitPortElems(in, key)
	exact, ranges := keyed(exactElems), keyed(rangeElems)
	if len(handed) != len(exact)+len(ranges) {
		t.Errorf("%d keys for %d elements", len(handed), len(exact)+len(ranges))
	}
	if len(exact) != 1+maxExactPorts {
		t.Fatalf("exact: %d elements, want %d: %v", len(exact), 1+maxExactPorts, exact)
	}
	for i, e := range exact {
		if e.lo != e.hi || e.addrs != one || e.proto != 6 {
			t.Errorf("exact[%d] = %+v: not one address, protocol and port", i, e)
		}
		if i > 0 && e.lo != 100+uint16(i-1) {
			t.Errorf("exact[%d] port %d, want %d", i, e.lo, 100+i-1)
		}
	}
	if len(ranges) != 3 || ranges[0] != in[2] || ranges[1] != in[3] || ranges[2] != in[4] {
		t.Errorf("ranges = %v, want %v", ranges, in[2:])
	}
}
