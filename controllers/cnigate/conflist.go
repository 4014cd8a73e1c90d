package cnigate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft"
)

// configExtensions are the files a container runtime reads network
// configurations from (libcni's ConfFiles, as containerd and CRI-O call it).
var configExtensions = []string{".conf", ".conflist", ".json"}

// errNoConfig: the directory holds no network configuration yet (the CNI's own
// agent has not written it).
var errNoConfig = errors.New("no CNI network configuration")

// ActiveConfig returns the path of the network configuration the runtime sets
// pods up with: the first file of dir, in name order, with one of
// configExtensions (containerd and CRI-O take the first, and only the first).
func ActiveConfig(dir string) (string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if slices.Contains(configExtensions, filepath.Ext(e.Name())) {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("%w in %s", errNoConfig, dir)
	}
	slices.Sort(names)
	return filepath.Join(dir, names[0]), nil
}

// gateEntry is the gate's entry in a list of plugins.
type gateEntry struct {
	Type  string `json:"type"`
	Table string `json:"table"`
}

// withGate returns the configuration list data with the gate's entry for table
// among its plugins: where it is if it is there, else last. An entry with
// anything else in it (an earlier version's "boot") is written anew. changed
// is false when data already has it as wanted. Everything else is kept as it
// was, the order of the keys too; the result is indented anew.
func withGate(data []byte, table string) (out []byte, changed bool, err error) {
	if err := chainable(data); err != nil {
		return nil, false, err
	}
	want, _ := json.Marshal(gateEntry{Type: PluginType, Table: table})
	return editPlugins(data, func(plugins []json.RawMessage) ([]json.RawMessage, bool) {
		for i, p := range plugins {
			if _, ok := asGate(p); ok {
				var got bytes.Buffer
				if json.Compact(&got, p) == nil && bytes.Equal(got.Bytes(), want) {
					return plugins, false
				}
				plugins[i] = want
				return plugins, true
			}
		}
		return append(plugins, want), true
	})
}

// errVersion: the list names a CNI version the plugin refuses.
var errVersion = errors.New("the gate cannot chain in this list")

// chainable fails with errVersion unless the plugin speaks every CNI version a
// runtime may run the list's plugins with: its cniVersion, or, with
// cniVersions (CNI 1.1), any of those and the cniVersion (libcni takes the
// highest its own version allows). A list without either is 0.1.0 to libcni,
// which passes its plugins an empty version: the plugin would fail every ADD
// of such a list with "incompatible version". Data that is not a list is left
// to editPlugins, which says why.
func chainable(data []byte) error {
	var l struct {
		Plugins     json.RawMessage `json:"plugins"`
		CNIVersion  string          `json:"cniVersion"`
		CNIVersions []string        `json:"cniVersions"`
	}
	if json.Unmarshal(data, &l) != nil || l.Plugins == nil {
		return nil
	}
	versions := l.CNIVersions
	if l.CNIVersion != "" || len(versions) == 0 {
		versions = append(versions, l.CNIVersion)
	}
	for _, v := range versions {
		if !slices.Contains(supportedVersions, v) {
			if v == "" {
				v = "none (0.1.0)"
			} else {
				v = strconv.Quote(v)
			}
			return fmt.Errorf("%w: its cniVersion is %s, and the gate passes a previous plugin's result on only in %s",
				errVersion, v, strings.Join(supportedVersions, ", "))
		}
	}
	return nil
}

// withoutGate returns data without the gate's entries; changed is false when
// it had none.
func withoutGate(data []byte) (out []byte, changed bool, err error) {
	return editPlugins(data, func(plugins []json.RawMessage) ([]json.RawMessage, bool) {
		kept := slices.DeleteFunc(slices.Clone(plugins), func(p json.RawMessage) bool {
			_, ok := asGate(p)
			return ok
		})
		return kept, len(kept) != len(plugins)
	})
}

func asGate(p json.RawMessage) (gateEntry, bool) {
	var e gateEntry
	if json.Unmarshal(p, &e) != nil || e.Type != PluginType {
		return gateEntry{}, false
	}
	if e.Table == "" {
		e.Table = nft.DefaultTable
	}
	return e, true
}

// editPlugins applies edit to the "plugins" of a configuration list.
func editPlugins(data []byte, edit func([]json.RawMessage) ([]json.RawMessage, bool)) ([]byte, bool, error) {
	fields, err := objectFields(data)
	if err != nil {
		return nil, false, err
	}
	at := slices.IndexFunc(fields, func(f field) bool { return f.key == "plugins" })
	if at < 0 {
		return nil, false, errors.New(`not a configuration list (no "plugins"): a single plugin's configuration cannot chain the gate`)
	}
	var plugins []json.RawMessage
	if err := json.Unmarshal(fields[at].value, &plugins); err != nil {
		return nil, false, fmt.Errorf(`"plugins": %w`, err)
	}
	if len(plugins) == 0 {
		return nil, false, errors.New(`"plugins" is empty`)
	}
	plugins, changed := edit(plugins)
	if !changed {
		return data, false, nil
	}
	if fields[at].value, err = json.Marshal(plugins); err != nil {
		return nil, false, err
	}
	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(f.value)
	}
	b.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, b.Bytes(), "", "  "); err != nil {
		return nil, false, err
	}
	out.WriteByte('\n')
	return out.Bytes(), true, nil
}

type field struct {
	key   string
	value json.RawMessage
}

// objectFields returns the members of the JSON object data, in their order.
func objectFields(data []byte) ([]field, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var fields []field
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := t.(string)
		if !ok {
			return nil, errors.New("not a JSON object")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%q: %w", key, err)
		}
		fields = append(fields, field{key, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if strings.TrimSpace(string(data[dec.InputOffset():])) != "" {
		return nil, errors.New("data after the JSON object")
	}
	return fields, nil
}
