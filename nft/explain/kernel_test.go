package explain

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// kernelLab is four network namespaces in a line: sources in L, the source pod's
// node in A, the destination pod's node in B, destinations in R. A and B forward
// and hold the compiled tables of the nodes a packet crosses; L and R take the
// packet's addresses for one round at a time.
type kernelLab struct {
	t          *testing.T
	l, a, b, r *nfttest.NetNS
	mu         sync.Mutex
	got        map[string]bool // "proto src dst port" that reached R
}

const (
	labL  = "192.0.2.9" // L's eth0; A's l is .10
	labA  = "192.0.2.1" // A's b; B's a is .2
	labB  = "192.0.2.5" // B's r; R's eth0 is .6
	labL6 = "2001:db8:0:1::9"
	labA6 = "2001:db8:0:2::1"
	labB6 = "2001:db8:0:3::5"
)

func newKernelLab(t *testing.T, ports []int) *kernelLab {
	nfttest.RequireRoot(t)
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s: %v", tool, err)
		}
	}
	k := &kernelLab{t: t, l: nfttest.NewNetNS(t, "npx-l"), a: nfttest.NewNetNS(t, "npx-a"), b: nfttest.NewNetNS(t, "npx-b"), r: nfttest.NewNetNS(t, "npx-r"), got: map[string]bool{}}
	// No duplicate address detection: addresses come and go every round, and a
	// tentative address (link-local ones included) would delay or lose packets.
	for _, n := range []*nfttest.NetNS{k.l, k.a, k.b, k.r} {
		for _, s := range []string{"net.ipv6.conf.default.accept_dad", "net.ipv6.conf.all.accept_dad"} {
			if err := n.Sysctl(s, "0"); err != nil {
				t.Fatal(err)
			}
		}
	}
	link := func(x *nfttest.NetNS, xi string, y *nfttest.NetNS, yi string) {
		// Made under unique names in this namespace, then moved and renamed.
		tx, ty := "npx"+nfttest.RandomHex(4), "npx"+nfttest.RandomHex(4)
		for _, args := range [][]string{
			{"link", "add", tx, "type", "veth", "peer", "name", ty},
			{"link", "set", tx, "netns", x.Name, "name", xi},
			{"link", "set", ty, "netns", y.Name, "name", yi},
		} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Fatalf("ip %v: %v: %s", args, err, out)
			}
		}
	}
	link(k.l, "eth0", k.a, "to-l")
	link(k.a, "to-b", k.b, "to-a")
	link(k.b, "to-r", k.r, "eth0")
	// Every link up before any address or route: IPv6 drops routes of a device
	// whose carrier comes up later.
	k.ip(k.l, "link set eth0 up")
	k.ip(k.a, "link set to-l up", "link set to-b up")
	k.ip(k.b, "link set to-a up", "link set to-r up")
	k.ip(k.r, "link set eth0 up")
	k.ip(k.l, "addr add 192.0.2.9/30 dev eth0", "addr add 2001:db8:0:1::9/64 dev eth0 nodad",
		"route add default via 192.0.2.10", "route add default via 2001:db8:0:1::10")
	k.ip(k.a, "addr add 192.0.2.10/30 dev to-l", "addr add 2001:db8:0:1::10/64 dev to-l nodad",
		"addr add 192.0.2.1/30 dev to-b", "addr add 2001:db8:0:2::1/64 dev to-b nodad",
		"route add default via 192.0.2.2", "route add default via 2001:db8:0:2::2")
	k.ip(k.b, "addr add 192.0.2.2/30 dev to-a", "addr add 2001:db8:0:2::2/64 dev to-a nodad",
		"addr add 192.0.2.5/30 dev to-r", "addr add 2001:db8:0:3::5/64 dev to-r nodad",
		"route add default via 192.0.2.1", "route add default via 2001:db8:0:2::1")
	k.ip(k.r, "addr add 192.0.2.6/30 dev eth0", "addr add 2001:db8:0:3::6/64 dev eth0 nodad",
		"route add default via 192.0.2.5", "route add default via 2001:db8:0:3::5")
	for _, n := range []*nfttest.NetNS{k.a, k.b} {
		for _, s := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
			if err := n.Sysctl(s, "1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, n := range []*nfttest.NetNS{k.l, k.a, k.b, k.r} {
		for _, s := range []string{"net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"} {
			_ = n.Sysctl(s, "0")
		}
	}
	// Listeners in R on every port, both protocols, both families.
	for _, port := range ports {
		err := k.r.Do(func() error {
			tl, err := net.Listen("tcp", fmt.Sprintf("[::]:%d", port))
			if err != nil {
				return err
			}
			ul, err := net.ListenPacket("udp", fmt.Sprintf("[::]:%d", port))
			if err != nil {
				return err
			}
			t.Cleanup(func() { tl.Close(); ul.Close() })
			go func() {
				for {
					c, err := tl.Accept()
					if err != nil {
						return
					}
					src := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
					dst := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
					k.record(fmt.Sprintf("TCP %s %s %d", src, dst, port))
					c.Close()
				}
			}()
			go func() {
				buf := make([]byte, 128)
				for {
					n, from, err := ul.ReadFrom(buf)
					if err != nil {
						return
					}
					src := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
					k.record(fmt.Sprintf("UDP %s %s %d", src, string(buf[:n]), port))
				}
			}()
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Counters at every hook of every namespace, for the failure message.
	for _, n := range []*nfttest.NetNS{k.l, k.a, k.b, k.r} {
		var b strings.Builder
		b.WriteString("add table inet diag\n")
		for _, h := range []struct{ chain, hook, prio string }{{"c-pre", "prerouting", "-400"}, {"c-fwd", "forward", "-10"}, {"c-fwd-after", "forward", "10"}, {"c-in", "input", "400"}, {"c-out", "output", "400"}, {"c-post", "postrouting", "400"}} {
			fmt.Fprintf(&b, "add chain inet diag %s { type filter hook %s priority %s; }\n", h.chain, h.hook, h.prio)
			fmt.Fprintf(&b, "add rule inet diag %s meta l4proto { tcp, udp } counter\n", h.chain)
		}
		if out, err := n.NFT(b.String(), "-f", "-"); err != nil {
			t.Fatalf("diag table: %v: %s", err, out)
		}
	}
	// The lab must deliver both families without tables before it judges any.
	warm := []labPacket{
		{netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2"), corev1.ProtocolTCP, ports[0]},
		{netip.MustParseAddr("fd99::1"), netip.MustParseAddr("fd99::2"), corev1.ProtocolTCP, ports[0]},
		{netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2"), corev1.ProtocolUDP, ports[0]},
		{netip.MustParseAddr("fd99::1"), netip.MustParseAddr("fd99::2"), corev1.ProtocolUDP, ports[0]},
	}
	for try := 0; ; try++ {
		got := k.send(warm)
		if got[warm[0]] && got[warm[1]] && got[warm[2]] && got[warm[3]] {
			break
		}
		if try == 10 {
			t.Fatalf("the lab does not deliver packets without any table: %v", got)
		}
	}
	return k
}

// diag is the counters of every namespace's hooks and the conntrack tables.
func (k *kernelLab) diag() string {
	var b strings.Builder
	for _, n := range []*nfttest.NetNS{k.l, k.a, k.b, k.r} {
		out, _ := n.NFT("", "list", "table", "inet", "diag")
		ct, _ := n.Run("sh", "-c", "cat /proc/net/nf_conntrack 2>/dev/null | tail -20")
		fmt.Fprintf(&b, "%s:\n%s%s\n", n.Name, out, ct)
	}
	return b.String()
}

func (k *kernelLab) record(s string) {
	k.mu.Lock()
	k.got[s] = true
	k.mu.Unlock()
}

func (k *kernelLab) ip(n *nfttest.NetNS, cmds ...string) {
	k.t.Helper()
	if out, err := n.RunContext(k.t.Context(), strings.Join(cmds, "\n")+"\n", "ip", "-batch", "-"); err != nil {
		k.t.Fatalf("%v: %s", err, out)
	}
}

// load puts rs in n (nil: no table).
func (k *kernelLab) load(n *nfttest.NetNS, rs *nft.Ruleset) {
	k.t.Helper()
	_, _ = n.NFT("", "delete", "table", "inet", nft.DefaultTable)
	if rs == nil {
		return
	}
	if out, err := n.NFT(nft.Render(rs), "-f", "-"); err != nil {
		k.t.Fatalf("nft -f: %v: %s", err, out)
	}
}

type labPacket struct {
	src, dst netip.Addr
	proto    corev1.Protocol
	port     int
}

func (p labPacket) key() string { return fmt.Sprintf("%s %s %s %d", p.proto, p.src, p.dst, p.port) }

// send sends every packet's first packet (a TCP SYN or a UDP datagram) from L and
// reports which reached R. No address is both a source and a destination.
func (k *kernelLab) send(pkts []labPacket) map[labPacket]bool {
	k.t.Helper()
	var srcs, dsts []netip.Addr
	for _, p := range pkts {
		if !slices.Contains(srcs, p.src) {
			srcs = append(srcs, p.src)
		}
		if !slices.Contains(dsts, p.dst) {
			dsts = append(dsts, p.dst)
		}
	}
	off := k.place(srcs, dsts)
	defer off()
	var fds []int
	type udpProbe struct {
		c *net.UDPConn
		p labPacket
	}
	var udps []udpProbe
	err := k.l.Do(func() error {
		for _, p := range pkts {
			if p.proto == corev1.ProtocolUDP {
				c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.src, 0)))
				if err != nil {
					return err
				}
				_, err = c.WriteToUDPAddrPort([]byte(p.dst.String()), netip.AddrPortFrom(p.dst, uint16(p.port)))
				if err != nil {
					c.Close()
					return err
				}
				udps = append(udps, udpProbe{c, p})
				continue
			}
			fam := unix.AF_INET6
			var sa, da unix.Sockaddr = &unix.SockaddrInet6{Addr: p.src.As16()}, &unix.SockaddrInet6{Addr: p.dst.As16(), Port: p.port}
			if p.src.Is4() {
				fam = unix.AF_INET
				sa, da = &unix.SockaddrInet4{Addr: p.src.As4()}, &unix.SockaddrInet4{Addr: p.dst.As4(), Port: p.port}
			}
			fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
			if err := unix.Bind(fd, sa); err != nil {
				return fmt.Errorf("bind %s: %w", p.src, err)
			}
			if err := unix.Connect(fd, da); err != nil && err != unix.EINPROGRESS {
				return fmt.Errorf("connect %s: %w", p.dst, err)
			}
		}
		return nil
	})
	if err != nil {
		k.t.Fatal(err)
	}
	// Each datagram goes twice: sent again on the same socket with no reply
	// seen, it is still ct state new, and the tables judge it alike.
	time.Sleep(150 * time.Millisecond)
	for _, u := range udps {
		_, _ = u.c.WriteToUDPAddrPort([]byte(u.p.dst.String()), netip.AddrPortFrom(u.p.dst, uint16(u.p.port)))
	}
	time.Sleep(350 * time.Millisecond)
	for _, fd := range fds {
		unix.Close(fd)
	}
	for _, u := range udps {
		u.c.Close()
	}
	out := map[labPacket]bool{}
	k.mu.Lock()
	for _, p := range pkts {
		out[p] = k.got[p.key()]
		delete(k.got, p.key())
	}
	k.mu.Unlock()
	return out
}

// place gives L the source addresses and R the destination addresses, with A's
// and B's routes to them, primes each (a datagram to the neighbouring router's
// own address, which no table judges), and returns what takes them away.
func (k *kernelLab) place(srcs, dsts []netip.Addr) func() {
	k.t.Helper()
	cmds := func(verb string, addrs []netip.Addr, dev string) (on, route []string) {
		for _, a := range addrs {
			bits, via, nodad := 32, labL, ""
			if a.Is6() {
				bits, nodad = 128, " nodad"
			}
			if dev == "to-l" {
				if a.Is6() {
					via = labL6
				}
			} else if via = "192.0.2.6"; a.Is6() {
				via = "2001:db8:0:3::6"
			}
			if verb == "add" {
				on = append(on, fmt.Sprintf("addr add %s/%d dev eth0%s", a, bits, nodad))
			} else {
				on = append(on, fmt.Sprintf("addr del %s/%d dev eth0", a, bits))
			}
			route = append(route, fmt.Sprintf("route %s %s/%d via %s dev %s", verb, a, bits, via, dev))
		}
		return on, route
	}
	lOn, aRoute := cmds("add", srcs, "to-l")
	rOn, bRoute := cmds("add", dsts, "to-r")
	k.ip(k.l, lOn...)
	k.ip(k.a, aRoute...)
	k.ip(k.r, rOn...)
	k.ip(k.b, bRoute...)
	// Prime every new address with a datagram to the neighbouring router's own
	// address (its input hook: no table judges it).
	prime := func(n *nfttest.NetNS, addrs []netip.Addr, to4, to6 string) {
		err := n.Do(func() error {
			for _, a := range addrs {
				to := netip.MustParseAddr(to4)
				if a.Is6() {
					to = netip.MustParseAddr(to6)
				}
				c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
				if err != nil {
					return err
				}
				_, _ = c.WriteToUDPAddrPort([]byte("prime"), netip.AddrPortFrom(to, 9))
				c.Close()
			}
			return nil
		})
		if err != nil {
			k.t.Fatal(err)
		}
	}
	prime(k.l, srcs, "192.0.2.10", "2001:db8:0:1::10")
	prime(k.r, dsts, labB, labB6)
	time.Sleep(50 * time.Millisecond)
	return func() {
		lOff, aOff := cmds("del", srcs, "to-l")
		rOff, bOff := cmds("del", dsts, "to-r")
		k.ip(k.a, aOff...)
		k.ip(k.b, bOff...)
		k.ip(k.l, lOff...)
		k.ip(k.r, rOff...)
	}
}

// TestExplainMatchesKernel: over random clusters, explain's verdict for a TCP or UDP
// connection equals what the real kernel does with its first packet, crossing the
// tables of the nodes it crosses (the source pod's, then the destination pod's), for
// IPv4 and IPv6.
func TestExplainMatchesKernel(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	worlds := 6 // the third of each three has ClusterNetworkPolicies (both tiers)
	var lab *kernelLab
	compared := map[string]int{}
	retried := 0
	lost := map[string]int{}
	for i := range worlds {
		rng := rand.New(rand.NewPCG(seed, uint64(1000+i)))
		w := netpolref.RandomWorld(rng)
		if i%3 == 2 {
			w = netpolref.RandomTieredWorld(rng)
		}
		if lab == nil {
			lab = newKernelLab(t, w.Ports)
		}
		c := Cluster{Pods: w.Pods, Namespaces: w.Namespaces, Policies: w.Policies, ClusterPolicies: w.ClusterPolicies, Nodes: w.Nodes}
		// Keep mode, then the agent's default (recheck, with its ct marks), in turn.
		copts := compile.Options{}
		if i%2 == 1 {
			copts = compile.Options{Established: compile.EstablishedRecheck, PolicyCounters: true}
		}
		opts := Options{Compile: copts}
		tables := map[string]*nft.Ruleset{}
		for _, n := range []string{"node-1", "node-2"} {
			tables[n], _ = compile.Compile(compile.Snapshot{NodeName: n, Pods: w.Pods, Namespaces: w.Namespaces, Policies: w.Policies,
				ClusterNetworkPolicies: w.ClusterPolicies, Nodes: w.Nodes}, copts)
		}
		type end struct {
			addr netip.Addr
			node string // "" for an address of no pod
		}
		var ends []end
		for _, p := range w.Pods {
			for _, ip := range netpolref.PodIPs(p) {
				if netpolref.Active(p) {
					ends = append(ends, end{ip, p.Spec.NodeName})
				} else if !p.Spec.HostNetwork {
					ends = append(ends, end{ip, ""})
				}
			}
		}
		for _, ip := range w.Externals {
			ends = append(ends, end{ip, ""})
		}
		// Pairs by the tables they cross: (source node, destination node).
		byCombo := map[[2]string][][2]end{}
		seen := map[[2]netip.Addr]bool{}
		for range 60 {
			s, d := ends[rng.IntN(len(ends))], ends[rng.IntN(len(ends))]
			if s.addr == d.addr || s.addr.Is4() != d.addr.Is4() || (s.node == "" && d.node == "") || seen[[2]netip.Addr{s.addr, d.addr}] {
				continue
			}
			seen[[2]netip.Addr{s.addr, d.addr}] = true
			combo := [2]string{s.node, d.node}
			if combo[1] == combo[0] {
				combo[1] = ""
			}
			byCombo[combo] = append(byCombo[combo], [2]end{s, d})
		}
		for combo, pairs := range byCombo {
			lab.load(lab.a, tables[combo[0]])
			lab.load(lab.b, tables[combo[1]])
			for len(pairs) > 0 {
				// One round: no address both a source and a destination.
				var round, rest [][2]end
				srcs, dsts := map[netip.Addr]bool{}, map[netip.Addr]bool{}
				for _, p := range pairs {
					if dsts[p[0].addr] || srcs[p[1].addr] {
						rest = append(rest, p)
						continue
					}
					srcs[p[0].addr], dsts[p[1].addr] = true, true
					round = append(round, p)
				}
				pairs = rest
				var pkts []labPacket
				for _, p := range round {
					for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
						for _, port := range w.Ports {
							pkts = append(pkts, labPacket{p[0].addr, p[1].addr, proto, port})
						}
					}
				}
				got := lab.send(pkts)
				// A guard against the lab losing a packet (the first IPv6 packet of
				// a new source, now and then: fewer since addresses are primed, a
				// few TCP SYNs a run; the log counts them): a packet explain
				// allows that did not arrive is sent again, alone, up to three
				// times. A drop by the tables is deterministic and fails every time;
				// a packet that arrived, or that explain denies, is never sent
				// again, so a wrong "deny" cannot hide either.
				for _, p := range pkts {
					for try := 0; try < 3 && !got[p]; try++ {
						a, err := Explain(c, Question{From: Ref{Addr: p.src}, To: Ref{Addr: p.dst}, Protocol: p.proto, Port: p.port}, opts)
						if err != nil || a.Verdict != Allow {
							break
						}
						retried++
						lost[fmt.Sprintf("%s IPv%d", p.proto, 4+2*boolInt(p.src.Is6()))]++
						t.Logf("lab loss: %s (round of %d packets)", p.key(), len(pkts))
						got[p] = lab.send([]labPacket{p})[p]
					}
				}
				for _, p := range pkts {
					a, err := Explain(c, Question{From: Ref{Addr: p.src}, To: Ref{Addr: p.dst}, Protocol: p.proto, Port: p.port}, opts)
					if err != nil {
						t.Fatal(err)
					}
					fam := "IPv4"
					if p.src.Is6() {
						fam = "IPv6"
					}
					kind := ""
					if len(w.ClusterPolicies) > 0 {
						kind = " tiers"
					}
					compared[fam+" "+copts.Established.String()+kind+" "+a.Verdict]++
					if (a.Verdict == Allow) != got[p] {
						t.Log(lab.diag())
						t.Fatalf("seed %d world %d: %s: explain says %s, the kernel %s it\n%s", seed, i, p.key(), a.Verdict,
							map[bool]string{true: "delivered", false: "dropped"}[got[p]], a.Text())
					}
				}
			}
		}
	}
	t.Logf("seed %d: %d worlds, packets compared with the kernel: %v (%d lab losses sent again: %v)", seed, worlds, compared, retried, lost)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// tcpConn opens a TCP connection from src (in l) to dst:port (in r) through the
// tables loaded now, and returns both ends; the test fails if it cannot. Both
// ends close with the test.
func (k *kernelLab) tcpConn(src, dst netip.Addr, port uint16) (client, server net.Conn) {
	k.t.Helper()
	to := netip.AddrPortFrom(dst, port)
	var ln net.Listener
	if err := k.r.Do(func() (err error) { ln, err = net.Listen("tcp4", to.String()); return err }); err != nil {
		k.t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	err := k.l.Do(func() (err error) {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)), Timeout: 2 * time.Second}
		client, err = d.Dial("tcp4", to.String())
		return err
	})
	if err != nil {
		k.t.Fatalf("%s cannot connect to %s: %v\n%s", src, to, err, k.diag())
	}
	k.t.Cleanup(func() { client.Close() })
	select {
	case server = <-accepted:
		k.t.Cleanup(func() { server.Close() })
	case <-time.After(2 * time.Second):
		k.t.Fatalf("%s: no connection accepted", to)
	}
	return client, server
}

// exchange sends one byte from first and reads it at second; a lost segment is
// retransmitted within the deadline, a dropped one never arrives.
func exchange(first, second net.Conn) error {
	_ = first.SetDeadline(time.Now().Add(2 * time.Second))
	_ = second.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := first.Write([]byte{1}); err != nil {
		return err
	}
	_, err := second.Read(make([]byte, 1))
	return err
}

// firstIP is the first address of pod namespace/name of pods.
func firstIP(t *testing.T, pods []*corev1.Pod, key string) netip.Addr {
	t.Helper()
	for _, p := range pods {
		if p.Namespace+"/"+p.Name == key {
			return netpolref.PodIPs(p)[0]
		}
	}
	t.Fatalf("no pod %s", key)
	return netip.Addr{}
}
