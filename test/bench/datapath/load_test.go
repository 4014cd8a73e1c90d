package datapath

import (
	"errors"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
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
	return median(durs), float64(cpu.Nanoseconds()) / float64(max(len(durs), 1)), err
}

// rrLoad is request/response on one connection, one byte out and one back, for
// d. It returns transactions per second from the median transaction time (see
// latLoad for why the median), and per CPU-second.
func rrLoad(ns *nfttest.NetNS, dst netip.Addr, d time.Duration) (float64, float64, error) {
	durs := make([]float64, 0, 1<<16)
	var cpu time.Duration
	err := ns.Do(func() error {
		fd, err := dialIn(dst, rrPort, ioTimeout)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		b := []byte{'x'}
		cpu0 := cpuTime()
		defer func() { cpu = cpuTime() - cpu0 }()
		deadline := time.Now().Add(d)
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
	return 1e9 / median(durs), float64(len(durs)) / cpu.Seconds(), err
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
