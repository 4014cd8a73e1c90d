package main

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

// fakeRoot writes files (path relative to the root: content) under a new root.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCgroupRoom(t *testing.T) {
	const v1mount = "30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
	for _, tc := range []struct {
		name        string
		files       map[string]string
		room, limit int64
		ok          bool
	}{
		{"v2 limited", map[string]string{"proc/self/cgroup": "0::/kubepods/pod1/ctr\n",
			"sys/fs/cgroup/kubepods/pod1/ctr/memory.max": "402653184\n", "sys/fs/cgroup/kubepods/pod1/ctr/memory.current": "209715200\n"},
			184 << 20, 384 << 20, true},
		{"v2 in a cgroup namespace", map[string]string{"proc/self/cgroup": "0::/\n",
			"sys/fs/cgroup/memory.max": "402653184\n", "sys/fs/cgroup/memory.current": "402653184\n"}, 0, 384 << 20, true},
		{"v2 over its limit", map[string]string{"proc/self/cgroup": "0::/\n",
			"sys/fs/cgroup/memory.max": "1000\n", "sys/fs/cgroup/memory.current": "2000\n"}, 0, 1000, true},
		{"v2 unlimited", map[string]string{"proc/self/cgroup": "0::/\n",
			"sys/fs/cgroup/memory.max": "max\n", "sys/fs/cgroup/memory.current": "2000\n"}, 0, 0, false},
		{"v1 limited", map[string]string{"proc/self/mountinfo": v1mount,
			"proc/self/cgroup": "5:devices:/x\n4:memory:/kubepods/pod1/ctr\n0::/\n",
			"sys/fs/cgroup/memory/kubepods/pod1/ctr/memory.limit_in_bytes": "402653184\n",
			"sys/fs/cgroup/memory/kubepods/pod1/ctr/memory.usage_in_bytes": "104857600\n"}, 284 << 20, 384 << 20, true},
		{"v1 unlimited", map[string]string{"proc/self/mountinfo": v1mount, "proc/self/cgroup": "4:memory:/\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n", "sys/fs/cgroup/memory/memory.usage_in_bytes": "1\n"}, 0, 0, false},
		{"no cgroup files", map[string]string{}, 0, 0, false},
	} {
		room, limit, ok := cgroupRoom(fakeRoot(t, tc.files))
		if room != tc.room || limit != tc.limit || ok != tc.ok {
			t.Errorf("%s: %d, %d, %v; want %d, %d, %v", tc.name, room, limit, ok, tc.room, tc.limit, tc.ok)
		}
	}
}

// TestRoomCheck: explain refuses a cluster its cgroup has no room for, saying
// so and where to run instead, and goes on where it has room or no limit.
func TestRoomCheck(t *testing.T) {
	defer func(r string) { cgroupRoot = r }(cgroupRoot)
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	cgroupRoot = fakeRoot(t, map[string]string{"proc/self/cgroup": "0::/\n",
		"sys/fs/cgroup/memory.max": "402653184\n", "sys/fs/cgroup/memory.current": "209715200\n"}) // 184 MiB free
	room := readRoom()
	if got := debug.SetMemoryLimit(-1); got != 184<<20/10*9 {
		t.Errorf("soft limit %d, want 90%% of the room", got)
	}
	if err := room.check(10000); err != nil {
		t.Errorf("10,000 pods in 184 MiB: %v", err)
	}
	err := room.check(100000)
	if err == nil || !strings.Contains(err.Error(), "100000 pods need about 243 MiB") || !strings.Contains(err.Error(), "leaves 184 MiB") ||
		!strings.Contains(err.Error(), "outside the agent's container") {
		t.Errorf("100,000 pods in 184 MiB: %v", err)
	}
	cgroupRoot = fakeRoot(t, map[string]string{"proc/self/cgroup": "0::/\n",
		"sys/fs/cgroup/memory.max": "max\n", "sys/fs/cgroup/memory.current": "1\n"})
	if err := readRoom().check(1000000); err != nil {
		t.Errorf("no limit: %v", err)
	}
}
