package cnigate

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func newInstaller(t *testing.T) (*Installer, string) {
	t.Helper()
	root := t.TempDir()
	in := &Installer{ConfDir: filepath.Join(root, "net.d"), BinDir: filepath.Join(root, "bin"), Table: "nftpolicy", Binary: filepath.Join(root, "agent"),
		CacheDir: filepath.Join(root, "cni-cache")}
	must(t, os.Mkdir(in.ConfDir, 0o755))
	must(t, os.Mkdir(in.BinDir, 0o755))
	if err := os.WriteFile(in.Binary, []byte("#!/bin/sh\necho agent v1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return in, filepath.Join(in.ConfDir, "10-kindnet.conflist")
}

func TestInstallerEnsure(t *testing.T) {
	in, conf := newInstaller(t)
	bin := filepath.Join(in.BinDir, PluginType)

	// No configuration yet: the binary goes in, the error says what is missing.
	if st, err := in.Ensure(); err == nil || !st.BinaryWritten {
		t.Fatalf("Ensure without a configuration: %+v, %v", st, err)
	}
	must(t, os.WriteFile(conf, []byte(kindnet), 0o640))
	st, err := in.Ensure()
	if err != nil || st.BinaryWritten || !st.ConfigWritten || st.Config != conf {
		t.Fatalf("Ensure: %+v, %v", st, err)
	}
	data, _ := os.ReadFile(conf)
	if got := strings.Join(pluginTypes(t, data), ","); got != "ptp,portmap,nftpolicy/nftpolicy" {
		t.Errorf("plugins %s", got)
	}
	if fi, _ := os.Stat(conf); fi.Mode().Perm() != 0o640 {
		t.Errorf("configuration mode %v, want 0640 kept", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(bin); fi.Mode().Perm() != 0o755 {
		t.Errorf("binary mode %v, want 0755", fi.Mode().Perm())
	}

	// In place: nothing written.
	if st, err := in.Ensure(); err != nil || st.BinaryWritten || st.ConfigWritten {
		t.Errorf("Ensure again: %+v, %v", st, err)
	}

	// The CNI's agent writes its list again: the entry comes back.
	must(t, os.WriteFile(conf, []byte(kindnet), 0o640))
	if st, err := in.Ensure(); err != nil || !st.ConfigWritten {
		t.Errorf("Ensure after the list was rewritten: %+v, %v", st, err)
	}
	// Someone changes the binary: it is put back.
	must(t, os.WriteFile(bin, []byte("something else"), 0o755))
	if st, err := in.Ensure(); err != nil || !st.BinaryWritten {
		t.Errorf("Ensure after the binary changed: %+v, %v", st, err)
	}
	if got, _ := os.ReadFile(bin); string(got) != "#!/bin/sh\necho agent v1\n" {
		t.Errorf("binary %q", got)
	}
	// A new agent (an upgrade) brings another binary.
	in2 := &Installer{ConfDir: in.ConfDir, BinDir: in.BinDir, Table: in.Table, Binary: in.Binary}
	must(t, os.WriteFile(in.Binary, []byte("#!/bin/sh\necho agent v2\n"), 0o755))
	if st, err := in2.Ensure(); err != nil || !st.BinaryWritten || st.ConfigWritten {
		t.Errorf("Ensure of a new binary: %+v, %v", st, err)
	}
	// A file of a name before ours becomes the runtime's: the gate goes there too.
	first := filepath.Join(in.ConfDir, "05-cilium.conflist")
	must(t, os.WriteFile(first, []byte(strings.Replace(kindnet, "kindnet", "cilium", 1)), 0o644))
	if st, err := in2.Ensure(); err != nil || st.Config != first || !st.ConfigWritten {
		t.Errorf("Ensure with a new first file: %+v, %v", st, err)
	}
	// No file left behind by the atomic writes.
	for _, dir := range []string{in.ConfDir, in.BinDir} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".tmp") {
				t.Errorf("left behind: %s", filepath.Join(dir, e.Name()))
			}
		}
	}

	// Remove: every entry, then the binary.
	st, err = in2.Remove()
	if err != nil || !st.BinaryWritten || !st.ConfigWritten {
		t.Fatalf("Remove: %+v, %v", st, err)
	}
	for _, f := range []string{conf, first} {
		data, _ := os.ReadFile(f)
		if got := strings.Join(pluginTypes(t, data), ","); got != "ptp,portmap" {
			t.Errorf("%s after Remove: %s", filepath.Base(f), got)
		}
	}
	if _, err := os.Stat(bin); !os.IsNotExist(err) {
		t.Errorf("binary still there: %v", err)
	}
	if st, err := in2.Remove(); err != nil || st.BinaryWritten || st.ConfigWritten {
		t.Errorf("Remove again: %+v, %v", st, err)
	}
}

func TestInstallerLeavesSingleConf(t *testing.T) {
	in, _ := newInstaller(t)
	conf := filepath.Join(in.ConfDir, "10-bridge.conf")
	single := `{"cniVersion": "1.0.0", "name": "n", "type": "bridge"}`
	must(t, os.WriteFile(conf, []byte(single), 0o644))
	if _, err := in.Ensure(); err == nil || !strings.Contains(err.Error(), "single plugin") {
		t.Errorf("Ensure on a single plugin's configuration: %v", err)
	}
	if data, _ := os.ReadFile(conf); string(data) != single {
		t.Errorf("configuration changed: %s", data)
	}
}

// A list whose plugins the gate cannot follow (a CNI version before chaining,
// or none, which libcni reads as 0.1.0) gets no entry: Ensure fails, as for a
// single plugin's .conf (the agent's gauge at 0, its Event), and takes out an
// entry already there. Lists with cniVersions are accepted when the gate
// speaks every version a runtime may choose.
func TestInstallerRefusesUnchainableVersion(t *testing.T) {
	in, conf := newInstaller(t)
	for _, list := range []string{
		`{"name": "legacy", "plugins": [{"type": "bridge"}]}`,
		`{"cniVersion": "0.2.0", "name": "legacy", "plugins": [{"type": "bridge"}]}`,
		`{"cniVersions": ["1.0.0", "9.9.0"], "name": "n", "plugins": [{"type": "bridge"}]}`,
	} {
		must(t, os.WriteFile(conf, []byte(list), 0o644))
		if st, err := in.Ensure(); err == nil || !errors.Is(err, errVersion) || !strings.Contains(err.Error(), "cniVersion") || st.ConfigWritten {
			t.Errorf("Ensure of %s: %+v, %v", list, st, err)
		}
		if data, _ := os.ReadFile(conf); string(data) != list {
			t.Errorf("configuration changed:\n%s", data)
		}
	}
	// An entry left by an earlier agent in such a list is taken out.
	stale := `{"name": "legacy", "plugins": [{"type": "bridge"}, {"type": "nftpolicy", "table": "nftpolicy"}]}`
	must(t, os.WriteFile(conf, []byte(stale), 0o644))
	if st, err := in.Ensure(); !errors.Is(err, errVersion) || !st.ConfigWritten {
		t.Errorf("Ensure of a list with an entry it cannot serve: %+v, %v", st, err)
	}
	if data, _ := os.ReadFile(conf); strings.Join(pluginTypes(t, data), ",") != "bridge" {
		t.Errorf("entry left in a list the gate cannot serve:\n%s", data)
	}
	for _, list := range []string{
		`{"cniVersions": ["0.4.0", "1.0.0"], "name": "n", "plugins": [{"type": "bridge"}]}`,
		`{"cniVersion": "0.3.0", "name": "n", "plugins": [{"type": "bridge"}]}`,
	} {
		must(t, os.WriteFile(conf, []byte(list), 0o644))
		if st, err := in.Ensure(); err != nil || !st.ConfigWritten {
			t.Errorf("Ensure of %s: %+v, %v", list, st, err)
		}
	}
}

// A network configuration that is a symbolic link (to a file its owner
// manages elsewhere) is not replaced by a regular file: Ensure refuses it
// loudly, and so does Remove when the file it names holds the entry (the
// binary stays). An entry already in the linked file is in place.
func TestInstallerRefusesSymlinkedConfig(t *testing.T) {
	in, conf := newInstaller(t)
	target := filepath.Join(filepath.Dir(in.ConfDir), "managed.conflist")
	must(t, os.WriteFile(target, []byte(kindnet), 0o644))
	must(t, os.Symlink(target, conf))
	if st, err := in.Ensure(); err == nil || !strings.Contains(err.Error(), "symbolic link") || st.ConfigWritten {
		t.Errorf("Ensure of a symlinked configuration: %+v, %v", st, err)
	}
	if fi, err := os.Lstat(conf); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("the symlink was replaced: %v, %v", fi.Mode(), err)
	}
	withEntry, _, err := withGate([]byte(kindnet), "nftpolicy")
	must(t, err)
	must(t, os.WriteFile(target, withEntry, 0o644)) // the owner puts the entry in
	if st, err := in.Ensure(); err != nil || st.ConfigWritten {
		t.Errorf("Ensure with the entry in the linked file: %+v, %v", st, err)
	}
	if st, err := in.Remove(); err == nil || st.BinaryWritten {
		t.Errorf("Remove of an entry behind a symlink: %+v, %v", st, err)
	}
	if fi, err := os.Lstat(conf); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was replaced by Remove: %v, %v", fi.Mode(), err)
	}
}

// rewrite writes nothing when the file changed between its read and the rename.
func TestRewriteRace(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "10-kindnet.conflist")
	must(t, os.WriteFile(path, []byte(kindnet), 0o644))
	theirs := strings.Replace(kindnet, "1500", "9000", 1)
	written, err := rewrite(path, func(data []byte) ([]byte, bool, error) {
		must(t, os.WriteFile(path, []byte(theirs), 0o644)) // the CNI's agent, meanwhile
		return withGate(data, "nftpolicy")
	})
	if err != nil || written {
		t.Errorf("rewrite: written %v, err %v", written, err)
	}
	if data, _ := os.ReadFile(path); string(data) != theirs {
		t.Errorf("their write was lost: %s", data)
	}
}

// A CNI's agent that writes the file while rewrite syncs its own (an fsync:
// milliseconds, the longest step of a write) is not overwritten either: the
// file is compared again after the sync, right before the rename.
func TestRewriteRaceDuringSync(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "10-kindnet.conflist")
	must(t, os.WriteFile(path, []byte(kindnet), 0o644))
	theirs := strings.Replace(kindnet, "1500", "9000", 1)
	synced = func() { must(t, os.WriteFile(path, []byte(theirs), 0o644)) }
	t.Cleanup(func() { synced = func() {} })
	written, err := rewrite(path, func(data []byte) ([]byte, bool, error) { return withGate(data, "nftpolicy") })
	if err != nil || written {
		t.Errorf("rewrite: written %v, err %v", written, err)
	}
	if data, _ := os.ReadFile(path); string(data) != theirs {
		t.Errorf("the CNI's write during the sync (mtu 9000) was lost; the file holds:\n%s", data)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
}

// cacheResult writes the file libcni's cacheAdd writes after a pod network's
// ADD (libcni/api.go, cachedInfo, kind cniCacheV1), in dir/results, named
// <network>-<container id>-<interface>: the configuration list's bytes as
// the runtime read them, base64 in "config", and the result.
func cacheResult(t *testing.T, dir, network, containerID string, config []byte) string {
	t.Helper()
	cached := map[string]any{
		"kind": "cniCacheV1", "containerId": containerID, "config": config, "ifName": "eth0",
		"networkName": network, "netns": "/var/run/netns/" + containerID,
		"cniArgs": [][2]string{{"K8S_POD_NAMESPACE", "team-a"}, {"K8S_POD_NAME", "web-0"}, {"K8S_POD_INFRA_CONTAINER_ID", containerID}},
		"result":  json.RawMessage(prevResult),
	}
	data, err := json.Marshal(cached) // []byte: base64, as libcni's Config []byte
	must(t, err)
	must(t, os.MkdirAll(filepath.Join(dir, "results"), 0o700))
	name := network + "-" + containerID + "-eth0"
	must(t, os.WriteFile(filepath.Join(dir, "results", name), data, 0o600))
	return name
}

// Remove leaves the binary while a pod set up with the gate's entry lives
// (libcni's cache names the gate in that pod's configuration): CRI-O tears
// such a pod down with that configuration, and its DEL stops at a missing
// plugin. A pod set up before the entry, a network without it and a file
// that is not libcni's do not keep it. Once the pod's cache file is gone (its
// DEL), Remove removes the binary.
func TestInstallerRemoveKeepsBinaryForCachedPods(t *testing.T) {
	in, conf := newInstaller(t)
	bin := filepath.Join(in.BinDir, PluginType)
	must(t, os.WriteFile(conf, []byte(kindnet), 0o644))
	cacheResult(t, in.CacheDir, "kindnet", "before", []byte(kindnet)) // set up before the gate
	if _, err := in.Ensure(); err != nil {
		t.Fatal(err)
	}
	withEntry, _ := os.ReadFile(conf)
	gated := cacheResult(t, in.CacheDir, "kindnet", "3be2a5d4463d", withEntry)
	cacheResult(t, in.CacheDir, "other", "3be2a5d4463d", []byte(`{"cniVersion": "1.0.0", "name": "other", "type": "macvlan"}`))
	must(t, os.WriteFile(filepath.Join(in.CacheDir, "results", "junk"), []byte("{not JSON"), 0o600))

	st, err := in.Remove()
	if err != nil || !st.ConfigWritten || st.BinaryWritten || !slices.Equal(st.BinaryInUse, []string{gated}) {
		t.Fatalf("Remove with a pod set up through the gate: %+v, %v", st, err)
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the binary went while a pod's cached configuration runs it: %v", err)
	}
	if data, _ := os.ReadFile(conf); strings.Join(pluginTypes(t, data), ",") != "ptp,portmap" {
		t.Errorf("entry left:\n%s", data)
	}

	must(t, os.Remove(filepath.Join(in.CacheDir, "results", gated))) // the pod's DEL
	if st, err := in.Remove(); err != nil || !st.BinaryWritten || len(st.BinaryInUse) > 0 {
		t.Errorf("Remove once the pod is gone: %+v, %v", st, err)
	}
	if _, err := os.Stat(bin); !os.IsNotExist(err) {
		t.Errorf("binary still there: %v", err)
	}
}

// Remove keeps the binary when an entry cannot be taken out (the
// configuration cannot be replaced), and says so.
func TestInstallerRemoveKeepsBinaryOnFailure(t *testing.T) {
	in, conf := newInstaller(t)
	must(t, os.WriteFile(conf, []byte(kindnet), 0o644))
	if _, err := in.Ensure(); err != nil {
		t.Fatal(err)
	}
	rename = func(string, string) error { return errors.New("read-only file system") }
	t.Cleanup(func() { rename = os.Rename })
	if st, err := in.Remove(); err == nil || st.BinaryWritten {
		t.Fatalf("Remove when the configuration cannot be written: %+v, %v", st, err)
	}
	if _, err := os.Stat(filepath.Join(in.BinDir, PluginType)); err != nil {
		t.Errorf("the binary went while the entry stayed: %v", err)
	}
	if data, _ := os.ReadFile(conf); !strings.Contains(string(data), `"nftpolicy"`) {
		t.Errorf("entry gone although the write failed:\n%s", data)
	}
}
