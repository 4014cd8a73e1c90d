package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// modulePath is this module's path, to recognise its root.
const modulePath = "github.com/nftpolicy/nftpolicy"

// ModuleRoot returns the directory of this module's go.mod: found next to this
// source file when it is present, else above the current directory.
func ModuleRoot() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, dir := range starts {
		for d := dir; ; d = filepath.Dir(d) {
			mod, err := os.ReadFile(filepath.Join(d, "go.mod"))
			if err == nil && bytes.HasPrefix(bytes.TrimSpace(mod), []byte("module "+modulePath+"\n")) {
				return d, nil
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	return "", fmt.Errorf("cannot find the %s module root (go.mod)", modulePath)
}

// AgentBinary returns the path of an nftpolicy binary built from the current
// source: $NFTPOLICY_BIN if set; else the module's bin/nftpolicy (what
// `make build` writes) if it exists and is newer than every source file the
// command is built from; else a fresh `go build ./cmd/nftpolicy` into dir. The
// second result says which, for the log.
func AgentBinary(ctx context.Context, dir string) (path, how string, err error) {
	if p := os.Getenv("NFTPOLICY_BIN"); p != "" {
		return p, "$NFTPOLICY_BIN", nil
	}
	root, err := ModuleRoot()
	if err != nil {
		return "", "", err
	}
	bin := filepath.Join(root, "bin", "nftpolicy")
	if st, err := os.Stat(bin); err == nil {
		newest, file, err := newestSource(ctx, root)
		if err != nil {
			return "", "", err
		}
		if !newest.After(st.ModTime()) {
			return bin, "bin/nftpolicy (up to date)", nil
		}
		how = fmt.Sprintf("go build (bin/nftpolicy is older than %s)", file)
	} else {
		how = "go build (no bin/nftpolicy)"
	}
	out := filepath.Join(dir, "nftpolicy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/nftpolicy")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("go build ./cmd/nftpolicy: %w\n%s", err, b)
	}
	return out, how, nil
}

// newestSource returns the newest modification time, and the file, among the
// module's go.mod, go.sum and the non-test Go files of every package of this
// module that cmd/nftpolicy is built from.
func newestSource(ctx context.Context, root string) (time.Time, string, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-deps", "-f", "{{if not .Standard}}{{.Dir}}{{end}}", "./cmd/nftpolicy")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return time.Time{}, "", fmt.Errorf("go list -deps ./cmd/nftpolicy: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var newest time.Time
	var newestFile string
	consider := func(path string) {
		if st, err := os.Stat(path); err == nil && st.ModTime().After(newest) {
			newest, newestFile = st.ModTime(), path
		}
	}
	consider(filepath.Join(root, "go.mod"))
	consider(filepath.Join(root, "go.sum"))
	for dir := range strings.FieldsSeq(string(out)) {
		if rel, err := filepath.Rel(root, dir); err != nil || strings.HasPrefix(rel, "..") {
			continue // a dependency in the module cache
		}
		entries, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return time.Time{}, "", err
		}
		for _, e := range entries {
			if name := e.Name(); strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go") {
				consider(filepath.Join(dir, name))
			}
		}
	}
	if rel, err := filepath.Rel(root, newestFile); err == nil {
		newestFile = rel
	}
	return newest, newestFile, nil
}
