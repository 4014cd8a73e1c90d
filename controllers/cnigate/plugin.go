package cnigate

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
)

// PluginType is the gate's type in a network configuration, and so its
// binary's name in the CNI bin directory.
const PluginType = "nftpolicy"

// The CNI versions the gate speaks: chaining (prevResult) came with 0.3.0.
var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// CNI error codes (the CNI specification, "Error").
const (
	codeIncompatibleVersion = 1
	codeInvalidEnvironment  = 4
	codeIOFailure           = 5
	codeDecodingFailure     = 6
	codeInvalidConfig       = 7
	codeTryAgainLater       = 11
)

// Node is what the gate asks of the node it runs on.
type Node struct {
	// SetExists says whether the inet table named table holds the set named
	// set, in the network namespace the plugin runs in (netlink.SetExists);
	// false, not an error, when there is no such table.
	SetExists func(table, set string) (bool, error)
	// TableExists says whether the inet table named table exists there
	// (netlink.TableExists): asked only to say why a pod waited in vain.
	TableExists func(table string) (bool, error)
	// BootID identifies the node's current boot (BootID).
	BootID func() (string, error)
	// Wait is how long an ADD waits for the table to be in force before it
	// fails with "try again later" (none when 0); it looks every Poll
	// (DefaultPoll when 0) meanwhile.
	Wait, Poll time.Duration
	// Log, when set, gets one line for each ADD that did not pass at once:
	// which pod waited, how long, and how it ended. The plugin's standard
	// error: a runtime on libcni (containerd, CRI-O) writes that of an ADD
	// that passed to its own (the node's journal); of one that failed, it
	// keeps the error result only, which the pod's Events show.
	Log io.Writer
}

// How long the plugin's ADD waits, and how often it looks. The kubelet gives a
// sandbox's creation twice its --runtime-request-timeout (4 minutes by
// default), and a pod that waits here starts within a Poll of its policies;
// one that waits longer is tried again by the kubelet, ~10 s later.
const (
	DefaultWait = 20 * time.Second
	DefaultPoll = 100 * time.Millisecond
)

// bootIDFile changes at every boot of the kernel (it is not namespaced: a
// container reads the node's).
const bootIDFile = "/proc/sys/kernel/random/boot_id"

// BootID returns the kernel's boot identifier.
func BootID() (string, error) {
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("%s is empty", bootIDFile)
	}
	return id, nil
}

// netConf is what the gate reads of its network configuration.
type netConf struct {
	CNIVersion string          `json:"cniVersion"`
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Table      string          `json:"table"`
	PrevResult json.RawMessage `json:"prevResult"`
}

// pluginError is a CNI error result, printed on stdout with a non-zero exit.
type pluginError struct {
	CNIVersion string `json:"cniVersion"`
	Code       int    `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

// Run is the plugin: the CNI command in getenv("CNI_COMMAND"), the network
// configuration on stdin, the result or error on stdout. It returns the exit
// code. ADD passes once the table holds the set that marks it in force in this
// boot of the node (nft.SyncedBootSet: the agent's every table has it, and a
// table restored at boot from a ruleset saved in an earlier one has that
// boot's), waiting up to node.Wait for it.
func Run(getenv func(string) string, stdin io.Reader, stdout io.Writer, node Node) int {
	cmd := getenv("CNI_COMMAND")
	switch cmd {
	case "DEL", "CHECK", "GC", "STATUS":
		// Never in the way of a teardown, and never the node's network
		// readiness (see the package documentation), whatever the input.
		return 0
	}
	raw, err := io.ReadAll(stdin)
	if err != nil {
		return fail(stdout, "", codeIOFailure, "nftpolicy: reading the network configuration", err.Error())
	}
	var conf netConf
	if len(strings.TrimSpace(string(raw))) > 0 {
		if err := json.Unmarshal(raw, &conf); err != nil {
			return fail(stdout, "", codeDecodingFailure, "nftpolicy: decoding the network configuration", err.Error())
		}
	}
	switch cmd {
	case "VERSION":
		// The specification ("VERSION Success"): cniVersion is the input's.
		v := conf.CNIVersion
		if v == "" {
			v = supportedVersions[len(supportedVersions)-1]
		}
		return write(stdout, map[string]any{"cniVersion": v, "supportedVersions": supportedVersions})
	case "ADD":
	default:
		return fail(stdout, conf.CNIVersion, codeInvalidEnvironment, fmt.Sprintf("nftpolicy: unknown CNI_COMMAND %q", cmd), "")
	}
	if !slices.Contains(supportedVersions, conf.CNIVersion) {
		return fail(stdout, conf.CNIVersion, codeIncompatibleVersion,
			fmt.Sprintf("nftpolicy: CNI version %q not supported (chaining needs 0.3.0 or later)", conf.CNIVersion),
			"supported: "+strings.Join(supportedVersions, ", "))
	}
	if len(conf.PrevResult) == 0 || string(conf.PrevResult) == "null" {
		return fail(stdout, conf.CNIVersion, codeInvalidConfig,
			"nftpolicy: no prevResult: the gate must come after the plugin that sets up the pod's network in the plugins of "+quoted(conf.Name), "")
	}
	table := conf.Table
	if table == "" {
		table = nft.DefaultTable // the entry names none
	}
	start := time.Now()
	logged := func(code int, how string) int {
		if node.Log != nil {
			fmt.Fprintf(node.Log, "nftpolicy-cni-gate: pod %s (sandbox %.12s) waited %v for table inet %s to be in force in this boot: %s\n",
				podOf(getenv("CNI_ARGS")), getenv("CNI_CONTAINERID"), time.Since(start).Round(time.Millisecond), table, how)
		}
		return code
	}
	wait := func(format string, args ...any) int {
		msg := fmt.Sprintf(format, args...)
		code := fail(stdout, conf.CNIVersion, codeTryAgainLater, msg,
			"the nftpolicy agent opens the gate at its first sync after the node starts (its table then holds set "+nft.SyncedBootSet("<boot id>")+"); if nftpolicy was removed from the cluster, "+
				"run its cleanup (config/cleanup) on this node, or delete the \"type\": \"nftpolicy\" entry from the plugins of "+quoted(conf.Name)+" in the CNI configuration directory")
		return logged(code, "try again later: "+strings.TrimPrefix(msg, "nftpolicy: "))
	}
	boot, err := node.BootID()
	if err != nil {
		return wait("nftpolicy: cannot read this node's boot id: %v", err)
	}
	marker := nft.SyncedBootSet(boot)
	poll := node.Poll
	if poll <= 0 {
		poll = DefaultPoll
	}
	deadline := time.Now().Add(node.Wait)
	for slept := false; ; slept = true {
		ok, err := node.SetExists(table, marker)
		switch {
		case ok && !slept:
			return passThrough(stdout, conf.CNIVersion, conf.PrevResult) // the common case: not logged
		case ok:
			return logged(passThrough(stdout, conf.CNIVersion, conf.PrevResult), "passed")
		case err != nil && !time.Now().Before(deadline):
			return wait("nftpolicy: cannot tell whether table inet %s is in force on this node: %v", table, err)
		case !time.Now().Before(deadline):
			if ok, err := node.TableExists(table); err == nil && ok {
				return wait("nftpolicy: the agent has not put table inet %s in force since this node started (no set %s): the pod waits for its network policies", table, marker)
			}
			return wait("nftpolicy: table inet %s is not in force on this node: the pod waits for its network policies", table)
		}
		time.Sleep(min(poll, time.Until(deadline)))
	}
}

// podOf names the pod in CNI_ARGS (as the kubelet's runtime passes it:
// K8S_POD_NAMESPACE=ns;K8S_POD_NAME=name;...), or "?".
func podOf(args string) string {
	var ns, name string
	for kv := range strings.SplitSeq(args, ";") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "K8S_POD_NAMESPACE":
			ns = v
		case "K8S_POD_NAME":
			name = v
		}
	}
	if name == "" {
		return "?"
	}
	return ns + "/" + name
}

// passThrough prints the previous plugin's result as the gate's own, in the
// configuration's version (the specification: a chained plugin that changes
// nothing returns prevResult).
func passThrough(stdout io.Writer, version string, prev json.RawMessage) int {
	var res map[string]json.RawMessage
	if err := json.Unmarshal(prev, &res); err != nil {
		return fail(stdout, version, codeDecodingFailure, "nftpolicy: decoding prevResult", err.Error())
	}
	v, _ := json.Marshal(version)
	res["cniVersion"] = v
	return write(stdout, res)
}

func quoted(name string) string {
	if name == "" {
		return "the network configuration"
	}
	return fmt.Sprintf("network %q", name)
}

func fail(stdout io.Writer, version string, code int, msg, details string) int {
	if version == "" {
		version = supportedVersions[len(supportedVersions)-1]
	}
	write(stdout, pluginError{CNIVersion: version, Code: code, Msg: msg, Details: details})
	return 1
}

func write(stdout io.Writer, v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return 1
	}
	if _, err := stdout.Write(append(b, '\n')); err != nil {
		return 1
	}
	return 0
}
