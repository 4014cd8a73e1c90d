package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nflog"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// tierLab is a node (a network namespace that forwards and holds the table) and
// three pods, x/a, y/b and z/c, each a namespace behind a veth: pod N is
// 10.78.N.2, the node's side 10.78.N.1 (node-1's address, status.addresses).
type tierLab struct {
	t       *testing.T
	node    *nfttest.NetNS
	pods    map[string]*nfttest.NetNS // by namespace/name
	objs    []*corev1.Pod
	nss     []*corev1.Namespace
	applier *netlink.Applier
}

func newTierLab(t *testing.T, prefix string) *tierLab {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	nfttest.RequireRoot(t)
	l := &tierLab{t: t, node: nfttest.NewNetNS(t, prefix+"-node"), pods: map[string]*nfttest.NetNS{}}
	for i, ref := range []string{"x/a", "y/b", "z/c"} {
		ns, name, _ := strings.Cut(ref, "/")
		sub := string(rune('1' + i))
		pod := nfttest.NewNetNS(t, prefix+"-"+name)
		if err := l.node.Attach(pod, "v"+name, "10.78."+sub+".1", "10.78."+sub+".2"); err != nil {
			t.Fatal(err)
		}
		l.pods[ref] = pod
		p := testPod(ns, name, "10.78."+sub+".2", false)
		p.Spec.NodeName, p.Status.Phase = "node-1", corev1.PodRunning
		l.objs = append(l.objs, p)
		l.nss = append(l.nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"kubernetes.io/metadata.name": ns}}})
	}
	if err := l.node.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	var err error
	if l.applier, err = netlink.New(netlink.Options{Table: "nptiers", NetNSPath: l.node.Path()}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.applier.Close() })
	return l
}

func (l *tierLab) nodeObj() *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1"}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.78.1.1"}}
	return n
}

// apply compiles the lab's cluster with these policies at epoch and applies it;
// it returns the compiler (for its Attribution).
func (l *tierLab) apply(opts compile.Options, epoch uint32, nps []*networkingv1.NetworkPolicy, cnps []*cnpv1.ClusterNetworkPolicy) *compile.Compiler {
	l.t.Helper()
	opts.Table = "nptiers"
	c := compile.Load(compile.Snapshot{NodeName: "node-1", Pods: l.objs, Namespaces: l.nss, Policies: nps,
		ClusterNetworkPolicies: cnps, Nodes: []*corev1.Node{l.nodeObj()}}, opts)
	c.SetEpoch(epoch)
	rs, problems := c.Compile()
	if len(problems) > 0 && !slices.ContainsFunc(problems, func(p compile.Problem) bool { return p.Cluster == "fc" }) {
		l.t.Fatalf("problems: %v", problems)
	}
	if _, err := l.applier.Apply(context.Background(), rs); err != nil {
		l.t.Fatal(err)
	}
	return c
}

// denyLog runs the agent's deny logger on the node's NFLOG group, with the
// attribution of c and a cache of the known pods (which name the ends), until
// the test ends; it returns the lines and the attribution.
func (l *tierLab) denyLog(group uint16, c *compile.Compiler, known ...*corev1.Pod) (*lineLog, *attribution) {
	l.t.Helper()
	scheme, err := newScheme()
	if err != nil {
		l.t.Fatal(err)
	}
	b := fake.NewClientBuilder().WithScheme(scheme).WithIndex(&corev1.Pod{}, podIPIndex, indexPodIPs)
	for _, p := range known {
		b = b.WithObjects(p)
	}
	at := &attribution{}
	at.store(c.Attribution())
	lines := &lineLog{}
	nsFile, err := os.Open(l.node.Path())
	if err != nil {
		l.t.Fatal(err)
	}
	stop := runDenyLogger(&denyLogger{open: func() (DenyLogSource, error) {
		return nflog.Open(nflog.Config{Group: group, NetNS: int(nsFile.Fd()), ReadBuffer: 1 << 20})
	}, pods: b.Build(), attrib: at, log: lines.logger(), retry: time.Second})
	l.t.Cleanup(func() {
		if err := stop(); err != nil {
			l.t.Errorf("deny logger: %v", err)
		}
		nsFile.Close()
	})
	time.Sleep(200 * time.Millisecond) // the group bound before the first packet
	return lines, at
}

// udp sends one datagram from the pod ref's address, port sport, to dst:dport.
func (l *tierLab) udp(ref string, sport int, dst string, dport int) {
	l.t.Helper()
	src := l.objs[slices.IndexFunc(l.objs, func(p *corev1.Pod) bool { return p.Namespace+"/"+p.Name == ref })].Status.PodIP
	err := l.pods[ref].Do(func() error {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP(src), Port: sport}, &net.UDPAddr{IP: net.ParseIP(dst), Port: dport})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	})
	if err != nil {
		l.t.Fatal(err)
	}
}

func nsPeer(ns string) []cnpv1.ClusterNetworkPolicyIngressPeer {
	return []cnpv1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}}}
}

func udpProto(port int32) []cnpv1.ClusterNetworkPolicyProtocol {
	return []cnpv1.ClusterNetworkPolicyProtocol{{UDP: &cnpv1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnpv1.Port{Number: port}}}}
}

func clusterPolicy(name string, tier cnpv1.Tier, prio int32, subjectNS string) *cnpv1.ClusterNetworkPolicy {
	c := &cnpv1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	c.Spec.Tier, c.Spec.Priority = tier, prio
	c.Spec.Subject.Namespaces = &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": subjectNS}}
	return c
}

// TestTierDenyLogAndCounters: in the kernel, in strict mode with the deny log
// and the counters on, every packet dropped by an Admin Deny, by a Baseline rule
// that fails closed, by NetworkPolicy after an Admin Pass, and every reply of an
// older epoch dropped in a reply chain (a tier's and a NetworkPolicy group's) is
// logged once, naming the policy and rule; nftpolicy_policy_packets_total
// counts exactly the packets each rule accepted, passed or denied, by tier.
func TestTierDenyLogAndCounters(t *testing.T) {
	l := newTierLab(t, "npt-obs")
	const group = 7602
	opts := compile.Options{DenyLog: compile.DenyLog{Group: group, Rate: 1000}, PolicyCounters: true, Established: compile.EstablishedRecheck}

	// y/b: Admin scrape (priority 5) accepts x on UDP 9187; Admin guard (10)
	// passes x (rule 0) and denies z (rule 1, no-z); NetworkPolicy y/dns-from-x
	// allows x on UDP 53. x/a: Baseline fc's only rule fails closed (an empty
	// peer): it denies all ingress.
	udp := corev1.ProtocolUDP
	p53 := intstr.FromInt32(53)
	dns := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "dns-from-x"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "x"}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &p53}},
		}}}}
	scrape := clusterPolicy("scrape", cnpv1.AdminTier, 5, "y")
	scrape.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Name: "metrics", Action: "Accept", From: nsPeer("x"), Protocols: udpProto(9187)}}
	guard := clusterPolicy("guard", cnpv1.AdminTier, 10, "y")
	guard.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		{Name: "pass-x", Action: "Pass", From: nsPeer("x")},
		{Name: "no-z", Action: "Deny", From: nsPeer("z")},
	}
	fc := clusterPolicy("fc", cnpv1.BaselineTier, 5, "x")
	fc.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{{Action: "Deny", From: []cnpv1.ClusterNetworkPolicyIngressPeer{{}}}}
	c := l.apply(opts, 1, []*networkingv1.NetworkPolicy{dns}, []*cnpv1.ClusterNetworkPolicy{scrape, guard, fc})

	// The agent's side: the reader and the logger; the collector.
	lines, at := l.denyLog(group, c, l.objs...)
	collector := newPolicyCollector(netlinkCounters(l.applier), at)

	// y/b serves UDP 53 and 9187; x/a keeps two client sockets (flows f, g).
	var srv53, srv9187 *net.UDPConn
	if err := l.pods["y/b"].Do(func() error {
		var err1, err2 error
		srv53, err1 = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.78.2.2"), Port: 53})
		srv9187, err2 = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.78.2.2"), Port: 9187})
		return errors.Join(err1, err2)
	}); err != nil {
		t.Fatal(err)
	}
	defer srv53.Close()
	defer srv9187.Close()
	var cliF, cliG *net.UDPConn
	if err := l.pods["x/a"].Do(func() error {
		var err1, err2 error
		cliF, err1 = net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.78.1.2"), Port: 5000}, &net.UDPAddr{IP: net.ParseIP("10.78.2.2"), Port: 9187})
		cliG, err2 = net.DialUDP("udp4", &net.UDPAddr{IP: net.ParseIP("10.78.1.2"), Port: 5001}, &net.UDPAddr{IP: net.ParseIP("10.78.2.2"), Port: 53})
		return errors.Join(err1, err2)
	}); err != nil {
		t.Fatal(err)
	}
	defer cliF.Close()
	defer cliG.Close()
	// exchange sends one datagram from cli, and srv answers it (the flow is then
	// established, stamped with the epoch).
	exchange := func(cli, srv *net.UDPConn) {
		t.Helper()
		if _, err := cli.Write([]byte("q")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		mine := cli.LocalAddr().(*net.UDPAddr).Port
		var from *net.UDPAddr
		for from == nil || from.Port != mine { // the one-shot flows' datagrams queue first
			var err error
			if _, from, err = srv.ReadFromUDP(buf); err != nil {
				t.Fatalf("server: %v", err)
			}
		}
		if _, err := srv.WriteToUDP([]byte("r"), from); err != nil {
			t.Fatal(err)
		}
		_ = cli.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := cli.Read(buf); err != nil {
			t.Fatalf("client: %v", err)
		}
	}

	// Epoch 1. Each datagram of a new flow is judged once.
	for i := range 3 {
		l.udp("x/a", 6001+i, "10.78.2.2", 9187) // scrape Accept: 3
		l.udp("x/a", 6101+i, "10.78.2.2", 53)   // guard Pass, dns-from-x allows: 3
		l.udp("z/c", 6201+i, "10.78.2.2", 53)   // guard no-z Deny: 3, logged
	}
	for i := range 2 {
		l.udp("x/a", 6301+i, "10.78.2.2", 54) // guard Pass, dns-from-x isolates: 2, logged
		l.udp("z/c", 6401+i, "10.78.1.2", 7)  // fc fails closed: 2, logged
	}
	exchange(cliF, srv9187) // scrape Accept: 1; the reply takes the fast path
	exchange(cliG, srv53)   // guard Pass, dns-from-x allows: 1
	header := `
# HELP nftpolicy_policy_packets_total Packets the group chains of a policy allowed or dropped for isolation, by direction, read from the kernel's counters (a packet allowed in a group of several policies counts for each: see nft/doc.go); for a ClusterNetworkPolicy (tier admin or baseline, no namespace), the packets its rules accepted, denied or passed.
# TYPE nftpolicy_policy_packets_total counter
`
	want1 := `nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="fc",tier="baseline",verdict="deny"} 2
nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="guard",tier="admin",verdict="deny"} 3
nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="guard",tier="admin",verdict="pass"} 6
nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="scrape",tier="admin",verdict="allow"} 4
nftpolicy_policy_packets_total{direction="ingress",namespace="y",policy="dns-from-x",tier="networkpolicy",verdict="allow"} 4
nftpolicy_policy_packets_total{direction="ingress",namespace="y",policy="dns-from-x",tier="networkpolicy",verdict="deny"} 2
`
	if err := testutil.CollectAndCompare(collector, strings.NewReader(header+want1)); err != nil {
		t.Errorf("epoch 1 counters: %v", err)
	}

	// Epoch 2: scrape's rule denies now, dns-from-x allows nothing. The server
	// pushes on both open flows: each reply, of epoch 1, is judged as its
	// connection, dropped and logged as a reply.
	scrape = scrape.DeepCopy()
	scrape.Spec.Ingress[0].Action = "Deny"
	dns = dns.DeepCopy()
	dns.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{}
	c = l.apply(opts, 2, []*networkingv1.NetworkPolicy{dns}, []*cnpv1.ClusterNetworkPolicy{scrape, guard, fc})
	at.store(c.Attribution())
	for _, push := range []struct {
		srv  *net.UDPConn
		port int
	}{{srv9187, 5000}, {srv53, 5001}} {
		if _, err := push.srv.WriteToUDP([]byte("p"), &net.UDPAddr{IP: net.ParseIP("10.78.1.2"), Port: push.port}); err != nil {
			t.Fatal(err)
		}
	}
	for _, cli := range []*net.UDPConn{cliF, cliG} {
		_ = cli.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := cli.Read(make([]byte, 16)); err == nil || errors.Is(err, io.EOF) {
			t.Errorf("a reply of the older epoch passed: %v", err)
		}
	}
	want2 := `nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="fc",tier="baseline",verdict="deny"} 2
nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="guard",tier="admin",verdict="deny"} 3
nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="guard",tier="admin",verdict="pass"} 7
nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="scrape",tier="admin",verdict="allow"} 4
nftpolicy_policy_packets_total{direction="ingress",namespace="",policy="scrape",tier="admin",verdict="deny"} 1
nftpolicy_policy_packets_total{direction="ingress",namespace="y",policy="dns-from-x",tier="networkpolicy",verdict="allow"} 4
nftpolicy_policy_packets_total{direction="ingress",namespace="y",policy="dns-from-x",tier="networkpolicy",verdict="deny"} 3
`
	if err := testutil.CollectAndCompare(collector, strings.NewReader(header+want2)); err != nil {
		t.Errorf("epoch 2 counters: %v", err)
	}

	const head = `"level"=0 "msg"="packet denied" "direction"="ingress" `
	var want []string
	for i := range 3 {
		want = append(want, head+`"src"="z/c" "dst"="y/b" "srcIP"="10.78.3.2" "dstIP"="10.78.2.2" "proto"="udp" "srcPort"=`+strconv.Itoa(6201+i)+
			` "dstPort"=53 "policies"=["cnp/guard"] "tier"="Admin" "priority"=10 "rule"=1 "ruleName"="no-z"`)
	}
	for i := range 2 {
		want = append(want, head+`"src"="x/a" "dst"="y/b" "srcIP"="10.78.1.2" "dstIP"="10.78.2.2" "proto"="udp" "srcPort"=`+strconv.Itoa(6301+i)+
			` "dstPort"=54 "policies"=["y/dns-from-x"]`)
		want = append(want, head+`"src"="z/c" "dst"="x/a" "srcIP"="10.78.3.2" "dstIP"="10.78.1.2" "proto"="udp" "srcPort"=`+strconv.Itoa(6401+i)+
			` "dstPort"=7 "policies"=["cnp/fc"] "tier"="Baseline" "priority"=5 "rule"=0 "failClosed"=true`)
	}
	want = append(want,
		head+`"src"="y/b" "dst"="x/a" "srcIP"="10.78.2.2" "dstIP"="10.78.1.2" "proto"="udp" "srcPort"=9187 "dstPort"=5000 "policies"=["cnp/scrape"] "tier"="Admin" "priority"=5 "rule"=0 "ruleName"="metrics" "reply"=true`,
		head+`"src"="y/b" "dst"="x/a" "srcIP"="10.78.2.2" "dstIP"="10.78.1.2" "proto"="udp" "srcPort"=53 "dstPort"=5001 "policies"=["y/dns-from-x"] "reply"=true`)
	deadline := time.Now().Add(10 * time.Second)
	for len(lines.get()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // and no more
	got := lines.get()
	slices.Sort(got)
	slices.Sort(want)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("deny log:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	t.Logf("%d deny log lines, each the packet and the rule that dropped it; counters exact at both epochs", len(got))
}

// TestTierRecheckOwnNode: a pod's open connection to its own node (the input
// hook, where only the tiers judge) is cut by a new ClusterNetworkPolicy that
// denies it in strict mode, as forward's are; a connection the node itself
// opened to the pod is not judged (its replies pass). With keep, the open
// connection lives on (the known limit strict mode closes); a new one is denied
// either way.
func TestTierRecheckOwnNode(t *testing.T) {
	for _, est := range []compile.Established{compile.EstablishedRecheck, compile.EstablishedKeep} {
		t.Run(est.String(), func(t *testing.T) {
			l := newTierLab(t, "npt-own"+est.String()[:1])
			opts := compile.Options{Established: est, PolicyCounters: true}
			watch := clusterPolicy("watch", cnpv1.AdminTier, 20, "x")
			watch.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: "Accept",
				To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"192.0.2.0/24"}}}}}
			l.apply(opts, 1, nil, []*cnpv1.ClusterNetworkPolicy{watch})

			echo := func(ns *nfttest.NetNS, addr string) net.Listener {
				t.Helper()
				var ln net.Listener
				if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				go func() {
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
					}
				}()
				return ln
			}
			echo(l.node, "10.78.1.1:2222")
			echo(l.pods["x/a"], "10.78.1.2:3333")
			dial := func(ns *nfttest.NetNS, addr string) (net.Conn, error) {
				var c net.Conn
				err := ns.Do(func() (err error) { c, err = net.DialTimeout("tcp4", addr, 2*time.Second); return err })
				return c, err
			}
			alive := func(c net.Conn) bool {
				_ = c.SetDeadline(time.Now().Add(time.Second))
				if _, err := c.Write([]byte("x")); err != nil {
					return false
				}
				_, err := io.ReadFull(c, make([]byte, 1))
				return err == nil
			}
			toNode, err := dial(l.pods["x/a"], "10.78.1.1:2222")
			if err != nil {
				t.Fatal(err)
			}
			defer toNode.Close()
			fromNode, err := dial(l.node, "10.78.1.2:3333")
			if err != nil {
				t.Fatal(err)
			}
			defer fromNode.Close()
			if !alive(toNode) || !alive(fromNode) {
				t.Fatal("no echo before the change")
			}

			// x may no longer reach any node (Admin Deny, nodes peer).
			noNode := clusterPolicy("no-node", cnpv1.AdminTier, 1, "x")
			noNode.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Name: "nodes", Action: "Deny",
				To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{}}}}}
			l.apply(opts, 2, nil, []*cnpv1.ClusterNetworkPolicy{watch, noNode})

			if _, err := dial(l.pods["x/a"], "10.78.1.1:2222"); err == nil {
				t.Error("a new connection from x/a to its node passed the Admin Deny")
			}
			if !alive(fromNode) {
				t.Error("the node's own connection to x/a was cut: its replies must pass")
			}
			got := alive(toNode)
			switch {
			case est == compile.EstablishedRecheck && got:
				t.Error("recheck: x/a's open connection to its node lives on after the deny")
			case est == compile.EstablishedKeep && !got:
				t.Error("keep: x/a's open connection to its node was cut")
			}
			t.Logf("%s: the open connection to the node %s", est, map[bool]string{true: "lives on", false: "is cut"}[got])
		})
	}
}

// TestTierRestartAdoption: an agent restarting over a table with the tiers in
// force (Admin Pass and Deny, Baseline, NetworkPolicy, strict mode at the next
// epoch, the deny log and counters: the input chain, drop chains, reply twins,
// per-rule counters) adopts it, keeping every set and counter, and loses no
// packet: a new Applier's first FullSync, as a restarted agent does, every
// 300 ms for 6 s, while x/a opens connection after connection to y/b (Admin
// Pass, then NetworkPolicy allows), keeps one open to y/b and one to its own
// node (rechecked at input after each epoch move), and z/c (Admin Deny) never
// gets through. TCP_INFO says whether any segment had to be retransmitted
// for want of its first copy: a retransmission that the peer answers with a
// D-SACK (RFC 2883: it had the first copy already) lost nothing. Those are a
// loaded machine's: the one segment in flight of an echo is probed again
// (tail loss probe, RTO) when its ACK is ~200 ms late, the echo server
// starved of CPU.
func TestTierRestartAdoption(t *testing.T) {
	l := newTierLab(t, "npt-rst")
	opts := compile.Options{DenyLog: compile.DenyLog{Group: 7603, Rate: 100}, PolicyCounters: true, Established: compile.EstablishedRecheck, Table: "nptiers"}
	tcp := corev1.ProtocolTCP
	p80 := intstr.FromInt32(80)
	web := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "web-from-x"},
		Spec: networkingv1.NetworkPolicySpec{Ingress: []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "x"}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p80}},
		}}}}
	guard := clusterPolicy("guard", cnpv1.AdminTier, 10, "y")
	guard.Spec.Ingress = []cnpv1.ClusterNetworkPolicyIngressRule{
		{Name: "pass-x", Action: "Pass", From: nsPeer("x")},
		{Name: "no-z", Action: "Deny", From: nsPeer("z")},
	}
	nodes := clusterPolicy("x-to-nodes", cnpv1.AdminTier, 20, "x")
	nodes.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: "Accept",
		To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{}}}}}
	base := clusterPolicy("base", cnpv1.BaselineTier, 5, "z")
	base.Spec.Egress = []cnpv1.ClusterNetworkPolicyEgressRule{{Action: "Deny",
		To: []cnpv1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1.CIDR{"192.0.2.0/24"}}}}}
	compileAt := func(epoch uint32) *compile.Compiler {
		c := compile.Load(compile.Snapshot{NodeName: "node-1", Pods: l.objs, Namespaces: l.nss, Policies: []*networkingv1.NetworkPolicy{web},
			ClusterNetworkPolicies: []*cnpv1.ClusterNetworkPolicy{guard, nodes, base}, Nodes: []*corev1.Node{l.nodeObj()}}, opts)
		c.SetEpoch(epoch)
		return c
	}
	rs, problems := compileAt(1).Compile()
	if len(problems) > 0 {
		t.Fatal(problems)
	}
	if _, err := l.applier.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}

	serve := func(ns *nfttest.NetNS, addr string) {
		t.Helper()
		var ln net.Listener
		if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
			}
		}()
	}
	serve(l.pods["y/b"], "10.78.2.2:80")
	serve(l.node, "10.78.1.1:2222")
	dial := func(ref, addr string, timeout time.Duration) (net.Conn, error) {
		var c net.Conn
		err := l.pods[ref].Do(func() (err error) { c, err = net.DialTimeout("tcp4", addr, timeout); return err })
		return c, err
	}
	// retransmitted is what c had to send again, and how many of those the
	// peer already had (the D-SACKs it received): retransmitted - spurious
	// segments were lost.
	retransmitted := func(c net.Conn) (retransmitted, spurious uint32) {
		if raw, err := c.(*net.TCPConn).SyscallConn(); err == nil {
			_ = raw.Control(func(fd uintptr) {
				if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
					retransmitted, spurious = info.Total_retrans, info.Dsack_dups
				}
			})
		}
		return retransmitted, spurious
	}

	// What the table drops, as its deny log tells it: z/c's tries are expected,
	// a packet of x/a's or y/b's is an allowed one dropped.
	nsFile, err := os.Open(l.node.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer nsFile.Close()
	denials, err := nflog.Open(nflog.Config{Group: opts.DenyLog.Group, NetNS: int(nsFile.Fd()), ReadBuffer: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var denied []string // allowed packets the table dropped, with when
	var deniedMu sync.Mutex
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			ps, err := denials.Read()
			if err != nil {
				return
			}
			for _, p := range ps {
				if src := p.Src.String(); src != "10.78.1.2" && src != "10.78.2.2" {
					continue // z/c's tries
				}
				deniedMu.Lock()
				denied = append(denied, fmt.Sprintf("%.3fs %s %s", time.Since(start).Seconds(), p.Prefix, p.String()))
				deniedMu.Unlock()
			}
		}
	}()
	defer func() { denials.Close(); <-readerDone }()

	// The open connections, echoing every 5 ms.
	var open []net.Conn
	for _, addr := range []string{"10.78.2.2:80", "10.78.1.1:2222"} {
		c, err := dial("x/a", addr, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if n, _ := retransmitted(c); n > 0 {
			t.Logf("x/a -> %s: %d segments retransmitted while connecting, before any restart", addr, n)
		}
		open = append(open, c)
	}
	// When an open connection retransmitted: the restarts it came after.
	var timeline []string
	lastRetrans := make([][2]uint32, len(open))
	sampleRetrans := func(when string) {
		deniedMu.Lock()
		defer deniedMu.Unlock()
		for i, c := range open {
			n, dup := retransmitted(c)
			if now := [2]uint32{n, dup}; now != lastRetrans[i] {
				timeline = append(timeline, fmt.Sprintf("%.3fs %s: x/a -> %s retransmitted %d segments, %d of them already received (D-SACK)",
					time.Since(start).Seconds(), when, c.RemoteAddr(), n-lastRetrans[i][0], dup-lastRetrans[i][1]))
				lastRetrans[i] = now
			}
		}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	var echoes, echoFails, conns, connFails, connLost, strangers atomic.Int64
	for _, c := range open {
		wg.Go(func() {
			buf := make([]byte, 1)
			for {
				select {
				case <-done:
					return
				case <-time.After(5 * time.Millisecond):
				}
				_ = c.SetDeadline(time.Now().Add(3 * time.Second))
				_, err := c.Write(buf)
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				if err != nil {
					echoFails.Add(1)
					return
				}
				echoes.Add(1)
			}
		})
	}
	wg.Go(func() { // connection after connection
		for {
			select {
			case <-done:
				return
			default:
			}
			c, err := dial("x/a", "10.78.2.2:80", 3*time.Second)
			conns.Add(1)
			if err != nil {
				connFails.Add(1)
				continue
			}
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			buf := []byte{'x'}
			if _, err := c.Write(buf); err == nil {
				_, err = io.ReadFull(c, buf)
				if err != nil {
					connFails.Add(1)
				}
			}
			if n, dup := retransmitted(c); n > 0 {
				if n > dup { // the D-SACK may trail the echo
					time.Sleep(50 * time.Millisecond)
					n, dup = retransmitted(c)
				}
				if n > dup {
					connLost.Add(1)
				}
				deniedMu.Lock()
				timeline = append(timeline, fmt.Sprintf("%.3fs: a new connection x/a %s -> y/b retransmitted %d segments, %d of them already received (D-SACK)",
					time.Since(start).Seconds(), c.LocalAddr(), n, dup))
				deniedMu.Unlock()
			}
			c.Close()
		}
	})
	wg.Go(func() { // z/c, denied by guard's no-z, keeps trying
		for {
			select {
			case <-done:
				return
			default:
			}
			if c, err := dial("z/c", "10.78.2.2:80", 200*time.Millisecond); err == nil {
				strangers.Add(1)
				c.Close()
			}
		}
	})

	backlogDrops := softnetDrops(t)
	restarts, epoch := 0, uint32(1)
	var kept []string
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); {
		time.Sleep(300 * time.Millisecond)
		// A restarted agent: a new Applier, the next epoch, a fresh compile.
		epoch++
		b, err := netlink.New(netlink.Options{Table: "nptiers", NetNSPath: l.node.Path()})
		if err != nil {
			t.Fatal(err)
		}
		rs, _ := compileAt(epoch).Compile()
		st, err := b.FullSync(context.Background(), rs)
		b.Close()
		if err != nil {
			t.Fatal(err)
		}
		if st.Full {
			t.Fatalf("restart %d replaced the table instead of adopting it: %q", restarts+1, st.Drift)
		}
		kept = st.Drift
		restarts++
		sampleRetrans(fmt.Sprintf("by restart %d (%.3fs, epoch %d)", restarts, time.Since(start).Seconds(), epoch))
	}
	close(done)
	wg.Wait()
	time.Sleep(50 * time.Millisecond) // a D-SACK trailing the last echo
	sampleRetrans("by the end")
	var openLost int
	for _, c := range open {
		n, dup := retransmitted(c)
		openLost += int(n) - int(dup)
	}
	t.Logf("%d restarts (epochs 2-%d), adoption: %q; packets the kernel's input backlogs dropped meanwhile (softnet_stat, every namespace): %d",
		restarts, epoch, kept, softnetDrops(t)-backlogDrops)
	t.Logf("open connections: %d echoes, %d failed, %d segments lost; new connections: %d, %d failed, %d lost a segment; z/c got through %d times",
		echoes.Load(), echoFails.Load(), openLost, conns.Load(), connFails.Load(), connLost.Load(), strangers.Load())
	deniedMu.Lock()
	if len(timeline) > 0 {
		t.Logf("retransmissions: %q", timeline)
	}
	if echoFails.Load() > 0 || openLost > 0 || connFails.Load() > 0 || connLost.Load() > 0 || strangers.Load() > 0 || echoes.Load() == 0 || conns.Load() == 0 || len(denied) > 0 {
		t.Errorf("a packet was lost across a restart, or a denied connection passed; allowed packets the deny log names: %q", denied)
	}
	deniedMu.Unlock()
	if want := fmt.Sprintf("adopted: %d of %d sets kept", len(rs.Sets), len(rs.Sets)); !slices.Contains(kept, want) {
		t.Errorf("adoption kept less than every set: %q, want %q", kept, want)
	}
}

// softnetDrops is the number of packets the kernel dropped because a CPU's
// input backlog was full (/proc/net/softnet_stat, second column, summed over
// CPUs): a loaded machine's losses, which no table causes.
func softnetDrops(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 1 {
			d, err := strconv.ParseUint(f[1], 16, 64)
			if err != nil {
				t.Fatalf("softnet_stat: %v", err)
			}
			n += d
		}
	}
	return n
}

// TestUnknownPodDenyLog: with --unknown-pod-cidrs and the deny log on, a packet
// from an address of the node's pod CIDRs that no known pod has (a new pod the
// agent does not know yet) is dropped and logged as such, with no policy; a
// known pod's traffic is not. (It was dropped without a line.)
func TestUnknownPodDenyLog(t *testing.T) {
	l := newTierLab(t, "npt-unk")
	const group = 7604
	opts := compile.Options{DenyLog: compile.DenyLog{Group: group, Rate: 100}, UnknownLocalPods: []netip.Prefix{netip.MustParsePrefix("10.78.0.0/16")}}
	all := l.objs
	l.objs = all[:2] // z/c (10.78.3.2) is not known yet
	c := l.apply(opts, 0, nil, nil)
	l.objs = all

	lines, _ := l.denyLog(group, c, all[0], all[1])

	l.udp("x/a", 7501, "10.78.2.2", 80) // known, not isolated: passes, no line
	l.udp("z/c", 7503, "10.78.2.2", 80) // unknown: dropped, logged
	var got []string
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end) && len(got) == 0; time.Sleep(20 * time.Millisecond) {
		got = lines.get()
	}
	time.Sleep(200 * time.Millisecond)
	got = lines.get()
	if len(got) != 1 || !strings.Contains(got[0], `"srcIP"="10.78.3.2"`) || !strings.Contains(got[0], `"unknownPod"=true`) ||
		!strings.Contains(got[0], `"direction"="egress"`) || !strings.Contains(got[0], `"policies"=[]`) {
		t.Errorf("deny log lines: %q, want one for z/c's packet, unknownPod", got)
	}
}
