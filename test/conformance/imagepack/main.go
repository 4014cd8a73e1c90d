// Command imagepack packs one static binary as a one-layer container image and
// writes it as a `docker save` archive, which `ctr -n k8s.io images import`
// reads. The conformance cluster has no registry: its images (agnhost, pause,
// nftpolicy) are imported into each node's containerd from these archives, and
// pods start them with IfNotPresent or Never.
//
// Usage:
//
//	imagepack -o OUT.tar -name REPO:TAG [-entrypoint /bin/x,arg] [-cmd a,b] BINARY:/PATH/IN/IMAGE...
//
// The archive is deterministic for the same inputs (fixed mtimes, no created
// date), so its image ID changes only when a binary does.
package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := flag.NewFlagSet("imagepack", flag.ContinueOnError)
	out := fs.String("o", "", "output archive")
	name := fs.String("name", "", "image reference, REPO:TAG")
	entrypoint := fs.String("entrypoint", "", "comma-separated entrypoint")
	cmd := fs.String("cmd", "", "comma-separated default arguments")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *out == "" || *name == "" || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: imagepack -o OUT.tar -name REPO:TAG [-entrypoint a,b] [-cmd a,b] BINARY:/PATH...")
		return 2
	}
	if err := pack(*out, *name, split(*entrypoint), split(*cmd), fs.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "imagepack:", err)
		return 1
	}
	return 0
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// epoch is every file's mtime, so that equal inputs give equal archives.
var epoch = time.Unix(0, 0).UTC()

// layer returns an uncompressed layer tar holding each BINARY:/PATH file
// (mode 0755, uid 0) and the directories above it, plus an empty /tmp.
func layer(files []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	mkdir := func(d string) error {
		if d == "/" || d == "." || dirs[d] {
			return nil
		}
		dirs[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch})
	}
	if err := mkdir("/tmp"); err != nil {
		return nil, err
	}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, ":")
		if !ok || !strings.HasPrefix(dst, "/") {
			return nil, fmt.Errorf("%q: want BINARY:/ABSOLUTE/PATH", f)
		}
		var parents []string
		for d := path.Dir(dst); d != "/"; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if err := mkdir(d); err != nil {
				return nil, err
			}
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(dst, "/"), Mode: 0o755, Size: int64(len(data)), ModTime: epoch}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// pack writes the archive: manifest.json, the image config and one layer, in
// the layout `docker save` produces.
func pack(out, name string, entrypoint, cmd []string, files []string) error {
	if !strings.Contains(path.Base(name), ":") {
		return errors.New("-name must carry a tag (REPO:TAG)")
	}
	l, err := layer(files)
	if err != nil {
		return err
	}
	layerID := digest(l)
	config := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": entrypoint,
			"Cmd":        cmd,
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{"sha256:" + layerID}},
	}
	cfg, err := json.Marshal(config)
	if err != nil {
		return err
	}
	cfgName := digest(cfg) + ".json"
	manifest, err := json.Marshal([]map[string]any{{
		"Config":   cfgName,
		"RepoTags": []string{name},
		"Layers":   []string{layerID + "/layer.tar"},
	}})
	if err != nil {
		return err
	}

	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := io.Copy(tw, bytes.NewReader(data))
		return err
	}
	err = errors.Join(
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: layerID + "/", Mode: 0o755, ModTime: epoch}),
		add(layerID+"/layer.tar", l),
		add(cfgName, cfg),
		add("manifest.json", manifest),
		tw.Close(),
		f.Close(),
	)
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}
