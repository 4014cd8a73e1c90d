package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// Memory beside the agent.
//
// `kubectl exec ... -- /nftpolicy explain --live` runs in the agent's
// container, under the memory limit it shares with the agent. explain compiles
// two nodes' tables from the whole cluster: ~2 KiB per pod at its peak (100,000
// pods: 260-300 MB; docs/explain.md, "On a large cluster"). Past the limit the
// kernel does not just end explain: it reclaims the agent's memory and binary
// text over and over, and the agent stops following the cluster while explain
// crawls (on the bench, ten minutes of it before explain was killed by hand:
// the agent spent 277 s of CPU in its garbage collector, 170,000 major page
// faults). So explain reads the room its cgroup leaves when it starts, gives
// the Go runtime 90% of it as its soft limit, and refuses when the room is
// short of what the cluster's size needs: before it lists, from the API
// server's count of pods (countPods), and again once the cluster is loaded.

// explainBaseBytes and explainPodBytes model explain's peak: a fixed part (the
// binary, the other lists, the walk) and the compile's share of each pod.
const (
	explainBaseBytes = 48 << 20
	explainPodBytes  = 2 << 10
)

// explainNeeds is the memory explain is expected to need for a cluster of pods.
func explainNeeds(pods int) int64 { return explainBaseBytes + explainPodBytes*int64(pods) }

// cgroupRoom returns how many bytes the memory cgroup of this process may still
// take (its limit less its usage, the other processes of the container
// included) and its limit; ok is false without a limit or a memory cgroup.
// root is the file system root ("/"; a directory in tests).
func cgroupRoom(root string) (room, limit int64, ok bool) {
	self, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return 0, 0, false
	}
	for line := range strings.Lines(string(self)) {
		f := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(f) != 3 {
			continue
		}
		var limitFile, usageFile string
		var dir string
		switch {
		case f[0] == "0" && f[1] == "": // cgroup v2
			dir = filepath.Join(root, "sys/fs/cgroup", f[2])
			limitFile, usageFile = "memory.max", "memory.current"
		case strings.Contains(","+f[1]+",", ",memory,"): // cgroup v1
			mount := memoryMount(root)
			if mount == "" {
				continue
			}
			dir = filepath.Join(mount, f[2])
			limitFile, usageFile = "memory.limit_in_bytes", "memory.usage_in_bytes"
		default:
			continue
		}
		limit, lok := readBytes(filepath.Join(dir, limitFile))
		usage, uok := readBytes(filepath.Join(dir, usageFile))
		// v1 says "no limit" with a huge number (the largest page-aligned int64).
		if !lok || !uok || limit <= 0 || limit >= 1<<62 {
			continue
		}
		return max(limit-usage, 0), limit, true
	}
	return 0, 0, false
}

// memoryMount is where the cgroup v1 memory controller is mounted ("" when it
// is not), from /proc/self/mountinfo.
func memoryMount(root string) string {
	b, err := os.ReadFile(filepath.Join(root, "proc/self/mountinfo"))
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// ... mount-point ... - fstype source super-options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if ok && len(fields) >= 5 && len(tail) >= 3 && tail[0] == "cgroup" && strings.Contains(","+tail[2]+",", ",memory,") {
			return filepath.Join(root, fields[4])
		}
	}
	return ""
}

// readBytes reads a cgroup file holding one number ("max" is no number).
func readBytes(path string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n, err == nil
}

// cgroupRoot is the file system root readRoom reads (tests change it).
var cgroupRoot = "/"

// memoryRoom is the room this process's memory cgroup leaves it, read when
// explain starts (so that what explain itself then takes is not counted
// against it).
type memoryRoom struct {
	room, limit int64
	limited     bool
}

// readRoom reads the room of this process's memory cgroup, and in a limited
// one gives the Go runtime 90% of it as its soft limit, so that the garbage
// collector works harder before the cgroup would reclaim what shares it.
func readRoom() memoryRoom {
	room, limit, ok := cgroupRoom(cgroupRoot)
	if ok {
		debug.SetMemoryLimit(max(room/10*9, 1))
	}
	return memoryRoom{room, limit, ok}
}

// check fails when the room is short of what explaining a cluster of pods
// needs.
func (m memoryRoom) check(pods int) error {
	if m.limited && m.room < explainNeeds(pods) {
		return errShortOfMemory(pods, m.room, m.limit)
	}
	return nil
}

// errShortOfMemory says why explain will not compile a cluster of pods in room
// bytes of a cgroup limited to limit.
func errShortOfMemory(pods int, room, limit int64) error {
	return fmt.Errorf("not enough memory to explain beside what shares this container's limit: "+
		"%d pods need about %d MiB, and the limit (%d MiB) leaves %d MiB; "+
		"run explain outside the agent's container (without --live, from anywhere that reaches the API server) "+
		"or in a pod of its own on the node (docs/explain.md, \"On a large cluster\")",
		pods, explainNeeds(pods)>>20, limit>>20, room>>20)
}
