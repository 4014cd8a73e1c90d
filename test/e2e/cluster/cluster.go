package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// Address plan; see the package documentation.
var (
	underlayV4 = netip.MustParsePrefix("172.31.255.0/24")
	underlayV6 = netip.MustParsePrefix("fd00:ffff::/64")
	externalV4 = netip.MustParsePrefix("192.0.2.0/24")
	externalV6 = netip.MustParsePrefix("2001:db8::/64")

	// Node 0's end of the external link, and the external host.
	externalGatewayV4 = netip.MustParseAddr("192.0.2.1")
	externalGatewayV6 = netip.MustParseAddr("2001:db8::1")
	externalHostV4    = netip.MustParseAddr("192.0.2.10")
	externalHostV6    = netip.MustParseAddr("2001:db8::10")

	// The gateway every pod routes through, on every node-side veth.
	podGatewayV4 = netip.MustParseAddr("169.254.1.1")
	podGatewayV6 = netip.MustParseAddr("fe80::1")
)

// hostVethMAC is the MAC of every node-side pod veth (Calico's choice), so pods
// can carry a permanent neighbour entry for their gateway.
const hostVethMAC = "ee:ee:ee:ee:ee:ee"

const (
	defaultPrefix = "np"
	maxNodes      = 100
	// maxPodsPerNode is how many host numbers (2..254) a node's /24 offers.
	maxPodsPerNode = 253
)

// Config describes a cluster to build.
type Config struct {
	// Prefix starts the name of every namespace; 1 to 8 lowercase letters and
	// digits; "np" if empty. RemoveStale cleans up by prefix.
	Prefix string
	// Nodes is the number of nodes, 1 to 100; 2 if zero.
	Nodes int
	// PodAgent is the path of a built podagent (see BuildPodAgent). If empty,
	// New builds one into a temporary directory that Close removes.
	PodAgent string
	// NoSignalHandler stops New from installing its SIGINT/SIGTERM/SIGHUP
	// handler, which closes every open cluster and then re-raises the signal.
	// Set it when the caller handles those signals and calls Close itself.
	NoSignalHandler bool
	// Logf, if set, receives a line for each step that takes noticeable time.
	Logf func(format string, args ...any)
}

// Cluster is a set of nodes, pods and an external host in network namespaces.
// Its methods are safe for concurrent use.
type Cluster struct {
	id       string
	cfg      Config
	agentBin string
	tmpDir   string // holds a podagent New built; "" otherwise

	sw       *nfttest.NetNS
	nodes    []*Node
	external *External

	mu         sync.Mutex
	namespaces []*nfttest.NetNS // every namespace made, in creation order
	pods       map[string]*Pod  // by "namespace/name"
	podSeq     int
	closed     bool

	closeOnce sync.Once
	closeErr  error
}

// Node is one node: a network namespace with an underlay address per family,
// a pod CIDR per family and a podagent serving ports 80 and 81.
type Node struct {
	// Index is the node's position, 0 up.
	Index int
	// Name is the Kubernetes node name, "node-<index>".
	Name string
	// IPv4 and IPv6 are the node's underlay (InternalIP) addresses on eth0.
	IPv4, IPv6 netip.Addr
	// PodCIDRv4 and PodCIDRv6 are the node's pod CIDRs.
	PodCIDRv4, PodCIDRv6 netip.Prefix
	// NetNS is the node's namespace; run the policy agent here.
	NetNS *nfttest.NetNS

	agent *agent
	used  map[int]bool // host numbers of its pods; guarded by Cluster.mu
	next  int          // next host number to try; guarded by Cluster.mu
}

// NetNSPath is the path of the node's network namespace.
func (n *Node) NetNSPath() string { return n.NetNS.Path() }

// String is the node's name, its label in a Reachability table.
func (n *Node) String() string { return n.Name }

// Addr is the node's underlay address of family f.
func (n *Node) Addr(f Family) netip.Addr { return pick(f, n.IPv4, n.IPv6) }

func (n *Node) prober() *agent { return n.agent }

// External is a host outside the cluster and every pod CIDR, for ipBlock peers.
type External struct {
	IPv4, IPv6 netip.Addr
	NetNS      *nfttest.NetNS
	agent      *agent
}

// NetNSPath is the path of the external host's network namespace.
func (e *External) NetNSPath() string { return e.NetNS.Path() }

// String is "external", its label in a Reachability table.
func (e *External) String() string { return "external" }

// Addr is the external host's address of family f.
func (e *External) Addr(f Family) netip.Addr { return pick(f, e.IPv4, e.IPv6) }

func (e *External) prober() *agent { return e.agent }

var prefixRE = regexp.MustCompile(`^[a-z0-9]{1,8}$`)

// New builds the switch, the nodes and the external host, starts their agents
// and returns when all of them serve. On error, and if ctx ends, it removes
// whatever it made.
func New(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Prefix == "" {
		cfg.Prefix = defaultPrefix
	}
	if !prefixRE.MatchString(cfg.Prefix) {
		return nil, fmt.Errorf("cluster: prefix %q: want 1 to 8 lowercase letters and digits", cfg.Prefix)
	}
	if cfg.Nodes == 0 {
		cfg.Nodes = 2
	}
	if cfg.Nodes < 1 || cfg.Nodes > maxNodes {
		return nil, fmt.Errorf("cluster: %d nodes: want 1 to %d", cfg.Nodes, maxNodes)
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	if removed, err := RemoveStale(cfg.Prefix); err != nil {
		cfg.Logf("cluster: removing leftovers of dead runs: %v", err)
	} else if len(removed) > 0 {
		cfg.Logf("cluster: removed leftovers of dead runs: %s", strings.Join(removed, " "))
	}

	c := &Cluster{
		id:       fmt.Sprintf("%s-%d-%s", cfg.Prefix, os.Getpid(), nfttest.RandomHex(2)),
		cfg:      cfg,
		agentBin: cfg.PodAgent,
		pods:     map[string]*Pod{},
	}
	if !cfg.NoSignalHandler {
		watchSignals(c)
	}
	if err := c.build(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("cluster: %w", err), c.Close())
	}
	return c, nil
}

func (c *Cluster) build(ctx context.Context) error {
	start := time.Now()
	built := make(chan error, 1)
	if c.agentBin == "" {
		go func() {
			dir, err := os.MkdirTemp("", fmt.Sprintf("%s-%d-podagent-", c.cfg.Prefix, os.Getpid()))
			if err != nil {
				built <- err
				return
			}
			c.tmpDir = dir
			c.agentBin, err = BuildPodAgent(ctx, dir)
			built <- err
		}()
	} else {
		built <- nil
	}

	var err error
	if c.sw, err = c.newNetNS("sw"); err != nil {
		return errors.Join(err, <-built)
	}
	err = errors.Join(
		sysctls(c.sw,
			"net.ipv6.conf.all.disable_ipv6", "1",
			"net.ipv6.conf.default.disable_ipv6", "1"),
		// A switch filters nothing, whatever br_netfilter's host defaults are.
		optionalSysctls(c.sw,
			"net.bridge.bridge-nf-call-iptables", "0",
			"net.bridge.bridge-nf-call-ip6tables", "0",
			"net.bridge.bridge-nf-call-arptables", "0"),
		ipBatch(ctx, c.sw,
			"link add br0 type bridge forward_delay 0 mcast_snooping 0",
			"link set br0 up"),
	)
	if err != nil {
		return errors.Join(err, <-built)
	}

	nodes := make([]*Node, c.cfg.Nodes)
	for i := range nodes {
		nodes[i] = &Node{
			Index:     i,
			Name:      "node-" + strconv.Itoa(i),
			IPv4:      nthAddr(underlayV4, i+1),
			IPv6:      nthAddr(underlayV6, i+1),
			PodCIDRv4: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			PodCIDRv6: netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0x02, 0x44, 0, byte(i)}), 64),
			used:      map[int]bool{},
			next:      2,
		}
	}
	c.mu.Lock()
	c.nodes = nodes
	c.mu.Unlock()
	if err := parallel(len(c.nodes), func(i int) error { return c.buildNode(ctx, c.nodes[i]) }); err != nil {
		return errors.Join(err, <-built)
	}
	if err := c.buildExternal(ctx); err != nil {
		return errors.Join(err, <-built)
	}
	c.cfg.Logf("cluster %s: %d nodes and external host wired in %v", c.id, len(c.nodes), time.Since(start).Round(time.Millisecond))
	if err := <-built; err != nil {
		return err
	}

	// Agents last: a node's agent needs the node's addresses settled.
	err = parallel(len(c.nodes)+1, func(i int) error {
		if i == len(c.nodes) {
			e := c.external
			if err := waitIPv6Ready(ctx, e.NetNS); err != nil {
				return err
			}
			a, err := startAgent(ctx, e.NetNS, c.agentBin, "external", nil)
			if err != nil {
				return err
			}
			return c.adopt(a, func() { e.agent = a })
		}
		n := c.nodes[i]
		if err := waitIPv6Ready(ctx, n.NetNS); err != nil {
			return err
		}
		a, err := startAgent(ctx, n.NetNS, c.agentBin, n.Name, nil)
		if err != nil {
			return err
		}
		return c.adopt(a, func() { n.agent = a })
	})
	if err != nil {
		return err
	}
	c.cfg.Logf("cluster %s: ready in %v", c.id, time.Since(start).Round(time.Millisecond))
	return nil
}

// buildNode makes node n's namespace and links its eth0 to the switch.
func (c *Cluster) buildNode(ctx context.Context, n *Node) error {
	var err error
	if n.NetNS, err = c.newNetNS("n" + strconv.Itoa(n.Index)); err != nil {
		return err
	}
	// Before any interface exists, so that new interfaces inherit "default".
	err = sysctls(n.NetNS,
		"net.ipv4.ip_forward", "1",
		"net.ipv4.conf.all.rp_filter", "0",
		"net.ipv4.conf.default.rp_filter", "0",
		"net.ipv4.conf.all.send_redirects", "0",
		"net.ipv4.conf.default.send_redirects", "0",
		"net.ipv6.conf.all.forwarding", "1",
		"net.ipv6.conf.default.forwarding", "1",
		"net.ipv6.conf.all.accept_dad", "0",
		"net.ipv6.conf.default.accept_dad", "0",
	)
	if err != nil {
		return err
	}
	port := "u" + strconv.Itoa(n.Index)
	err = ipBatch(ctx, c.sw,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, n.NetNS.Name),
		fmt.Sprintf("link set %s master br0", port),
		fmt.Sprintf("link set %s up", port))
	if err != nil {
		return err
	}
	cmds := []string{
		"link set eth0 up",
		fmt.Sprintf("addr add %s dev eth0", netip.PrefixFrom(n.IPv4, underlayV4.Bits())),
		fmt.Sprintf("addr add %s dev eth0", netip.PrefixFrom(n.IPv6, underlayV6.Bits())),
	}
	for _, o := range c.nodes {
		if o != n {
			cmds = append(cmds,
				fmt.Sprintf("route add %s via %s dev eth0", o.PodCIDRv4, o.IPv4),
				fmt.Sprintf("route add %s via %s dev eth0", o.PodCIDRv6, o.IPv6))
		}
	}
	if n.Index != 0 {
		gw := c.nodes[0]
		cmds = append(cmds,
			fmt.Sprintf("route add %s via %s dev eth0", externalV4, gw.IPv4),
			fmt.Sprintf("route add %s via %s dev eth0", externalV6, gw.IPv6))
	}
	return ipBatch(ctx, n.NetNS, cmds...)
}

// buildExternal makes the external host, linked to node 0.
func (c *Cluster) buildExternal(ctx context.Context) error {
	ns, err := c.newNetNS("ext")
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.external = &External{IPv4: externalHostV4, IPv6: externalHostV6, NetNS: ns}
	c.mu.Unlock()
	node0 := c.nodes[0].NetNS
	return errors.Join(
		sysctls(ns,
			"net.ipv4.conf.all.rp_filter", "0",
			"net.ipv4.conf.default.rp_filter", "0",
			"net.ipv6.conf.all.accept_dad", "0",
			"net.ipv6.conf.default.accept_dad", "0"),
		ipBatch(ctx, node0,
			"link add ext0 type veth peer name eth0 netns "+ns.Name,
			"link set ext0 up",
			fmt.Sprintf("addr add %s dev ext0", netip.PrefixFrom(externalGatewayV4, externalV4.Bits())),
			fmt.Sprintf("addr add %s dev ext0", netip.PrefixFrom(externalGatewayV6, externalV6.Bits()))),
		ipBatch(ctx, ns,
			"link set eth0 up",
			fmt.Sprintf("addr add %s dev eth0", netip.PrefixFrom(externalHostV4, externalV4.Bits())),
			fmt.Sprintf("addr add %s dev eth0", netip.PrefixFrom(externalHostV6, externalV6.Bits())),
			fmt.Sprintf("route add default via %s dev eth0", externalGatewayV4),
			fmt.Sprintf("route add ::/0 via %s dev eth0", externalGatewayV6)),
	)
}

// newNetNS creates the namespace <id>-<role> and records it for Close.
func (c *Cluster) newNetNS(role string) (*nfttest.NetNS, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("cluster is closed")
	}
	ns, err := nfttest.CreateNetNS(c.id + "-" + role)
	if err != nil {
		return nil, err
	}
	c.namespaces = append(c.namespaces, ns)
	return ns, nil
}

// adopt runs set, which stores a under the cluster's lock so that Close sees
// it, unless the cluster closed meanwhile: then it stops a.
func (c *Cluster) adopt(a *agent, set func()) error {
	c.mu.Lock()
	closed := c.closed
	if !closed {
		set()
	}
	c.mu.Unlock()
	if closed {
		return errors.Join(errors.New("cluster is closed"), a.stop())
	}
	return nil
}

// ID is the cluster's unique name, "<prefix>-<pid>-<hex>": every namespace it
// makes is named ID()+"-"+role.
func (c *Cluster) ID() string { return c.id }

// Node returns node i; it panics if there is no such node.
func (c *Cluster) Node(i int) *Node { return c.nodes[i] }

// Nodes returns every node in index order.
func (c *Cluster) Nodes() []*Node { return slices.Clone(c.nodes) }

// NodeProber returns node i as a probe source (and target): traffic from the
// node's own namespace, sourced from its underlay address.
func (c *Cluster) NodeProber(i int) Endpoint { return c.nodes[i] }

// External returns the external host.
func (c *Cluster) External() *External { return c.external }

// Close kills every agent and deletes every namespace the cluster made, and
// with them every interface. It is safe to call more than once and
// concurrently; later calls return the first call's result.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		unwatchSignals(c)
		c.mu.Lock()
		c.closed = true
		var agents []*agent
		for _, p := range c.pods {
			agents = append(agents, p.agent)
		}
		for _, n := range c.nodes {
			agents = append(agents, n.agent)
		}
		if c.external != nil {
			agents = append(agents, c.external.agent)
		}
		agents = slices.DeleteFunc(agents, func(a *agent) bool { return a == nil })
		namespaces := c.namespaces
		c.mu.Unlock()

		// Agents first: a namespace with a process inside outlives its name.
		errs := make([]error, len(agents)+len(namespaces)+1)
		_ = parallel(len(agents), func(i int) error { errs[i] = agents[i].stop(); return nil })
		_ = parallel(len(namespaces), func(i int) error { errs[len(agents)+i] = namespaces[i].Delete(); return nil })
		if c.tmpDir != "" {
			errs[len(errs)-1] = os.RemoveAll(c.tmpDir)
		}
		if err := errors.Join(errs...); err != nil {
			c.closeErr = fmt.Errorf("cluster %s: close: %w", c.id, err)
		}
	})
	return c.closeErr
}

// staleRE matches the names of a cluster's namespaces (<prefix>-<pid>-<hex>-<role>)
// and build directories (<prefix>-<pid>-podagent-<random>).
var staleRE = regexp.MustCompile(`^([a-z0-9]{1,8})-([0-9]+)-([0-9a-f]{4}|podagent)-`)

// RemoveStale deletes what clusters with this prefix left behind when their
// process died without Close (SIGKILL, a test binary's -timeout): namespaces
// and podagent build directories. It returns their names. What belongs to live
// processes is left alone.
func RemoveStale(prefix string) ([]string, error) {
	var removed []string
	var errs []error
	stale := func(name string) bool {
		m := staleRE.FindStringSubmatch(name)
		if m == nil || m[1] != prefix {
			return false
		}
		pid, err := strconv.Atoi(m[2])
		return err == nil && !processAlive(pid)
	}
	entries, err := os.ReadDir(nfttest.NetNSDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, e := range entries {
		if !stale(e.Name()) {
			continue
		}
		if err := (&nfttest.NetNS{Name: e.Name()}).Delete(); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, e.Name())
	}
	dirs, err := filepath.Glob(filepath.Join(os.TempDir(), prefix+"-*-podagent-*"))
	if err != nil {
		errs = append(errs, err)
	}
	for _, d := range dirs {
		if !stale(filepath.Base(d)) {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, d)
	}
	return removed, errors.Join(errs...)
}

// processAlive reports whether pid is a process that has not exited; a zombie
// has. A reused pid reads as alive, which only delays a cleanup.
func processAlive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) state ...; comm may contain spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] != 'Z'
}

// Open clusters, closed by the signal handler.
var signals struct {
	sync.Mutex
	ch       chan os.Signal
	clusters map[*Cluster]bool
}

// watchSignals registers c to be closed if the process gets SIGINT, SIGTERM or
// SIGHUP. After closing every registered cluster the handler stops listening
// and re-raises the signal, so the process then dies (or another handler, such
// as Ginkgo's, takes over) as it would have without us.
func watchSignals(c *Cluster) {
	signals.Lock()
	defer signals.Unlock()
	if signals.ch == nil {
		signals.ch = make(chan os.Signal, 1)
		signals.clusters = map[*Cluster]bool{}
		signal.Notify(signals.ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		go func(ch chan os.Signal) {
			sig := <-ch
			signals.Lock()
			open := make([]*Cluster, 0, len(signals.clusters))
			for c := range signals.clusters {
				open = append(open, c)
			}
			signal.Stop(ch)
			signals.ch = nil
			signals.Unlock()
			for _, c := range open {
				if err := c.Close(); err != nil {
					fmt.Fprintln(os.Stderr, err)
				}
			}
			_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		}(signals.ch)
	}
	signals.clusters[c] = true
}

func unwatchSignals(c *Cluster) {
	signals.Lock()
	defer signals.Unlock()
	delete(signals.clusters, c)
}

// ipBatch runs `ip -batch -` with one command per line inside ns.
func ipBatch(ctx context.Context, ns *nfttest.NetNS, cmds ...string) error {
	_, err := ns.RunContext(ctx, strings.Join(cmds, "\n")+"\n", "ip", "-batch", "-")
	if err != nil {
		return fmt.Errorf("%w\ncommands:\n\t%s", err, strings.Join(cmds, "\n\t"))
	}
	return nil
}

// sysctls writes key, value pairs inside ns.
func sysctls(ns *nfttest.NetNS, kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := ns.Sysctl(kv[i], kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// optionalSysctls is sysctls, skipping keys the kernel does not have.
func optionalSysctls(ns *nfttest.NetNS, kv ...string) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := ns.Sysctl(kv[i], kv[i+1]); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// ifaTentative is IFA_F_TENTATIVE in /proc/net/if_inet6; ifaDADFailed IFA_F_DADFAILED.
const (
	ifaTentative = 0x40
	ifaDADFailed = 0x08
)

// waitIPv6Ready waits until no IPv6 address in ns is tentative. With DAD off
// that takes only as long as it takes both ends of a veth to come up.
func waitIPv6Ready(ctx context.Context, ns *nfttest.NetNS) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var pending []string
		err := ns.Do(func() error {
			f, err := os.Open("/proc/thread-self/net/if_inet6")
			if err != nil {
				return err
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				// address ifindex prefixlen scope flags name
				fields := strings.Fields(sc.Text())
				if len(fields) != 6 {
					continue
				}
				flags, err := strconv.ParseUint(fields[4], 16, 32)
				if err != nil {
					continue
				}
				if flags&ifaDADFailed != 0 {
					return fmt.Errorf("duplicate address detection failed for %s on %s", fields[0], fields[5])
				}
				if flags&ifaTentative != 0 {
					pending = append(pending, fields[0]+"@"+fields[5])
				}
			}
			return sc.Err()
		})
		if err != nil {
			return fmt.Errorf("netns %s: %w", ns.Name, err)
		}
		if len(pending) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("netns %s: IPv6 addresses still tentative: %s", ns.Name, strings.Join(pending, " "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// parallel runs fn(0..n-1) concurrently and joins their errors.
func parallel(n int, fn func(i int) error) error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = fn(i) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// nthAddr is the n-th address of p (n counted from p's first address).
func nthAddr(p netip.Prefix, n int) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := len(b) - 1; i >= 0 && n > 0; i-- {
		sum := int(b[i]) + n
		b[i] = byte(sum)
		n = sum >> 8
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func pick(f Family, v4, v6 netip.Addr) netip.Addr {
	if f == V6 {
		return v6
	}
	return v4
}
