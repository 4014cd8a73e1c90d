package cluster

import (
	"fmt"
	"slices"
	"strings"
)

// Peer selects endpoints for an expectation, as in the upstream NetworkPolicy
// e2e tests: pods by namespace and name, an empty field matching anything.
// Nodes and the external host have no namespace; their Pod is their label
// ("node-0", "external"). The zero Peer matches every endpoint.
type Peer struct {
	Namespace string
	Pod       string
}

func (p Peer) matches(m member) bool {
	return (p.Namespace == "" || p.Namespace == m.namespace) && (p.Pod == "" || p.Pod == m.name)
}

// member is a row or column of a Reachability table.
type member struct {
	label, namespace, name string
}

func memberOf(e Endpoint) member {
	if p, ok := e.(*Pod); ok {
		return member{label: p.String(), namespace: p.Namespace, name: p.Name}
	}
	return member{label: e.String(), name: e.String()}
}

// Reachability is a truth table from sources (rows) to destinations (columns):
// whether a connection is expected to work, or whether it did. A Matrix
// returns one per case; tests build the expected one with the Expect methods.
//
// The Expect methods panic on an endpoint the table does not have, a mistake
// in the test itself.
type Reachability struct {
	from, to []member
	ok       [][]bool
	// detail holds why an observed connection failed; empty in expectations.
	detail [][]string
}

// NewReachability returns a table over peers (as sources and destinations)
// with every cell set to connected.
func NewReachability(peers []Endpoint, connected bool) *Reachability {
	return NewReachabilityFromTo(peers, peers, connected)
}

// NewReachabilityFromTo is NewReachability with different sources and
// destinations.
func NewReachabilityFromTo(from, to []Endpoint, connected bool) *Reachability {
	r := &Reachability{}
	for _, e := range from {
		r.from = append(r.from, memberOf(e))
	}
	for _, e := range to {
		r.to = append(r.to, memberOf(e))
	}
	r.ok = make([][]bool, len(from))
	r.detail = make([][]string, len(from))
	for i := range r.ok {
		r.ok[i] = make([]bool, len(to))
		r.detail[i] = make([]string, len(to))
		for j := range r.ok[i] {
			r.ok[i][j] = connected
		}
	}
	return r
}

// Clone returns an independent copy, e.g. to vary an expectation per port.
func (r *Reachability) Clone() *Reachability {
	c := &Reachability{from: slices.Clone(r.from), to: slices.Clone(r.to)}
	for i := range r.ok {
		c.ok = append(c.ok, slices.Clone(r.ok[i]))
		c.detail = append(c.detail, slices.Clone(r.detail[i]))
	}
	return c
}

// Expect sets one cell.
func (r *Reachability) Expect(from, to Endpoint, connected bool) {
	r.ok[r.row(from)][r.col(to)] = connected
}

// ExpectPeer sets every cell whose source matches from and destination matches to.
func (r *Reachability) ExpectPeer(from, to Peer, connected bool) {
	for i, f := range r.from {
		for j, t := range r.to {
			if from.matches(f) && to.matches(t) {
				r.ok[i][j] = connected
			}
		}
	}
}

// ExpectAllIngress sets every cell towards to.
func (r *Reachability) ExpectAllIngress(to Endpoint, connected bool) {
	j := r.col(to)
	for i := range r.from {
		r.ok[i][j] = connected
	}
}

// ExpectAllEgress sets every cell from from.
func (r *Reachability) ExpectAllEgress(from Endpoint, connected bool) {
	i := r.row(from)
	for j := range r.to {
		r.ok[i][j] = connected
	}
}

// AllowLoopback expects every endpoint to reach itself: that traffic stays
// inside the endpoint's namespace, where no node-level policy applies. Call it
// after the other expectations.
func (r *Reachability) AllowLoopback() {
	for i, f := range r.from {
		for j, t := range r.to {
			if f.label == t.label {
				r.ok[i][j] = true
			}
		}
	}
}

// Connected reports one cell.
func (r *Reachability) Connected(from, to Endpoint) bool {
	return r.ok[r.row(from)][r.col(to)]
}

// Reason is why an observed connection failed ("timeout", "refused", ...);
// "" if it worked or the table is an expectation.
func (r *Reachability) Reason(from, to Endpoint) string {
	return r.detail[r.row(from)][r.col(to)]
}

func (r *Reachability) row(e Endpoint) int {
	i := slices.IndexFunc(r.from, func(m member) bool { return m.label == e.String() })
	if i < 0 {
		panic(fmt.Sprintf("cluster: %s is not a source in this reachability table", e))
	}
	return i
}

func (r *Reachability) col(e Endpoint) int {
	j := slices.IndexFunc(r.to, func(m member) bool { return m.label == e.String() })
	if j < 0 {
		panic(fmt.Sprintf("cluster: %s is not a destination in this reachability table", e))
	}
	return j
}

func (r *Reachability) count(connected bool) int {
	n := 0
	for _, row := range r.ok {
		for _, v := range row {
			if v == connected {
				n++
			}
		}
	}
	return n
}

// Mismatch is a cell where an observation differs from the expectation.
type Mismatch struct {
	From, To  string
	Want, Got bool
	// Reason is why the observed connection failed, if it did.
	Reason string
}

func (m Mismatch) String() string {
	word := map[bool]string{true: "allowed", false: "denied"}
	s := fmt.Sprintf("%s -> %s: want %s, got %s", m.From, m.To, word[m.Want], word[m.Got])
	if m.Reason != "" {
		s += " (" + m.Reason + ")"
	}
	return s
}

// Mismatches lists the cells where got differs from r, row by row. Tables
// over different endpoints differ everywhere: it returns one Mismatch with
// From and To naming the problem.
func (r *Reachability) Mismatches(got *Reachability) []Mismatch {
	if !slices.Equal(r.from, got.from) || !slices.Equal(r.to, got.to) {
		return []Mismatch{{From: "(tables over different endpoints)", To: "(compare like with like)"}}
	}
	var ms []Mismatch
	for i := range r.ok {
		for j := range r.ok[i] {
			if r.ok[i][j] != got.ok[i][j] {
				ms = append(ms, Mismatch{
					From: r.from[i].label, To: r.to[j].label,
					Want: r.ok[i][j], Got: got.ok[i][j], Reason: got.detail[i][j],
				})
			}
		}
	}
	return ms
}

// Diff describes how got differs from the expectation r: both tables and the
// wrong cells. It returns "" when they match.
func (r *Reachability) Diff(got *Reachability) string {
	ms := r.Mismatches(got)
	if len(ms) == 0 {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d wrong\nexpected:\n%sobserved:\n%swrong:\n", len(ms), len(r.from)*len(r.to), r, got)
	for _, m := range ms {
		fmt.Fprintf(&b, "  %s\n", m)
	}
	return b.String()
}

// String prints the table like the upstream e2e tests: sources down, destinations
// across, "." connected and "X" not.
func (r *Reachability) String() string {
	w := len("-")
	for _, m := range slices.Concat(r.from, r.to) {
		w = max(w, len(m.label))
	}
	var b strings.Builder
	line := func(cells []string) {
		var l strings.Builder
		for _, c := range cells {
			fmt.Fprintf(&l, "%-*s ", w, c)
		}
		b.WriteString(strings.TrimRight(l.String(), " ") + "\n")
	}
	cells := []string{"-"}
	for _, t := range r.to {
		cells = append(cells, t.label)
	}
	line(cells)
	for i, f := range r.from {
		cells = append(cells[:0], f.label)
		for j := range r.to {
			cells = append(cells, map[bool]string{true: ".", false: "X"}[r.ok[i][j]])
		}
		line(cells)
	}
	return b.String()
}
