package cnigate

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// Installer keeps the gate on one node: its binary in BinDir and its entry in
// the network configuration of ConfDir that the runtime uses.
type Installer struct {
	ConfDir, BinDir string
	// Table is the table the gate waits for.
	Table string
	// Binary is the file installed as BinDir/nftpolicy: the agent's own.
	Binary string
	// CacheDir is libcni's cache directory (DefaultCacheDir when ""): Remove
	// keeps the binary while a pod's cached network configuration names it.
	CacheDir string

	sum       [32]byte // Binary's hash, once read
	installed fileID   // BinDir/nftpolicy as it was when last found equal to Binary
}

// fileID tells whether a file was replaced or written since it was last read.
type fileID struct {
	ino, size int64
	mtime     time.Time
}

func idOf(fi fs.FileInfo) fileID {
	id := fileID{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		id.ino = int64(st.Ino)
	}
	return id
}

// State is what Ensure found or did.
type State struct {
	// Config is the network configuration the runtime uses (empty if none).
	Config string
	// BinaryWritten and ConfigWritten say what Ensure or Remove changed.
	BinaryWritten, ConfigWritten bool
	// BinaryInUse, after Remove, names the cached results (files of
	// CacheDir/results, one per pod's network) whose configuration still
	// names the gate: while there is one, Remove leaves the binary in place.
	BinaryInUse []string
}

// DefaultCacheDir is libcni's default cache directory: a runtime on libcni
// keeps there, under results/, each pod network's result and the network
// configuration it was set up with.
const DefaultCacheDir = "/var/lib/cni"

// Ensure puts the binary, then the entry, in place (in that order: an entry
// whose binary is missing fails every pod with a worse message). Cheap when
// both are there: one stat of the binary and one read of the configuration.
func (in *Installer) Ensure() (State, error) {
	var st State
	written, err := in.ensureBinary()
	if err != nil {
		return st, fmt.Errorf("installing %s: %w", filepath.Join(in.BinDir, PluginType), err)
	}
	st.BinaryWritten = written
	if st.Config, err = ActiveConfig(in.ConfDir); err != nil {
		return st, err
	}
	st.ConfigWritten, err = rewrite(st.Config, func(data []byte) ([]byte, bool, error) { return withGate(data, in.Table) })
	if errors.Is(err, errVersion) {
		// An entry already there (an earlier agent's, or one put by hand)
		// fails every pod of this list: it goes.
		if removed, rerr := rewrite(st.Config, withoutGate); rerr == nil && removed {
			st.ConfigWritten = true
		}
	}
	if err != nil {
		return st, fmt.Errorf("adding the gate to %s: %w", st.Config, err)
	}
	return st, nil
}

// Remove takes the gate's entry out of every network configuration of ConfDir,
// then its binary out of BinDir (the reverse of Ensure). What is not there is
// not an error. A file whose entry could not be taken out keeps the binary in
// place (an entry without its plugin fails every pod with a worse message).
//
// So does a pod set up with the gate's entry while it lives: CRI-O tears a pod
// down with the configuration libcni cached at its ADD, and libcni runs the
// DEL of its plugins in reverse, stopping at the first that fails: without
// the gate's binary, the CNI's own DEL never runs, the pod stays Terminating
// and its address leaks. The binary stays while a cached result in CacheDir
// names the gate (State.BinaryInUse); the gate's DEL succeeds without the
// agent. Remove run again once those pods are gone removes it.
func (in *Installer) Remove() (State, error) {
	var st State
	entries, err := os.ReadDir(in.ConfDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return st, err
	}
	// Not a configuration list (a single plugin's, not JSON): no entry of ours.
	without := func(data []byte) ([]byte, bool, error) {
		out, changed, err := withoutGate(data)
		if err != nil {
			return nil, false, nil
		}
		return out, changed, nil
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !slices.Contains(configExtensions, filepath.Ext(e.Name())) {
			continue
		}
		path := filepath.Join(in.ConfDir, e.Name())
		switch written, err := rewrite(path, without); {
		case err != nil:
			errs = append(errs, err)
		case written:
			st.ConfigWritten, st.Config = true, path
		}
	}
	if len(errs) > 0 {
		return st, errors.Join(errs...)
	}
	cacheDir := in.CacheDir
	if cacheDir == "" {
		cacheDir = DefaultCacheDir
	}
	if st.BinaryInUse, err = cachedUsers(cacheDir); err != nil {
		return st, fmt.Errorf("reading libcni's cache (the binary stays): %w", err)
	}
	if len(st.BinaryInUse) > 0 {
		return st, nil
	}
	switch err := os.Remove(filepath.Join(in.BinDir, PluginType)); {
	case err == nil:
		st.BinaryWritten = true
	case !errors.Is(err, fs.ErrNotExist):
		return st, err
	}
	return st, nil
}

// cachedUsers returns the names of the files of dir/results (libcni's cache
// of each pod network's ADD: JSON whose "config" is the network
// configuration's bytes, base64) whose configuration names the gate. A
// missing directory holds none; a file that cannot be read or decoded is
// skipped (libcni then tears the pod down with the current configuration).
func cachedUsers(dir string) ([]string, error) {
	dir = filepath.Join(dir, "results")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var users []string
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var cached struct {
			Config []byte `json:"config"`
		}
		if json.Unmarshal(data, &cached) != nil {
			continue
		}
		if namesGate(cached.Config) {
			users = append(users, e.Name())
		}
	}
	return users, nil
}

// namesGate says whether a network configuration, a list or a single
// plugin's, runs the gate.
func namesGate(config []byte) bool {
	var c struct {
		Type    string            `json:"type"`
		Plugins []json.RawMessage `json:"plugins"`
	}
	if json.Unmarshal(config, &c) != nil {
		return false
	}
	if c.Type == PluginType {
		return true
	}
	return slices.ContainsFunc(c.Plugins, func(p json.RawMessage) bool { _, ok := asGate(p); return ok })
}

// ensureBinary writes Binary to BinDir/nftpolicy unless the file there is the
// same (hashed again only when it changed since it was last found equal).
func (in *Installer) ensureBinary() (bool, error) {
	dst := filepath.Join(in.BinDir, PluginType)
	if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() && idOf(fi) == in.installed && in.installed != (fileID{}) {
		return false, nil
	}
	if in.sum == ([32]byte{}) {
		sum, err := hashFile(in.Binary)
		if err != nil {
			return false, err
		}
		in.sum = sum
	}
	if sum, err := hashFile(dst); err == nil && sum == in.sum {
		return false, in.remember(dst)
	}
	src, err := os.Open(in.Binary)
	if err != nil {
		return false, err
	}
	defer src.Close()
	if err := writeAtomic(dst, 0o755, func(w io.Writer) error { _, err := io.Copy(w, src); return err }, nil); err != nil {
		return false, err
	}
	return true, in.remember(dst)
}

func (in *Installer) remember(dst string) error {
	fi, err := os.Stat(dst)
	if err != nil {
		return err
	}
	in.installed = idOf(fi)
	return nil
}

func hashFile(path string) ([32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return [32]byte{}, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return [32]byte{}, err
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// rewrite replaces the file at path with edit's result when edit changes it.
// The file is read again after the new one is written and synced, right
// before the rename: if someone else (the CNI's own agent) wrote it meanwhile,
// nothing is written, and the next Ensure edits what they wrote. What is left
// is the time between that read and the rename (two system calls), not the
// sync's milliseconds: files have no compare-and-swap.
func rewrite(path string, edit func([]byte) ([]byte, bool, error)) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	out, changed, err := edit(data)
	if err != nil || !changed {
		return false, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return false, err
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		// The rename would put a regular file in the link's place, and the
		// updates of its owner (the file linked to) would no longer reach the
		// runtime; the target may not even be this directory's.
		return false, errors.New("a symbolic link: the gate edits regular files only; put its entry in the file the link names")
	}
	unchanged := func() error {
		if now, err := os.ReadFile(path); err != nil || !bytes.Equal(now, data) {
			return errRaced
		}
		return nil
	}
	err = writeAtomic(path, fi.Mode().Perm(), func(w io.Writer) error { _, err := w.Write(out); return err }, unchanged)
	if errors.Is(err, errRaced) {
		return false, nil
	}
	return err == nil, err
}

var errRaced = errors.New("changed meanwhile")

// writeAtomic writes a file beside path, under a name no runtime reads as a
// configuration (no .conf, .conflist or .json, not the plugin's name), syncs it
// and renames it over path: a runtime reads the old file or the new one, never
// a part. When commit is not nil it runs right before the rename, and its
// error stops it.
func writeAtomic(path string, mode fs.FileMode, write func(io.Writer) error, commit func() error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".nftpolicy-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, there is nothing to remove
	if err := write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	synced()
	if commit != nil {
		if err := commit(); err != nil {
			return err
		}
	}
	return rename(tmp.Name(), path)
}

// rename is os.Rename; tests make it fail.
var rename = os.Rename

// synced runs once the new file is written and synced, before the rename;
// tests write the file meanwhile, as a CNI's agent may.
var synced = func() {}
