package e2e

// Scenarios beyond the upstream suite: what a node-level nftables enforcer
// must get right about ranges, addresses outside the cluster, Service DNAT,
// churn of pods and labels, the nodes themselves, and its own restarts.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

var _ = Describe("nftpolicy", func() {
	It("enforces endPort ranges per protocol, on ingress and egress", func(ctx SpecContext) {
		xa, xb, yc := pod("x", "a"), pod("x", "b"), pod("y", "c")
		create(ctx, "x", policy("x-a-tcp-75-80", labels("pod", "a"), ingress(fromOn(ports(portRange(75, 80, &tcp))))))
		create(ctx, "x", policy("x-b-udp-81-90", labels("pod", "b"), ingress(fromOn(ports(portRange(81, 90, &udp))))))
		create(ctx, "y", policy("y-c-egress-79-80", labels("pod", "c"), egress(toOn(ports(portRange(79, 80, nil))))))

		// x/a admits TCP 75-80, x/b UDP 81-90; y/c sends TCP 79-80 only.
		tcp80 := reach(true)
		tcp80.ExpectAllIngress(xb, false)
		tcp81 := reach(true)
		tcp81.ExpectAllIngress(xa, false)
		tcp81.ExpectAllIngress(xb, false)
		tcp81.ExpectAllEgress(yc, false)
		udp80 := reach(true)
		udp80.ExpectAllIngress(xa, false)
		udp80.ExpectAllIngress(xb, false)
		udp80.ExpectAllEgress(yc, false)
		udp81 := reach(true)
		udp81.ExpectAllIngress(xa, false)
		udp81.ExpectAllEgress(yc, false)
		validate(ctx, framework.TCP(tcp80, 80), framework.TCP(tcp81, 81), framework.UDP(udp80, 80), framework.UDP(udp81, 81))
	}, specTimeout)

	It("allows egress to an ipBlock minus its except, towards a host outside the cluster", func(ctx SpecContext) {
		xa, ext := pod("x", "a"), env.Cluster.External()
		create(ctx, "x", policy("x-a-to-external", labels("pod", "a"), egress(to(
			blockPeer("192.0.2.0/24", "192.0.2.10/32"), blockPeer("2001:db8::/64"),
		))))

		pods := reach(true)
		pods.ExpectAllEgress(xa, false)
		toExtV4 := framework.NewExpectationFromTo(env.Peers(), endpoints(ext), true)
		toExtV4.Expect(xa, ext, false) // excepted
		toExtV6 := framework.NewExpectationFromTo(env.Peers(), endpoints(ext), true)
		validate(ctx, framework.TCP(pods, 80), family(cluster.V4, framework.TCP(toExtV4, 80)), family(cluster.V6, framework.TCP(toExtV6, 80)))

		By("dropping the except")
		update(ctx, "x", policy("x-a-to-external", labels("pod", "a"), egress(to(
			blockPeer("192.0.2.0/24"), blockPeer("2001:db8::/64"),
		))))
		validate(ctx, framework.TCP(pods, 80), framework.TCP(framework.NewExpectationFromTo(env.Peers(), endpoints(ext), true), 80))
	}, specTimeout)

	It("allows ingress from an ipBlock outside the cluster, minus its except", func(ctx SpecContext) {
		ext := env.Cluster.External()
		create(ctx, "y", policy("y-from-external", nil, ingress(from(blockPeer("192.0.2.0/28"), blockPeer("2001:db8::/120")))))

		pods := reach(true)
		pods.ExpectPeer(anyone(), ns("y"), false)
		fromExt := framework.NewExpectationFromTo(endpoints(ext), env.Peers(), true)
		both := []cluster.Protocol{cluster.TCP, cluster.UDP}
		validate(ctx, framework.TCP(pods, 80), framework.Check{Protocols: both, Want: fromExt})

		By("excepting the external host's /29")
		update(ctx, "y", policy("y-from-external", nil, ingress(from(blockPeer("192.0.2.0/28", "192.0.2.8/29"), blockPeer("2001:db8::/120")))))
		fromExtV4 := framework.NewExpectationFromTo(endpoints(ext), env.Peers(), true)
		fromExtV4.ExpectPeer(anyone(), ns("y"), false)
		validate(ctx, framework.TCP(pods, 80),
			framework.Check{Protocols: both, Families: []cluster.Family{cluster.V4}, Want: fromExtV4},
			framework.Check{Protocols: both, Families: []cluster.Family{cluster.V6}, Want: fromExt})
	}, specTimeout)

	It("repairs at once a table that another process deleted", func(ctx SpecContext) {
		xa := pod("x", "a")
		create(ctx, "x", policy("x-a-from-x-b", labels("pod", "a"), ingress(from(podPeer(matching("pod", "b"))))))
		want := reach(true)
		want.ExpectAllIngress(xa, false)
		want.Expect(pod("x", "b"), xa, true)
		validate(ctx, framework.TCP(want, 80))

		// Someone deletes the table on every node (a firewall's start that
		// flushes the ruleset does the same to it). The periodic full sync is 5
		// minutes away: the agent's watch of its table must bring it back.
		for i, n := range env.Cluster.Nodes() {
			before, err := env.Table(i, true)
			Expect(err).NotTo(HaveOccurred())
			start := time.Now()
			_, err = n.NetNS.NFT("", "delete", "table", "inet", "nftpolicy")
			Expect(err).NotTo(HaveOccurred())
			Eventually(func() error { _, err := env.Table(i, true); return err }).
				WithTimeout(3*time.Second).WithPolling(5*time.Millisecond).Should(Succeed(), "node %s: no table 3 s after its deletion", n.Name)
			By(fmt.Sprintf("node %s: the table was back %v after its deletion", n.Name, time.Since(start).Round(time.Millisecond)))
			after, err := env.Table(i, true)
			Expect(err).NotTo(HaveOccurred())
			// Listed in creation order: the same lines, in another order, but
			// the epoch, which moves after a repair of drift (strict mode).
			Expect(sortedLines(withoutEpoch(after))).To(Equal(sortedLines(withoutEpoch(before))), "node %s: the table restored is not the one deleted", n.Name)
		}
		validate(ctx, framework.TCP(want, 80))
		for _, a := range env.Agents {
			m, err := a.Metrics(ctx)
			Expect(err).NotTo(HaveOccurred())
			Expect(m).To(MatchRegexp(`nftpolicy_table_foreign_changes_total\{kind="change"\} [1-9]`))
			log, err := a.Log()
			Expect(err).NotTo(HaveOccurred())
			Expect(log).To(MatchRegexp(`another process changed the node's table: repairing it",.*"process":"nft \(pid [0-9]+\)","changes":[0-9]+,"first":\["delete table inet nftpolicy"`))
		}
	}, specTimeout)

	It("never lets an IPv4 block open IPv6, nor the reverse", func(ctx SpecContext) {
		xa, xb := pod("x", "a"), pod("x", "b")
		create(ctx, "x", policy("x-a-to-all-ipv4", labels("pod", "a"), egress(to(blockPeer("0.0.0.0/0")))))
		create(ctx, "x", policy("x-b-from-all-ipv6", labels("pod", "b"), ingress(from(blockPeer("::/0")))))

		v4 := reach(true)
		v4.ExpectAllIngress(xb, false)
		v6 := reach(true)
		v6.ExpectAllEgress(xa, false)
		validate(ctx, family(cluster.V4, framework.TCP(v4, 80)), family(cluster.V6, framework.TCP(v6, 80)))
	}, specTimeout)

	It("judges a connection to a DNAT'd ClusterIP on the endpoint pod", func(ctx SpecContext) {
		// A stand-in for kube-proxy on every node: 10.96.0.10:80 and
		// [fd00:10:96::10]:80 lead to x/a, DNAT'd at prerouting priority dstnat.
		xa := pod("x", "a")
		vips := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00:10:96::10")}
		kubeProxy := fmt.Sprintf(`table inet kube-proxy-fake {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport 80 dnat ip to %s:80
		ip6 daddr %s tcp dport 80 dnat ip6 to [%s]:80
	}
}
`, vips[0], xa.IPv4, vips[1], xa.IPv6)
		for _, n := range env.Cluster.Nodes() {
			_, err := n.NetNS.NFT(kubeProxy, "-f", "-")
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(func() error {
				_, err := n.NetNS.NFT("", "delete", "table", "inet", "kube-proxy-fake")
				return err
			})
		}
		// Every pod but x/a itself (hairpin would need kube-proxy's masquerade).
		var clients []*cluster.Pod
		for _, p := range env.Pods(env.Namespaces()...) {
			if p != xa {
				clients = append(clients, p)
			}
		}
		expectService := func(allowed func(*cluster.Pod) bool) {
			GinkgoHelper()
			Eventually(ctx, func(ctx context.Context) []string {
				return serviceMismatches(ctx, clients, vips, allowed)
			}).WithTimeout(framework.DefaultMatrixTimeout).WithPolling(10*time.Millisecond).
				Should(BeEmpty(), func() string { return env.Diagnostics() })
		}

		By("without policy, every client reaches the service")
		expectService(func(*cluster.Pod) bool { return true })

		By("x/a admits x/b only: through the service too")
		create(ctx, "x", policy("x-a-from-x-b", labels("pod", "a"), ingress(from(podPeer(matching("pod", "b"))))))
		r := reach(true)
		r.ExpectAllIngress(xa, false)
		r.Expect(pod("x", "b"), xa, true)
		validate(ctx, framework.TCP(r, 80))
		expectService(func(p *cluster.Pod) bool { return p.Namespace == "x" && p.Name == "b" })

		By("y/b may only send to x/a: through the service, judged on x/a")
		Expect(env.DeleteAllPolicies(ctx)).To(Succeed())
		create(ctx, "y", policy("y-b-to-x-a", labels("pod", "b"), egress(to(
			nsPodPeer(matching(corev1.LabelMetadataName, "x"), matching("pod", "a")),
		))))
		r = reach(true)
		r.ExpectAllEgress(pod("y", "b"), false)
		r.Expect(pod("y", "b"), xa, true)
		validate(ctx, framework.TCP(r, 80))
		expectService(func(*cluster.Pod) bool { return true })
	}, specTimeout)

	It("follows pods and namespaces relabelled in and out of a policy", func(ctx SpecContext) {
		xa, yb := pod("x", "a"), pod("y", "b")
		create(ctx, "x", policy("db-from-blue-teams-and-clients", labels("role", "db"), ingress(from(
			nsPeer(matching("team", "blue")),
			nsPodPeer(&metav1.LabelSelector{}, matching("role", "client")),
		))))
		By("the policy selects no pod yet")
		validate(ctx, framework.TCP(reach(true), 80))

		By("x/a becomes a db: isolated, nobody matches the peers")
		Expect(env.SetPodLabels(ctx, "x", "a", labels("pod", "a", "role", "db"))).To(Succeed())
		r := reach(true)
		r.ExpectAllIngress(xa, false)
		validate(ctx, framework.TCP(r, 80))

		By("namespace z joins team blue")
		Expect(env.SetNamespaceLabels(ctx, "z", with(framework.DefaultNamespaceLabels("z"), "team", "blue"))).To(Succeed())
		r.ExpectPeer(ns("z"), nsPod("x", "a"), true)
		validate(ctx, framework.TCP(r, 80))

		By("y/b becomes a client")
		Expect(env.SetPodLabels(ctx, "y", "b", labels("pod", "b", "role", "client"))).To(Succeed())
		r.Expect(yb, xa, true)
		validate(ctx, framework.TCP(r, 80))

		By("namespace z moves to team red")
		Expect(env.SetNamespaceLabels(ctx, "z", with(framework.DefaultNamespaceLabels("z"), "team", "red"))).To(Succeed())
		r.ExpectPeer(ns("z"), nsPod("x", "a"), false)
		validate(ctx, framework.TCP(r, 80))

		By("y/b is no longer a client")
		Expect(env.SetPodLabels(ctx, "y", "b", labels("pod", "b"))).To(Succeed())
		r.Expect(yb, xa, false)
		validate(ctx, framework.TCP(r, 80))

		By("x/a is no longer a db")
		Expect(env.SetPodLabels(ctx, "x", "a", labels("pod", "a"))).To(Succeed())
		validate(ctx, framework.TCP(reach(true), 80))
	}, specTimeout)

	It("follows a pod deleted and recreated with a new address, on either node", func(ctx SpecContext) {
		create(ctx, "x", policy("x-a-from-x-b-and-y-a", labels("pod", "a"), ingress(from(
			podPeer(matching("pod", "b")),
			nsPodPeer(matching(corev1.LabelMetadataName, "y"), matching("pod", "a")),
		))))
		create(ctx, "y", policy("y-a-to-x-a", labels("pod", "a"), egress(to(
			nsPodPeer(matching(corev1.LabelMetadataName, "x"), matching("pod", "a")),
		))))
		// Built afresh each time: the endpoints change with the pods.
		expected := func() *framework.Expectation {
			r := reach(true)
			r.ExpectAllIngress(pod("x", "a"), false)
			r.Expect(pod("x", "b"), pod("x", "a"), true)
			r.ExpectAllEgress(pod("y", "a"), false)
			r.Expect(pod("y", "a"), pod("x", "a"), true)
			return r
		}
		validate(ctx, framework.TCP(expected(), 80))

		home := pod("x", "a").Node
		for _, step := range []struct {
			name string
			node int
		}{
			{"b", pod("x", "b").Node}, // the allowed peer
			{"a", home},               // the isolated target, same node
			{"a", 1 - home},           // the target moves to the other node
			{"a", home},               // and back
		} {
			old := pod("x", step.name)
			Expect(env.RemovePod(ctx, "x", step.name)).To(Succeed())
			created, err := env.AddPods(ctx, cluster.PodSpec{Namespace: "x", Name: step.name, Node: step.node, Labels: labels("pod", step.name)})
			Expect(err).NotTo(HaveOccurred())
			p := created[0]
			By(fmt.Sprintf("x/%s recreated on %s: %s %s (was %s %s on %s)", step.name, env.Cluster.Node(p.Node).Name,
				p.IPv4, p.IPv6, old.IPv4, old.IPv6, env.Cluster.Node(old.Node).Name))
			Expect(p.IPv4).NotTo(Equal(old.IPv4))
			validate(ctx, framework.TCP(expected(), 80))
		}
	}, specTimeout)

	It("follows a policy's updates and its deletion", func(ctx SpecContext) {
		xa, xb, xc := pod("x", "a"), pod("x", "b"), pod("x", "c")
		np := policy("moving-target", labels("pod", "a"), ingress(from(podPeer(matching("pod", "b")))))
		create(ctx, "x", np)
		r := reach(true)
		r.ExpectAllIngress(xa, false)
		r.Expect(xb, xa, true)
		validate(ctx, framework.TCP(r, 80))

		By("changing the peer from x/b to x/c")
		np.Spec.Ingress = []netv1.NetworkPolicyIngressRule{from(podPeer(matching("pod", "c")))}
		update(ctx, "x", np)
		r = reach(true)
		r.ExpectAllIngress(xa, false)
		r.Expect(xc, xa, true)
		validate(ctx, framework.TCP(r, 80))

		By("moving the target from x/a to x/b")
		np.Spec.PodSelector = *matching("pod", "b")
		update(ctx, "x", np)
		r = reach(true)
		r.ExpectAllIngress(xb, false)
		r.Expect(xc, xb, true)
		validate(ctx, framework.TCP(r, 80))

		By("adding Egress with no rules: x/b may send nothing")
		np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, netv1.PolicyTypeEgress)
		update(ctx, "x", np)
		r.ExpectAllEgress(xb, false)
		validate(ctx, framework.TCP(r, 80))

		By("deleting it")
		remove(ctx, "x", np.Name)
		validate(ctx, framework.TCP(reach(true), 80))
	}, specTimeout)

	It("always allows a node and its own pods to talk, under deny-all", func(ctx SpecContext) {
		create(ctx, "x", policy("deny-all", nil, ingress(), egress()))

		pods := reach(true)
		pods.ExpectPeer(anyone(), ns("x"), false)
		pods.ExpectPeer(ns("x"), anyone(), false)
		// A node's own pods: never through the forward hook. Another node: an
		// address like any other, denied.
		nodesToPods := framework.NewExpectationFromTo(env.Nodes(), env.Peers(), true)
		podsToNodes := framework.NewExpectationFromTo(env.Peers(), env.Nodes(), true)
		for _, p := range env.Pods("x") {
			for _, n := range env.Cluster.Nodes() {
				if n.Index != p.Node {
					nodesToPods.Expect(n, p, false)
					podsToNodes.Expect(p, n, false)
				}
			}
		}
		both := []cluster.Protocol{cluster.TCP, cluster.UDP}
		validate(ctx,
			framework.Check{Protocols: both, Want: pods},
			framework.Check{Protocols: both, Want: nodesToPods},
			framework.Check{Protocols: both, Want: podsToNodes})
	}, specTimeout)

	It("keeps enforcing while its agents restart, without breaking established connections", func(ctx SpecContext) {
		xa, xb, ya := pod("x", "a"), pod("x", "b"), pod("y", "a")
		Expect(xa.Node).NotTo(Equal(xb.Node), "the connection should cross nodes")
		create(ctx, "x", policy("x-a-from-x-b", labels("pod", "a"), ingress(from(podPeer(matching("pod", "b"))))))
		r := reach(true)
		r.ExpectAllIngress(xa, false)
		r.Expect(xb, xa, true)
		validate(ctx, framework.TCP(r, 80))

		By("opening a long-lived TCP connection x/b -> x/a:7070, which the policy allows")
		const echoPort = 7070
		l, err := listenIn(xa, echoPort)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(l.Close)
		go serveEcho(l)
		conn, err := dialFrom(xb, netip.AddrPortFrom(xa.IPv4, echoPort))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(conn.Close)
		ping := startPinger(conn, 20*time.Millisecond)
		DeferCleanup(func() { _, _, _ = ping.stop() })

		tables := func() []string {
			GinkgoHelper()
			var ts []string
			for i := range env.Cluster.Nodes() {
				t, err := env.Table(i, true)
				Expect(err).NotTo(HaveOccurred())
				ts = append(ts, t)
			}
			return ts
		}
		before := tables()

		By("stopping both agents with SIGTERM: they exit cleanly and leave their tables")
		Expect(env.StopAgents()).To(Succeed())
		Expect(tables()).To(Equal(before))

		By("creating a policy while the agents are down")
		create(ctx, "x", policy("x-a-from-y-a", labels("pod", "a"), ingress(from(
			nsPodPeer(matching(corev1.LabelMetadataName, "y"), matching("pod", "a")),
		))))
		env.ForgetWrite() // its latency is the restart's, not the agent's
		By("what was denied stays denied while the agents are down")
		validate(ctx, framework.TCP(r, 80))

		By("restarting the agents: ready again, and the new policy is in force")
		start := time.Now()
		Expect(env.StartAgents(ctx)).To(Succeed())
		By(fmt.Sprintf("agents ready %v after start", time.Since(start).Round(time.Millisecond)))
		r.Expect(ya, xa, true)
		validate(ctx, framework.TCP(r, 80))

		ok, failed, firstErr := ping.stop()
		By(fmt.Sprintf("the connection made %d round trips throughout, %d failed", ok, failed))
		Expect(firstErr).NotTo(HaveOccurred())
		Expect(failed).To(BeZero())
		Expect(ok).To(BeNumerically(">", 10))
	}, specTimeout)
})

// endpoints turns endpoints of any kind into a list.
func endpoints(eps ...cluster.Endpoint) []cluster.Endpoint { return eps }

// family restricts a check to one IP family.
func family(f cluster.Family, c framework.Check) framework.Check {
	c.Families = []cluster.Family{f}
	return c
}

// serviceMismatches probes every service address from every client at once
// and describes each answer that differs from allowed.
func serviceMismatches(ctx context.Context, clients []*cluster.Pod, vips []netip.Addr, allowed func(*cluster.Pod) bool) []string {
	var (
		mu    sync.Mutex
		wrong []string
		wg    sync.WaitGroup
	)
	for _, c := range clients {
		for _, vip := range vips {
			wg.Go(func() {
				res, err := env.Cluster.ProbeAddr(ctx, c, vip, cluster.TCP, 80, 0)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					wrong = append(wrong, err.Error())
				case res.OK != allowed(c):
					wrong = append(wrong, fmt.Sprintf("%s -> %s:80: want allowed=%v, got %s", c, vip, allowed(c), res))
				}
			})
		}
	}
	wg.Wait()
	return wrong
}

// listenIn listens on TCP port of p's IPv4 address, inside p's namespace.
func listenIn(p *cluster.Pod, port int) (net.Listener, error) {
	var l net.Listener
	err := p.NetNS.Do(func() error {
		var err error
		l, err = net.Listen("tcp4", net.JoinHostPort(p.IPv4.String(), strconv.Itoa(port)))
		return err
	})
	return l, err
}

// serveEcho echoes every connection l accepts until l closes.
func serveEcho(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// dialFrom connects from inside p's namespace.
func dialFrom(p *cluster.Pod, to netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := p.NetNS.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", to.String(), 2*time.Second)
		return err
	})
	return c, err
}

// pinger makes a round trip over one connection every period until stopped.
type pinger struct {
	done     chan struct{}
	finished chan struct{}
	once     sync.Once

	ok, failed int
	firstErr   error
}

func startPinger(c net.Conn, period time.Duration) *pinger {
	p := &pinger{done: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(p.finished)
		buf := make([]byte, 8)
		for i := 0; ; i++ {
			select {
			case <-p.done:
				return
			case <-time.After(period):
			}
			msg := fmt.Sprintf("%08d", i%100000000)
			_ = c.SetDeadline(time.Now().Add(time.Second))
			_, err := io.WriteString(c, msg)
			if err == nil {
				_, err = io.ReadFull(c, buf)
			}
			if err == nil && string(buf) != msg {
				err = errors.New("wrong echo " + string(buf))
			}
			if err != nil {
				p.failed++
				if p.firstErr == nil {
					p.firstErr = fmt.Errorf("round trip %d: %w", i, err)
				}
				continue
			}
			p.ok++
		}
	}()
	return p
}

// stop ends the pings and reports them; later calls report the same.
func (p *pinger) stop() (ok, failed int, firstErr error) {
	p.once.Do(func() { close(p.done) })
	<-p.finished
	return p.ok, p.failed, p.firstErr
}

// sortedLines is s's lines, sorted.
func sortedLines(s string) []string {
	lines := strings.Split(s, "\n")
	slices.Sort(lines)
	return lines
}

// withoutEpoch is a listing with strict mode's epoch (in forward's first rule
// and ct-stamp's) made the same whatever it is.
func withoutEpoch(listing string) string {
	listing = regexp.MustCompile(`epoch \d+`).ReplaceAllString(listing, "epoch N")
	listing = regexp.MustCompile(`0xff[0-9a-f]{2}ffff`).ReplaceAllString(listing, "0xffNNffff")
	return regexp.MustCompile(`0x00[0-9a-f]{2}0000`).ReplaceAllString(listing, "0x00NN0000")
}
