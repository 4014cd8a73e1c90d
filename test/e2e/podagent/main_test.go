package main

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

func TestParsePorts(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{in: "80,81,", want: []int{80, 81}},
		{in: "81, 80,3306,80", want: []int{80, 81, 3306}},
		{in: ",", want: nil},
		{in: "0", wantErr: true},
		{in: "http", wantErr: true},
		{in: "65536", wantErr: true},
	} {
		got, err := parsePorts(tc.in)
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("parsePorts(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestAgent runs the built binary in a private network namespace and probes
// its own servers over loopback, including ports an nft rule drops on input.
func TestAgent(t *testing.T) {
	nfttest.RequireRoot(t)
	bin := filepath.Join(t.TempDir(), "podagent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ns := nfttest.NewNetNS(t, "podagent")
	if _, err := ns.NFT(`table inet podagent_test {
	chain in {
		type filter hook input priority 0;
		tcp dport 82 drop
		udp dport 82 drop
	}
}
`, "-f", "-"); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, "-extra-ports", "82,3306")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close() // the agent exits at the end of its input
		if err := cmd.Wait(); err != nil {
			t.Errorf("podagent exited: %v", err)
		}
	})
	lines := bufio.NewScanner(stdout)
	var r ready
	if !lines.Scan() || json.Unmarshal(lines.Bytes(), &r) != nil || !r.Ready || !slices.Equal(r.Ports, []int{80, 81, 82, 3306}) {
		t.Fatalf("first line = %q, want ready with ports 80,81,82,3306", lines.Text())
	}

	type want struct {
		ok  bool
		err string
	}
	cases := map[uint64]struct {
		req  request
		want want
	}{}
	id := uint64(0)
	for _, addr := range []string{"127.0.0.1", "::1"} {
		for _, proto := range []string{"tcp", "udp"} {
			add := func(port int, w want) {
				id++
				cases[id] = struct {
					req  request
					want want
				}{request{ID: id, Proto: proto, Addr: addr, Port: port, TimeoutMs: 300}, w}
			}
			add(80, want{ok: true})
			add(81, want{ok: true})
			add(3306, want{ok: true})
			add(82, want{err: "timeout"})
			add(83, want{err: "refused"})
		}
	}
	enc := json.NewEncoder(stdin)
	for _, c := range cases {
		if err := enc.Encode(c.req); err != nil {
			t.Fatal(err)
		}
	}
	for range len(cases) {
		if !lines.Scan() {
			t.Fatalf("agent stopped answering: %v", lines.Err())
		}
		var resp response
		if err := json.Unmarshal(lines.Bytes(), &resp); err != nil {
			t.Fatalf("bad response %q: %v", lines.Text(), err)
		}
		c, ok := cases[resp.ID]
		if !ok {
			t.Fatalf("response for unknown id: %q", lines.Text())
		}
		if got := (want{resp.OK, resp.Err}); got != c.want {
			t.Errorf("%s %s port %d: got %+v, want %+v", c.req.Proto, c.req.Addr, c.req.Port, got, c.want)
		}
		delete(cases, resp.ID)
	}
	if len(cases) != 0 {
		t.Errorf("unanswered: %v", cases)
	}
}
