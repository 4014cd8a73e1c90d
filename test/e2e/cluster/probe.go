package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Endpoint is something that can send and answer probes: a *Pod, a *Node or
// the *External host.
type Endpoint interface {
	// String labels the endpoint: "namespace/name" for a pod, the node's name,
	// "external".
	String() string
	// Addr is the endpoint's address of a family.
	Addr(Family) netip.Addr
	prober() *agent
}

var (
	_ Endpoint = (*Pod)(nil)
	_ Endpoint = (*Node)(nil)
	_ Endpoint = (*External)(nil)
)

// Protocol is a transport protocol a probe can use.
type Protocol string

const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Family is an IP family.
type Family int

const (
	V4 Family = 4
	V6 Family = 6
)

func (f Family) String() string { return "v" + strconv.Itoa(int(f)) }

// Default probe timeouts. A denied probe is one that times out unless the
// policy rejects, so these bound how long a matrix with denials takes. A
// refused UDP probe is fast: the ICMP port unreachable ends it.
const (
	DefaultTCPTimeout = time.Second
	DefaultUDPTimeout = 500 * time.Millisecond
)

// ProbeResult is the outcome of one probe.
type ProbeResult struct {
	// OK means the connection worked: for TCP, connected and a byte made the
	// round trip; for UDP, the datagram came back.
	OK bool
	// Err says why not: "timeout" (dropped), "refused", "unreachable" (rejected
	// with ICMP, or no route), "not permitted" (dropped in the prober's own
	// output path), or another error's text.
	Err string
	// Elapsed is how long the probe took, as the prober measured it.
	Elapsed time.Duration
}

func (r ProbeResult) String() string {
	if r.OK {
		return "allowed"
	}
	return "denied (" + r.Err + ")"
}

// Probe connects from one endpoint to another's address of family fam. timeout
// 0 means the protocol's default. The error reports a broken probe (an agent
// died, ctx ended), never a denied connection.
func (c *Cluster) Probe(ctx context.Context, from, to Endpoint, proto Protocol, fam Family, port int, timeout time.Duration) (ProbeResult, error) {
	addr := to.Addr(fam)
	if !addr.IsValid() {
		return ProbeResult{}, fmt.Errorf("cluster: %s has no %s address", to, fam)
	}
	return c.ProbeAddr(ctx, from, addr, proto, port, timeout)
}

// ProbeAddr is Probe to any address, e.g. a service IP or one outside the
// cluster's namespaces (which the probe would then leave the cluster for: keep
// to addresses the cluster owns).
func (c *Cluster) ProbeAddr(ctx context.Context, from Endpoint, addr netip.Addr, proto Protocol, port int, timeout time.Duration) (ProbeResult, error) {
	a := from.prober()
	if a == nil {
		return ProbeResult{}, fmt.Errorf("cluster: %s has no running agent", from)
	}
	if timeout <= 0 {
		timeout = DefaultTCPTimeout
		if proto == UDP {
			timeout = DefaultUDPTimeout
		}
	}
	resp, err := a.probe(ctx, probeRequest{
		Proto:     string(proto),
		Addr:      addr.String(),
		Port:      port,
		TimeoutMs: int(timeout.Milliseconds()),
	})
	if err != nil {
		return ProbeResult{}, fmt.Errorf("cluster: probe %s -> %s %s/%d: %w", from, addr, proto, port, err)
	}
	return ProbeResult{OK: resp.OK, Err: resp.Err, Elapsed: time.Duration(resp.Micros) * time.Microsecond}, nil
}

// Case is one column of a reachability matrix: a protocol, family and port.
type Case struct {
	Protocol Protocol
	Family   Family
	Port     int
}

// String is e.g. "tcp/80/v4".
func (k Case) String() string {
	return fmt.Sprintf("%s/%d/%s", k.Protocol, k.Port, k.Family)
}

// MatrixSpec says which probes a Matrix runs: every From × To pair for every
// combination of Protocols, Families and Ports.
type MatrixSpec struct {
	// From are the sources; To the destinations, From if empty.
	From, To []Endpoint
	// Ports defaults to 80 and 81, Protocols to TCP and UDP, Families to V4
	// and V6.
	Ports     []int
	Protocols []Protocol
	Families  []Family
	// TCPTimeout and UDPTimeout default to DefaultTCPTimeout and DefaultUDPTimeout.
	TCPTimeout, UDPTimeout time.Duration
}

// MatrixResult is what a Matrix observed: one table per case.
type MatrixResult struct {
	// Cases are in the order protocol, family, port, as given in the spec.
	Cases  []Case
	Tables map[Case]*Reachability
	// Probes is how many probes ran, Elapsed how long all of them took.
	Probes  int
	Elapsed time.Duration
}

// Matrix runs every probe of spec at once, each prober running its own
// concurrently, so it takes about as long as the slowest probe: milliseconds
// when everything connects, one timeout when something is dropped.
func (c *Cluster) Matrix(ctx context.Context, spec MatrixSpec) (*MatrixResult, error) {
	if len(spec.To) == 0 {
		spec.To = spec.From
	}
	if len(spec.From) == 0 {
		return nil, errors.New("cluster: matrix without sources")
	}
	if len(spec.Ports) == 0 {
		spec.Ports = []int{80, 81}
	}
	if len(spec.Protocols) == 0 {
		spec.Protocols = []Protocol{TCP, UDP}
	}
	if len(spec.Families) == 0 {
		spec.Families = []Family{V4, V6}
	}
	spec.TCPTimeout = cmp.Or(spec.TCPTimeout, DefaultTCPTimeout)
	spec.UDPTimeout = cmp.Or(spec.UDPTimeout, DefaultUDPTimeout)

	res := &MatrixResult{Tables: map[Case]*Reachability{}}
	for _, proto := range spec.Protocols {
		for _, fam := range spec.Families {
			for _, port := range spec.Ports {
				k := Case{Protocol: proto, Family: fam, Port: port}
				res.Cases = append(res.Cases, k)
				res.Tables[k] = NewReachabilityFromTo(spec.From, spec.To, false)
			}
		}
	}

	start := time.Now()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, k := range res.Cases {
		table := res.Tables[k]
		timeout := spec.TCPTimeout
		if k.Protocol == UDP {
			timeout = spec.UDPTimeout
		}
		for i, from := range spec.From {
			for j, to := range spec.To {
				res.Probes++
				wg.Go(func() {
					r, err := c.Probe(ctx, from, to, k.Protocol, k.Family, k.Port, timeout)
					if err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
						return
					}
					// Each goroutine owns its cell.
					table.ok[i][j] = r.OK
					table.detail[i][j] = r.Err
				})
			}
		}
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	if len(errs) > 0 {
		// One broken agent fails all its probes: report a few.
		return res, fmt.Errorf("cluster: %d of %d probes failed to run: %w", len(errs), res.Probes, errors.Join(errs[:min(len(errs), 3)]...))
	}
	return res, nil
}

// Table returns the observations for one case, or nil.
func (r *MatrixResult) Table(k Case) *Reachability { return r.Tables[k] }

// Diff compares every case with the same expectation and describes each case
// that differs, or returns "" if all match.
func (r *MatrixResult) Diff(want *Reachability) string {
	return r.DiffEach(func(Case) *Reachability { return want })
}

// DiffEach is Diff with an expectation per case; a nil expectation skips the
// case.
func (r *MatrixResult) DiffEach(want func(Case) *Reachability) string {
	var b strings.Builder
	for _, k := range r.Cases {
		w := want(k)
		if w == nil {
			continue
		}
		if d := w.Diff(r.Tables[k]); d != "" {
			fmt.Fprintf(&b, "=== %s\n%s", k, d)
		}
	}
	return b.String()
}

// String prints every case's table.
func (r *MatrixResult) String() string {
	var b strings.Builder
	for _, k := range r.Cases {
		fmt.Fprintf(&b, "=== %s\n%s", k, r.Tables[k])
	}
	return b.String()
}

// Summary is one line: probes, how many were allowed, elapsed time.
func (r *MatrixResult) Summary() string {
	ok := 0
	for _, t := range r.Tables {
		ok += t.count(true)
	}
	return fmt.Sprintf("%d probes in %d cases, %d allowed, %d denied, in %v",
		r.Probes, len(r.Cases), ok, r.Probes-ok, r.Elapsed.Round(time.Millisecond))
}
