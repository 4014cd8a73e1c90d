package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// The node's network configuration, as a routed CNI writes it.
const nodeConflist = `{
  "cniVersion": "1.0.0",
  "name": "podnet",
  "plugins": [{"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}}]
}`

// TestCNIGate: the gate's plugin, installed by the agent's Installer and run as
// a container runtime runs a chained plugin (in the node's network
// namespace, CNI_* in the environment, the plugin's configuration with the
// previous result on stdin), holds a pod's network while the table does not
// hold this boot's set (no table, an earlier boot's table), passes the
// previous result on as soon as it does (a waiting ADD within a poll), and
// again after the table is gone; cleanup takes the gate away before the table.
func TestCNIGate(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no kernel")
	}
	nfttest.RequireRoot(t)
	ns := nfttest.NewNetNS(t, "np-cnigate")
	confDir, binDir := t.TempDir(), t.TempDir()
	conflist := filepath.Join(confDir, "10-podnet.conflist")
	if err := os.WriteFile(conflist, []byte(nodeConflist), 0o644); err != nil {
		t.Fatal(err)
	}
	in := &cnigate.Installer{ConfDir: confDir, BinDir: binDir, Table: "nftpolicy", Binary: filepath.Join(filepath.Dir(bin), gatePluginName)}
	if _, err := in.Ensure(); err != nil {
		t.Fatal(err)
	}

	// What the runtime hands the gate: its entry, with the list's name and
	// version, and the ptp plugin's result.
	runtimeConfig := func() []byte {
		t.Helper()
		var list struct {
			CNIVersion string            `json:"cniVersion"`
			Name       string            `json:"name"`
			Plugins    []json.RawMessage `json:"plugins"`
		}
		data, _ := os.ReadFile(conflist)
		if err := json.Unmarshal(data, &list); err != nil || len(list.Plugins) != 2 {
			t.Fatalf("configuration after install: %v\n%s", err, data)
		}
		var entry map[string]any
		if err := json.Unmarshal(list.Plugins[1], &entry); err != nil {
			t.Fatal(err)
		}
		if entry["type"] != cnigate.PluginType {
			t.Fatalf("last plugin %v", entry)
		}
		entry["cniVersion"], entry["name"] = list.CNIVersion, list.Name
		entry["prevResult"] = json.RawMessage(`{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-1"}],"ips":[{"address":"10.244.1.7/24","interface":0}]}`)
		b, _ := json.Marshal(entry)
		return b
	}
	stdin := runtimeConfig()
	// plugin runs the gate's cmd, waiting up to wait for the table; stderr
	// is what it wrote there (the runtime's log).
	var stderr string
	plugin := func(cmd string, wait time.Duration) (int, map[string]any) {
		t.Helper()
		c := exec.Command("nsenter", "--net="+ns.Path(), filepath.Join(binDir, cnigate.PluginType))
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=c1", "CNI_NETNS=/var/run/netns/cni-1", "CNI_IFNAME=eth0", "CNI_PATH=" + binDir,
			"CNI_ARGS=K8S_POD_NAMESPACE=x;K8S_POD_NAME=a", "NFTPOLICY_CNI_GATE_WAIT=" + wait.String()}
		c.Stdin = bytes.NewReader(stdin)
		var out, errOut bytes.Buffer
		c.Stdout, c.Stderr = &out, &errOut
		code := exitCode(t, c.Run())
		stderr = errOut.String()
		var res map[string]any
		if out.Len() > 0 {
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("%s: stdout is not JSON: %s", cmd, out.String())
			}
		}
		return code, res
	}
	boot, err := cnigate.BootID()
	if err != nil {
		t.Fatal(err)
	}

	// No table: try again later once the wait is over, and the pod's teardown
	// is not in the way.
	start := time.Now()
	if code, res := plugin("ADD", 300*time.Millisecond); code == 0 || res["code"] != float64(11) || !strings.Contains(res["msg"].(string), "is not in force") {
		t.Fatalf("ADD before the table: exit %d, %v", code, res)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond || waited > 5*time.Second {
		t.Errorf("ADD before the table returned after %v, want its wait (300ms)", waited)
	}
	if !strings.HasPrefix(stderr, "nftpolicy-cni-gate: pod x/a (sandbox c1) waited 3") || !strings.Contains(stderr, ": try again later: table inet nftpolicy is not in force") {
		t.Errorf("ADD before the table: stderr %q", stderr)
	}
	if code, _ := plugin("DEL", time.Minute); code != 0 {
		t.Errorf("DEL before the table: exit %d", code)
	}

	// A table without this boot's set (one restored at boot from a ruleset
	// saved in an earlier one, or an agent's without the gate): held.
	earlier, _ := compile.Compile(compile.Snapshot{NodeName: "node-1"}, compile.Options{SyncedBoot: "00000000-0000-0000-0000-000000000000"})
	a := applyIn(t, ns.Path(), earlier)
	if code, res := plugin("ADD", 0); code == 0 || res["code"] != float64(11) || !strings.Contains(res["msg"].(string), "since this node started") {
		t.Fatalf("ADD with an earlier boot's table: exit %d, %v", code, res)
	}

	// The agent's first table (an empty cluster's) comes while a pod waits:
	// the pod's ADD passes the previous result on within a poll of it.
	rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-1"}, compile.Options{SyncedBoot: boot})
	if rs.FindSet(nft.SyncedBootSet(boot)) == nil {
		t.Fatalf("no set %s in the compile", nft.SyncedBootSet(boot))
	}
	type result struct {
		code int
		res  map[string]any
		at   time.Time
	}
	done := make(chan result, 1)
	go func() {
		code, res := plugin("ADD", 20*time.Second)
		done <- result{code, res, time.Now()}
	}()
	time.Sleep(500 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("ADD returned before the table was in force: exit %d, %v", r.code, r.res)
	default:
	}
	if _, err := a.FullSync(context.Background(), rs); err != nil {
		t.Fatal(err)
	}
	inForce := time.Now()
	r := <-done
	if r.code != 0 || r.res["cniVersion"] != "1.0.0" || r.res["ips"] == nil {
		t.Fatalf("ADD with the table: exit %d, %v", r.code, r.res)
	}
	if !strings.HasPrefix(stderr, "nftpolicy-cni-gate: pod x/a (sandbox c1) waited ") || !strings.HasSuffix(stderr, ": passed\n") {
		t.Errorf("the waiting ADD: stderr %q", stderr)
	}
	t.Logf("the waiting ADD returned %v after the table was in force", r.at.Sub(inForce).Round(time.Millisecond))
	if after := r.at.Sub(inForce); after > 2*time.Second {
		t.Errorf("the waiting ADD returned %v after the table was in force, want within a poll (100ms)", after)
	}
	// At once when it is there. (The gate asks where it runs: the earlier
	// boot's table held pods above whatever the host's namespace holds.)
	if code, _ := plugin("ADD", 0); code != 0 || stderr != "" {
		t.Fatalf("ADD with the table in force: exit %d, stderr %q", code, stderr)
	}
	if ok, err := netlink.SetExists(ns.Path(), "nftpolicy", nft.SyncedBootSet(boot)); !ok || err != nil {
		t.Errorf("SetExists in the namespace: %v, %v", ok, err)
	}
	// The table deleted (by hand, or a firewall's flush): held again.
	if out, err := ns.NFT("", "delete", "table", "inet", "nftpolicy"); err != nil {
		t.Fatal(err, out)
	}
	if code, res := plugin("ADD", 0); code == 0 || !strings.Contains(res["msg"].(string), "is not in force") {
		t.Fatalf("ADD after the table was deleted: exit %d, %v", code, res)
	}
	if _, err := a.FullSync(context.Background(), rs); err != nil {
		t.Fatal(err)
	}

	// Cleanup while a pod set up through the gate lives (libcni's cache of
	// its ADD names the gate, base64 in "config"): the entry goes, the binary
	// stays, and cleanup says so.
	cacheDir := t.TempDir()
	withEntry, _ := os.ReadFile(conflist)
	cached, _ := json.Marshal(map[string]any{"kind": "cniCacheV1", "containerId": "3be2a5d4463d", "config": withEntry, "ifName": "eth0", "networkName": "podnet"})
	podCache := filepath.Join(cacheDir, "results", "podnet-3be2a5d4463d-eth0")
	if err := errors.Join(os.Mkdir(filepath.Dir(podCache), 0o700), os.WriteFile(podCache, cached, 0o600)); err != nil {
		t.Fatal(err)
	}
	cleanup := []string{"cleanup", "--netns", ns.Path(), "--cni-gate-conf-dir", confDir, "--cni-gate-bin-dir", binDir, "--cni-cache-dir", cacheDir}
	code, stdout, stderr := runBin(t, "", cleanup...)
	if code != 0 || !strings.Contains(stdout, "kept") || !strings.Contains(stdout, "podnet-3be2a5d4463d-eth0") {
		t.Fatalf("cleanup with a pod of the gate: exit %d: %s%s", code, stdout, stderr)
	}
	if _, err := os.Stat(filepath.Join(binDir, cnigate.PluginType)); err != nil {
		t.Errorf("binary removed while a pod's cached configuration runs it: %v", err)
	}
	// The pod's teardown, as CRI-O runs it: the gate's DEL succeeds.
	if code, res := plugin("DEL", 0); code != 0 || res != nil {
		t.Errorf("DEL: exit %d, %v", code, res)
	}

	// Cleanup once the pod is gone: the entry and the binary, then the table.
	if err := os.Remove(podCache); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := runBin(t, "", cleanup...); code != 0 {
		t.Fatalf("cleanup: exit %d: %s", code, stderr)
	}
	data, _ := os.ReadFile(conflist)
	if strings.Contains(string(data), cnigate.PluginType) {
		t.Errorf("entry left after cleanup:\n%s", data)
	}
	if _, err := os.Stat(filepath.Join(binDir, cnigate.PluginType)); !os.IsNotExist(err) {
		t.Errorf("binary left after cleanup: %v", err)
	}
	if ok, err := netlink.TableExists(ns.Path(), "nftpolicy"); ok || err != nil {
		t.Errorf("table after cleanup: %v, %v", ok, err)
	}
}
