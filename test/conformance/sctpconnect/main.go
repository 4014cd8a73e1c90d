// Command sctpconnect is `agnhost connect --protocol=sctp` for a kernel without
// SCTP sockets: it tells whether an SCTP association to HOST:PORT would get
// through the network policies between here and there, with real packets.
//
// The conformance cluster's kernel has no SCTP protocol module, so agnhost
// cannot open an SCTP socket ("protocol not supported") and the SCTP server
// containers of the ClusterNetworkPolicy suite cannot listen. The packet path
// still knows SCTP: nftables matches `meta l4proto sctp` and `th dport`, and
// conntrack tracks SCTP. So this probe builds the first packet of an
// association itself, an SCTP INIT (correct CRC32c, verification tag 0), sends
// it on a raw IP socket, and listens for the answer of the destination's
// kernel: having no SCTP either, it answers any SCTP packet that reaches it
// with ICMP protocol unreachable (ICMPv6 parameter problem, unrecognized next
// header), which quotes the INIT. That answer means the INIT crossed every
// hook between the two network namespaces (egress and ingress policies
// included) exactly as a real INIT would have, and was delivered; the rest of
// a real association would be conntrack-established traffic. No answer within
// the timeout is a drop.
//
// Arguments and output are agnhost connect's, so the suite's probe helper
// reads it unchanged: `connect --timeout=3s --protocol=sctp HOST:PORT` (the
// leading "connect" optional); exit 0 when the INIT was delivered; else exit 1
// with stderr "TIMEOUT" (no answer), "UNKNOWN: ..." (bad arguments) or
// "OTHER: ..." (anything else, e.g. an ICMP error other than the expected
// one). It needs CAP_NET_RAW, which containers have by default.
package main

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "connect" {
		args = args[1:]
	}
	fs := flag.NewFlagSet("sctpconnect", flag.ContinueOnError)
	timeout := fs.Duration("timeout", 0, "maximum time before returning an error")
	protocol := fs.String("protocol", "sctp", "must be sctp")
	fs.String("sctp-data", "", "ignored: no association is made")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 || *protocol != "sctp" {
		fail("UNKNOWN", "usage: sctpconnect [connect] --timeout=D --protocol=sctp HOST:PORT")
	}
	dst, err := netip.ParseAddrPort(fs.Arg(0))
	if err != nil {
		fail("UNKNOWN", err.Error())
	}
	if *timeout <= 0 {
		*timeout = 10 * time.Second
	}
	delivered, err := probe(dst, *timeout)
	switch {
	case err != nil:
		fail("OTHER", err.Error())
	case !delivered:
		fmt.Fprintln(os.Stderr, "TIMEOUT")
		os.Exit(1)
	}
}

func fail(kind, msg string) {
	fmt.Fprintf(os.Stderr, "%s: %s\n", kind, msg)
	os.Exit(1)
}

const protoSCTP = 132

// initPacket is an SCTP packet holding one INIT chunk from srcPort to dstPort.
func initPacket(srcPort, dstPort uint16, tag, tsn uint32) []byte {
	p := make([]byte, 12+20)
	binary.BigEndian.PutUint16(p[0:], srcPort)
	binary.BigEndian.PutUint16(p[2:], dstPort)
	// p[4:8], the verification tag, is 0 in a packet carrying INIT.
	c := p[12:]
	c[0] = 1 // INIT
	binary.BigEndian.PutUint16(c[2:], 20)
	binary.BigEndian.PutUint32(c[4:], tag)   // initiate tag, never 0
	binary.BigEndian.PutUint32(c[8:], 65535) // advertised receiver window
	binary.BigEndian.PutUint16(c[12:], 1)    // outbound streams
	binary.BigEndian.PutUint16(c[14:], 1)    // inbound streams
	binary.BigEndian.PutUint32(c[16:], tsn)  // initial TSN
	sum := crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli))
	// RFC 9260 appendix A: the CRC32c goes in as the little-endian bytes of the
	// value (the reflected algorithm's natural order), as Linux does.
	binary.LittleEndian.PutUint32(p[8:], sum)
	return p
}

func random32() uint32 {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return binary.BigEndian.Uint32(b[:])
}

// probe sends one INIT to dst and waits until timeout for the ICMP error that
// quotes it. It resends the INIT once a second (as SCTP retransmits INIT), so
// that a lost packet or a rate-limited answer is not taken for a drop.
func probe(dst netip.AddrPort, timeout time.Duration) (bool, error) {
	fam, icmpProto := syscall.AF_INET, syscall.IPPROTO_ICMP
	if dst.Addr().Is6() {
		fam, icmpProto = syscall.AF_INET6, syscall.IPPROTO_ICMPV6
	}
	// The ICMP socket first, so that no answer can come before it listens.
	icmp, err := syscall.Socket(fam, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, icmpProto)
	if err != nil {
		return false, fmt.Errorf("raw ICMP socket: %w", err)
	}
	defer syscall.Close(icmp)
	sctp, err := syscall.Socket(fam, syscall.SOCK_RAW|syscall.SOCK_CLOEXEC, protoSCTP)
	if err != nil {
		return false, fmt.Errorf("raw SCTP socket: %w", err)
	}
	defer syscall.Close(sctp)

	var sa syscall.Sockaddr
	if dst.Addr().Is6() {
		sa = &syscall.SockaddrInet6{Addr: dst.Addr().As16()}
	} else {
		sa = &syscall.SockaddrInet4{Addr: dst.Addr().Unmap().As4()}
	}
	srcPort := uint16(49152 + random32()%16384)
	pkt := initPacket(srcPort, dst.Port(), random32()|1, random32())

	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	for next := time.Now(); ; {
		now := time.Now()
		if !now.Before(deadline) {
			return false, nil
		}
		if !now.Before(next) {
			if err := syscall.Sendto(sctp, pkt, 0, sa); err != nil {
				return false, fmt.Errorf("sending INIT: %w", err)
			}
			next = now.Add(time.Second)
		}
		wait := min(deadline.Sub(now), next.Sub(now))
		tv := syscall.NsecToTimeval(max(wait, time.Millisecond).Nanoseconds())
		if err := syscall.SetsockoptTimeval(icmp, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
			return false, err
		}
		n, _, err := syscall.Recvfrom(icmp, buf, 0)
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("reading ICMP: %w", err)
		}
		delivered, other := quoted(buf[:n], dst, srcPort)
		if other != "" {
			return false, errors.New(other)
		}
		if delivered {
			return true, nil
		}
	}
}

// quoted reads one ICMP message (an IPv4 raw socket hands over the IP header
// too) and, when it is an error quoting our INIT (to dst, from srcPort),
// reports whether it says the INIT was delivered (protocol unreachable, or
// unrecognized next header) or, in other, what else it says.
func quoted(msg []byte, dst netip.AddrPort, srcPort uint16) (delivered bool, other string) {
	v6 := dst.Addr().Is6()
	if !v6 {
		if len(msg) < 20 {
			return false, ""
		}
		msg = msg[int(msg[0]&0x0f)*4:]
	}
	if len(msg) < 8 {
		return false, ""
	}
	typ, code := msg[0], msg[1]
	inner := msg[8:]
	var proto byte
	var innerDst netip.Addr
	if v6 {
		if len(inner) < 40 {
			return false, ""
		}
		proto, innerDst = inner[6], netip.AddrFrom16([16]byte(inner[24:40]))
		inner = inner[40:]
	} else {
		if len(inner) < 20 {
			return false, ""
		}
		proto, innerDst = inner[9], netip.AddrFrom4([4]byte(inner[16:20]))
		inner = inner[int(inner[0]&0x0f)*4:]
	}
	if proto != protoSCTP || innerDst != dst.Addr().Unmap() || len(inner) < 4 ||
		binary.BigEndian.Uint16(inner[0:]) != srcPort || binary.BigEndian.Uint16(inner[2:]) != dst.Port() {
		return false, "" // someone else's
	}
	switch {
	case !v6 && typ == 3 && code == 2, v6 && typ == 4 && code == 1:
		return true, ""
	case !v6 && typ == 3:
		return false, "ICMP destination unreachable, code " + strconv.Itoa(int(code))
	case v6 && typ == 1:
		return false, "ICMPv6 destination unreachable, code " + strconv.Itoa(int(code))
	case typ == 0 || typ == 8 || typ == 128 || typ == 129:
		return false, ""
	}
	return false, fmt.Sprintf("ICMP type %d code %d", typ, code)
}
