package datapath

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// TestReplaceUnderTraffic isolates what B3 (the agent restart) found: allowed
// connections lose a packet while the new agent replaces the table. Here there
// is no agent and no apiserver: the typical scenario's table stays loaded while
// two client threads connect to the server back to back, and a fresh Applier
// replaces the table with the very same ruleset (FullSync: add, delete and add
// the table in one batch) every 300 ms. The kernel's TCP_INFO tells, per
// connection, whether anything had to be retransmitted. A control phase of the
// same length without replacements comes first; a last phase does the running
// agent's periodic full sync instead (the same Applier: chains rewritten, sets
// kept), which must lose nothing.
func TestReplaceUnderTraffic(t *testing.T) {
	gate(t)
	sum := &summary{t: t, file: "replace.txt"}
	cl, err := cluster.New(t.Context(), cluster.Config{Prefix: "npbrepl", Nodes: 1, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	pods, err := cl.AddPods(t.Context(),
		cluster.PodSpec{Namespace: benchNS, Name: "server", Node: 0, Labels: map[string]string{"app": "server"}},
		cluster.PodSpec{Namespace: benchNS, Name: "client", Node: 0, Labels: map[string]string{"role": "client"}})
	if err != nil {
		t.Fatal(err)
	}
	server, client := pods[0], pods[1]
	var real []realPod
	for _, p := range pods {
		real = append(real, realPod{name: p.Name, node: p.Node, ip: p.IPv4, labels: p.Labels})
	}
	o := build(scenario{name: "typical", selecting: 5}, real)
	rs, problems := compile.Compile(compile.Snapshot{NodeName: "node-0", Pods: o.pods, Namespaces: o.namespaces, Policies: o.policies}, compile.Options{})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	srv, err := startServers(server.NetNS, server.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)
	if err := cl.Node(0).NetNS.Sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1"); err != nil {
		t.Fatal(err)
	}
	a, err := netlink.New(netlink.Options{NetNSPath: cl.Node(0).NetNSPath()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Apply(t.Context(), rs); err != nil {
		t.Fatal(err)
	}

	const phase, every = 6 * time.Second, 300 * time.Millisecond
	control := connectWhile(t.Context(), client.NetNS, server.IPv4, phase, nil)
	replaced := 0
	test := connectWhile(t.Context(), client.NetNS, server.IPv4, phase, func() {
		replaced++
		if err := replaceOnce(t.Context(), cl.Node(0).NetNSPath(), rs); err != nil {
			t.Error(err)
		}
	})
	// The periodic full sync of a running agent: the same Applier, which knows
	// the kernel holds what it applied, rewrites every chain but keeps the sets.
	rewritten := 0
	rewrite := connectWhile(t.Context(), client.NetNS, server.IPv4, phase, func() {
		rewritten++
		st, err := a.FullSync(t.Context(), rs)
		if err != nil {
			t.Error(err)
		} else if st.Full {
			t.Errorf("the periodic full sync replaced the table (drift %q)", st.Drift)
		}
	})
	t.Logf("control: %d connections, %d with a retransmission, %d failed", control.conns, control.retrans, control.failed)
	t.Logf("with %d replacements every %v: %d connections, %d with a retransmission, %d failed", replaced, every, test.conns, test.retrans, test.failed)
	t.Logf("with %d periodic full syncs (chains rewritten, sets kept) every %v: %d connections, %d with a retransmission, %d failed", rewritten, every, rewrite.conns, rewrite.retrans, rewrite.failed)
	sum.emit("replace_control_retransmitted_conns", "%d", control.retrans)
	sum.emit("replace_count", "%d", replaced)
	sum.emit("replace_retransmitted_conns", "%d", test.retrans)
	sum.emit("resync_count", "%d", rewritten)
	sum.emit("resync_retransmitted_conns", "%d", rewrite.retrans)
}

type connCounts struct{ conns, retrans, failed int64 }

// connectWhile runs two client threads in ns for d, connecting to dst's
// connection server; every 300 ms it calls tick, if set.
func connectWhile(ctx context.Context, ns *nfttest.NetNS, dst netip.Addr, d time.Duration, tick func()) connCounts {
	var conns, retrans, failed atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	addr := net.JoinHostPort(dst.String(), "5001")
	for range 2 {
		wg.Go(func() {
			_ = ns.Do(func() error {
				buf := []byte{'x'}
				for i := 0; i < maxConnsPer; i++ {
					select {
					case <-done:
						return nil
					default:
					}
					dl := net.Dialer{Timeout: 3 * time.Second}
					c, err := dl.DialContext(ctx, "tcp4", addr)
					conns.Add(1)
					if err != nil {
						failed.Add(1)
						continue
					}
					if raw, err := c.(*net.TCPConn).SyscallConn(); err == nil {
						_ = raw.Control(func(fd uintptr) {
							if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil && info.Total_retrans > 0 {
								retrans.Add(1)
							}
						})
					}
					_ = c.SetDeadline(time.Now().Add(3 * time.Second))
					_, _ = c.Write(buf)
					_, _ = c.Read(buf)
					c.Close()
				}
				return nil
			})
		})
	}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		time.Sleep(300 * time.Millisecond)
		if tick != nil {
			tick()
		}
	}
	close(done)
	wg.Wait()
	return connCounts{conns.Load(), retrans.Load(), failed.Load()}
}

// replaceOnce replaces the table with rs the way a restarted agent does: a new
// Applier, whose first sync replaces whatever table it finds.
func replaceOnce(ctx context.Context, netnsPath string, rs *nft.Ruleset) error {
	b, err := netlink.New(netlink.Options{NetNSPath: netnsPath})
	if err != nil {
		return err
	}
	defer b.Close()
	_, err = b.FullSync(ctx, rs)
	return err
}
