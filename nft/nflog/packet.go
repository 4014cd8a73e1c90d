package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/mdlayher/netlink"
)

// IP protocol numbers that Packet decodes.
const (
	ProtoICMP    = 1
	ProtoTCP     = 6
	ProtoUDP     = 17
	ProtoICMPv6  = 58
	ProtoSCTP    = 132
	ProtoUDPLite = 136
)

// Packet is one logged packet: what the kernel said about it, and its headers
// as decoded from the copied bytes.
type Packet struct {
	// Prefix is the rule's log prefix.
	Prefix string
	// Seq is the group's sequence number of the message.
	Seq uint32
	// HWProtocol is the packet's link-layer protocol (an EtherType such as
	// 0x0800), and Hook the netfilter hook that logged it.
	HWProtocol uint16
	Hook       uint8
	// InIfIndex and OutIfIndex are the input and output interfaces (0: none,
	// as in the output hook, or the input hook).
	InIfIndex, OutIfIndex uint32
	// HWType is the ARPHRD type of the input device and HWAddr the packet's
	// source hardware address, when the kernel knows them.
	HWType uint16
	HWAddr net.HardwareAddr
	Mark   uint32
	// Time is when the packet was logged; zero when the kernel did not say.
	Time time.Time
	// Payload is the copied bytes, from the network header on.
	Payload []byte

	// Headers, decoded from Payload.

	// Family is 4 or 6; 0 when Payload holds no IP header.
	Family int
	Src    netip.Addr
	Dst    netip.Addr
	// Length is the packet's length in bytes as its IP header states it.
	Length int
	// Protocol is the transport protocol (the last IPv6 next header).
	Protocol uint8
	// SrcPort and DstPort are set for TCP, UDP, UDP-Lite and SCTP; ICMPType and
	// ICMPCode for ICMP and ICMPv6. HasL4 says whether those were decoded: not
	// for a later fragment, nor when the copy ends before them.
	SrcPort, DstPort   uint16
	ICMPType, ICMPCode uint8
	HasL4              bool
	// Fragment is set for every fragment of a fragmented packet.
	Fragment bool
}

// ProtocolName is the transport protocol as nft writes it ("tcp", "udp",
// "icmp", "ipv6-icmp", "sctp"), or its number.
func (p *Packet) ProtocolName() string {
	switch p.Protocol {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "ipv6-icmp"
	case ProtoSCTP:
		return "sctp"
	case ProtoUDPLite:
		return "udplite"
	}
	return strconv.Itoa(int(p.Protocol))
}

// HasPorts reports whether the packet's transport protocol has ports and they
// were decoded.
func (p *Packet) HasPorts() bool {
	switch p.Protocol {
	case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoUDPLite:
		return p.HasL4
	}
	return false
}

// parsePacket parses an NFULNL_MSG_PACKET message body (nfgenmsg, attributes).
func parsePacket(b []byte) (Packet, error) {
	var p Packet
	if len(b) < nfgenmsgLen {
		return p, errors.New("short message")
	}
	ad, err := netlink.NewAttributeDecoder(b[nfgenmsgLen:])
	if err != nil {
		return p, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case attrPacketHdr:
			// struct nfulnl_msg_packet_hdr { __be16 hw_protocol; __u8 hook; __u8 _pad; }
			if v := ad.Bytes(); len(v) >= 3 {
				p.HWProtocol = binary.BigEndian.Uint16(v)
				p.Hook = v[2]
			}
		case attrMark:
			p.Mark = ad.Uint32()
		case attrTimestamp:
			// struct nfulnl_msg_packet_timestamp { __aligned_be64 sec; __aligned_be64 usec; }
			if v := ad.Bytes(); len(v) >= 16 {
				p.Time = time.Unix(int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))*1000)
			}
		case attrIfIndexIn:
			p.InIfIndex = ad.Uint32()
		case attrIfIndexOut:
			p.OutIfIndex = ad.Uint32()
		case attrHWAddr:
			// struct nfulnl_msg_packet_hw { __be16 hw_addrlen; __u16 _pad; __u8 hw_addr[8]; }
			if v := ad.Bytes(); len(v) >= 4 {
				n := int(binary.BigEndian.Uint16(v))
				if n <= len(v)-4 {
					p.HWAddr = net.HardwareAddr(v[4 : 4+n])
				}
			}
		case attrHWType:
			p.HWType = ad.Uint16()
		case attrPayload:
			p.Payload = ad.Bytes()
		case attrPrefix:
			p.Prefix = ad.String()
		case attrSeq:
			p.Seq = ad.Uint32()
		}
	}
	if err := ad.Err(); err != nil {
		return p, err
	}
	p.decode()
	return p, nil
}

// decode fills in the headers from Payload. A truncated or unknown header stops
// decoding; what was decoded so far stays.
func (p *Packet) decode() {
	b := p.Payload
	if len(b) == 0 {
		return
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		ihl := int(b[0]&0x0f) * 4
		if len(b) < 20 || ihl < 20 {
			return
		}
		p.Family = 4
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.Length = int(binary.BigEndian.Uint16(b[2:4]))
		p.Protocol = b[9]
		frag := binary.BigEndian.Uint16(b[6:8])
		p.Fragment = frag&0x3fff != 0 // more fragments, or an offset
		if frag&0x1fff != 0 || len(b) < ihl {
			return // a later fragment carries no transport header
		}
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return
		}
		p.Family = 6
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		p.Length = 40 + int(binary.BigEndian.Uint16(b[4:6]))
		next, rest := b[6], b[40:]
		for {
			p.Protocol = next
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(rest) < 8 {
					return
				}
				n := (int(rest[1]) + 1) * 8
				if len(rest) < n {
					return
				}
				next, rest = rest[0], rest[n:]
				continue
			case 44: // fragment
				if len(rest) < 8 {
					return
				}
				p.Fragment = true
				if binary.BigEndian.Uint16(rest[2:4])&0xfff8 != 0 {
					p.Protocol = rest[0]
					return
				}
				next, rest = rest[0], rest[8:]
				continue
			case 51: // authentication header: length in 4-byte units, minus 2
				if len(rest) < 8 {
					return
				}
				n := (int(rest[1]) + 2) * 4
				if len(rest) < n {
					return
				}
				next, rest = rest[0], rest[n:]
				continue
			}
			break
		}
		l4 = rest
	default:
		return
	}
	switch p.Protocol {
	case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoUDPLite:
		if len(l4) >= 4 {
			p.SrcPort = binary.BigEndian.Uint16(l4[0:2])
			p.DstPort = binary.BigEndian.Uint16(l4[2:4])
			p.HasL4 = true
		}
	case ProtoICMP, ProtoICMPv6:
		if len(l4) >= 2 {
			p.ICMPType, p.ICMPCode = l4[0], l4[1]
			p.HasL4 = true
		}
	}
}

// String is a one-line summary, e.g. `tcp 10.0.0.1:40000 -> 10.0.0.2:80`.
func (p *Packet) String() string {
	if p.Family == 0 {
		return fmt.Sprintf("non-IP packet (hw protocol %#04x, %d bytes copied)", p.HWProtocol, len(p.Payload))
	}
	switch {
	case p.HasPorts():
		return fmt.Sprintf("%s %s -> %s", p.ProtocolName(), netip.AddrPortFrom(p.Src, p.SrcPort), netip.AddrPortFrom(p.Dst, p.DstPort))
	case p.HasL4 && (p.Protocol == ProtoICMP || p.Protocol == ProtoICMPv6):
		return fmt.Sprintf("%s %s -> %s type %d code %d", p.ProtocolName(), p.Src, p.Dst, p.ICMPType, p.ICMPCode)
	}
	return fmt.Sprintf("%s %s -> %s", p.ProtocolName(), p.Src, p.Dst)
}
