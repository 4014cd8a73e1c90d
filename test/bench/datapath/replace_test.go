package datapath

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// TestReplaceUnderTraffic isolates what B3 (the agent restart) found: allowed
// connections lost a packet while the new agent replaced the table. Here there
// is no agent and no apiserver: the typical scenario's table stays loaded while
// two client threads connect to the server back to back, and every 300 ms the
// table is written again with the very same ruleset, in three ways, one phase
// each, after a control phase without writes:
//
//   - replace: `nft -f` of add, delete and add the table in one batch, what an
//     applier did on every full sync until the sets were kept; lookups in the
//     re-created sets miss around the commit;
//   - restart: a fresh Applier's first FullSync, which adopts the table it finds
//     (keeps the sets that are exactly right, rewrites the chains);
//   - restart-changed: the same, alternately towards the ruleset and one whose
//     server's peer sets hold one more client address (a pod added while no
//     agent ran): the adopted sets are patched in place (until 2026-12-05 they
//     were re-created, and lost packets as replace does);
//   - regroup: an incremental Apply that gives the server a new group (a policy
//     more selects it, allowing the same clients), and back: a new chain and new
//     sets, and the map element that sends the server there, in one batch;
//   - resync: the same Applier's periodic FullSync (sets kept; without drift it
//     sends nothing since 2026-12-04, before which it rewrote every chain).
//
// The kernel's TCP_INFO tells, per connection, whether anything had to be
// retransmitted. The last four must lose nothing.
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
	serve(t, server, false)
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

	// A group change: one more policy selecting the server (allowing the same
	// clients) gives it a new mix of policies, so each write alternately creates
	// a group (chain and sets) and moves the server's map element there, then
	// moves it back (the old group re-created).
	extra := o.policies[len(o.policies)-1].DeepCopy()
	extra.Name = "sel-extra"
	rs2, problems := compile.Compile(compile.Snapshot{NodeName: "node-0", Pods: o.pods, Namespaces: o.namespaces,
		Policies: append(slices.Clone(o.policies), extra)}, compile.Options{})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	// One more client, as if a pod had been added while no agent ran.
	var more []*corev1.Pod
	for _, p := range o.pods {
		if p.Name == client.Name && p.Namespace == benchNS {
			extra := p.DeepCopy()
			extra.Name, extra.Status.PodIP, extra.Status.PodIPs = "client-2", "10.99.0.9", []corev1.PodIP{{IP: "10.99.0.9"}}
			more = append(more, extra)
		}
	}
	if len(more) != 1 {
		t.Fatalf("no client pod in the scenario")
	}
	rs3, problems := compile.Compile(compile.Snapshot{NodeName: "node-0", Pods: append(slices.Clone(o.pods), more...), Namespaces: o.namespaces,
		Policies: o.policies}, compile.Options{})
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if nft.Render(rs3) == nft.Render(rs) {
		t.Fatal("the extra client changes no set")
	}
	flip, flip3 := false, false
	const phase, every = 6 * time.Second, 300 * time.Millisecond
	node := cl.Node(0)
	replaceText := "table inet " + rs.Table + "\ndelete table inet " + rs.Table + "\n" + nft.Render(rs)
	type phaseSpec struct {
		name  string
		write func() error
	}
	phases := []phaseSpec{
		{"control", nil},
		{"replace", func() error { _, err := node.NetNS.NFT(replaceText, "-f", "-"); return err }},
		{"restart", func() error { return restartOnce(t.Context(), node.NetNSPath(), rs) }},
		{"restart-changed", func() error {
			flip3 = !flip3
			next := rs
			if flip3 {
				next = rs3
			}
			return restartOnce(t.Context(), node.NetNSPath(), next)
		}},
		{"regroup", func() error {
			flip = !flip
			next := rs
			if flip {
				next = rs2
			}
			_, err := a.Apply(t.Context(), next)
			return err
		}},
		{"resync", func() error {
			st, err := a.FullSync(t.Context(), rs)
			if err == nil && st.Full {
				err = fmt.Errorf("the periodic full sync replaced the table (drift %q)", st.Drift)
			}
			return err
		}},
	}
	for _, p := range phases {
		writes := 0
		var tick func()
		if p.write != nil {
			tick = func() {
				writes++
				if err := p.write(); err != nil {
					t.Errorf("%s: %v", p.name, err)
				}
			}
		}
		c := connectWhile(t.Context(), client.NetNS, server.IPv4, phase, tick)
		if flip3 { // leave the table as the next phase's Applier wrote it
			flip3 = false
			if err := restartOnce(t.Context(), node.NetNSPath(), rs); err != nil {
				t.Error(err)
			}
		}
		t.Logf("%s: %d writes every %v; %d connections, %d with a retransmission, %d failed", p.name, writes, every, c.conns, c.retrans, c.failed)
		sum.emit(p.name+"_count", "%d", writes)
		sum.emit(p.name+"_retransmitted_conns", "%d", c.retrans)
	}
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

// restartOnce writes rs the way a restarted agent does: a new Applier, whose
// first sync adopts whatever table it finds.
func restartOnce(ctx context.Context, netnsPath string, rs *nft.Ruleset) error {
	b, err := netlink.New(netlink.Options{NetNSPath: netnsPath})
	if err != nil {
		return err
	}
	defer b.Close()
	_, err = b.FullSync(ctx, rs)
	return err
}
