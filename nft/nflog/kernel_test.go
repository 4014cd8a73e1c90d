package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// Kernel tests: two network namespaces joined by a veth pair; the receiving one
// logs what arrives with rules loaded by the nft CLI, and a Reader reads them back.

type pair struct {
	cli, srv  *nfttest.NetNS
	srvIndex  uint32 // ifindex of the server's veth end
	srvMAC    net.HardwareAddr
	cliMAC    net.HardwareAddr
	srvNSFile *os.File
}

func newPair(t *testing.T) *pair {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	nfttest.RequireRoot(t)
	p := &pair{cli: nfttest.NewNetNS(t, "np-nflog-c"), srv: nfttest.NewNetNS(t, "np-nflog-s")}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec(args...); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "link", "add", "vc", "netns", p.cli.Name, "type", "veth", "peer", "name", "vs", "netns", p.srv.Name)
	for _, c := range []struct {
		ns       *nfttest.NetNS
		dev, num string
	}{{p.cli, "vc", "1"}, {p.srv, "vs", "2"}} {
		run("ip", "-n", c.ns.Name, "addr", "add", "10.99.0."+c.num+"/24", "dev", c.dev)
		run("ip", "-n", c.ns.Name, "addr", "add", "fd99::"+c.num+"/64", "dev", c.dev, "nodad")
		run("ip", "-n", c.ns.Name, "link", "set", c.dev, "up")
	}
	if err := p.srv.Do(func() error {
		ifc, err := net.InterfaceByName("vs")
		if err != nil {
			return err
		}
		p.srvIndex, p.srvMAC = uint32(ifc.Index), ifc.HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.cli.Do(func() error {
		ifc, err := net.InterfaceByName("vc")
		if err != nil {
			return err
		}
		p.cliMAC = ifc.HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p.srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	p.srvNSFile = f
	// Neighbours known in advance: no ARP or neighbour discovery in the counts.
	run("ip", "-n", p.cli.Name, "neigh", "replace", "10.99.0.2", "lladdr", p.srvMAC.String(), "dev", "vc", "nud", "permanent")
	run("ip", "-n", p.cli.Name, "neigh", "replace", "fd99::2", "lladdr", p.srvMAC.String(), "dev", "vc", "nud", "permanent")
	run("ip", "-n", p.srv.Name, "neigh", "replace", "10.99.0.1", "lladdr", p.cliMAC.String(), "dev", "vs", "nud", "permanent")
	run("ip", "-n", p.srv.Name, "neigh", "replace", "fd99::1", "lladdr", p.cliMAC.String(), "dev", "vs", "nud", "permanent")
	return p
}

// exec runs a command in the test's own namespace (only `ip link add ... netns`,
// `ip -n` and friends, which act inside the namespaces they name).
func exec(args ...string) (string, error) {
	out, err := osexec.Command(args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

func (p *pair) open(t *testing.T, cfg Config) *Reader {
	t.Helper()
	cfg.NetNS = int(p.srvNSFile.Fd())
	r, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// sendUDP sends n datagrams from the client to dst:port.
func (p *pair) sendUDP(t *testing.T, dst string, port, n int) {
	t.Helper()
	if err := p.cli.Do(func() error {
		c, err := net.Dial("udp", net.JoinHostPort(dst, fmt.Sprint(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		for range n {
			if _, err := c.Write([]byte("x")); err != nil && !errors.Is(err, unix.ECONNREFUSED) {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// sendTCP tries one connection (its SYN is dropped by the server's rule).
func (p *pair) sendTCP(t *testing.T, dst string, port int) {
	t.Helper()
	if err := p.cli.Do(func() error {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(dst, fmt.Sprint(port)), 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// sendEcho sends one ICMP or ICMPv6 echo request from a raw socket.
func (p *pair) sendEcho(t *testing.T, dst string) {
	t.Helper()
	v6 := strings.Contains(dst, ":")
	network, typ := "ip4:icmp", byte(8)
	if v6 {
		network, typ = "ip6:ipv6-icmp", 128
	}
	msg := []byte{typ, 0, 0, 0, 0x12, 0x34, 0, 1}
	if !v6 { // the kernel computes ICMPv6 checksums itself
		binary.BigEndian.PutUint16(msg[2:], checksum(msg))
	}
	if err := p.cli.Do(func() error {
		c, err := net.ListenPacket(network, "")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.WriteTo(msg, &net.IPAddr{IP: net.ParseIP(dst)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// readN reads until n packets arrived or the deadline passed.
func readN(t *testing.T, r *Reader, n int, within time.Duration) []Packet {
	t.Helper()
	var got []Packet
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(got) < n {
			ps, err := r.Read()
			if err != nil {
				return
			}
			got = append(got, ps...)
		}
	}()
	select {
	case <-done:
	case <-time.After(within):
		r.Close() // unblocks Read
		<-done
	}
	return got
}

const rules = `table inet nflogtest {
	chain input {
		type filter hook input priority 0; policy accept;
		ip saddr 10.99.0.1 udp dport 5000 log prefix "udp4 deny" group 7 drop
		ip saddr 10.99.0.1 tcp dport 5001 log prefix "tcp4" group 7 drop
		ip6 saddr fd99::1 udp dport 5002 log prefix "udp6" group 7 drop
		ip saddr 10.99.0.1 icmp type echo-request log prefix "icmp4" group 7 drop
		ip6 saddr fd99::1 icmpv6 type echo-request log prefix "icmp6" group 7 drop
		ip saddr 10.99.0.1 udp dport 6000 counter log prefix "flood" group 8 drop
	}
}
`

// TestKernelRead logs one packet of each kind with rules the nft CLI loaded and
// checks every field the Reader decodes.
func TestKernelRead(t *testing.T) {
	p := newPair(t)
	if out, err := p.srv.NFT(rules, "-f", "-"); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	r := p.open(t, Config{Group: 7})
	p.sendUDP(t, "10.99.0.2", 5000, 1)
	p.sendTCP(t, "10.99.0.2", 5001)
	p.sendUDP(t, "fd99::2", 5002, 1)
	p.sendEcho(t, "10.99.0.2")
	p.sendEcho(t, "fd99::2")
	got := readN(t, r, 5, 10*time.Second)
	if len(got) < 5 {
		t.Fatalf("read %d packets, want at least 5: %v", len(got), got)
	}
	byPrefix := map[string]Packet{}
	for _, pk := range got {
		if _, seen := byPrefix[pk.Prefix]; !seen {
			byPrefix[pk.Prefix] = pk
		}
		if pk.InIfIndex != p.srvIndex || pk.OutIfIndex != 0 || pk.Hook != unix.NF_INET_LOCAL_IN {
			t.Errorf("%s: in %d out %d hook %d, want in %d out 0 hook %d", pk.Prefix, pk.InIfIndex, pk.OutIfIndex, pk.Hook, p.srvIndex, unix.NF_INET_LOCAL_IN)
		}
		if pk.HWType != unix.ARPHRD_ETHER || pk.HWAddr.String() != p.cliMAC.String() {
			t.Errorf("%s: hw type %d addr %s, want %d %s", pk.Prefix, pk.HWType, pk.HWAddr, unix.ARPHRD_ETHER, p.cliMAC)
		}
		if len(pk.Payload) > DefaultCopyRange {
			t.Errorf("%s: %d bytes copied, more than the copy range", pk.Prefix, len(pk.Payload))
		}
	}
	want := map[string]string{
		"udp4 deny": "udp 10.99.0.1:* -> 10.99.0.2:5000",
		"tcp4":      "tcp 10.99.0.1:* -> 10.99.0.2:5001",
		"udp6":      "udp [fd99::1]:* -> [fd99::2]:5002",
		"icmp4":     "icmp 10.99.0.1 -> 10.99.0.2 type 8 code 0",
		"icmp6":     "ipv6-icmp fd99::1 -> fd99::2 type 128 code 0",
	}
	for prefix, w := range want {
		pk, ok := byPrefix[prefix]
		if !ok {
			t.Errorf("no packet with prefix %q", prefix)
			continue
		}
		s := pk.String()
		if pk.HasPorts() {
			s = strings.Replace(s, fmt.Sprintf(":%d ", pk.SrcPort), ":* ", 1)
		}
		if s != w {
			t.Errorf("%q: %s, want %s", prefix, s, w)
		}
		if wantHW := map[int]uint16{4: 0x0800, 6: 0x86dd}[pk.Family]; pk.HWProtocol != wantHW {
			t.Errorf("%q: hw protocol %#x, want %#x", prefix, pk.HWProtocol, wantHW)
		}
	}
	if r.Lost() != 0 || r.Malformed() != 0 {
		t.Errorf("lost %d malformed %d, want none", r.Lost(), r.Malformed())
	}
	// A second socket cannot take the group while the first holds it.
	cfg := Config{Group: 7, NetNS: int(p.srvNSFile.Fd())}
	if r2, err := Open(cfg); err == nil {
		r2.Close()
		t.Error("a second Open of a bound group succeeded")
	} else if !errors.Is(err, unix.EPERM) {
		t.Errorf("second Open: %v, want EPERM", err)
	}
}

// TestKernelOverflow floods a Reader that does not read, with a receive buffer
// far too small: the kernel drops what does not fit without holding up the
// datapath (the rule's counter sees every datagram), and the Reader counts
// exactly what it lost from the sequence numbers.
func TestKernelOverflow(t *testing.T) {
	p := newPair(t)
	if out, err := p.srv.NFT(rules, "-f", "-"); err != nil {
		t.Fatalf("nft -f: %v: %s", err, out)
	}
	r := p.open(t, Config{Group: 8, ReadBuffer: 4096})
	const n = 2000
	p.sendUDP(t, "10.99.0.2", 6000, n) // nobody reads yet

	batches := make(chan []Packet, 1024)
	go func() {
		defer close(batches)
		for {
			ps, err := r.Read()
			if err != nil {
				return
			}
			batches <- ps
		}
	}()
	var got []Packet
	// collect reads until no packet came for quiet, or until seq last was read.
	collect := func(quiet time.Duration, last uint32) bool {
		for {
			select {
			case ps, ok := <-batches:
				if !ok {
					return false
				}
				got = append(got, ps...)
				if ps[len(ps)-1].Seq == last {
					return true
				}
			case <-time.After(quiet):
				return false
			}
		}
	}
	collect(500*time.Millisecond, n-1)
	// A loss at the tail shows only in the next packet's number: send one more.
	p.sendUDP(t, "10.99.0.2", 6000, 1)
	if !collect(10*time.Second, n) {
		t.Fatalf("the packet after the flood (seq %d) never arrived; read %d", n, len(got))
	}
	if uint64(len(got))+r.Lost() != n+1 {
		t.Errorf("received %d + lost %d != logged %d", len(got), r.Lost(), n+1)
	}
	if r.Lost() == 0 || r.Overruns() == 0 {
		t.Errorf("lost %d overruns %d: the buffer should have overflowed", r.Lost(), r.Overruns())
	}
	for i := 1; i < len(got); i++ {
		if got[i].Seq <= got[i-1].Seq {
			t.Fatalf("sequence numbers out of order at %d: %d after %d", i, got[i].Seq, got[i-1].Seq)
		}
	}
	// Every datagram reached the drop rule.
	out, err := p.srv.NFT("", "list", "chain", "inet", "nflogtest", "input")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("counter packets %d ", n+1); !strings.Contains(out, want) {
		t.Errorf("flood rule counter: want %q in\n%s", want, out)
	}
	t.Logf("logged %d, received %d, lost %d in %d overruns", n+1, len(got), r.Lost(), r.Overruns())
}
