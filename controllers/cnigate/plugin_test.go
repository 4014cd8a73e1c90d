package cnigate

import (
	"bytes"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A ptp plugin's result, as libcni injects it into the next plugin's configuration.
const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"veth1","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1","interface":1}]}`

func runPlugin(t *testing.T, cmd, stdin string, node Node) (int, map[string]any, string) {
	t.Helper()
	env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
		"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc"}
	var out bytes.Buffer
	code := Run(func(k string) string { return env[k] }, strings.NewReader(stdin), &out, node)
	var res map[string]any
	if out.Len() > 0 {
		if err := json.Unmarshal(out.Bytes(), &res); err != nil {
			t.Fatalf("%s: stdout is not JSON: %v: %s", cmd, err, out.String())
		}
	}
	return code, res, out.String()
}

func conf(version, table string, prev string) string {
	c := `{"cniVersion":"` + version + `","name":"kindnet","type":"nftpolicy"`
	if table != "" {
		c += `,"table":"` + table + `"`
	}
	if prev != "" {
		c += `,"prevResult":` + prev
	}
	return c + "}"
}

// kernel is a node's tables, each a list of its sets, as the plugin asks them.
type kernel struct {
	mu     sync.Mutex
	tables map[string][]string
	asked  []string // table/set, or table for TableExists
}

func (k *kernel) node(boot string) Node {
	return Node{
		SetExists: func(table, set string) (bool, error) {
			k.mu.Lock()
			defer k.mu.Unlock()
			k.asked = append(k.asked, table+"/"+set)
			return slices.Contains(k.tables[table], set), nil
		},
		TableExists: func(table string) (bool, error) {
			k.mu.Lock()
			defer k.mu.Unlock()
			k.asked = append(k.asked, table)
			_, ok := k.tables[table]
			return ok, nil
		},
		BootID: func() (string, error) { return boot, nil },
	}
}

func (k *kernel) set(table string, sets ...string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.tables[table] = sets
}

func TestPluginAdd(t *testing.T) {
	k := &kernel{tables: map[string][]string{"nftpolicy": {"egress-v4", "synced-boot-boot-2"}}}
	node := k.node("boot-2")
	var log bytes.Buffer
	node.Log = &log

	// The table holds this boot's set: the previous result passes, in the
	// configuration's version, after one question.
	code, res, out := runPlugin(t, "ADD", conf("0.4.0", "", prevResult), node)
	if code != 0 {
		t.Fatalf("ADD with the table: exit %d, %s", code, out)
	}
	if res["cniVersion"] != "0.4.0" || res["ips"] == nil || res["interfaces"] == nil {
		t.Errorf("ADD result %s", out)
	}
	if strings.Join(k.asked, ",") != "nftpolicy/synced-boot-boot-2" {
		t.Errorf("asked for %v, want this boot's set of the default table", k.asked)
	}
	if log.Len() > 0 {
		t.Errorf("a pod that passed at once logged %q", log.String())
	}

	// A table of the last boot (restored from a saved ruleset), or of an
	// agent without the gate: try again later, saying so.
	for _, sets := range [][]string{{"synced-boot-boot-1"}, {}} {
		k.set("nftpolicy", sets...)
		code, res, out = runPlugin(t, "ADD", conf("1.0.0", "", prevResult), node)
		if code == 0 || res["code"] != float64(codeTryAgainLater) || !strings.Contains(out, "since this node started") || !strings.Contains(out, "config/cleanup") {
			t.Errorf("ADD with sets %q: exit %d, %s", sets, code, out)
		}
	}
	// Each of those is one line of the runtime's log, naming the pod.
	want := "nftpolicy-cni-gate: pod team-a/web-0 (sandbox abc) waited 0s for table inet nftpolicy to be in force in this boot: try again later: the agent has not put"
	if lines := strings.Split(strings.TrimSpace(log.String()), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], want) {
		t.Errorf("log %q, want two lines starting %q", log.String(), want)
	}
	// Another table named, and missing: try again later.
	code, res, out = runPlugin(t, "ADD", conf("1.0.0", "other", prevResult), node)
	if code == 0 || res["code"] != float64(codeTryAgainLater) || !strings.Contains(out, "table inet other is not in force") {
		t.Errorf("ADD without the table: exit %d, %s", code, out)
	}
	// The kernel cannot be asked, or the boot id read: also try again later, with the reason.
	broken := node
	broken.SetExists = func(string, string) (bool, error) { return false, errors.New("netlink: permission denied") }
	code, res, out = runPlugin(t, "ADD", conf("1.0.0", "", prevResult), broken)
	if code == 0 || res["code"] != float64(codeTryAgainLater) || !strings.Contains(out, "permission denied") {
		t.Errorf("ADD when the table check fails: exit %d, %s", code, out)
	}
	broken = node
	broken.BootID = func() (string, error) { return "", errors.New("no /proc") }
	code, res, out = runPlugin(t, "ADD", conf("1.0.0", "", prevResult), broken)
	if code == 0 || res["code"] != float64(codeTryAgainLater) || !strings.Contains(out, "no /proc") {
		t.Errorf("ADD when the boot id cannot be read: exit %d, %s", code, out)
	}
	// First in the chain: a configuration error, whatever the table.
	code, res, out = runPlugin(t, "ADD", conf("1.0.0", "", ""), node)
	if code == 0 || res["code"] != float64(codeInvalidConfig) {
		t.Errorf("ADD without prevResult: exit %d, %s", code, out)
	}
	// A version before chaining, or none (libcni's 0.1.0): there is no
	// previous result to pass on (the installer puts no entry in such a list).
	for _, v := range []string{"0.2.0", ""} {
		code, res, out = runPlugin(t, "ADD", conf(v, "", prevResult), node)
		if code == 0 || res["code"] != float64(codeIncompatibleVersion) {
			t.Errorf("ADD %q: exit %d, %s", v, code, out)
		}
	}
	code, res, out = runPlugin(t, "ADD", "{", node)
	if code == 0 || res["code"] != float64(codeDecodingFailure) {
		t.Errorf("ADD of bad JSON: exit %d, %s", code, out)
	}
}

// An ADD waits for this boot's set: it passes within a poll of the set's
// coming (a failed question meanwhile is asked again), and fails once the wait
// is over without it.
func TestPluginAddWaits(t *testing.T) {
	k := &kernel{tables: map[string][]string{}}
	node := k.node("boot-2")
	node.Wait, node.Poll = 5*time.Second, 10*time.Millisecond
	var log bytes.Buffer
	node.Log = &log
	var calls atomic.Int32
	ask := node.SetExists
	node.SetExists = func(table, set string) (bool, error) {
		if calls.Add(1) == 3 {
			return false, errors.New("netlink: interrupted")
		}
		return ask(table, set)
	}
	var opened time.Time
	go func() {
		time.Sleep(200 * time.Millisecond)
		k.set("nftpolicy", "synced-boot-boot-1") // an earlier boot's first
		time.Sleep(100 * time.Millisecond)
		k.mu.Lock()
		k.tables["nftpolicy"], opened = []string{"synced-boot-boot-2"}, time.Now()
		k.mu.Unlock()
	}()
	start := time.Now()
	code, _, out := runPlugin(t, "ADD", conf("1.0.0", "", prevResult), node)
	k.mu.Lock()
	defer k.mu.Unlock()
	if code != 0 {
		t.Fatalf("ADD that waited: exit %d, %s", code, out)
	}
	if after := time.Since(opened); opened.IsZero() || after > time.Second {
		t.Errorf("ADD returned %v after the set came (%v in all), want within a poll", after, time.Since(start))
	}
	if n := calls.Load(); n < 10 {
		t.Errorf("asked %d times in 300ms, polling every 10ms", n)
	}
	if l := log.String(); !regexp.MustCompile(`^nftpolicy-cni-gate: pod team-a/web-0 \(sandbox abc\) waited [1-9][0-9.]*m?s for table inet nftpolicy to be in force in this boot: passed\n$`).MatchString(l) {
		t.Errorf("log %q, want the pod's wait of ~300ms, passed", l)
	}

	node.Wait = 150 * time.Millisecond
	k.tables = map[string][]string{}
	k.mu.Unlock()
	start = time.Now()
	code, res, out := runPlugin(t, "ADD", conf("1.0.0", "", prevResult), node)
	k.mu.Lock()
	if waited := time.Since(start); code == 0 || res["code"] != float64(codeTryAgainLater) || waited < 150*time.Millisecond || waited > 2*time.Second {
		t.Errorf("ADD without the table: exit %d after %v, %s", code, waited, out)
	}
}

// The boot id is the kernel's, and the same on every read.
func TestBootID(t *testing.T) {
	a, err := BootID()
	if err != nil {
		t.Skipf("no %s here: %v", bootIDFile, err)
	}
	b, _ := BootID()
	if a != b || len(a) != 36 {
		t.Errorf("BootID %q then %q", a, b)
	}
}

func TestPluginOtherCommands(t *testing.T) {
	never := Node{
		SetExists:   func(string, string) (bool, error) { t.Error("the set was asked for"); return false, nil },
		TableExists: func(string) (bool, error) { t.Error("the table was asked for"); return false, nil },
		BootID:      func() (string, error) { t.Error("the boot id was asked for"); return "", nil },
	}
	for _, cmd := range []string{"DEL", "CHECK", "GC", "STATUS"} {
		for _, stdin := range []string{conf("1.1.0", "", prevResult), "{not JSON", ""} {
			if code, _, out := runPlugin(t, cmd, stdin, never); code != 0 || out != "" {
				t.Errorf("%s of %q: exit %d, %q", cmd, stdin, code, out)
			}
		}
	}
	// VERSION echoes the input's cniVersion (the specification, "VERSION
	// Success"); without one, it names the latest.
	for in, want := range map[string]string{`{"cniVersion":"1.0.0"}`: "1.0.0", `{"cniVersion":"0.4.0"}`: "0.4.0", `{}`: "1.1.0", ``: "1.1.0"} {
		code, res, out := runPlugin(t, "VERSION", in, never)
		if code != 0 || res["cniVersion"] != want || !strings.Contains(out, `"0.3.1"`) {
			t.Errorf("VERSION of %q: exit %d, %s; want cniVersion %s", in, code, out, want)
		}
	}
	if code, res, _ := runPlugin(t, "FROB", conf("1.0.0", "", ""), never); code == 0 || res["code"] != float64(codeInvalidEnvironment) {
		t.Errorf("unknown command: exit %d", code)
	}
}
