package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// PodSpec describes a pod to add.
type PodSpec struct {
	// Namespace and Name identify the pod, as in Kubernetes; both required.
	Namespace, Name string
	// Node is the index of the node the pod runs on.
	Node int
	// Labels are carried on the Pod for whoever creates the Kubernetes object;
	// the network ignores them.
	Labels map[string]string
	// ExtraPorts are served (TCP and UDP, both families) besides 80 and 81.
	ExtraPorts []int
	// Host, when set, is the host number (2-254) of the pod's addresses in its
	// node's pod CIDRs, which must be free: a test that reuses a removed pod's
	// address on purpose sets it. Zero: the next free one, round-robin.
	Host int
}

// Pod is a running pod: a network namespace wired to its node, with a podagent.
type Pod struct {
	Namespace, Name string
	// Node is the index of the pod's node.
	Node   int
	Labels map[string]string
	// IPv4 and IPv6 are the pod's addresses (status.podIPs), from its node's pod CIDRs.
	IPv4, IPv6 netip.Addr
	// HostVeth is the node-side interface of the pod's eth0.
	HostVeth string
	// Ports are the ports the pod serves, TCP and UDP.
	Ports []int
	// NetNS is the pod's network namespace.
	NetNS *nfttest.NetNS

	agent   *agent
	hostNum int
}

// NetNSPath is the path of the pod's network namespace.
func (p *Pod) NetNSPath() string { return p.NetNS.Path() }

// String is "namespace/name", the pod's label in a Reachability table.
func (p *Pod) String() string { return p.Namespace + "/" + p.Name }

// Host is the host number of the pod's addresses in its node's pod CIDRs (see
// PodSpec.Host).
func (p *Pod) Host() int { return p.hostNum }

// Addr is the pod's address of family f.
func (p *Pod) Addr(f Family) netip.Addr { return pick(f, p.IPv4, p.IPv6) }

func (p *Pod) prober() *agent { return p.agent }

// AddPod creates a pod on spec.Node and returns once its agent serves and its
// addresses are usable. If ctx ends or anything fails, nothing of the pod
// remains.
func (c *Cluster) AddPod(ctx context.Context, spec PodSpec) (*Pod, error) {
	p, err := c.reservePod(spec)
	if err != nil {
		return nil, err
	}
	if err := c.startPod(ctx, p); err != nil {
		return nil, errors.Join(fmt.Errorf("cluster: adding pod %s: %w", p, err), c.RemovePod(context.WithoutCancel(ctx), p))
	}
	return p, nil
}

// AddPods adds pods concurrently and returns them in the order of specs.
// Addresses are handed out in that order too, so the same specs on a new
// cluster get the same addresses. On error, the pods that were added stay
// (Close or RemovePod removes them) and the others are nil.
func (c *Cluster) AddPods(ctx context.Context, specs ...PodSpec) ([]*Pod, error) {
	pods := make([]*Pod, len(specs))
	errs := make([]error, len(specs))
	for i, spec := range specs {
		pods[i], errs[i] = c.reservePod(spec)
	}
	_ = parallel(len(specs), func(i int) error {
		p := pods[i]
		if p == nil {
			return nil
		}
		if err := c.startPod(ctx, p); err != nil {
			errs[i] = errors.Join(fmt.Errorf("cluster: adding pod %s: %w", p, err), c.RemovePod(context.WithoutCancel(ctx), p))
			pods[i] = nil
		}
		return nil
	})
	return pods, errors.Join(errs...)
}

// reservePod checks spec, allocates the pod's addresses and names, and
// registers it so that Close will clean up after it.
func (c *Cluster) reservePod(spec PodSpec) (*Pod, error) {
	if spec.Namespace == "" || spec.Name == "" || strings.Contains(spec.Namespace+spec.Name, "/") {
		return nil, fmt.Errorf("cluster: pod %q/%q: namespace and name must be non-empty and without '/'", spec.Namespace, spec.Name)
	}
	for _, port := range spec.ExtraPorts {
		if port < 1 || port > 65535 {
			return nil, fmt.Errorf("cluster: pod %s/%s: invalid port %d", spec.Namespace, spec.Name, port)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("cluster: closed")
	}
	if spec.Node < 0 || spec.Node >= len(c.nodes) {
		return nil, fmt.Errorf("cluster: pod %s/%s: no node %d", spec.Namespace, spec.Name, spec.Node)
	}
	key := spec.Namespace + "/" + spec.Name
	if _, ok := c.pods[key]; ok {
		return nil, fmt.Errorf("cluster: pod %s exists", key)
	}
	n := c.nodes[spec.Node]
	if len(n.used) >= maxPodsPerNode {
		return nil, fmt.Errorf("cluster: node %s is full (%d pods)", n.Name, maxPodsPerNode)
	}
	// Hand out host numbers 2..254 round-robin, so a removed pod's address is
	// not reused at once (stale neighbour and conntrack entries would match it).
	h := spec.Host
	if h != 0 && (h < 2 || h > 254 || n.used[h]) {
		return nil, fmt.Errorf("cluster: pod %s/%s: host number %d is not free on %s", spec.Namespace, spec.Name, h, n.Name)
	}
	for h == 0 || n.used[h] {
		h = n.next
		n.next = h + 1
		if n.next > 254 {
			n.next = 2
		}
	}
	n.used[h] = true
	ports := append([]int{80, 81}, spec.ExtraPorts...)
	slices.Sort(ports)

	sum := sha256.Sum256([]byte(key))
	p := &Pod{
		Namespace: spec.Namespace,
		Name:      spec.Name,
		Node:      spec.Node,
		Labels:    maps.Clone(spec.Labels),
		IPv4:      nthAddr(n.PodCIDRv4, h),
		IPv6:      nthAddr(n.PodCIDRv6, h),
		HostVeth:  "veth" + hex.EncodeToString(sum[:4]), // 12 of IFNAMSIZ's 15
		Ports:     slices.Compact(ports),
		hostNum:   h,
	}
	c.pods[key] = p
	c.podSeq++
	// The namespace is named by sequence, not by pod name, which can be long.
	p.NetNS = &nfttest.NetNS{Name: c.id + "-p" + strconv.Itoa(c.podSeq)}
	return p, nil
}

// startPod builds the pod's network and starts its agent.
func (c *Cluster) startPod(ctx context.Context, p *Pod) error {
	node := c.nodes[p.Node]
	ns, err := c.newNetNS(strings.TrimPrefix(p.NetNS.Name, c.id+"-"))
	if err != nil {
		return err
	}
	p.NetNS = ns
	err = sysctls(ns,
		"net.ipv4.conf.all.rp_filter", "0",
		"net.ipv4.conf.default.rp_filter", "0",
		"net.ipv6.conf.all.accept_dad", "0",
		"net.ipv6.conf.default.accept_dad", "0")
	if err != nil {
		return err
	}
	err = ipBatch(ctx, node.NetNS,
		fmt.Sprintf("link add %s address %s type veth peer name eth0 netns %s", p.HostVeth, hostVethMAC, ns.Name),
		fmt.Sprintf("link set %s up", p.HostVeth),
		fmt.Sprintf("addr add %s/64 dev %s", podGatewayV6, p.HostVeth),
		fmt.Sprintf("route add %s/32 dev %s src %s", p.IPv4, p.HostVeth, node.IPv4),
		fmt.Sprintf("route add %s/128 dev %s src %s", p.IPv6, p.HostVeth, node.IPv6))
	if err != nil {
		return err
	}
	err = ipBatch(ctx, ns,
		"link set eth0 up",
		fmt.Sprintf("addr add %s/32 dev eth0", p.IPv4),
		fmt.Sprintf("addr add %s/128 dev eth0", p.IPv6),
		fmt.Sprintf("neigh add %s lladdr %s dev eth0 nud permanent", podGatewayV4, hostVethMAC),
		fmt.Sprintf("neigh add %s lladdr %s dev eth0 nud permanent", podGatewayV6, hostVethMAC),
		fmt.Sprintf("route add %s dev eth0 scope link", podGatewayV4),
		fmt.Sprintf("route add default via %s dev eth0", podGatewayV4),
		fmt.Sprintf("route add ::/0 via %s dev eth0", podGatewayV6))
	if err != nil {
		return err
	}
	if err := errors.Join(waitIPv6Ready(ctx, ns), waitIPv6Ready(ctx, node.NetNS)); err != nil {
		return err
	}
	a, err := startAgent(ctx, ns, c.agentBin, "pod "+p.String(), p.Ports)
	if err != nil {
		return err
	}
	return c.adopt(a, func() { p.agent = a })
}

// RemovePod stops the pod's agent and deletes its veth and namespace.
func (c *Cluster) RemovePod(ctx context.Context, p *Pod) error {
	c.mu.Lock()
	if c.pods[p.String()] != p {
		c.mu.Unlock()
		return fmt.Errorf("cluster: no pod %s", p)
	}
	a := p.agent
	c.mu.Unlock()

	var errs []error
	if a != nil {
		errs = append(errs, a.stop())
	}
	// Deleting one end of the veth deletes both, at once; deleting the pod's
	// namespace would do it too, but only when the kernel gets round to it.
	node := c.nodes[p.Node]
	if out, err := node.NetNS.RunContext(ctx, "", "ip", "link", "show", p.HostVeth); err == nil && out != "" {
		errs = append(errs, ipBatch(ctx, node.NetNS, "link del "+p.HostVeth))
	}
	errs = append(errs, p.NetNS.Delete())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cluster: removing pod %s: %w", p, err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pods, p.String())
	delete(node.used, p.hostNum)
	c.namespaces = slices.DeleteFunc(c.namespaces, func(ns *nfttest.NetNS) bool { return ns.Name == p.NetNS.Name })
	return nil
}

// Pod returns the running pod namespace/name, or nil.
func (c *Cluster) Pod(namespace, name string) *Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.pods[namespace+"/"+name]; p != nil && p.agent != nil {
		return p
	}
	return nil
}

// Pods returns every running pod, sorted by namespace and name.
func (c *Cluster) Pods() []*Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	pods := slices.Collect(maps.Values(c.pods))
	pods = slices.DeleteFunc(pods, func(p *Pod) bool { return p.agent == nil })
	slices.SortFunc(pods, func(a, b *Pod) int { return strings.Compare(a.String(), b.String()) })
	return pods
}
