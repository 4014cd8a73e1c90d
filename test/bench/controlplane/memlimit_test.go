package controlplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/bench/benchproc"
)

// Under a memory limit. The DaemonSet gives the agent a memory limit
// (config/agent/daemonset.yaml) and passes it as MEMORY_LIMIT, of which the
// agent gives the Go runtime 80% as its soft limit. A node enforces the limit
// with the container's memory cgroup: past it, the kernel kills the agent. The
// rest of this benchmark measures the agent without a limit;
// measureMemoryLimits runs it as a kubelet would, in a memory cgroup of its
// own, at the shipped limit and at smaller ones, so that the margin at each
// cluster size is a figure and not a guess.

// shippedMemoryLimit is limits.memory of the agent container in
// config/agent/daemonset.yaml.
func shippedMemoryLimit() (resource.Quantity, error) {
	path := filepath.Join("..", "..", "..", "config", "agent", "daemonset.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return resource.Quantity{}, err
	}
	var ds appsv1.DaemonSet
	if err := yaml.Unmarshal(b, &ds); err != nil {
		return resource.Quantity{}, fmt.Errorf("%s: %w", path, err)
	}
	for _, c := range ds.Spec.Template.Spec.Containers {
		if q, ok := c.Resources.Limits["memory"]; ok && c.Name == "agent" {
			return q, nil
		}
	}
	return resource.Quantity{}, fmt.Errorf("%s: no memory limit on the agent container", path)
}

// memcg is a cgroup v1 memory group for one agent, a child of the test's own.
type memcg struct{ dir string }

// newMemcg creates the group name with limit bytes (none if 0).
func newMemcg(name string, limit int64) (*memcg, error) {
	root, err := memcgMount()
	if err != nil {
		return nil, err
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	for line := range strings.Lines(string(self)) {
		f := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(f) != 3 || !slices.Contains(strings.Split(f[1], ","), "memory") {
			continue
		}
		m := &memcg{dir: filepath.Join(root, f[2], name)}
		_ = os.Remove(m.dir) // a group left by a killed run
		if err := os.Mkdir(m.dir, 0o755); err != nil {
			return nil, err
		}
		if limit > 0 {
			if err := os.WriteFile(filepath.Join(m.dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(limit, 10)), 0); err != nil {
				m.close()
				return nil, err
			}
		}
		return m, nil
	}
	return nil, errors.New("this process is in no cgroup v1 memory group (/proc/self/cgroup)")
}

// memcgMount is where the cgroup v1 memory controller is mounted.
func memcgMount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mount-point ... - fstype source super-options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if ok && len(fields) >= 5 && len(tail) >= 3 && tail[0] == "cgroup" && slices.Contains(strings.Split(tail[2], ","), "memory") {
			return fields[4], nil
		}
	}
	return "", errors.New("no cgroup v1 memory controller is mounted (cgroup v2 only is not supported here)")
}

// start starts bin in the group: a shell joins it, then becomes bin, so that
// all of bin's memory is charged to the group from its first page.
func (m *memcg) start(logPath, bin string, args ...string) (*process, error) {
	return startProcess(logPath, "/bin/sh", append([]string{"-c", `echo $$ > "$0" && exec "$@"`, filepath.Join(m.dir, "tasks"), bin}, args...)...)
}

// bytes reads one of the group's counters.
func (m *memcg) bytes(file string) int64 {
	b, err := os.ReadFile(filepath.Join(m.dir, file))
	if err != nil {
		return -1
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// oomKills is how many processes the kernel killed for the group's limit.
func (m *memcg) oomKills() int64 {
	b, err := os.ReadFile(filepath.Join(m.dir, "memory.oom_control"))
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "oom_kill "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

// close removes the group (its processes must have exited).
func (m *memcg) close() { _ = os.Remove(m.dir) }

// measureMemoryLimits starts the agent in a memory cgroup of its own, once
// without a limit and then at the DaemonSet's limit, 3/4, 1/2 and 1/4 of it,
// each time with --memory-limit as MEMORY_LIMIT would give it and a 5 s
// full-sync period. Each agent starts, makes two periodic full syncs, and
// syncs a churn of 1,000 pod changes (churn). For each limit it reports
// whether the agent kept up (memlimit_<L>_kept_up: ready within 2 minutes, the
// two full syncs within one, alive after the churn), its start to ready, the
// group's peak usage (page cache included, as the kernel counts it against the
// limit), the kernel's OOM kills, how often a charge met the limit, and when it
// kept up its own peak RSS, garbage collections and CPU; then the peak at the
// shipped limit as a share of it, and the smallest limit the agent kept up
// under (0: none). The churn is made whether or not the agent keeps up.
func measureMemoryLimits(ctx context.Context, agentBin string, agentArgs func(...string) []string, dir, readyURL, metricsURL string,
	churn func(round int) error, report func(string, string, ...any), logf func(string, ...any)) error {
	shipped, err := shippedMemoryLimit()
	if err != nil {
		return err
	}
	report("memlimit_shipped_mib", "%d", shipped.Value()>>20)
	limits := []int64{0, shipped.Value(), shipped.Value() / 4 * 3, shipped.Value() / 2, shipped.Value() / 4}
	smallest := int64(-1) // the smallest limit the agent kept up under
	for round, limit := range limits {
		name := "none"
		if limit > 0 {
			name = fmt.Sprintf("%dmi", limit>>20)
		}
		cg, err := newMemcg("nftpolicy-bench-"+name, limit)
		if err != nil {
			report("memlimit_skipped", "%q", err.Error())
			return nil
		}
		keptUp, err := measureUnderLimit(ctx, cg, limit, name, agentBin, agentArgs, dir, readyURL, metricsURL, func() error { return churn(round) },
			report, logf)
		if err == nil && limit == shipped.Value() {
			report("memlimit_shipped_peak_ratio", "%.2f", float64(cg.bytes("memory.max_usage_in_bytes"))/float64(limit))
		}
		cg.close()
		if err != nil {
			return err
		}
		if keptUp && limit > 0 {
			smallest = limit
		}
	}
	report("memlimit_smallest_kept_up_mib", "%d", max(smallest, 0)>>20)
	return nil
}

// measureUnderLimit is one agent of measureMemoryLimits, in cg (limit bytes, 0
// for none; name is the limit in the lines' names): it reports the agent's
// lines and whether it kept up.
func measureUnderLimit(ctx context.Context, cg *memcg, limit int64, name, agentBin string, agentArgs func(...string) []string,
	dir, readyURL, metricsURL string, churn func() error, report func(string, string, ...any), logf func(string, ...any)) (bool, error) {
	args := []string{"--full-sync-period=5s"}
	if limit > 0 {
		args = append(args, "--memory-limit", strconv.FormatInt(limit, 10))
	}
	// A fresh copy of the binary, not in the page cache: the pages of its text
	// the agent reads are charged too, as a container's first start reads its
	// image.
	bin := filepath.Join(dir, "nftpolicy-memlimit-"+name)
	if err := uncachedCopy(agentBin, bin); err != nil {
		return false, err
	}
	a, err := cg.start(filepath.Join(dir, "agent-memlimit-"+name+".log"), bin, agentArgs(args...)...)
	if err != nil {
		return false, err
	}
	defer a.stop()
	t0 := time.Now()
	keptUp := true
	if err := waitHTTP(ctx, readyURL, a, 2*time.Minute); err != nil {
		logf("memlimit %s: not ready: %v", name, err)
		keptUp = false
	} else {
		report("memlimit_"+name+"_ready_ms", "%.0f", ms(time.Since(t0)))
		if _, err := waitFullSyncs(ctx, metricsURL, a, 3, time.Minute); err != nil { // the first and two more
			logf("memlimit %s: %v", name, err)
			keptUp = false
		}
	}
	if err := churn(); err != nil {
		return false, fmt.Errorf("churn: %w", err)
	}
	time.Sleep(3 * time.Second) // the last syncs
	var gcs, faults, gcCPU float64 = -1, -1, -1
	if m, err := scrape(metricsURL); err == nil {
		gcs = m["go_gc_duration_seconds_count"]
		faults, gcCPU = m["nftpolicy_process_major_page_faults_total"], m["nftpolicy_gc_cpu_seconds_total"]
	}
	pid := a.cmd.Process.Pid
	cpu := benchproc.CPUSeconds(pid)
	if faults >= 0 {
		// The agent's own signals of a limit too small (controllers/pressure.go),
		// whether it kept up or not.
		report("memlimit_"+name+"_major_faults", "%.0f", faults)
		if cpu > 0 {
			report("memlimit_"+name+"_gc_cpu_share", "%.2f", gcCPU/cpu)
		}
	}
	_, hwm := procMemory(pid)
	select {
	case <-a.exited:
		if keptUp {
			logf("memlimit %s: the agent exited in the churn", name)
		}
		keptUp = false
	default:
	}
	report("memlimit_"+name+"_kept_up", "%v", keptUp)
	report("memlimit_"+name+"_peak_mib", "%.1f", float64(cg.bytes("memory.max_usage_in_bytes"))/(1<<20))
	report("memlimit_"+name+"_oom_kills", "%d", cg.oomKills())
	report("memlimit_"+name+"_limit_hits", "%d", cg.bytes("memory.failcnt"))
	if keptUp {
		report("memlimit_"+name+"_peak_rss_mib", "%.1f", hwm)
		report("memlimit_"+name+"_gc_cycles", "%.0f", gcs)
		report("memlimit_"+name+"_cpu_s", "%.2f", cpu)
	}
	return keptUp, nil
}

// uncachedCopy copies the file src to dst (executable), and drops dst's pages
// from the page cache.
func uncachedCopy(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync() // clean pages can be dropped
	}
	if err == nil {
		err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
	}
	return errors.Join(err, f.Close())
}

// TestMemcgCountsOOMKills: a process that joins a memcg group the way
// measureMemoryLimits starts the agent, and then grows to 64 MiB, is charged
// from its first page and killed at the group's 16 MiB limit, and the group
// says so.
func TestMemcgCountsOOMKills(t *testing.T) {
	nfttest.RequireRoot(t)
	const limit = 16 << 20
	cg, err := newMemcg(fmt.Sprintf("nftpolicy-test-%d", os.Getpid()), limit)
	if err != nil {
		t.Skipf("no memory cgroup to test in: %v", err)
	}
	defer cg.close()
	// tail keeps the whole of a line without end in memory: 64 MiB of it,
	// bounded should the group not hold it.
	p, err := cg.start(filepath.Join(t.TempDir(), "tail.log"), "/bin/sh", "-c", "head -c 67108864 /dev/zero | tail")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.stop()
		t.Fatal("tail was not done in 30 s")
	}
	if n := cg.oomKills(); n != 1 {
		t.Errorf("oom kills: %d, want 1", n)
	}
	if peak := cg.bytes("memory.max_usage_in_bytes"); peak < limit*3/4 || peak > limit {
		t.Errorf("peak usage %d bytes, want near the limit %d", peak, limit)
	}
	if hits := cg.bytes("memory.failcnt"); hits < 1 {
		t.Errorf("limit hits: %d, want some", hits)
	}
}
