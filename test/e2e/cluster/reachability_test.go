package cluster

import (
	"net/netip"
	"strings"
	"testing"
)

// endpoints returns x/a, x/b, y/a, y/b and a node, without any network.
func endpoints() []Endpoint {
	return []Endpoint{
		&Pod{Namespace: "x", Name: "a"},
		&Pod{Namespace: "x", Name: "b"},
		&Pod{Namespace: "y", Name: "a"},
		&Pod{Namespace: "y", Name: "b"},
		&Node{Name: "node-0"},
	}
}

func TestReachabilityExpectations(t *testing.T) {
	eps := endpoints()
	xa, xb, ya, yb, node := eps[0], eps[1], eps[2], eps[3], eps[4]

	r := NewReachability(eps, true)
	r.ExpectPeer(Peer{}, Peer{Namespace: "y"}, false)        // nothing reaches namespace y
	r.ExpectPeer(Peer{Namespace: "y"}, Peer{Pod: "a"}, true) // except y/* -> */a
	r.ExpectAllEgress(xb, false)
	r.ExpectAllIngress(node, false)
	r.Expect(node, xb, false)
	r.AllowLoopback()
	want := `-      x/a    x/b    y/a    y/b    node-0
x/a    .      .      X      X      X
x/b    X      .      X      X      X
y/a    .      .      .      X      X
y/b    .      .      .      .      X
node-0 .      X      X      X      .
`
	if got := r.String(); got != want {
		t.Errorf("table:\n%s\nwant:\n%s", got, want)
	}
	if !r.Connected(ya, xa) || r.Connected(xa, yb) {
		t.Errorf("Connected disagrees with the table:\n%s", r)
	}

	c := r.Clone()
	c.Expect(xa, ya, true)
	if r.Connected(xa, ya) {
		t.Error("Clone shares cells with the original")
	}
}

func TestReachabilityDiff(t *testing.T) {
	eps := endpoints()
	want := NewReachability(eps, true)
	got := NewReachability(eps, true)
	if d := want.Diff(got); d != "" {
		t.Errorf("equal tables differ:\n%s", d)
	}
	got.Expect(eps[1], eps[2], false)
	got.detail[1][2] = "timeout"
	ms := want.Mismatches(got)
	if len(ms) != 1 || ms[0].String() != "x/b -> y/a: want allowed, got denied (timeout)" {
		t.Errorf("mismatches = %v", ms)
	}
	d := want.Diff(got)
	for _, s := range []string{"1 of 25 wrong", "expected:", "observed:", "x/b -> y/a: want allowed, got denied (timeout)"} {
		if !strings.Contains(d, s) {
			t.Errorf("Diff lacks %q:\n%s", s, d)
		}
	}
	if d := want.Diff(NewReachability(eps[:2], true)); !strings.Contains(d, "different endpoints") {
		t.Errorf("Diff of tables over different endpoints:\n%s", d)
	}

	res := &MatrixResult{Tables: map[Case]*Reachability{}}
	for _, k := range []Case{{TCP, V4, 80}, {TCP, V4, 81}} {
		res.Cases = append(res.Cases, k)
		res.Tables[k] = want.Clone()
	}
	res.Tables[Case{TCP, V4, 81}] = got
	if d := res.Diff(want); !strings.HasPrefix(d, "=== tcp/81/v4\n1 of 25 wrong") || strings.Contains(d, "tcp/80/v4") {
		t.Errorf("MatrixResult.Diff:\n%s", d)
	}
	if d := res.DiffEach(func(k Case) *Reachability {
		if k.Port == 81 {
			return got
		}
		return want
	}); d != "" {
		t.Errorf("DiffEach with per-port expectations:\n%s", d)
	}
}

func TestReachabilityUnknownEndpoint(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Expect on an endpoint the table lacks did not panic")
		}
	}()
	eps := endpoints()
	NewReachability(eps[:2], true).Expect(eps[0], eps[3], false)
}

func TestAddressPlan(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		n      int
		want   string
	}{
		{"172.31.255.0/24", 1, "172.31.255.1"},
		{"10.244.3.0/24", 254, "10.244.3.254"},
		{"fd00:ffff::/64", 2, "fd00:ffff::2"},
		{"fd00:10:244:1::/64", 300, "fd00:10:244:1::12c"},
		{"10.0.0.0/8", 256, "10.0.1.0"},
	} {
		if got := nthAddr(netip.MustParsePrefix(tc.prefix), tc.n); got.String() != tc.want {
			t.Errorf("nthAddr(%s, %d) = %s, want %s", tc.prefix, tc.n, got, tc.want)
		}
	}
}

func TestStaleNames(t *testing.T) {
	for name, want := range map[string]bool{
		"np-123-ab12-n0":            true,
		"np-123-ab12-p14":           true,
		"np-123-podagent-987654":    true,
		"npx-123-ab12-n0":           false, // another prefix
		"np-abc-ab12-n0":            false,
		"scratch-np3":               false,
		"np-123-AB12-n0":            false,
		"np-123-ab12":               false,
		"np-123-podagentx-1":        false,
		"nftpolicy-podagent-123456": false,
	} {
		m := staleRE.FindStringSubmatch(name)
		if got := m != nil && m[1] == "np"; got != want {
			t.Errorf("%s: stale candidate of prefix np = %v, want %v", name, got, want)
		}
	}
}
