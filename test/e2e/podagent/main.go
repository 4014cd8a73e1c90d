// Command podagent is the one process the end-to-end topology runs inside every
// pod network namespace (and in each node and the external host). It is both
// ends of a connectivity probe:
//
//   - Server: TCP and UDP on ports 80 and 81 (the upstream NetworkPolicy e2e
//     model) plus -extra-ports, on IPv4 and IPv6. TCP connections are echoed;
//     UDP datagrams are echoed from the address they were sent to.
//   - Prober: it reads probe requests as JSON lines on standard input, runs them
//     concurrently and answers each with one JSON line on standard output, in
//     completion order. That way a whole reachability matrix costs no process
//     start per probe.
//
// Protocol on standard output: first one line {"ready":true,"pid":N,"ports":[...]}
// once every listener is bound, then one response per request:
//
//	-> {"id":1,"proto":"tcp","addr":"10.244.1.5","port":80,"timeoutMs":1000}
//	<- {"id":1,"ok":true,"us":412}
//	-> {"id":2,"proto":"udp","addr":"fd00:10:244:1::5","port":81,"timeoutMs":500}
//	<- {"id":2,"ok":false,"err":"timeout","us":500301}
//
// A TCP probe succeeds when it connects and one byte makes the round trip
// (connectOnly skips the byte); a UDP probe succeeds when its datagram comes
// back. A policy that drops shows as "timeout", one that rejects as "refused" or
// "unreachable", and a drop in the prober's own output path as "not permitted".
//
// The agent exits when standard input closes, so it cannot outlive its parent
// for long even if the parent is killed.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func main() { os.Exit(run()) }

func run() int {
	portsFlag := flag.String("ports", "80,81", "comma-separated ports to serve TCP and UDP on, IPv4 and IPv6; empty serves nothing")
	extraFlag := flag.String("extra-ports", "", "comma-separated ports served in addition to -ports, e.g. 3306")
	flag.Parse()

	ports, err := parsePorts(*portsFlag + "," + *extraFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "podagent:", err)
		return 2
	}
	srv, err := listen(ports)
	if err != nil {
		fmt.Fprintln(os.Stderr, "podagent:", err)
		return 1
	}
	defer srv.Close()
	go srv.Serve()

	out := &lineWriter{enc: json.NewEncoder(os.Stdout)}
	if err := out.write(ready{Ready: true, PID: os.Getpid(), Ports: ports}); err != nil {
		return 1
	}
	if err := serveProbes(os.Stdin, out); err != nil {
		fmt.Fprintln(os.Stderr, "podagent:", err)
		return 1
	}
	return 0
}

// parsePorts parses a comma-separated list, dropping empty items and duplicates.
func parsePorts(s string) ([]int, error) {
	var ports []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.Atoi(f)
		if err != nil || p < 1 || p > 65535 {
			return nil, fmt.Errorf("invalid port %q", f)
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports, nil
}

// ready is the first line the agent writes.
type ready struct {
	Ready bool  `json:"ready"`
	PID   int   `json:"pid"`
	Ports []int `json:"ports"`
}

// request is one probe to run.
type request struct {
	ID    uint64 `json:"id"`
	Proto string `json:"proto"` // "tcp" or "udp"
	Addr  string `json:"addr"`
	Port  int    `json:"port"`
	// TimeoutMs bounds the whole probe; 0 means 1000.
	TimeoutMs   int  `json:"timeoutMs"`
	ConnectOnly bool `json:"connectOnly,omitempty"`
}

// response answers the request with the same ID.
type response struct {
	ID  uint64 `json:"id"`
	OK  bool   `json:"ok"`
	Err string `json:"err,omitempty"`
	// Micros is how long the probe took.
	Micros int64 `json:"us"`
}

// lineWriter writes one JSON value per line; safe for concurrent use.
type lineWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (w *lineWriter) write(v any) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(v)
}

// serveProbes runs every request read from r concurrently and writes the
// responses to out. It returns at the end of r; probes still running then are
// abandoned, since nobody is left to read their answers.
func serveProbes(r io.Reader, out *lineWriter) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		var req request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return fmt.Errorf("bad request %q: %w", sc.Text(), err)
		}
		go func() {
			if err := out.write(probe(req)); err != nil {
				fmt.Fprintln(os.Stderr, "podagent: writing response:", err)
				os.Exit(1)
			}
		}()
	}
	return sc.Err()
}

// payload is what probes send and expect back.
const payload = "nftpolicy-probe"

func probe(req request) response {
	start := time.Now()
	resp := response{ID: req.ID}
	timeout := time.Duration(req.TimeoutMs) * time.Millisecond
	if timeout <= 0 {
		timeout = time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	var err error
	addr, perr := netip.ParseAddr(req.Addr)
	switch {
	case perr != nil:
		err = perr
	case req.Port < 1 || req.Port > 65535:
		err = fmt.Errorf("invalid port %d", req.Port)
	case req.Proto == "tcp":
		err = probeTCP(ctx, netip.AddrPortFrom(addr, uint16(req.Port)), req.ConnectOnly)
	case req.Proto == "udp":
		err = probeUDP(ctx, netip.AddrPortFrom(addr, uint16(req.Port)))
	default:
		err = fmt.Errorf("unknown protocol %q", req.Proto)
	}
	resp.OK = err == nil
	if err != nil {
		resp.Err = describe(err)
	}
	resp.Micros = time.Since(start).Microseconds()
	return resp
}

func probeTCP(ctx context.Context, to netip.AddrPort, connectOnly bool) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", to.String())
	if err != nil {
		return err
	}
	defer conn.Close()
	if connectOnly {
		return nil
	}
	return exchange(ctx, conn, payload[:1])
}

func probeUDP(ctx context.Context, to netip.AddrPort) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", to.String())
	if err != nil {
		return err
	}
	defer conn.Close()
	return exchange(ctx, conn, payload)
}

// exchange writes msg and expects it back before ctx's deadline.
func exchange(ctx context.Context, conn net.Conn, msg string) error {
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return err
		}
	}
	if _, err := io.WriteString(conn, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg)+1)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if string(buf[:n]) != msg {
		return fmt.Errorf("wrong echo %q", buf[:n])
	}
	return nil
}

// describe turns a probe error into a short, stable word where one fits.
func describe(err error) string {
	var nerr net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return "not permitted"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	}
	return err.Error()
}

// server holds the listeners of all served ports.
type server struct {
	tcp []net.Listener
	udp []*net.UDPConn
}

// listen binds TCP and UDP on every port for IPv4 and IPv6 separately (the
// IPv6 sockets are v6-only), so a probe reaches the family it addressed.
func listen(ports []int) (*server, error) {
	s := &server{}
	for _, p := range ports {
		for _, fam := range []string{"4", "6"} {
			l, err := net.Listen("tcp"+fam, ":"+strconv.Itoa(p))
			if err != nil {
				s.Close()
				return nil, err
			}
			s.tcp = append(s.tcp, l)
			c, err := listenUDP("udp"+fam, p)
			if err != nil {
				s.Close()
				return nil, err
			}
			s.udp = append(s.udp, c)
		}
	}
	return s, nil
}

// listenUDP binds a UDP socket that reports each datagram's destination
// address, so the echo leaves from the address the prober sent to even when
// the namespace has several (a node has its underlay and other addresses).
func listenUDP(network string, port int) (*net.UDPConn, error) {
	c, err := net.ListenUDP(network, &net.UDPAddr{Port: port})
	if err != nil {
		return nil, err
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		if network == "udp4" {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		}
	})
	if err = errors.Join(err, serr); err != nil {
		c.Close()
		return nil, fmt.Errorf("%s port %d: enabling packet info: %w", network, port, err)
	}
	return c, nil
}

// Serve answers on all listeners until Close.
func (s *server) Serve() {
	var wg sync.WaitGroup
	for _, l := range s.tcp {
		wg.Go(func() { serveTCP(l) })
	}
	for _, c := range s.udp {
		wg.Go(func() { serveUDP(c) })
	}
	wg.Wait()
}

func (s *server) Close() {
	for _, l := range s.tcp {
		l.Close()
	}
	for _, c := range s.udp {
		c.Close()
	}
}

func serveTCP(l net.Listener) {
	for {
		conn, err := l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		go func() {
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = io.Copy(conn, conn)
		}()
	}
}

func serveUDP(c *net.UDPConn) {
	buf := make([]byte, 64<<10)
	oob := make([]byte, 256)
	for {
		n, oobn, _, from, err := c.ReadMsgUDPAddrPort(buf, oob)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		_, _, _ = c.WriteMsgUDPAddrPort(buf[:n], replyPktInfo(oob[:oobn]), from)
	}
}

// replyPktInfo turns the packet info of a received datagram into the control
// message that sends the reply from the address the datagram was sent to.
func replyPktInfo(oob []byte) []byte {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= 12:
			// struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
			var info unix.Inet4Pktinfo
			copy(info.Spec_dst[:], m.Data[8:12])
			return unix.PktInfo4(&info)
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= 20:
			// struct in6_pktinfo { in6_addr addr; unsigned int ifindex; }
			var info unix.Inet6Pktinfo
			copy(info.Addr[:], m.Data[:16])
			if netip.AddrFrom16(info.Addr).IsLinkLocalUnicast() {
				info.Ifindex = binary.NativeEndian.Uint32(m.Data[16:20])
			}
			return unix.PktInfo6(&info)
		}
	}
	return nil
}
