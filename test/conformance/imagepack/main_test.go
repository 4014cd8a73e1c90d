package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// readTar returns the regular files of a tar stream by name, and the names of
// its directories.
func readTar(t *testing.T, r io.Reader) (files map[string][]byte, modes map[string]int64, dirs []string) {
	t.Helper()
	files, modes = map[string][]byte{}, map[string]int64{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files, modes, dirs
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeDir {
			dirs = append(dirs, h.Name)
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name], modes[h.Name] = b, h.Mode
	}
}

// TestPack checks the archive against what `ctr images import` reads from a
// `docker save` archive: manifest.json naming the tag, a config whose diff_id
// is the layer's digest, and a layer holding the binary at its path.
func TestPack(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.WriteFile(bin, []byte("#!binary"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	if code := run([]string{"-o", out, "-name", "example.test/x/agnhost:1.2", "-entrypoint", "/usr/bin/agnhost", "-cmd", "pause", bin + ":/usr/bin/agnhost"}); code != 0 {
		t.Fatalf("run: exit %d", code)
	}
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files, _, _ := readTar(t, f)

	var manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || !reflect.DeepEqual(manifest[0].RepoTags, []string{"example.test/x/agnhost:1.2"}) || len(manifest[0].Layers) != 1 {
		t.Fatalf("manifest.json = %s", files["manifest.json"])
	}
	var config struct {
		Architecture, OS string
		Config           struct{ Entrypoint, Cmd []string }
		RootFS           struct {
			DiffIDs []string `json:"diff_ids"`
		}
	}
	if err := json.Unmarshal(files[manifest[0].Config], &config); err != nil {
		t.Fatal(err)
	}
	layer := files[manifest[0].Layers[0]]
	sum := sha256.Sum256(layer)
	if want := []string{"sha256:" + hex.EncodeToString(sum[:])}; !reflect.DeepEqual(config.RootFS.DiffIDs, want) {
		t.Errorf("diff_ids = %v, want %v", config.RootFS.DiffIDs, want)
	}
	if config.Architecture != "amd64" || config.OS != "linux" ||
		!reflect.DeepEqual(config.Config.Entrypoint, []string{"/usr/bin/agnhost"}) || !reflect.DeepEqual(config.Config.Cmd, []string{"pause"}) {
		t.Errorf("config = %s", files[manifest[0].Config])
	}

	lfiles, lmodes, ldirs := readTar(t, bytes.NewReader(layer))
	if string(lfiles["usr/bin/agnhost"]) != "#!binary" || lmodes["usr/bin/agnhost"] != 0o755 {
		t.Errorf("layer files %v modes %v", lfiles, lmodes)
	}
	if want := []string{"tmp/", "usr/", "usr/bin/"}; !reflect.DeepEqual(ldirs, want) {
		t.Errorf("layer dirs = %v, want %v", ldirs, want)
	}

	// Same inputs, same bytes: re-packing does not change the image ID.
	again := filepath.Join(dir, "again.tar")
	if code := run([]string{"-o", again, "-name", "example.test/x/agnhost:1.2", "-entrypoint", "/usr/bin/agnhost", "-cmd", "pause", bin + ":/usr/bin/agnhost"}); code != 0 {
		t.Fatalf("run: exit %d", code)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("packing twice gave different archives")
	}
}

func TestPackRejectsBadArguments(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"-o", filepath.Join(dir, "a.tar"), "-name", "x:1"},                          // no file
		{"-o", filepath.Join(dir, "a.tar"), "-name", "untagged", "/etc/hostname:/h"}, // no tag
		{"-o", filepath.Join(dir, "a.tar"), "-name", "x:1", "/etc/hostname:rel"},     // relative path
		{"-o", filepath.Join(dir, "a.tar"), "-name", "x:1", dir + "/missing:/m"},     // missing file
	} {
		if code := run(args); code == 0 {
			t.Errorf("run(%q) = 0, want non-zero", args)
		}
		if _, err := os.Stat(filepath.Join(dir, "a.tar")); err == nil {
			t.Errorf("run(%q) left an archive", args)
		}
	}
}
