package framework

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// Expectation is a reachability table together with its endpoints, written
// the way the upstream NetworkPolicy e2e tests write theirs: start from all
// connected (or not) and ExpectPeer, ExpectAllIngress, ... the exceptions.
// Loopback cells are always expected connected (see cluster.Reachability.AllowLoopback).
type Expectation struct {
	From, To []cluster.Endpoint
	*cluster.Reachability
}

// NewExpectation is an expectation over peers as sources and destinations.
func NewExpectation(peers []cluster.Endpoint, connected bool) *Expectation {
	return NewExpectationFromTo(peers, peers, connected)
}

// NewExpectationFromTo is an expectation from some endpoints to others.
func NewExpectationFromTo(from, to []cluster.Endpoint, connected bool) *Expectation {
	return &Expectation{From: from, To: to, Reachability: cluster.NewReachabilityFromTo(from, to, connected)}
}

// Check is one expectation over some protocols, ports and families.
type Check struct {
	// Protocols defaults to TCP, Ports to 80, Families to IPv4 and IPv6.
	Protocols []cluster.Protocol
	Ports     []int
	Families  []cluster.Family
	Want      *Expectation
}

// TCP checks want on TCP port(s), both families.
func TCP(want *Expectation, ports ...int) Check {
	return Check{Protocols: []cluster.Protocol{cluster.TCP}, Ports: ports, Want: want}
}

// UDP checks want on UDP port(s), both families.
func UDP(want *Expectation, ports ...int) Check {
	return Check{Protocols: []cluster.Protocol{cluster.UDP}, Ports: ports, Want: want}
}

func (c Check) withDefaults() Check {
	if len(c.Protocols) == 0 {
		c.Protocols = []cluster.Protocol{cluster.TCP}
	}
	if len(c.Ports) == 0 {
		c.Ports = []int{80}
	}
	if len(c.Families) == 0 {
		c.Families = []cluster.Family{cluster.V4, cluster.V6}
	}
	return c
}

func (c Check) cases() []cluster.Case {
	var ks []cluster.Case
	for _, proto := range c.Protocols {
		for _, fam := range c.Families {
			for _, port := range c.Ports {
				ks = append(ks, cluster.Case{Protocol: proto, Family: fam, Port: port})
			}
		}
	}
	return ks
}

// want is the expectation with loopback allowed.
func (c Check) want() *cluster.Reachability {
	w := c.Want.Clone()
	w.AllowLoopback()
	return w
}

// key names a case over the check's endpoints, for Env.confirmed.
func (c Check) key(k cluster.Case) string {
	names := func(eps []cluster.Endpoint) string {
		s := make([]string, len(eps))
		for i, e := range eps {
			s[i] = e.String()
		}
		return strings.Join(s, ",")
	}
	return k.String() + " " + names(c.Want.From) + " -> " + names(c.Want.To)
}

// Probe timeouts: short while polling (a wrong answer only costs another
// round; the confirmation decides), the cluster defaults when confirming.
// A probe expected to be dropped must time out to be believed, which takes
// pollDeniedTimeout. One expected to connect answers within milliseconds once
// it is allowed, so it starts with a shorter timeout, which doubles up to
// pollDeniedTimeout after each round it ran out in: a slow machine costs a few
// rounds, never a wrong verdict.
const (
	pollDeniedTimeout  = 200 * time.Millisecond
	pollAllowedTimeout = 50 * time.Millisecond
	pollPeriod         = 10 * time.Millisecond
	// DefaultMatrixTimeout is how long WaitForMatrix waits for a match.
	DefaultMatrixTimeout = 20 * time.Second
)

// Latency is one apply→enforced measurement.
type Latency struct {
	// Enforced is from the last API write to the start of the first probe
	// round that showed the expectation (confirmed afterwards).
	Enforced time.Duration
	// Resolution is the time since the start of the round before that one
	// (or since the write): enforcement happened within Resolution before
	// Enforced, for the cells that had to change.
	Resolution time.Duration
	// Polls is how many rounds it took.
	Polls int
}

// Result describes a successful WaitForMatrix.
type Result struct {
	// Latency is set when the wait measured one: the expectation differed
	// from the last confirmed state and an API write preceded it.
	Latency *Latency
	// Probes is how many probes the confirmation ran.
	Probes int
	// Took is the time WaitForMatrix took.
	Took time.Duration
}

func (r Result) String() string {
	s := fmt.Sprintf("matched in %v (%d probes confirmed)", r.Took.Round(time.Millisecond), r.Probes)
	if r.Latency != nil {
		s += fmt.Sprintf("; apply→enforced %v (±%v, %d polls)", r.Latency.Enforced.Round(time.Millisecond),
			r.Latency.Resolution.Round(time.Millisecond), r.Latency.Polls)
	}
	return s
}

// WaitForMatrix waits until every check holds, as the package documentation
// describes, for at most DefaultMatrixTimeout. The error reports a
// reachability that never matched (with the diff, rulesets and agent logs) or
// a probe that could not run.
func (e *Env) WaitForMatrix(ctx context.Context, checks ...Check) (Result, error) {
	return e.WaitForMatrixWithin(ctx, DefaultMatrixTimeout, checks...)
}

// WaitForMatrixWithin is WaitForMatrix with another deadline.
func (e *Env) WaitForMatrixWithin(ctx context.Context, timeout time.Duration, checks ...Check) (Result, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for i := range checks {
		checks[i] = checks[i].withDefaults()
	}

	// The cells the last write should flip: where the expectation differs
	// from what was last confirmed (everything connected if nothing was), and
	// every cell of a pod created since.
	e.mu.Lock()
	write, measured := e.lastWrite, e.measured
	var flips []cell
	for _, c := range checks {
		want := c.want()
		for _, k := range c.cases() {
			prev := e.confirmed[c.key(k)]
			if prev == nil {
				prev = cluster.NewReachabilityFromTo(c.Want.From, c.Want.To, true)
			}
			for _, from := range c.Want.From {
				for _, to := range c.Want.To {
					w := want.Connected(from, to)
					if w != prev.Connected(from, to) || e.fresh[from.String()] || e.fresh[to.String()] {
						flips = append(flips, cell{from: from, to: to, k: k, want: w})
					}
				}
			}
		}
	}
	e.mu.Unlock()
	measure := len(flips) > 0 && !write.IsZero() && write.After(measured)

	var (
		polls      int
		matchStart time.Time // start of the first matching poll round since the last failed confirmation
		resolution time.Duration
		lastDiff   string
		prevStart  = write // start of the previous poll round
		// the poll timeout of cells expected to connect (see pollAllowedTimeout)
		allowedTimeout = pollAllowedTimeout
	)
	for {
		roundStart := time.Now()
		ok, slow, err := e.pollFlips(ctx, flips, allowedTimeout)
		if err != nil {
			return Result{}, err
		}
		if slow {
			allowedTimeout = min(2*allowedTimeout, pollDeniedTimeout)
		}
		polls++
		if ok {
			if matchStart.IsZero() {
				matchStart, resolution = roundStart, roundStart.Sub(prevStart)
			}
			diff, probes, err := e.confirm(ctx, checks)
			if err != nil {
				return Result{}, err
			}
			if diff == "" {
				res := Result{Probes: probes, Took: time.Since(start)}
				e.mu.Lock()
				if e.confirmed == nil {
					e.confirmed = map[string]*cluster.Reachability{}
				}
				for _, c := range checks {
					for _, k := range c.cases() {
						e.confirmed[c.key(k)] = c.want()
					}
				}
				e.fresh = nil
				if measure {
					res.Latency = &Latency{Enforced: matchStart.Sub(write), Resolution: resolution, Polls: polls}
					e.latencies = append(e.latencies, *res.Latency)
					e.measured = write
				}
				e.mu.Unlock()
				e.logf("matrix: %s", res)
				return res, nil
			}
			lastDiff = diff
			matchStart = time.Time{}
		}
		prevStart = roundStart
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return Result{}, ctx.Err()
		case <-time.After(time.Until(roundStart.Add(pollPeriod))):
		}
	}
	if lastDiff == "" {
		// Never got as far as confirming: measure the whole matrix for the report.
		var err error
		if lastDiff, _, err = e.confirm(ctx, checks); err != nil {
			return Result{}, err
		}
		if lastDiff == "" {
			lastDiff = "(the full matrix matched only at the last moment; the cells polled had not)"
		}
	}
	return Result{}, fmt.Errorf("reachability did not match within %v (%d polls):\n%s\n%s", timeout, polls, lastDiff, e.Diagnostics())
}

// cell is one probe and the answer it should give.
type cell struct {
	from, to cluster.Endpoint
	k        cluster.Case
	want     bool
}

// pollFlips probes every cell at once and reports whether all answered as
// wanted, giving up at the first that did not. slow reports that a cell
// expected to connect timed out after allowedTimeout.
func (e *Env) pollFlips(ctx context.Context, cells []cell, allowedTimeout time.Duration) (ok, slow bool, err error) {
	if len(cells) == 0 {
		return true, false, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		mismatch bool
		errs     []error
	)
	for _, c := range cells {
		timeout := pollDeniedTimeout
		if c.want {
			timeout = allowedTimeout
		}
		wg.Go(func() {
			r, err := e.Cluster.Probe(ctx, c.from, c.to, c.k.Protocol, c.k.Family, c.k.Port, timeout)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case mismatch:
				// the round is over; this probe was cancelled or is moot
			case err != nil:
				errs = append(errs, err)
			case r.OK != c.want:
				mismatch = true
				slow = c.want && r.Err == "timeout"
				cancel()
			}
		})
	}
	wg.Wait()
	if mismatch {
		return false, slow, nil
	}
	if err := errors.Join(errs...); err != nil {
		return false, false, err
	}
	return true, false, nil
}

// confirm runs every check's full matrix with the default probe timeouts and
// returns the differences from the expectations, "" if none.
func (e *Env) confirm(ctx context.Context, checks []Check) (string, int, error) {
	diffs := make([]string, len(checks))
	errs := make([]error, len(checks))
	probes := make([]int, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			res, err := e.Cluster.Matrix(ctx, cluster.MatrixSpec{
				From: c.Want.From, To: c.Want.To,
				Protocols: c.Protocols, Ports: c.Ports, Families: c.Families,
			})
			if err != nil {
				errs[i] = err
				return
			}
			probes[i] = res.Probes
			// Families usually fail alike: print a repeated diff once.
			want := c.want()
			var b strings.Builder
			seen := map[string]cluster.Case{}
			for _, k := range res.Cases {
				d := want.Diff(res.Table(k))
				if d == "" {
					continue
				}
				if first, ok := seen[d]; ok {
					fmt.Fprintf(&b, "=== %s: the same as %s\n", k, first)
					continue
				}
				seen[d] = k
				fmt.Fprintf(&b, "=== %s\n%s", k, d)
			}
			diffs[i] = b.String()
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", 0, err
	}
	total := 0
	for _, n := range probes {
		total += n
	}
	return strings.Join(diffs, ""), total, nil
}

// Latencies returns every apply→enforced measurement so far.
func (e *Env) Latencies() []Latency {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.latencies)
}

// Percentile returns the p-th percentile (0 < p <= 100, nearest rank) of d,
// or 0 if d is empty.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	d = slices.Clone(d)
	slices.Sort(d)
	rank := int(math.Ceil(float64(len(d))*p/100)) - 1
	return d[max(0, min(rank, len(d)-1))]
}
