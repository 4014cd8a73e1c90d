package nflog

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
)

func ipv4(proto byte, src, dst string, fragField uint16, l4 []byte) []byte {
	b := make([]byte, 20, 20+len(l4))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(b[6:], fragField)
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	return append(b, l4...)
}

func ipv6(next byte, src, dst string, rest []byte) []byte {
	b := make([]byte, 40, 40+len(rest))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(rest)))
	b[6], b[7] = next, 64
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	return append(b, rest...)
}

func ports(sp, dp uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, sp), dp)
}

func TestDecode(t *testing.T) {
	frag := []byte{17, 0, 0, 0, 0, 0, 0, 1} // fragment header, offset 0, next UDP
	laterFrag := []byte{17, 0, 0, 8, 0, 0, 0, 1}
	hbh := []byte{6, 0, 1, 4, 0, 0, 0, 0} // hop-by-hop, 8 bytes, next TCP
	for _, c := range []struct {
		name    string
		payload []byte
		want    string
		l4      bool
		frag    bool
	}{
		{"tcp4", ipv4(ProtoTCP, "10.0.0.1", "10.0.0.2", 0x4000, append(ports(40000, 80), make([]byte, 16)...)), "tcp 10.0.0.1:40000 -> 10.0.0.2:80", true, false},
		{"udp4", ipv4(ProtoUDP, "10.0.0.1", "10.0.0.2", 0, ports(53, 5353)), "udp 10.0.0.1:53 -> 10.0.0.2:5353", true, false},
		{"sctp4", ipv4(ProtoSCTP, "10.0.0.1", "10.0.0.2", 0, ports(1, 2)), "sctp 10.0.0.1:1 -> 10.0.0.2:2", true, false},
		{"icmp4", ipv4(ProtoICMP, "10.0.0.1", "10.0.0.2", 0, []byte{8, 0, 0, 0}), "icmp 10.0.0.1 -> 10.0.0.2 type 8 code 0", true, false},
		{"first fragment4", ipv4(ProtoUDP, "10.0.0.1", "10.0.0.2", 0x2000, ports(1, 2)), "udp 10.0.0.1:1 -> 10.0.0.2:2", true, true},
		{"later fragment4", ipv4(ProtoUDP, "10.0.0.1", "10.0.0.2", 0x0010, ports(1, 2)), "udp 10.0.0.1 -> 10.0.0.2", false, true},
		{"truncated l4", ipv4(ProtoTCP, "10.0.0.1", "10.0.0.2", 0, []byte{1}), "tcp 10.0.0.1 -> 10.0.0.2", false, false},
		{"udp6", ipv6(ProtoUDP, "fd00::1", "fd00::2", ports(1000, 2000)), "udp [fd00::1]:1000 -> [fd00::2]:2000", true, false},
		{"icmp6", ipv6(ProtoICMPv6, "fd00::1", "fd00::2", []byte{128, 0, 0, 0}), "ipv6-icmp fd00::1 -> fd00::2 type 128 code 0", true, false},
		{"hop-by-hop tcp6", ipv6(0, "fd00::1", "fd00::2", append(hbh, ports(5, 6)...)), "tcp [fd00::1]:5 -> [fd00::2]:6", true, false},
		{"first fragment6", ipv6(44, "fd00::1", "fd00::2", append(frag, ports(7, 8)...)), "udp [fd00::1]:7 -> [fd00::2]:8", true, true},
		{"later fragment6", ipv6(44, "fd00::1", "fd00::2", append(laterFrag, ports(7, 8)...)), "udp fd00::1 -> fd00::2", false, true},
		{"not ip", []byte{0x10, 1, 2}, "non-IP packet (hw protocol 0x0000, 3 bytes copied)", false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := Packet{Payload: c.payload}
			p.decode()
			if got := p.String(); got != c.want {
				t.Errorf("String() = %q, want %q", got, c.want)
			}
			if p.HasL4 != c.l4 || p.Fragment != c.frag {
				t.Errorf("HasL4 %v Fragment %v, want %v %v", p.HasL4, p.Fragment, c.l4, c.frag)
			}
			if p.Family != 0 && p.Length != len(c.payload) {
				t.Errorf("Length %d, want %d", p.Length, len(c.payload))
			}
		})
	}
}

// TestParsePacket parses a message as the kernel builds it, attribute by attribute.
func TestParsePacket(t *testing.T) {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Bytes(attrPacketHdr, []byte{0x08, 0x00, 2, 0})
	ae.Uint32(attrIfIndexIn, 7)
	ae.Uint32(attrIfIndexOut, 9)
	ae.Uint16(attrHWType, 1)
	ae.Bytes(attrHWAddr, []byte{0, 6, 0, 0, 0xa, 0xb, 0xc, 0xd, 0xe, 0xf, 0, 0})
	ae.Uint32(attrSeq, 41)
	ae.String(attrPrefix, "np-deny ing-3fa9c2d1")
	ae.Bytes(attrPayload, ipv4(ProtoUDP, "10.0.0.1", "10.0.0.2", 0, ports(1, 2)))
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	p, err := parsePacket(append(nfgenmsg(3), b...))
	if err != nil {
		t.Fatal(err)
	}
	if p.Prefix != "np-deny ing-3fa9c2d1" || p.Seq != 41 || p.InIfIndex != 7 || p.OutIfIndex != 9 ||
		p.HWProtocol != 0x0800 || p.Hook != 2 || p.HWType != 1 || p.HWAddr.String() != "0a:0b:0c:0d:0e:0f" {
		t.Errorf("parsed %+v", p)
	}
	if p.String() != "udp 10.0.0.1:1 -> 10.0.0.2:2" {
		t.Errorf("headers %s", p.String())
	}
	if _, err := parsePacket([]byte{1, 2}); err == nil {
		t.Error("short message parsed")
	}
}

func TestAccount(t *testing.T) {
	r := &Reader{}
	for _, s := range []uint32{5, 6, 9, 10, 10, 1<<32 - 1, 0, 3} {
		r.account(s)
	}
	// 7, 8 missing; 10 repeated counts nothing; 2^32-1 is a jump of 2^32-11 (more
	// than half the space: counted as old, nothing); 0 follows; 1, 2 missing.
	if got := r.Lost(); got != 4 {
		t.Errorf("Lost = %d, want 4", got)
	}
}
