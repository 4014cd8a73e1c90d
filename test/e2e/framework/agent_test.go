package framework

import (
	"net"
	"strconv"
	"testing"
)

// The agents' health and metrics ports: never one twice, never in the
// ephemeral range, each free when handed out.
func TestFreePort(t *testing.T) {
	high := ephemeralLow()
	seen := map[int]bool{}
	for range 300 {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if high > 11000 && p >= high {
			t.Fatalf("port %d is in the ephemeral range (from %d)", p, high)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		_ = l.Close()
	}
}
