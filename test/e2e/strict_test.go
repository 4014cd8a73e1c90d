package e2e

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

// Strict mode (--established=recheck, the agents' default): open connections are
// judged again when policies change. Each spec keeps traffic flowing on long-lived
// connections (TCP and UDP round trips every 20 ms, and UDP streams a server pushes
// to a client that never sends again) and looks at when each one stops.

const (
	strictTCPPort  = 7070 // TCP echo
	strictUDPPort  = 7071 // UDP echo
	strictPushPort = 7072 // UDP: a datagram from a client starts a stream back to it
	flowPeriod     = 20 * time.Millisecond
	// settle is how long a flow is watched after a change was validated: it must
	// have kept passing (allowed) or passed nothing at all (denied) meanwhile.
	settle = time.Second
	// grace covers a round trip under way when validation ended.
	grace = 100 * time.Millisecond
)

var _ = Describe("strict mode", func() {
	It("cuts the open connections a new policy denies (TCP, UDP, both families, replies), keeps the others without loss, survives unrelated changes and agent restarts", func(ctx SpecContext) {
		srv := pod("x", "a")
		allowed := []*cluster.Pod{pod("x", "b"), pod("x", "c")}
		var denied []*cluster.Pod // one client on the server's node, one on the other
		for _, p := range env.Pods("y", "z") {
			if p.Name == "c" && p.Namespace == "z" {
				continue // isolated by the unrelated change below
			}
			if !slices.ContainsFunc(denied, func(d *cluster.Pod) bool { return d.Node == p.Node }) {
				denied = append(denied, p)
			}
		}
		Expect(denied).To(HaveLen(2), "want a denied client on each node")
		for _, c := range append(slices.Clone(allowed), denied...) {
			where := "cross-node"
			if c.Node == srv.Node {
				where = "same node"
			}
			By(fmt.Sprintf("client %s (%s)", c, where))
		}
		servers := startStrictServers(srv)
		DeferCleanup(servers.close)

		flows := map[*cluster.Pod][]*flow{}
		var all []*flow
		for _, c := range append(slices.Clone(allowed), denied...) {
			for _, f := range []cluster.Family{cluster.V4, cluster.V6} {
				t, err := startTCPFlow(c, srv, f)
				Expect(err).NotTo(HaveOccurred())
				u, err := startUDPFlow(c, srv, f)
				Expect(err).NotTo(HaveOccurred())
				p, err := startPushFlow(c, srv, f)
				Expect(err).NotTo(HaveOccurred())
				flows[c] = append(flows[c], t, u, p)
				all = append(all, t, u, p)
			}
		}
		DeferCleanup(func() {
			for _, f := range all {
				f.stop()
			}
		})
		time.Sleep(500 * time.Millisecond)
		for _, f := range all {
			Expect(f.okSince(time.Time{})).To(BeNumerically(">", 0), "%s never passed", f)
		}

		By("an unrelated change (a policy isolating z/c) leaves every connection alone")
		create(ctx, "z", policy("z-c-deny", labels("pod", "c"), ingress()))
		r := reach(true)
		r.ExpectAllIngress(pod("z", "c"), false)
		validate(ctx, framework.TCP(r, 80))
		time.Sleep(settle)
		for _, f := range all {
			Expect(f.lossless()).To(Succeed())
		}

		By("a deny: x/a admits only the pods of x")
		denyAt := time.Now()
		create(ctx, "x", policy("x-a-from-x", labels("pod", "a"), ingress(from(podPeer(matching())))))
		r.ExpectAllIngress(srv, false)
		for _, c := range allowed {
			r.Expect(c, srv, true)
		}
		validate(ctx, framework.TCP(r, 80))
		enforced := time.Now()
		time.Sleep(settle)
		for _, c := range allowed {
			for _, f := range flows[c] {
				Expect(f.lossless()).To(Succeed())
				Expect(f.okSince(enforced)).To(BeNumerically(">", 0), "%s stopped", f)
			}
		}
		for _, c := range denied {
			for _, f := range flows[c] {
				last := f.lastOK()
				By(fmt.Sprintf("%s: last packet through %v after the policy was written (enforced after %v)", f,
					last.Sub(denyAt).Round(time.Millisecond), enforced.Sub(denyAt).Round(time.Millisecond)))
				Expect(f.okSince(enforced.Add(grace))).To(BeZero(), "%s still passes after the deny was enforced", f)
			}
		}

		By("the agents restart; while they are down, x/a's policy narrows to x/c")
		Expect(env.StopAgents()).To(Succeed())
		update(ctx, "x", policy("x-a-from-x", labels("pod", "a"), ingress(from(podPeer(matching("pod", "c"))))))
		env.ForgetWrite()
		time.Sleep(300 * time.Millisecond)
		Expect(env.StartAgents(ctx)).To(Succeed())
		r.Expect(pod("x", "b"), srv, false)
		validate(ctx, framework.TCP(r, 80))
		enforced = time.Now()
		time.Sleep(settle)
		for _, f := range flows[pod("x", "c")] {
			Expect(f.lossless()).To(Succeed()) // throughout: the stop, the change, the restart
			Expect(f.okSince(enforced)).To(BeNumerically(">", 0), "%s stopped", f)
		}
		for _, c := range append([]*cluster.Pod{pod("x", "b")}, denied...) {
			for _, f := range flows[c] {
				Expect(f.okSince(enforced.Add(grace))).To(BeZero(), "%s passes after the restart", f)
			}
		}
	}, SpecTimeout(4*time.Minute))

	It("cuts, once the table is back, the connections opened while it was gone", func(ctx SpecContext) {
		srv, client := pod("x", "a"), pod("y", "b")
		r := onlyFromX(ctx, srv)

		// The server's node without its table: a flush by a firewall's start.
		// Its agent is stopped first, or it would put the table back within
		// milliseconds (the window a connection would have to hit).
		By("the server's node's agent stopped and its table deleted: a denied client connects")
		node := env.Cluster.Node(srv.Node)
		// Connection tracking stays on in the namespace, as kube-proxy's table
		// keeps it on a real node. Without any user of it, the kernel stops
		// tracking when the table goes: the connection then has no entry, and
		// the first of its packets seen after the table is back makes one, in
		// whichever direction that packet goes (the server's, here: judged as
		// x/a's egress to y/b, which no policy isolates). nft/doc.go
		// ("Connections conntrack picks up midstream") has this.
		_, err := node.NetNS.NFT("table inet ct-user {\n chain c {\n type filter hook prerouting priority raw; policy accept;\n ct state new counter\n }\n}\n", "-f", "-")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() error { _, err := node.NetNS.NFT("", "delete", "table", "inet", "ct-user"); return err })
		agent := env.Agents[srv.Node]
		Expect(agent.Stop()).To(Succeed())
		DeferCleanup(func(ctx SpecContext) error { return env.StartAgents(ctx) })
		_, err = node.NetNS.NFT("", "delete", "table", "inet", "nftpolicy")
		Expect(err).NotTo(HaveOccurred())
		var flows []*flow
		for _, start := range []func(c, s *cluster.Pod, f cluster.Family) (*flow, error){startTCPFlow, startUDPFlow, startPushFlow} {
			f, err := start(client, srv, cluster.V4)
			Expect(err).NotTo(HaveOccurred(), "without a table the connection should open")
			DeferCleanup(f.stop)
			flows = append(flows, f)
		}
		time.Sleep(300 * time.Millisecond)
		for _, f := range flows {
			Expect(f.okSince(time.Time{})).To(BeNumerically(">", 0), "%s never passed without a table", f)
		}

		By("the agent back: its table cuts them")
		Expect(env.StartAgents(ctx)).To(Succeed())
		validate(ctx, framework.TCP(r, 80))
		enforced := time.Now()
		time.Sleep(settle)
		for _, f := range flows {
			By(fmt.Sprintf("%s: last packet through %v before the table was back in force", f, enforced.Sub(f.lastOK()).Round(time.Millisecond)))
			Expect(f.okSince(enforced.Add(grace))).To(BeZero(), "%s, opened while the table was gone, still passes", f)
		}
	}, specTimeout)

	It("closes a backdoor someone adds to the table, and the connections it let in", func(ctx SpecContext) {
		srv, client := pod("x", "a"), pod("y", "b")
		onlyFromX(ctx, srv)
		node := env.Cluster.Node(srv.Node)
		epochs := func() int {
			m, err := env.Agents[srv.Node].Metrics(ctx)
			Expect(err).NotTo(HaveOccurred())
			n := 0
			if sub := regexp.MustCompile(`(?m)^nftpolicy_epoch_changes_total (\d+)`).FindStringSubmatch(m); sub != nil {
				n, _ = strconv.Atoi(sub[1])
			}
			return n
		}
		before := epochs()

		// y/b sends a datagram every millisecond and counts the echoes.
		conn, err := dialIn(client, "udp", netip.AddrPortFrom(srv.IPv4, strictUDPPort))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(conn.Close)
		var mu sync.Mutex
		var echoes []time.Time
		go func() {
			buf := make([]byte, 64)
			for {
				if _, err := conn.Read(buf); err != nil {
					return
				}
				mu.Lock()
				echoes = append(echoes, time.Now())
				mu.Unlock()
			}
		}()
		stop := make(chan struct{})
		DeferCleanup(func() { close(stop) })
		go func() {
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
					_, _ = conn.Write([]byte("ping"))
				}
			}
		}()
		time.Sleep(200 * time.Millisecond)

		listing, err := node.NetNS.NFT("", "list", "table", "inet", "nftpolicy")
		Expect(err).NotTo(HaveOccurred())
		set := regexp.MustCompile(`set (ing-\S+-any-v4) `).FindStringSubmatch(listing)
		Expect(set).NotTo(BeNil())
		// A repair comes at once, often before a datagram gets through; the
		// next one waits out the repairs' interval (a second). A first,
		// harmless change makes the backdoor's window that second.
		By("someone adds a chain, repaired at once; then y/b to x/a's allow set, repaired within a second, which moves the epoch")
		_, err = node.NetNS.NFT("", "add", "chain", "inet", "nftpolicy", "stray")
		Expect(err).NotTo(HaveOccurred())
		Eventually(epochs).WithTimeout(3*time.Second).WithPolling(10*time.Millisecond).Should(BeNumerically(">", before),
			"no epoch change after the repair of an added chain")
		before = epochs()
		tampered := time.Now()
		_, err = node.NetNS.NFT("", "add", "element", "inet", "nftpolicy", set[1], "{ "+client.IPv4.String()+" }")
		Expect(err).NotTo(HaveOccurred())
		Eventually(epochs).WithTimeout(3*time.Second).WithPolling(10*time.Millisecond).Should(BeNumerically(">", before),
			"no epoch change after the repair of an added element")
		moved := time.Now()
		time.Sleep(settle)
		mu.Lock()
		defer mu.Unlock()
		var during, after int
		for _, at := range echoes {
			switch {
			case at.After(moved.Add(grace)):
				after++
			case at.After(tampered):
				during++
			}
		}
		By(fmt.Sprintf("%d echoes before the epoch moved (%v after the tampering), %d after", during, moved.Sub(tampered).Round(time.Millisecond), after))
		Expect(during).To(BeNumerically(">", 0), "the backdoor let nothing in before the repair: nothing was tested")
		Expect(after).To(BeZero(), "the flow the backdoor let in outlived the repair")
	}, specTimeout)

	It("judges an old connection to a reused pod address as a connection to the new pod", func(ctx SpecContext) {
		before, after := reuseAddress(ctx)
		By(fmt.Sprintf("the new z/c received %d datagrams of the old flow before its isolation was enforced, %d after", before, after))
		Expect(after).To(BeZero(), "the old flow reaches the new, isolated pod")
	}, specTimeout)

	It("with --established=keep, lets connections a new policy denies live on (the behaviour before strict mode)", func(ctx SpecContext) {
		restartAgents(ctx, "--established=keep")
		DeferCleanup(func(ctx SpecContext) { restartAgents(ctx) }, NodeTimeout(3*time.Minute))
		srv, client := pod("x", "a"), pod("y", "b")
		servers := startStrictServers(srv)
		DeferCleanup(servers.close)
		var flows []*flow
		for _, start := range []func(c, s *cluster.Pod, f cluster.Family) (*flow, error){startTCPFlow, startUDPFlow, startPushFlow} {
			f, err := start(client, srv, cluster.V4)
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(f.stop)
			flows = append(flows, f)
		}
		time.Sleep(300 * time.Millisecond)
		create(ctx, "x", policy("x-a-deny", labels("pod", "a"), ingress()))
		r := reach(true)
		r.ExpectAllIngress(srv, false)
		validate(ctx, framework.TCP(r, 80))
		enforced := time.Now()
		time.Sleep(settle)
		for _, f := range flows {
			Expect(f.lossless()).To(Succeed())
			Expect(f.okSince(enforced)).To(BeNumerically(">", 0), "%s was cut in keep mode", f)
		}
		remove(ctx, "x", "x-a-deny")

		By("and an old flow to a reused address reaches the new pod even though a policy isolates it")
		before, after := reuseAddress(ctx)
		By(fmt.Sprintf("the new z/c received %d datagrams of the old flow before its isolation was enforced, %d after", before, after))
		Expect(after).To(BeNumerically(">", 0))
	}, SpecTimeout(4*time.Minute))
})

// onlyFromX makes srv (of x) admit the pods of x alone, validates it, starts
// srv's servers, and returns the reachability it validated.
func onlyFromX(ctx context.Context, srv *cluster.Pod) *framework.Expectation {
	GinkgoHelper()
	create(ctx, "x", policy("x-a-from-x", labels("pod", "a"), ingress(from(podPeer(matching())))))
	r := reach(true)
	r.ExpectAllIngress(srv, false)
	for _, p := range env.Pods("x") {
		r.Expect(p, srv, true)
	}
	validate(ctx, framework.TCP(r, 80))
	servers := startStrictServers(srv)
	DeferCleanup(servers.close)
	return r
}

// reuseAddress keeps a UDP flow from y/a to z/c going while z/c is removed, a
// policy isolating it appears, and z/c comes back on the same address; it returns
// the flow's datagrams the new z/c received before its isolation was enforced and
// after.
func reuseAddress(ctx context.Context) (before, after int) {
	GinkgoHelper()
	old, client := pod("z", "c"), pod("y", "a")
	servers := startStrictServers(old)
	f, err := startUDPFlow(client, old, cluster.V4)
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(f.stop)
	time.Sleep(300 * time.Millisecond)
	Expect(f.lossless()).To(Succeed())

	By("z/c goes; a policy isolating pods labelled pod=c in z appears; z/c comes back on the same address")
	servers.close()
	host, node, addr := old.Host(), old.Node, old.IPv4
	Expect(env.RemovePod(ctx, "z", "c")).To(Succeed())
	create(ctx, "z", policy("z-c-deny", labels("pod", "c"), ingress()))
	created, err := env.AddPods(ctx, cluster.PodSpec{Namespace: "z", Name: "c", Node: node, Labels: labels("pod", "c"), Host: host})
	Expect(err).NotTo(HaveOccurred())
	Expect(created[0].IPv4).To(Equal(addr))
	received := newCounter()
	servers = startStrictServersCounting(created[0], received)
	DeferCleanup(servers.close)
	r := reach(true)
	r.ExpectAllIngress(pod("z", "c"), false)
	validate(ctx, framework.TCP(r, 80))
	enforced := time.Now()
	time.Sleep(settle)
	return received.before(enforced), received.since(enforced.Add(grace))
}

// restartAgents restarts every agent with the given extra flags.
func restartAgents(ctx context.Context, args ...string) {
	GinkgoHelper()
	Expect(env.StopAgents()).To(Succeed())
	for _, a := range env.Agents {
		a.Args = args
	}
	Expect(env.StartAgents(ctx)).To(Succeed())
}

// --- Servers ------------------------------------------------------------------

type strictServers struct {
	closers []func() error
}

func (s *strictServers) close() {
	for _, c := range s.closers {
		_ = c()
	}
	s.closers = nil
}

func startStrictServers(p *cluster.Pod) *strictServers {
	GinkgoHelper()
	return startStrictServersCounting(p, nil)
}

// startStrictServersCounting serves, on both of p's addresses, TCP echo, UDP echo
// and UDP push; received, when set, counts the UDP echo datagrams.
func startStrictServersCounting(p *cluster.Pod, received *counter) *strictServers {
	GinkgoHelper()
	s := &strictServers{}
	for _, f := range []cluster.Family{cluster.V4, cluster.V6} {
		addr := p.Addr(f)
		err := p.NetNS.Do(func() error {
			l, err := net.Listen("tcp", netip.AddrPortFrom(addr, strictTCPPort).String())
			if err != nil {
				return err
			}
			s.closers = append(s.closers, l.Close)
			go serveEcho(l)
			u, err := net.ListenPacket("udp", netip.AddrPortFrom(addr, strictUDPPort).String())
			if err != nil {
				return err
			}
			s.closers = append(s.closers, u.Close)
			go func() {
				buf := make([]byte, 64)
				for {
					n, from, err := u.ReadFrom(buf)
					if err != nil {
						return
					}
					if received != nil {
						received.add()
					}
					_, _ = u.WriteTo(buf[:n], from)
				}
			}()
			push, err := net.ListenPacket("udp", netip.AddrPortFrom(addr, strictPushPort).String())
			if err != nil {
				return err
			}
			s.closers = append(s.closers, push.Close)
			go servePush(push)
			return nil
		})
		Expect(err).NotTo(HaveOccurred())
	}
	return s
}

// servePush starts, for each client that sends a datagram, a stream of datagrams
// back to it every flowPeriod, until the socket closes.
func servePush(c net.PacketConn) {
	buf := make([]byte, 64)
	started := map[string]bool{}
	for {
		_, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		if started[from.String()] {
			continue
		}
		started[from.String()] = true
		go func() {
			msg := make([]byte, 8)
			for i := uint64(0); ; i++ {
				binary.BigEndian.PutUint64(msg, i)
				if _, err := c.WriteTo(msg, from); errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(flowPeriod)
			}
		}()
	}
}

// --- Flows --------------------------------------------------------------------

// flow is one long-lived connection with traffic on it, and the times its probes
// got through.
type flow struct {
	name string
	conn net.Conn

	mu    sync.Mutex
	oks   []time.Time
	fails int
	first error

	done     chan struct{}
	finished chan struct{}
	once     sync.Once
}

func (f *flow) String() string { return f.name }

func newFlow(name string, conn net.Conn) *flow {
	return &flow{name: name, conn: conn, done: make(chan struct{}), finished: make(chan struct{})}
}

func (f *flow) record(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		f.oks = append(f.oks, time.Now())
		return
	}
	f.fails++
	if f.first == nil {
		f.first = err
	}
}

func (f *flow) stopped() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

func (f *flow) stop() {
	f.once.Do(func() {
		close(f.done)
		_ = f.conn.Close()
	})
	<-f.finished
}

// okSince counts the probes that got through after t.
func (f *flow) okSince(t time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, _ := slices.BinarySearchFunc(f.oks, t, func(a, b time.Time) int { return a.Compare(b) })
	return len(f.oks) - i
}

func (f *flow) lastOK() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.oks) == 0 {
		return time.Time{}
	}
	return f.oks[len(f.oks)-1]
}

// lossless fails when a probe failed, or when TCP retransmitted a segment.
func (f *flow) lossless() error {
	f.mu.Lock()
	fails, first := f.fails, f.first
	f.mu.Unlock()
	if fails > 0 {
		return fmt.Errorf("%s: %d probes failed, the first: %w", f, fails, first)
	}
	if tc, ok := f.conn.(*net.TCPConn); ok {
		raw, err := tc.SyscallConn()
		if err != nil {
			return err
		}
		var info *unix.TCPInfo
		var ierr error
		if err := raw.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
			return err
		}
		if ierr != nil {
			return ierr
		}
		if info.Total_retrans > 0 {
			return fmt.Errorf("%s: %d segments retransmitted", f, info.Total_retrans)
		}
	}
	return nil
}

// dialIn dials from inside p's namespace.
func dialIn(p *cluster.Pod, network string, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := p.NetNS.Do(func() error {
		var err error
		c, err = net.DialTimeout(network, to.String(), 2*time.Second)
		return err
	})
	return c, err
}

// startTCPFlow makes an 8-byte round trip over one TCP connection every flowPeriod.
func startTCPFlow(c, s *cluster.Pod, f cluster.Family) (*flow, error) {
	conn, err := dialIn(c, "tcp", netip.AddrPortFrom(s.Addr(f), strictTCPPort))
	if err != nil {
		return nil, fmt.Errorf("%s -> %s tcp %v: %w", c, s, f, err)
	}
	fl := newFlow(fmt.Sprintf("%s -> %s tcp/%d %v", c, s, strictTCPPort, f), conn)
	go fl.roundTrips(time.Second)
	return fl, nil
}

// startUDPFlow is startTCPFlow over one UDP socket pair (one conntrack entry).
func startUDPFlow(c, s *cluster.Pod, f cluster.Family) (*flow, error) {
	conn, err := dialIn(c, "udp", netip.AddrPortFrom(s.Addr(f), strictUDPPort))
	if err != nil {
		return nil, fmt.Errorf("%s -> %s udp %v: %w", c, s, f, err)
	}
	fl := newFlow(fmt.Sprintf("%s -> %s udp/%d %v", c, s, strictUDPPort, f), conn)
	go fl.roundTrips(500 * time.Millisecond)
	return fl, nil
}

// roundTrips writes a sequence number and reads it back, every flowPeriod; a
// late answer of an earlier round trip is skipped.
func (f *flow) roundTrips(timeout time.Duration) {
	defer close(f.finished)
	buf := make([]byte, 8)
	msg := make([]byte, 8)
	for i := uint64(1); ; i++ {
		select {
		case <-f.done:
			return
		case <-time.After(flowPeriod):
		}
		binary.BigEndian.PutUint64(msg, i)
		sent := time.Now()
		_ = f.conn.SetDeadline(sent.Add(timeout))
		_, err := f.conn.Write(msg)
		for err == nil {
			if _, err = readFull(f.conn, buf); err == nil && binary.BigEndian.Uint64(buf) == i {
				break
			}
		}
		if f.stopped() {
			return
		}
		if err != nil {
			// The time places a lost round trip against the agents' logs.
			err = fmt.Errorf("round trip %d sent at %s: %w", i, sent.Format("15:04:05.000000"), err)
		}
		f.record(err)
	}
}

func readFull(c net.Conn, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := c.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
		if _, udp := c.(*net.UDPConn); udp {
			break
		}
	}
	return n, nil
}

// startPushFlow subscribes to the server's push port once and then only reads:
// every datagram after the first is a reply of the connection, and the client
// never sends again.
func startPushFlow(c, s *cluster.Pod, f cluster.Family) (*flow, error) {
	conn, err := dialIn(c, "udp", netip.AddrPortFrom(s.Addr(f), strictPushPort))
	if err != nil {
		return nil, fmt.Errorf("%s -> %s push %v: %w", c, s, f, err)
	}
	if _, err := conn.Write([]byte("subscribe")); err != nil {
		return nil, err
	}
	fl := newFlow(fmt.Sprintf("%s <- %s udp/%d push %v", c, s, strictPushPort, f), conn)
	go func() {
		defer close(fl.finished)
		buf := make([]byte, 64)
		for !fl.stopped() {
			_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if _, err := conn.Read(buf); err == nil {
				fl.record(nil)
			}
		}
	}()
	return fl, nil
}

// counter counts events with their times.
type counter struct {
	mu    sync.Mutex
	times []time.Time
}

func newCounter() *counter { return &counter{} }

func (c *counter) add() {
	c.mu.Lock()
	c.times = append(c.times, time.Now())
	c.mu.Unlock()
}

func (c *counter) since(t time.Time) int {
	c.mu.Lock()
	n := len(c.times)
	c.mu.Unlock()
	return n - c.before(t)
}

func (c *counter) before(t time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, _ := slices.BinarySearchFunc(c.times, t, func(a, b time.Time) int { return a.Compare(b) })
	return i
}
