package cnigate

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// A ptp plugin's result, as libcni injects it into the next plugin's configuration.
const prevResult = `{"cniVersion":"1.0.0","interfaces":[{"name":"veth1","mac":"aa:bb:cc:dd:ee:ff"},{"name":"eth0","sandbox":"/var/run/netns/x"}],"ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1","interface":1}]}`

func runPlugin(t *testing.T, cmd, stdin string, node Node) (int, map[string]any, string) {
	t.Helper()
	env := map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0"}
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

func conf(version, table, boot string, prev string) string {
	c := `{"cniVersion":"` + version + `","name":"kindnet","type":"nftpolicy"`
	if table != "" {
		c += `,"table":"` + table + `"`
	}
	if boot != "" {
		c += `,"boot":"` + boot + `"`
	}
	if prev != "" {
		c += `,"prevResult":` + prev
	}
	return c + "}"
}

func TestPluginAdd(t *testing.T) {
	var asked []string
	tables := map[string]bool{"nftpolicy": true}
	node := Node{
		TableExists: func(table string) (bool, error) { asked = append(asked, table); return tables[table], nil },
		BootID:      func() (string, error) { return "boot-2", nil },
	}

	// This boot's agent had the table in force, and it is there: the previous
	// result passes, in the configuration's version.
	code, res, out := runPlugin(t, "ADD", conf("0.4.0", "", "boot-2", prevResult), node)
	if code != 0 {
		t.Fatalf("ADD with the table: exit %d, %s", code, out)
	}
	if res["cniVersion"] != "0.4.0" || res["ips"] == nil || res["interfaces"] == nil {
		t.Errorf("ADD result %s", out)
	}
	if strings.Join(asked, ",") != "nftpolicy" {
		t.Errorf("asked for %v, want the default table", asked)
	}

	// An entry of the last boot, or of no boot (the agent not synced yet):
	// try again later, whatever the table (one restored from a saved ruleset).
	for _, boot := range []string{"boot-1", ""} {
		code, res, out = runPlugin(t, "ADD", conf("1.0.0", "", boot, prevResult), node)
		if code == 0 || res["code"] != float64(codeTryAgainLater) || !strings.Contains(out, "since this node started") || !strings.Contains(out, "config/cleanup") {
			t.Errorf("ADD with boot %q: exit %d, %s", boot, code, out)
		}
	}
	// Another table named, and missing: try again later.
	code, res, out = runPlugin(t, "ADD", conf("1.0.0", "other", "boot-2", prevResult), node)
	if code == 0 || res["code"] != float64(codeTryAgainLater) || !strings.Contains(out, "table inet other is not in force") {
		t.Errorf("ADD without the table: exit %d, %s", code, out)
	}
	// The kernel cannot be asked, or the boot id read: also try again later, with the reason.
	broken := node
	broken.TableExists = func(string) (bool, error) { return false, errors.New("netlink: permission denied") }
	code, res, out = runPlugin(t, "ADD", conf("1.0.0", "", "boot-2", prevResult), broken)
	if code == 0 || res["code"] != float64(codeTryAgainLater) || !strings.Contains(out, "permission denied") {
		t.Errorf("ADD when the table check fails: exit %d, %s", code, out)
	}
	broken = node
	broken.BootID = func() (string, error) { return "", errors.New("no /proc") }
	code, res, out = runPlugin(t, "ADD", conf("1.0.0", "", "boot-2", prevResult), broken)
	if code == 0 || res["code"] != float64(codeTryAgainLater) || !strings.Contains(out, "no /proc") {
		t.Errorf("ADD when the boot id cannot be read: exit %d, %s", code, out)
	}
	// First in the chain: a configuration error, whatever the table.
	code, res, out = runPlugin(t, "ADD", conf("1.0.0", "", "boot-2", ""), node)
	if code == 0 || res["code"] != float64(codeInvalidConfig) {
		t.Errorf("ADD without prevResult: exit %d, %s", code, out)
	}
	// A version before chaining.
	code, res, out = runPlugin(t, "ADD", conf("0.2.0", "", "boot-2", prevResult), node)
	if code == 0 || res["code"] != float64(codeIncompatibleVersion) {
		t.Errorf("ADD 0.2.0: exit %d, %s", code, out)
	}
	code, res, out = runPlugin(t, "ADD", "{", node)
	if code == 0 || res["code"] != float64(codeDecodingFailure) {
		t.Errorf("ADD of bad JSON: exit %d, %s", code, out)
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
		TableExists: func(string) (bool, error) { t.Error("the table was asked for"); return false, nil },
		BootID:      func() (string, error) { t.Error("the boot id was asked for"); return "", nil },
	}
	for _, cmd := range []string{"DEL", "CHECK", "GC", "STATUS"} {
		for _, stdin := range []string{conf("1.1.0", "", "", prevResult), "{not JSON", ""} {
			if code, _, out := runPlugin(t, cmd, stdin, never); code != 0 || out != "" {
				t.Errorf("%s of %q: exit %d, %q", cmd, stdin, code, out)
			}
		}
	}
	code, res, out := runPlugin(t, "VERSION", `{"cniVersion":"1.0.0"}`, never)
	if code != 0 || res["cniVersion"] != "1.1.0" || !strings.Contains(out, `"0.3.1"`) {
		t.Errorf("VERSION: exit %d, %s", code, out)
	}
	if code, res, _ := runPlugin(t, "FROB", conf("1.0.0", "", "", ""), never); code == 0 || res["code"] != float64(codeInvalidEnvironment) {
		t.Errorf("unknown command: exit %d", code)
	}
}
