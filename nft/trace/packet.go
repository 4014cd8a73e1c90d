package trace

import (
	"fmt"
	"net/netip"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Packet is what the tracer knows of a packet: every field a rule of the nft model
// can read. Saddr and Daddr have the packet's family (both IPv4 or both IPv6).
type Packet struct {
	Saddr, Daddr     netip.Addr
	L4Proto          uint8  // nft.ProtoTCP, ...
	SPort, DPort     uint16 // for TCP, UDP, SCTP, UDP-Lite and DCCP
	ICMPType         uint8  // icmpv6 type when L4Proto is nft.ProtoICMPv6 (icmp type for ICMP)
	CtState          uint32 // exactly one state bit: nft.CtNew, nft.CtEstablished, ...
	CtMark           uint32 // the connection's mark (ct mark)
	CtReply          bool   // ct direction reply: a reply of the connection, not its original direction
	Mark             uint32 // the packet's mark (meta mark)
	IIFName, OIFName string
}

// String is a one-line description: addresses, protocol, port and ct state.
func (p Packet) String() string {
	s := fmt.Sprintf("%s -> %s %s", p.Saddr, p.Daddr, nft.RenderValue(nft.TypeInetProto, nft.Num(uint32(p.L4Proto))))
	switch {
	case hasPorts(p.L4Proto):
		s += fmt.Sprintf(" dport %d", p.DPort)
	case p.L4Proto == nft.ProtoICMPv6 || p.L4Proto == nft.ProtoICMP:
		s += fmt.Sprintf(" type %d", p.ICMPType)
	}
	s += " ct state " + nft.RenderValue(nft.TypeCtState, nft.Num(p.CtState))
	if p.CtReply {
		s += " ct direction reply"
	}
	if p.CtMark != 0 {
		s += fmt.Sprintf(" ct mark 0x%x", p.CtMark)
	}
	return s
}

// tracked reports whether the packet has a connection: ct mark and ct direction
// exist (an invalid or untracked packet has none, and a ct expression on it fails).
func (p *Packet) tracked() bool { return p.CtState&(nft.CtInvalid|nft.CtUntracked) == 0 }

// value is the packet's value of one key: an address, a number or a string.
type value struct {
	addr netip.Addr
	num  uint32
	str  string
}

// field returns the packet's value of k, and false when the packet has no such
// field: ip saddr of an IPv6 packet (nft's implicit `meta nfproto` dependency makes
// the rule fail, negated or not), th dport of a protocol without ports, icmpv6 type of
// anything but ICMPv6. A key the tracer does not know is an error, never a guess.
func (p *Packet) field(k nft.Key) (value, bool, error) {
	switch k {
	case nft.KeyIPSaddr:
		return value{addr: p.Saddr}, p.Saddr.Is4(), nil
	case nft.KeyIPDaddr:
		return value{addr: p.Daddr}, p.Daddr.Is4(), nil
	case nft.KeyIP6Saddr:
		return value{addr: p.Saddr}, p.Saddr.Is6(), nil
	case nft.KeyIP6Daddr:
		return value{addr: p.Daddr}, p.Daddr.Is6(), nil
	case nft.KeyL4Proto:
		return value{num: uint32(p.L4Proto)}, true, nil
	case nft.KeyNFProto:
		if p.Saddr.Is4() {
			return value{num: nft.NFProtoIPv4}, true, nil
		}
		return value{num: nft.NFProtoIPv6}, true, nil
	case nft.KeyTHDport:
		return value{num: uint32(p.DPort)}, hasPorts(p.L4Proto), nil
	case nft.KeyTHSport:
		return value{num: uint32(p.SPort)}, hasPorts(p.L4Proto), nil
	case nft.KeyCtState:
		return value{num: p.CtState}, true, nil
	case nft.KeyICMPv6Type:
		return value{num: uint32(p.ICMPType)}, p.Saddr.Is6() && p.L4Proto == nft.ProtoICMPv6, nil
	case nft.KeyIIFName:
		return value{str: p.IIFName}, true, nil
	case nft.KeyOIFName:
		return value{str: p.OIFName}, true, nil
	case nft.KeyCtDirection:
		if p.CtReply {
			return value{num: nft.CtReply}, p.tracked(), nil
		}
		return value{num: nft.CtOriginal}, p.tracked(), nil
	}
	return value{}, false, fmt.Errorf("the tracer does not know key %v", k)
}

// hasPorts: the protocols whose transport header starts with source and destination
// ports (where `th dport` reads). For others the kernel would read whatever bytes sit
// there; nftpolicy's rules always pair th dport with meta l4proto, which makes the
// difference moot, and the tracer says "no such field".
func hasPorts(proto uint8) bool {
	switch proto {
	case nft.ProtoTCP, nft.ProtoUDP, nft.ProtoSCTP, 136 /* UDP-Lite */, 33 /* DCCP */ :
		return true
	}
	return false
}

// has reports whether the element field v holds the packet's value x of a key of
// type t: equal, inside the range, or (interface names) matching the wildcard.
func has(t nft.DataType, v nft.Value, x value) bool {
	switch t {
	case nft.TypeIPv4Addr, nft.TypeIPv6Addr:
		if v.Range {
			return v.Addr.Compare(x.addr) <= 0 && x.addr.Compare(v.AddrEnd) <= 0
		}
		return v.Addr == x.addr
	case nft.TypeIfName:
		if n := len(v.Str); n > 0 && v.Str[n-1] == '*' {
			return len(x.str) >= n-1 && x.str[:n-1] == v.Str[:n-1]
		}
		return v.Str == x.str
	}
	if v.Range {
		return v.Num <= x.num && x.num <= v.NumEnd
	}
	return v.Num == x.num
}
