package controllers

import (
	"os"
	"runtime"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMajorFaultsOf(t *testing.T) {
	for _, tc := range []struct {
		stat string
		want uint64
		ok   bool
	}{
		{"4242 (nftpolicy) S 1 4242 4242 0 -1 4194560 1234 0 56 0 10 5 0 0 20 0 12 0 100 0 0", 56, true},
		// A command with spaces and parentheses: fields count from the last ')'.
		{"7 (a) b) (c) R 1 7 7 0 -1 0 9 0 3 0 1 1 0 0 20 0 1 0 5 0 0", 3, true},
		{"7 (short) R 1 2", 0, false},
		{"no parenthesis", 0, false},
	} {
		got, ok := majorFaultsOf([]byte(tc.stat))
		if got != tc.want || ok != tc.ok {
			t.Errorf("majorFaultsOf(%q) = %d, %v; want %d, %v", tc.stat, got, ok, tc.want, tc.ok)
		}
	}
	// This process's own: readable, and what the kernel says.
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip("no /proc/self/stat")
	}
	if _, ok := majorFaultsOf(b); !ok {
		t.Errorf("cannot read majflt from %q", b)
	}
}

// TestGCCPU: the counter follows the runtime's estimate, which grows with
// collections.
func TestGCCPU(t *testing.T) {
	before := testutil.ToFloat64(gcCPU)
	var keep [][]byte
	for range 200 {
		keep = append(keep, make([]byte, 1<<16))
		runtime.GC()
	}
	_ = keep
	if after := testutil.ToFloat64(gcCPU); after <= before {
		t.Errorf("nftpolicy_gc_cpu_seconds_total %v after 200 collections, %v before", after, before)
	}
}
