package controllers

import (
	"context"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/nflog"
)

// The agent's view of verdicts (nft/doc.go, "Deny log" and "Policy counters"):
// the deny log reader, which logs each denied packet the kernel hands it with
// the policies that isolate the pod, and the collector that serves the kernel's
// per-policy counters at scrape time. Both read the Attribution that the node
// reconciler publishes with each table it applies, and neither is in the path of
// a packet or of a sync: a slow, failing or absent reader loses log lines, and
// that is all.

// attribution holds the Attribution of the table in force, of the one before it
// (a packet logged just before a change may be read just after it), and of the
// one being applied: the kernel logs the new table's packets as soon as its
// transaction commits, before the agent hears that it did. The three are
// published together, so that a reader sees them as of one moment: read one
// by one, a table applied between two reads could be in neither.
type attribution struct {
	tables atomic.Pointer[attributionTables]
}

type attributionTables struct{ cur, prev, next *compile.Attribution }

// get is the tables as of now (never nil).
func (a *attribution) get() attributionTables {
	if t := a.tables.Load(); t != nil {
		return *t
	}
	return attributionTables{}
}

// applying publishes the Attribution of a table about to be applied. The
// reconciler is the only writer.
func (a *attribution) applying(at *compile.Attribution) {
	t := a.get()
	t.next = at
	a.tables.Store(&t)
}

// applied ends the change applying began: its table is in force (ok), or the
// one before still is.
func (a *attribution) applied(ok bool) {
	t := a.get()
	if ok && t.next != nil {
		t.prev, t.cur = t.cur, t.next
	}
	t.next = nil
	a.tables.Store(&t)
}

// load is the Attribution of the table in force (the counters' names).
func (a *attribution) load() *compile.Attribution {
	if at := a.get().cur; at != nil {
		return at
	}
	return &compile.Attribution{}
}

// group finds the group chain of a deny log prefix: in the table in force, the
// one being applied, or the one before.
func (a *attribution) group(prefix string) (compile.Group, bool) {
	t := a.get()
	for _, at := range []*compile.Attribution{t.cur, t.next, t.prev} {
		if at != nil {
			if g, ok := at.Groups[prefix]; ok {
				return g, true
			}
		}
	}
	return compile.Group{}, false
}

// DenyLogSource is an opened deny log group (nft/nflog.Reader in the binary).
type DenyLogSource interface {
	// Read blocks until packets arrive; it fails once the source is closed.
	Read() ([]nflog.Packet, error)
	// Lost counts the packets the kernel logged that never arrived.
	Lost() uint64
	Close() error
}

// podIPIndex is the cache index of pods by address (status.podIPs), for naming
// the two ends of a denied packet.
const podIPIndex = "status.podIPs"

func indexPodIPs(obj client.Object) []string {
	pod, ok := obj.(*corev1.Pod)
	if !ok || pod.Spec.HostNetwork || compile.PodFinished(pod) {
		return nil // a node address names no pod; a finished pod's is released
	}
	var out []string
	for _, ip := range pod.Status.PodIPs {
		out = append(out, ip.IP)
	}
	if len(out) == 0 && pod.Status.PodIP != "" {
		out = append(out, pod.Status.PodIP)
	}
	return out
}

// denyLogger reads the deny log and logs one line per packet.
type denyLogger struct {
	open   func() (DenyLogSource, error)
	pods   client.Reader // the cache, with podIPIndex
	attrib *attribution
	log    logr.Logger
	// retry is how long to wait before opening the group again after a failure.
	retry time.Duration
	// firstWait bounds how long packets read before the agent's first table is
	// in force wait for its attribution (see read); 0: firstTableWait.
	firstWait time.Duration
}

// firstTableWait: a restarted agent reads the packets the table in force (its
// predecessor's) logged from the moment it opens the group, before its own first
// sync can name their chains. It holds them until that sync is done, this long at
// most (a first sync takes 1-8 s): the names are the same unless policies changed
// while no agent ran.
const firstTableWait = 30 * time.Second

// NeedLeaderElection: every agent reads its own node's log.
func (d *denyLogger) NeedLeaderElection() bool { return false }

// Start reads until ctx is done. It never fails the agent: a group that cannot be
// opened (another process holds it) or a read error is logged, and the reader
// tries again after d.retry.
func (d *denyLogger) Start(ctx context.Context) error {
	for ctx.Err() == nil {
		src, err := d.open()
		if err != nil {
			d.log.Error(err, "cannot open the deny log; retrying", "in", d.retry)
		} else {
			err = d.read(ctx, src)
			if ctx.Err() == nil {
				d.log.Error(err, "reading the deny log failed; reopening", "in", d.retry)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(d.retry):
		}
	}
	return nil
}

// read logs what src delivers until ctx is done (nil) or src fails.
func (d *denyLogger) read(ctx context.Context, src DenyLogSource) error {
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
		}
		src.Close() // unblocks Read
	}()
	// The group is open: what the kernel logs meanwhile waits in the socket.
	d.waitForFirstTable(ctx)
	var lost uint64
	for {
		pkts, err := src.Read()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for i := range pkts {
			d.logPacket(ctx, &pkts[i])
		}
		if l := src.Lost(); l > lost {
			denyLogLost.Add(float64(l - lost))
			lost = l
		}
	}
}

// waitForFirstTable waits until a table's attribution is in force, ctx is done,
// or firstWait has passed.
func (d *denyLogger) waitForFirstTable(ctx context.Context) {
	wait := d.firstWait
	if wait == 0 {
		wait = firstTableWait
	}
	deadline := time.Now().Add(wait)
	for d.attrib.get().cur == nil && ctx.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// logPacket logs one denied packet: direction, both ends (pod or address),
// protocol and ports, and the policies that isolate the pod.
func (d *denyLogger) logPacket(ctx context.Context, p *nflog.Packet) {
	g, known := d.attrib.group(p.Prefix)
	direction := "unknown"
	if known {
		direction = "egress"
		if g.Ingress {
			direction = "ingress"
		}
	}
	policies := make([]string, len(g.Policies))
	namespace := ""
	for i, pol := range g.Policies {
		policies[i] = pol.String()
		namespace = pol.Namespace // a group's policies share the pod's namespace
	}
	if cr := g.Cluster; cr != nil {
		policies = []string{"cnp/" + cr.Policy} // cluster-scoped: no namespace
	}
	deniedPackets.WithLabelValues(direction, namespace).Inc()

	kv := []any{"direction", direction,
		"src", d.endpoint(ctx, p.Src), "dst", d.endpoint(ctx, p.Dst),
		"srcIP", addrText(p.Src), "dstIP", addrText(p.Dst), "proto", p.ProtocolName()}
	switch {
	case p.HasPorts():
		kv = append(kv, "srcPort", p.SrcPort, "dstPort", p.DstPort)
	case p.HasL4 && (p.Protocol == nflog.ProtoICMP || p.Protocol == nflog.ProtoICMPv6):
		kv = append(kv, "icmpType", p.ICMPType, "icmpCode", p.ICMPCode)
	}
	if p.Fragment {
		kv = append(kv, "fragment", true)
	}
	if !known {
		// A packet logged by a table this agent no longer holds (just after a
		// change) or by a rule that is not ours.
		kv = append(kv, "prefix", p.Prefix)
	}
	kv = append(kv, "policies", policies)
	if cr := g.Cluster; cr != nil {
		// The ClusterNetworkPolicy rule that dropped it (nft/compile ClusterRule).
		kv = append(kv, "tier", cr.Tier, "priority", cr.Priority, "rule", cr.Index)
		if cr.Name != "" {
			kv = append(kv, "ruleName", cr.Name)
		}
		if cr.FailClosed {
			kv = append(kv, "failClosed", true)
		}
	}
	if g.Reply {
		// Strict mode: a reply of an older epoch, judged as its connection.
		kv = append(kv, "reply", true)
	}
	if g.UnknownPod {
		// From an address of the node's pod CIDRs that no pod the agent
		// knows has yet (--unknown-pod-cidrs): no policy decided it.
		kv = append(kv, "unknownPod", true)
	}
	d.log.Info("packet denied", kv...)
}

// endpoint names a packet's end: namespace/name of the one pod with that
// address, else the address.
func (d *denyLogger) endpoint(ctx context.Context, a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	var pods corev1.PodList
	if err := d.pods.List(ctx, &pods, client.MatchingFields{podIPIndex: a.String()}, client.UnsafeDisableDeepCopy); err == nil && len(pods.Items) == 1 {
		return pods.Items[0].Namespace + "/" + pods.Items[0].Name
	}
	return a.String()
}

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// CounterPackets reads the named counters of the node's table by name
// (nft/netlink.Applier.Counters in the binary).
type CounterPackets func(ctx context.Context) (map[string]CounterRead, error)

// CounterRead is one counter as read: its packets, and which life of it
// (netlink.CounterValue.Created): a counter created again counts from zero.
type CounterRead struct {
	Packets uint64
	Created uint64
}

// policyCollector serves nftpolicy_policy_packets_total from the kernel's
// group counters, read at scrape time: each policy is credited with the
// counts of the group chains it is part of (nft/doc.go, "Policy counters").
//
// A policy's total must never decrease, but group counters come and go: a
// group disappears when the policies selecting its pods change, and a replaced
// table starts its counters at zero. So the collector remembers each counter's
// last value read, and when the counter is gone, created again (CounterRead's
// Created changed: it may have passed its old value already) or went back,
// carries that value into the totals of its policies. (Counts between the last
// scrape and a group's removal are lost.) Totals of policies no longer in the table are
// forgotten, so memory follows the table.
type policyCollector struct {
	read   CounterPackets
	attrib *attribution
	desc   *prometheus.Desc

	mu      sync.Mutex
	seen    map[string]seenCounter // by counter name
	carried map[policyKey]uint64
}

type seenCounter struct {
	gc      compile.GroupCounter
	v       uint64
	created uint64
}

type policyKey struct{ namespace, name, direction, verdict, tier string }

// Tiers in the tier label.
const (
	tierLabelNetworkPolicy = "networkpolicy"
	tierLabelAdmin         = "admin"
	tierLabelBaseline      = "baseline"
)

func newPolicyCollector(read CounterPackets, at *attribution) *policyCollector {
	return &policyCollector{read: read, attrib: at, seen: map[string]seenCounter{}, carried: map[policyKey]uint64{},
		desc: prometheus.NewDesc(
			"nftpolicy_policy_packets_total",
			"Packets the group chains of a policy allowed or dropped for isolation, by direction, read from the kernel's "+
				"counters (a packet allowed in a group of several policies counts for each: see nft/doc.go); "+
				"for a ClusterNetworkPolicy (tier admin or baseline, no namespace), the packets its rules accepted, denied or passed.",
			[]string{"namespace", "policy", "direction", "verdict", "tier"}, nil)}
}

func (c *policyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// credit adds n to the totals of every policy of gc.
func credit(totals map[policyKey]uint64, gc compile.GroupCounter, n uint64) {
	dir := "egress"
	if gc.Ingress {
		dir = "ingress"
	}
	if cr := gc.Cluster; cr != nil {
		tier := tierLabelAdmin
		if cr.Tier == "Baseline" {
			tier = tierLabelBaseline
		}
		totals[policyKey{"", cr.Policy, dir, gc.Verdict, tier}] += n
		return
	}
	for _, p := range gc.Policies {
		totals[policyKey{p.Namespace, p.Name, dir, gc.Verdict, tierLabelNetworkPolicy}] += n
	}
}

func (c *policyCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// One scrape at a time (two Prometheus replicas, a curl): each read is
	// then newer than the one recorded before it. A scrape that read first
	// and recorded last would take its older values for resets, and carry the
	// newer ones into the totals for good.
	c.mu.Lock()
	defer c.mu.Unlock()
	at := c.attrib.load()
	vals, err := c.read(ctx)
	if err != nil {
		counterReadErrors.Inc()
		return
	}
	next := make(map[string]seenCounter, len(at.Counters))
	for name, gc := range at.Counters {
		v, ok := vals[name]
		if !ok {
			// Not in the kernel yet, or not read: its group is in the
			// table in force, so it is not gone.
			if old, seen := c.seen[name]; seen {
				next[name] = old
			}
			continue
		}
		if old, ok := c.seen[name]; ok && (v.Packets < old.v || v.Created != old.created) {
			credit(c.carried, old.gc, old.v) // counting again from zero
		}
		next[name] = seenCounter{gc, v.Packets, v.Created}
	}
	for name, old := range c.seen {
		if _, ok := next[name]; !ok {
			credit(c.carried, old.gc, old.v) // its group is gone
		}
	}
	c.seen = next
	totals := map[policyKey]uint64{}
	for _, s := range next {
		credit(totals, s.gc, s.v)
	}
	present := map[policyKey]bool{} // policies (any direction, any verdict) in the table
	for k := range totals {
		present[policyKey{namespace: k.namespace, name: k.name, tier: k.tier}] = true
	}
	for k, v := range c.carried {
		if !present[policyKey{namespace: k.namespace, name: k.name, tier: k.tier}] {
			delete(c.carried, k) // the policy no longer isolates a pod here
			continue
		}
		// A verdict the policy no longer counts (a ClusterNetworkPolicy rule
		// whose action changed) keeps its total while the policy is here.
		totals[k] += v
	}
	for k, v := range totals {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(v), k.namespace, k.name, k.direction, k.verdict, k.tier)
	}
}
