package cnigate

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// kindnet's configuration list, as it writes it.
const kindnet = `{
	"cniVersion": "0.3.1",
	"name": "kindnet",
	"plugins": [
	{
		"type": "ptp",
		"ipMasq": false,
		"ipam": {"type": "host-local", "dataDir": "/run/cni-ipam-state", "ranges": [[{"subnet": "10.244.1.0/24"}]]},
		"mtu": 1500
	},
	{"type": "portmap", "capabilities": {"portMappings": true}}
	]
}`

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func pluginTypes(t *testing.T, data []byte) []string {
	t.Helper()
	var l struct {
		Plugins []struct {
			Type  string `json:"type"`
			Table string `json:"table"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &l); err != nil {
		t.Fatalf("result is not JSON: %v\n%s", err, data)
	}
	var types []string
	for _, p := range l.Plugins {
		if p.Table != "" {
			types = append(types, p.Type+"/"+p.Table)
		} else {
			types = append(types, p.Type)
		}
	}
	return types
}

func TestWithGate(t *testing.T) {
	out, changed, err := withGate([]byte(kindnet), "nftpolicy")
	if err != nil || !changed {
		t.Fatalf("withGate: changed %v, err %v", changed, err)
	}
	if got := strings.Join(pluginTypes(t, out), ","); got != "ptp,portmap,nftpolicy/nftpolicy" {
		t.Errorf("plugins %s, want the gate last", got)
	}
	// The keys keep their order, and what the gate does not own its values.
	if i, j, k := strings.Index(string(out), `"cniVersion"`), strings.Index(string(out), `"name"`), strings.Index(string(out), `"plugins"`); i >= j || j >= k {
		t.Errorf("keys reordered:\n%s", out)
	}
	var before, after map[string]any
	must(t, json.Unmarshal([]byte(kindnet), &before))
	must(t, json.Unmarshal(out, &after))
	if before["cniVersion"] != after["cniVersion"] || before["name"] != after["name"] {
		t.Errorf("values changed:\n%s", out)
	}
	// Again: nothing to do.
	if again, changed, err := withGate(out, "nftpolicy"); err != nil || changed || string(again) != string(out) {
		t.Errorf("second withGate: changed %v, err %v", changed, err)
	}
	// An earlier version's entry (with the boot it opened for), or one with
	// its keys in another order, where it stands: written anew, in place.
	earlier := strings.Replace(kindnet, `{"type": "portmap"`, `{"type": "nftpolicy", "boot": "boot-1", "table": "nftpolicy"}, {"type": "portmap"`, 1)
	if earlier == kindnet {
		t.Fatal("kindnet has no portmap entry to put the old one before")
	}
	mended, changed, err := withGate([]byte(earlier), "nftpolicy")
	if err != nil || !changed || strings.Contains(string(mended), "boot") {
		t.Fatalf("withGate(earlier entry): changed %v, err %v\n%s", changed, err, mended)
	}
	if got := strings.Join(pluginTypes(t, mended), ","); got != "ptp,nftpolicy/nftpolicy,portmap" {
		t.Errorf("plugins %s, want the entry where it stood", got)
	}
	if _, changed, _ := withGate(mended, "nftpolicy"); changed {
		t.Error("a mended entry written again")
	}
	// Another table: the entry is corrected where it stands.
	other, changed, err := withGate(out, "other")
	if err != nil || !changed {
		t.Fatalf("withGate(other): changed %v, err %v", changed, err)
	}
	if got := strings.Join(pluginTypes(t, other), ","); got != "ptp,portmap,nftpolicy/other" {
		t.Errorf("plugins %s\n%s", got, other)
	}
	// Removed: the list as it was, but for the indentation.
	gone, changed, err := withoutGate(other)
	if err != nil || !changed {
		t.Fatalf("withoutGate: changed %v, err %v", changed, err)
	}
	if got := strings.Join(pluginTypes(t, gone), ","); got != "ptp,portmap" {
		t.Errorf("plugins after removal %s", got)
	}
	var removed map[string]any
	must(t, json.Unmarshal(gone, &removed))
	b1, _ := json.Marshal(before)
	b2, _ := json.Marshal(removed)
	if string(b1) != string(b2) {
		t.Errorf("removal did not give the list back:\n%s\n%s", b1, b2)
	}
	if _, changed, err := withoutGate(gone); err != nil || changed {
		t.Errorf("second withoutGate: changed %v, err %v", changed, err)
	}
}

func TestWithGateRefuses(t *testing.T) {
	for name, data := range map[string]string{
		"single plugin": `{"cniVersion": "1.0.0", "name": "n", "type": "bridge"}`,
		"no plugins":    `{"cniVersion": "1.0.0", "name": "n", "plugins": []}`,
		"not JSON":      `{"cniVersion": "1.0.0",`,
		"two objects":   `{"plugins": [{"type": "ptp"}]} {}`,
		"an array":      `[{"type": "ptp"}]`,
	} {
		if _, _, err := withGate([]byte(data), "nftpolicy"); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestActiveConfig(t *testing.T) {
	dir := t.TempDir()
	if _, err := ActiveConfig(dir); err == nil {
		t.Fatal("empty directory: no error")
	}
	for _, name := range []string{"99-loopback.conf", "20-other.conflist", "10-kindnet.conflist", ".nftpolicy-1.tmp", "05-notes.txt"} {
		must(t, os.WriteFile(filepath.Join(dir, name), []byte(kindnet), 0o644))
	}
	must(t, os.Mkdir(filepath.Join(dir, "00-dir.conflist"), 0o755))
	got, err := ActiveConfig(dir)
	if err != nil || filepath.Base(got) != "10-kindnet.conflist" {
		t.Errorf("ActiveConfig = %q, %v; want 10-kindnet.conflist", got, err)
	}
}
