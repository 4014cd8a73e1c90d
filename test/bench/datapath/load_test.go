package datapath

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// The traffic is plain blocking sockets on OS threads inside the pod
// namespaces, no Go netpoller and no allocation per connection, so the
// generator's own cost stays small and steady next to the kernel's.
//
// Three servers in the server pod, one thread per accepted connection slot:
//   - benchPort: read 1 byte, write it back, close. The server closes first, so
//     TIME_WAIT stays on the server and the client's ports free at once.
//   - rrPort: echo until EOF (request/response on one connection).
//   - bulkPort: read and discard until EOF (bulk throughput).

const (
	acceptors   = 8
	ioTimeout   = time.Second
	bulkChunk   = 64 << 10
	maxConnsPer = 2_000_000 // a bound on any one loop besides its time
)

type server struct {
	fds []int
	wg  sync.WaitGroup
}

// startServers listens on the three ports in ns, on addr.
func startServers(ns *nfttest.NetNS, addr netip.Addr) (*server, error) {
	s := &server{}
	for _, port := range []int{benchPort, rrPort, bulkPort} {
		var fd int
		err := ns.Do(func() error {
			var err error
			fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			if err := syscall.Bind(fd, sockaddr(addr, port)); err != nil {
				syscall.Close(fd)
				return err
			}
			return syscall.Listen(fd, 4096)
		})
		if err != nil {
			s.stop()
			return nil, err
		}
		s.fds = append(s.fds, fd)
		for range acceptors {
			s.wg.Go(func() { s.serve(fd, port) })
		}
	}
	return s, nil
}

func (s *server) serve(lfd, port int) {
	buf := make([]byte, bulkChunk)
	for {
		fd, _, err := syscall.Accept4(lfd, syscall.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.ECONNABORTED) {
				continue
			}
			return // the listener was shut down
		}
		setTimeouts(fd)
		switch port {
		case benchPort:
			if n, err := read(fd, buf[:1]); err == nil && n == 1 {
				_, _ = write(fd, buf[:1])
			}
		case rrPort:
			for {
				n, err := read(fd, buf[:1])
				if err != nil || n <= 0 {
					break
				}
				if _, err := write(fd, buf[:n]); err != nil {
					break
				}
			}
		case bulkPort:
			for {
				n, err := read(fd, buf)
				if err != nil || n <= 0 {
					break
				}
			}
		}
		syscall.Close(fd)
	}
}

// stop shuts the listeners down, which wakes the threads blocked in accept.
func (s *server) stop() {
	for _, fd := range s.fds {
		_ = syscall.Shutdown(fd, syscall.SHUT_RDWR)
	}
	s.wg.Wait()
	for _, fd := range s.fds {
		syscall.Close(fd)
	}
}

func sockaddr(a netip.Addr, port int) *syscall.SockaddrInet4 {
	return &syscall.SockaddrInet4{Addr: a.As4(), Port: port}
}

func setTimeouts(fd int) {
	tv := syscall.NsecToTimeval(int64(ioTimeout))
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
}

// dialIn connects from the calling thread, which must be inside the client's
// namespace, with a connect timeout.
func dialIn(dst netip.Addr, port int, timeout time.Duration) (int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	tv := syscall.NsecToTimeval(int64(timeout))
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	_ = syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	if err := connect(fd, sockaddr(dst, port), timeout); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// The Go runtime signals its threads (preemption, GC); a socket syscall with a
// timeout then fails with EINTR instead of restarting. These retry.

func connect(fd int, sa syscall.Sockaddr, timeout time.Duration) error {
	err := syscall.Connect(fd, sa)
	if !errors.Is(err, syscall.EINTR) {
		return err
	}
	// The handshake goes on; wait for it to finish.
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return syscall.ETIMEDOUT
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, syscall.EINTR) || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return err
		}
		soErr, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return syscall.Errno(soErr)
		}
		return nil
	}
}

func read(fd int, b []byte) (int, error) {
	for {
		n, err := syscall.Read(fd, b)
		if !errors.Is(err, syscall.EINTR) {
			return n, err
		}
	}
}

func write(fd int, b []byte) (int, error) {
	for {
		n, err := syscall.Write(fd, b)
		if !errors.Is(err, syscall.EINTR) {
			return n, err
		}
	}
}

// oneConn is one connection of the connection benchmark: connect, one byte
// each way, wait for the server's close, close.
func oneConn(dst netip.Addr, timeout time.Duration) error {
	fd, err := dialIn(dst, benchPort, timeout)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	b := []byte{'x'}
	if _, err := write(fd, b); err != nil {
		return err
	}
	if n, err := read(fd, b); err != nil || n != 1 {
		return errors.Join(errors.New("no reply"), err)
	}
	_, _ = read(fd, b) // EOF: the server closed first
	return nil
}

// canConnect reports whether one connection from ns to dst works within timeout.
func canConnect(ns *nfttest.NetNS, dst netip.Addr, timeout time.Duration) bool {
	var ok bool
	_ = ns.Do(func() error { ok = oneConn(dst, timeout) == nil; return nil })
	return ok
}

// loadResult is one measurement window.
type loadResult struct {
	ops     int64 // connections, transactions or bytes
	errs    int64
	elapsed time.Duration
	cpu     time.Duration // CPU time the window cost; see cpuTime
}

// rate is per second of wall-clock time.
func (r loadResult) rate() float64 { return float64(r.ops) / r.elapsed.Seconds() }

// cpuRate is per second of CPU time.
func (r loadResult) cpuRate() float64 { return float64(r.ops) / r.cpu.Seconds() }

// cpuTime is the CPU time this process has used, all threads, plus the time the
// kernel's ksoftirqd threads have: the clients, the servers and, because the
// kernel runs a veth's receive path in the sender's context (or in ksoftirqd
// when it falls behind), the forwarding through the node with its netfilter
// hooks. It is exact (scheduler runtime, not tick samples), and it leaves out
// what other processes on the machine do, which wall-clock rates cannot.
func cpuTime() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		panic(err)
	}
	d := time.Duration(ts.Nano())
	for _, path := range ksoftirqds() {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		// schedstat: time on CPU (ns), time waiting, timeslices.
		if f := strings.Fields(string(b)); len(f) > 0 {
			if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				d += time.Duration(ns)
			}
		}
	}
	return d
}

// ksoftirqds lists the schedstat files of the ksoftirqd threads.
var ksoftirqds = sync.OnceValue(func() []string {
	var out []string
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		if comm, err := os.ReadFile("/proc/" + d.Name() + "/comm"); err == nil && strings.HasPrefix(string(comm), "ksoftirqd/") {
			out = append(out, "/proc/"+d.Name()+"/schedstat")
		}
	}
	return out
})

// connLoad runs workers client threads in ns, each making connections to dst
// back to back, for d (and at most maxConnsPer connections per worker).
func connLoad(ns *nfttest.NetNS, dst netip.Addr, workers int, d time.Duration) (loadResult, error) {
	var ops, errs atomic.Int64
	var wg sync.WaitGroup
	cpu0 := cpuTime()
	start := time.Now()
	deadline := start.Add(d)
	werr := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			werr[w] = ns.Do(func() error {
				for i := 0; i < maxConnsPer && time.Now().Before(deadline); i++ {
					if err := oneConn(dst, ioTimeout); err != nil {
						errs.Add(1)
						continue
					}
					ops.Add(1)
				}
				return nil
			})
		})
	}
	wg.Wait()
	return loadResult{ops: ops.Load(), errs: errs.Load(), elapsed: time.Since(start), cpu: cpuTime() - cpu0}, errors.Join(werr...)
}

// latLoad makes connections one after another from ns for d and returns the
// median time one took, in nanoseconds, and how many it made. The median, not
// the mean: on a shared machine a few connections wait for a CPU, and the mean
// would measure the neighbours.
//
// It also returns the CPU time per connection (see cpuTime).
func latLoad(ns *nfttest.NetNS, dst netip.Addr, d time.Duration) (float64, float64, error) {
	durs := make([]float64, 0, 4096)
	cpu0 := cpuTime()
	err := ns.Do(func() error {
		deadline := time.Now().Add(d)
		for i := 0; i < maxConnsPer && time.Now().Before(deadline); i++ {
			t0 := time.Now()
			if err := oneConn(dst, ioTimeout); err != nil {
				return err
			}
			durs = append(durs, float64(time.Since(t0).Nanoseconds()))
		}
		return nil
	})
	cpu := cpuTime() - cpu0
	return benchproc.Median(durs), float64(cpu.Nanoseconds()) / float64(max(len(durs), 1)), err
}

// rrLoad is request/response on one connection, one byte out and one back, for
// d. It returns transactions per second from the median transaction time (see
// latLoad for why the median), and the transactions with the CPU time they took.
func rrLoad(ns *nfttest.NetNS, dst netip.Addr, d time.Duration) (float64, loadResult, error) {
	durs := make([]float64, 0, 1<<16)
	var res loadResult
	err := ns.Do(func() error {
		fd, err := dialIn(dst, rrPort, ioTimeout)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		b := []byte{'x'}
		cpu0 := cpuTime()
		start := time.Now()
		defer func() { res.cpu, res.elapsed = cpuTime()-cpu0, time.Since(start) }()
		deadline := start.Add(d)
		for i := 0; i < maxConnsPer && time.Now().Before(deadline); i++ {
			t0 := time.Now()
			if _, err := write(fd, b); err != nil {
				return err
			}
			if n, err := read(fd, b); err != nil || n != 1 {
				return errors.Join(errors.New("rr: no reply"), err)
			}
			durs = append(durs, float64(time.Since(t0).Nanoseconds()))
		}
		return nil
	})
	res.ops = int64(len(durs))
	return 1e9 / benchproc.Median(durs), res, err
}

// bulkLoad writes as fast as it can on one connection for d.
func bulkLoad(ns *nfttest.NetNS, dst netip.Addr, d time.Duration) (loadResult, error) {
	var res loadResult
	err := ns.Do(func() error {
		fd, err := dialIn(dst, bulkPort, ioTimeout)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		buf := make([]byte, bulkChunk)
		cpu0 := cpuTime()
		start := time.Now()
		deadline := start.Add(d)
		for i := 0; i < maxConnsPer && time.Now().Before(deadline); i++ {
			n, err := write(fd, buf)
			if err != nil {
				return err
			}
			res.ops += int64(n)
		}
		res.elapsed = time.Since(start)
		res.cpu = cpuTime() - cpu0
		return nil
	})
	return res, err
}

// flowPort is the UDP port of the new-flow measurement (see flowLoad).
const flowPort = benchPort

// udpSink binds flowPort in ns and never reads: datagrams queue and then drop
// at the socket, the cheapest end for a datagram that was let through.
func udpSink(ns *nfttest.NetNS, addr netip.Addr) (func(), error) {
	var fd int
	err := ns.Do(func() error {
		var err error
		if fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		_ = syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		return syscall.Bind(fd, sockaddr(addr, flowPort))
	})
	if err != nil {
		return nil, err
	}
	return func() { syscall.Close(fd) }, nil
}

// flowLoad sends UDP datagrams from the pod in ns (interface eth0, address src)
// to dst:flowPort for d, each from the next of 4,096 source ports, written as
// whole Ethernet frames on a packet socket. Nothing ever answers, so to
// conntrack every one is a packet of a new flow, which the policy chains
// evaluate in full: this isolates what a connection's first packet costs at
// the node from the rest of TCP. It returns the CPU time per datagram, in
// nanoseconds (see cpuTime), and the datagrams sent.
func flowLoad(ns *nfttest.NetNS, src, dst netip.Addr, d time.Duration) (float64, int, error) {
	var sent int
	var cpu time.Duration
	err := ns.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_ = unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1)
		sll := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: 0x0008 /* ETH_P_IP, network order */, Halen: 6}
		copy(sll.Addr[:], gatewayMAC)
		frame := udpFrame(ifc.HardwareAddr, src, dst)
		cpu0 := cpuTime()
		deadline := time.Now().Add(d)
		for i := 0; i < maxConnsPer*10; i++ {
			if i%256 == 0 && !time.Now().Before(deadline) {
				break
			}
			port := 20000 + i%4096
			frame[34], frame[35] = byte(port>>8), byte(port)
			if err := unix.Sendto(fd, frame, 0, sll); err != nil {
				if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENOBUFS) {
					continue
				}
				return err
			}
			sent++
		}
		cpu = cpuTime() - cpu0
		return nil
	})
	return float64(cpu.Nanoseconds()) / float64(max(sent, 1)), sent, err
}

// gatewayMAC is the MAC of every node-side pod veth (see the cluster package).
var gatewayMAC = net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee}

// udpFrame is an Ethernet frame holding an IPv4 UDP datagram with 18 bytes of
// payload and no UDP checksum; bytes 34-35 are the source port.
func udpFrame(srcMAC net.HardwareAddr, src, dst netip.Addr) []byte {
	const payload = 18
	f := make([]byte, 14+20+8+payload)
	copy(f[0:6], gatewayMAC)
	copy(f[6:12], srcMAC)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:34]
	ip[0] = 0x45
	total := 20 + 8 + payload
	ip[2], ip[3] = byte(total>>8), byte(total)
	ip[6] = 0x40 // don't fragment
	ip[8] = 64
	ip[9] = syscall.IPPROTO_UDP
	s4, d4 := src.As4(), dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	c := ^uint16(sum)
	ip[10], ip[11] = byte(c>>8), byte(c)
	udp := f[34:42]
	udp[2], udp[3] = byte(flowPort>>8), byte(flowPort&0xff)
	udp[4], udp[5] = 0, byte(8+payload)
	return f
}

// serve starts the benchmark's servers in the server pod, and its UDP sink when
// udp; both stop when the test ends.
func serve(t *testing.T, server *cluster.Pod, udp bool) {
	t.Helper()
	srv, err := startServers(server.NetNS, server.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)
	if !udp {
		return
	}
	closeSink, err := udpSink(server.NetNS, server.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeSink)
}

// oneNode is a one-node cluster (prefix names its namespaces) holding the
// server and client pods of benchNS, then extra, closed when the test ends;
// conntrack keeps closed connections in TIME_WAIT for 1 s (see TestDatapath).
// It returns the node and the pods, server and client first.
func oneNode(t *testing.T, prefix string, extra ...cluster.PodSpec) (*cluster.Node, []*cluster.Pod) {
	t.Helper()
	ctx := t.Context()
	cl, err := cluster.New(ctx, cluster.Config{Prefix: prefix, Nodes: 1, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Close(); err != nil {
			t.Error(err)
		}
	})
	pods, err := cl.AddPods(ctx, append([]cluster.PodSpec{
		{Namespace: benchNS, Name: "server", Node: 0, Labels: map[string]string{"app": "server"}},
		{Namespace: benchNS, Name: "client", Node: 0, Labels: map[string]string{"role": "client"}}}, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	node := cl.Node(0)
	if err := node.NetNS.Sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"); err != nil {
		t.Fatal(err)
	}
	return node, pods
}
