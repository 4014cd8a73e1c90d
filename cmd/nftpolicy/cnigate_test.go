package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
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
// previous result on stdin), holds a pod's network until the agent has had
// its table in force in this boot of the node and while the table is there,
// then passes the previous result on; cleanup takes the gate away before the
// table.
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
	plugin := func(cmd string) (int, map[string]any) {
		t.Helper()
		c := exec.Command("nsenter", "--net="+ns.Path(), filepath.Join(binDir, cnigate.PluginType))
		c.Env = []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=c1", "CNI_NETNS=/var/run/netns/cni-1", "CNI_IFNAME=eth0", "CNI_PATH=" + binDir}
		c.Stdin = bytes.NewReader(stdin)
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, os.Stderr
		code := exitCode(t, c.Run())
		var res map[string]any
		if out.Len() > 0 {
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("%s: stdout is not JSON: %s", cmd, out.String())
			}
		}
		return code, res
	}

	// No table: try again later, and the pod's teardown is not in the way.
	if code, res := plugin("ADD"); code == 0 || res["code"] != float64(11) || !strings.Contains(res["msg"].(string), "since this node started") {
		t.Fatalf("ADD before the table: exit %d, %v", code, res)
	}
	if code, _ := plugin("DEL"); code != 0 {
		t.Errorf("DEL before the table: exit %d", code)
	}

	// The agent's first table (an empty cluster's) in force: still held, until
	// the agent, synced, writes this boot's id into the entry.
	rs, _ := compile.Compile(compile.Snapshot{NodeName: "node-1"}, compile.Options{})
	a := applyIn(t, ns.Path(), rs)
	if code, res := plugin("ADD"); code == 0 || res["code"] != float64(11) {
		t.Fatalf("ADD with a table but no boot id in the entry: exit %d, %v", code, res)
	}
	var err error
	if in.Boot, err = cnigate.BootID(); err != nil {
		t.Fatal(err)
	}
	if st, err := in.Ensure(); err != nil || !st.ConfigWritten {
		t.Fatalf("Ensure with the boot id: %+v, %v", st, err)
	}
	stdin = runtimeConfig()
	code, res := plugin("ADD")
	if code != 0 || res["cniVersion"] != "1.0.0" || res["ips"] == nil {
		t.Fatalf("ADD with the table: exit %d, %v", code, res)
	}
	// The host's own namespace has no bearing: the gate asks where it runs.
	if ok, err := netlink.TableExists(ns.Path(), "nftpolicy"); !ok || err != nil {
		t.Errorf("TableExists in the namespace: %v, %v", ok, err)
	}
	// The table deleted (by hand, or a firewall's flush): held again.
	if out, err := ns.NFT("", "delete", "table", "inet", "nftpolicy"); err != nil {
		t.Fatal(err, out)
	}
	if code, res := plugin("ADD"); code == 0 || !strings.Contains(res["msg"].(string), "is not in force") {
		t.Fatalf("ADD after the table was deleted: exit %d, %v", code, res)
	}
	if _, err := a.Apply(context.Background(), rs); err != nil {
		t.Fatal(err)
	}

	// Cleanup: the entry and the binary, then the table.
	if code, _, stderr := runBin(t, "", "cleanup", "--netns", ns.Path(), "--cni-gate-conf-dir", confDir, "--cni-gate-bin-dir", binDir); code != 0 {
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
