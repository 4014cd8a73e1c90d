package main

import (
	"encoding/binary"
	"hash/crc32"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestInitPacket checks the INIT against RFC 9260: verification tag 0, one INIT
// chunk of 20 bytes, and a CRC32c that verifies the way a receiver checks it
// (computed over the packet with the checksum field zeroed).
func TestInitPacket(t *testing.T) {
	p := initPacket(50000, 9003, 0xdeadbeef, 7)
	if len(p) != 32 {
		t.Fatalf("length %d, want 32", len(p))
	}
	if got := binary.BigEndian.Uint16(p[0:]); got != 50000 {
		t.Errorf("source port %d", got)
	}
	if got := binary.BigEndian.Uint16(p[2:]); got != 9003 {
		t.Errorf("destination port %d", got)
	}
	if vtag := binary.BigEndian.Uint32(p[4:]); vtag != 0 {
		t.Errorf("verification tag %#x, want 0 with INIT", vtag)
	}
	if p[12] != 1 || binary.BigEndian.Uint16(p[14:]) != 20 || binary.BigEndian.Uint32(p[16:]) != 0xdeadbeef {
		t.Errorf("INIT chunk header % x", p[12:20])
	}
	zeroed := append([]byte(nil), p...)
	copy(zeroed[8:12], []byte{0, 0, 0, 0})
	if want, got := crc32.Checksum(zeroed, crc32.MakeTable(crc32.Castagnoli)), binary.LittleEndian.Uint32(p[8:]); got != want {
		t.Errorf("checksum %#x, want %#x", got, want)
	}
}

// TestProbe sends real INITs between two network namespaces: delivered when
// nothing stops them (the receiver's kernel, without SCTP, answers protocol
// unreachable), not delivered within the timeout when the receiver's input hook
// drops SCTP to that port. Conntrack must see them as valid new SCTP
// connections, as it sees real ones, or the policies would judge something else.
func TestProbe(t *testing.T) {
	nfttest.RequireRoot(t)
	client := nfttest.NewNetNS(t, "sctpc")
	server := nfttest.NewNetNS(t, "sctps")
	veth := "sctp" + nfttest.RandomHex(3)
	for _, args := range [][]string{
		{"ip", "link", "add", veth, "netns", client.Name, "type", "veth", "peer", "name", "eth0", "netns", server.Name},
		{"ip", "-n", client.Name, "addr", "add", "192.0.2.1/24", "dev", veth},
		{"ip", "-n", client.Name, "addr", "add", "2001:db8::1/64", "dev", veth, "nodad"},
		{"ip", "-n", client.Name, "link", "set", veth, "up"},
		{"ip", "-n", server.Name, "addr", "add", "192.0.2.2/24", "dev", "eth0"},
		{"ip", "-n", server.Name, "addr", "add", "2001:db8::2/64", "dev", "eth0", "nodad"},
		{"ip", "-n", server.Name, "link", "set", "eth0", "up"},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	if _, err := server.NFT(`table inet probe {
  chain input {
    type filter hook input priority 0; policy accept;
    ct state invalid counter name "invalid" drop
    meta l4proto sctp ct state new counter name "new"
    sctp dport 9005 drop
  }
  counter invalid {}
  counter new {}
}`, "-f", "-"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		dst  string
		want bool
	}{
		{"192.0.2.2:9003", true},
		{"192.0.2.2:9005", false},
		{"[2001:db8::2]:9003", true},
		{"[2001:db8::2]:9005", false},
	} {
		var delivered bool
		start := time.Now()
		err := client.Do(func() error {
			var err error
			delivered, err = probe(netip.MustParseAddrPort(tc.dst), 3*time.Second)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", tc.dst, err)
		}
		if delivered != tc.want {
			t.Errorf("%s: delivered %v, want %v (after %s)", tc.dst, delivered, tc.want, time.Since(start).Round(time.Millisecond))
		}
	}
	for name, want := range map[string]string{"invalid": "packets 0 ", "new": "packets "} {
		out, err := server.NFT("", "list", "counter", "inet", "probe", name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, want) || (name == "new" && strings.Contains(out, "packets 0 ")) {
			t.Errorf("the server's counter %s:\n%s", name, out)
		}
	}
}
