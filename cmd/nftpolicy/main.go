// Command nftpolicy is the per-node Kubernetes NetworkPolicy enforcer.
//
// It has three subcommands:
//
//	nftpolicy agent    watch Pods, Namespaces and NetworkPolicies and keep this
//	                   node's nftables table in sync with them (the DaemonSet)
//	nftpolicy cleanup  remove the table from this node (preStop / uninstall)
//	nftpolicy explain  why a connection is allowed or denied, and by which policy
//	nftpolicy version  print the version and the Go version
//
// This file is the binary's contract and nothing more: flags -> Options ->
// run(). Exit codes: 0 success (including a clean SIGTERM/SIGINT shutdown),
// 1 a failure while running, 2 a usage or configuration error found before
// anything started; errors of kind 2 are one line on stderr, never a trace.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/nftpolicy/nftpolicy/controllers"
	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
	"github.com/nftpolicy/nftpolicy/nft/nflog"
)

// version is set at link time: -ldflags "-X main.version=v0.1.0".
var version = "dev"

// Flag defaults. The agent runs with hostNetwork, so every port it binds is a
// port on the node: metrics stay on loopback by default (scrape through a
// sidecar/proxy or set the flag), while the health probes must be reachable
// by the kubelet at the node's address.
const (
	defaultTableName      = "nftpolicy"
	defaultMetricsAddr    = "127.0.0.1:9090"
	defaultHealthAddr     = ":8081"
	defaultFullSyncPeriod = 5 * time.Minute
	// Spaces syncs only during bursts: an event after a quiet spell is served at once.
	defaultMinSyncInterval = 10 * time.Millisecond
	// The deny log is off unless asked for (config/agent turns it on). Its NFLOG
	// group is one no other NFLOG user we know of takes (kube-router uses 100,
	// Calico 1 and 2).
	defaultDenyLogRate  = "0"
	defaultDenyLogGroup = 7600
)

const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "nftpolicy: missing command (run 'nftpolicy help' for usage)")
		return exitUsage
	}
	switch args[0] {
	case "agent":
		return runAgent(args[1:], stdout, stderr)
	case "cleanup":
		return runCleanup(args[1:], stdout, stderr)
	case "explain":
		return runExplain(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "nftpolicy %s %s %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return exitOK
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, topUsage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "nftpolicy: unknown command %q (run 'nftpolicy help' for usage)\n", args[0])
		return exitUsage
	}
}

const topUsage = `Usage: nftpolicy <command> [flags]

Commands:
  agent     enforce NetworkPolicies on this node (run as a DaemonSet)
  cleanup   remove this node's nftables table
  explain   why a connection is allowed or denied, and by which policy
  version   print the version

Run 'nftpolicy <command> -h' for the flags of a command.
`

func runAgent(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("agent")
	var opts controllers.Options
	fs.StringVar(&opts.Kubeconfig, "kubeconfig", "",
		"path to a kubeconfig (default $KUBECONFIG, else the in-cluster service account)")
	fs.StringVar(&opts.NodeName, "node-name", os.Getenv("NODE_NAME"),
		"name of the Node this agent enforces policy for (default $NODE_NAME)")
	netnsFlag(fs, &opts.NetNS)
	tableFlag(fs, &opts.TableName)
	fs.StringVar(&opts.MetricsAddr, "metrics-bind-address", defaultMetricsAddr,
		"host:port for the Prometheus /metrics endpoint; 0 disables it")
	fs.StringVar(&opts.HealthAddr, "health-probe-bind-address", defaultHealthAddr,
		"host:port for the /healthz and /readyz endpoints; 0 disables them")
	fs.DurationVar(&opts.FullSyncPeriod, "full-sync-period", defaultFullSyncPeriod,
		"how often to read the whole cache and the kernel's table again and rewrite the table (repairs outside tampering and missed events; read off the sync path)")
	fs.DurationVar(&opts.MinSyncInterval, "min-sync-interval", defaultMinSyncInterval,
		"least time between the starts of two syncs; events arriving meanwhile are coalesced into the next")
	denyLogRate := fs.String("deny-log-rate", defaultDenyLogRate,
		"log denied packets, at most this many: N/second, N/minute or N/hour for the whole node (the kernel "+
			"drops the rest from the log, never from enforcement); 0 disables the deny log")
	denyLogBurst := fs.Uint("deny-log-burst", 0, "packets the deny log may take at once above its rate; 0: the rate's N")
	denyLogGroup := fs.Uint("deny-log-group", defaultDenyLogGroup, "the NFLOG group the deny log uses (0-65535; no other NFLOG user on the node may take it)")
	policyCounters := fs.Bool("policy-counters", true,
		"count each group chain's allowed and denied packets in the kernel and serve them per policy as nftpolicy_policy_packets_total")
	fs.BoolVar(&opts.JSON, "api-json", false,
		"talk JSON to the apiserver instead of protobuf (larger and slower; for comparison and debugging)")
	fs.BoolVar(&opts.PodWatchList, "pod-watch-list", false,
		"list pods at start through client-go's watch-list (one event per pod: ~3 times the apiserver's CPU at 100k pods) "+
			"instead of one list decoded pod by pod as it arrives (docs/scale.md); for comparison")
	fs.StringVar(&opts.PprofAddr, "pprof-bind-address", "0",
		"serve Go's /debug/pprof profiles on this host:port (keep it on localhost); \"0\" disables")
	fs.BoolVar(&opts.APICompression, "api-compression", false,
		"accept gzip-compressed responses from the apiserver: a quarter of the bytes for a third more of the "+
			"apiserver's CPU and a slower start (docs/scale.md)")
	memoryLimit := fs.String("memory-limit", os.Getenv("MEMORY_LIMIT"),
		"the memory the agent may use, as a quantity (e.g. 128Mi; default $MEMORY_LIMIT, which the DaemonSet "+
			"sets from its memory limit); the Go runtime's soft memory limit is set to "+
			strconv.Itoa(memoryLimitPercent)+"% of it, so the garbage collector works harder before the kernel "+
			"would kill the agent; empty or 0: none ($GOMEMLIMIT, when set, is used instead)")
	established := fs.String("established", "recheck",
		"what a policy change does to open connections: recheck (each is judged again by the new policies, "+
			"in the kernel, and cut when they deny it) or keep (a connection once allowed lives on)")
	ctMarkMask := fs.String("ct-mark-mask", fmt.Sprintf("0x%08x", compile.DefaultCtMarkMask),
		"the connection mark bits --established=recheck owns for its epochs (contiguous, at least 2 bits; "+
			"other bits are never changed): pick bits no other component on the node uses")
	unknownCIDRs := fs.String("unknown-pod-cidrs", "",
		"this node's pod CIDRs, comma-separated, or node to read them from this node's Node object "+
			"(spec.podCIDRs, else spec.podCIDR; none there: off, with an error logged and a Warning Event on the Node): traffic "+
			"from an address in them that no pod the agent knows has is dropped until the agent learns the pod "+
			"(unknown means isolated: a new pod waits for the agent before its first packet leaves the node); empty: off")
	fs.StringVar(&opts.StartupTaint, "startup-taint", controllers.DefaultStartupTaint,
		"the key of a taint the agent removes from its own Node once the node's policies are in force (its first full "+
			"sync): register nodes with it (e.g. kubelet --register-with-taints="+controllers.DefaultStartupTaint+"=:NoSchedule) "+
			"and no pod that does not tolerate it starts on a node before its policies apply; empty: taints are left alone")
	cniGateFlags(fs, &opts.CNIGateConfDir, &opts.CNIGateBinDir, "keep")
	zapOpts := zap.Options{}
	zapOpts.BindFlags(fs)

	if code, done := parse(fs, args, stdout, stderr); done {
		return code
	}
	var estErr, maskErr error
	opts.Established, estErr = compile.ParseEstablished(*established)
	if estErr != nil {
		estErr = fmt.Errorf("--established: %w", estErr)
	}
	opts.CtMarkMask, maskErr = parseCtMarkMask(*ctMarkMask)
	var cidrErr error
	if strings.TrimSpace(*unknownCIDRs) == unknownFromNode {
		opts.UnknownPodCIDRsFromNode = true
	} else {
		opts.UnknownPodCIDRs, cidrErr = parseCIDRs(*unknownCIDRs)
	}
	if opts.Kubeconfig == "" {
		opts.Kubeconfig = os.Getenv("KUBECONFIG")
	}
	softLimit, limitErr := goMemoryLimit(*memoryLimit)
	var denyLogErr, gateErr error
	opts.DenyLog, denyLogErr = denyLogOptions(*denyLogRate, *denyLogBurst, *denyLogGroup)
	if opts.CNIGateConfDir != "" {
		opts.CNIGateBinary, gateErr = gatePlugin()
	}
	err := errors.Join(
		limitErr,
		denyLogErr,
		checkRequired("node-name", "NODE_NAME", opts.NodeName),
		checkAddr("metrics-bind-address", opts.MetricsAddr),
		checkAddr("health-probe-bind-address", opts.HealthAddr),
		checkAddr("pprof-bind-address", opts.PprofAddr),
		checkPositive("full-sync-period", opts.FullSyncPeriod),
		checkNotNegative("min-sync-interval", opts.MinSyncInterval),
		checkTableName(opts.TableName),
		checkNetNS(opts.NetNS),
		checkTaintKey(opts.StartupTaint),
		checkCNIGate(opts.CNIGateConfDir, opts.CNIGateBinDir),
		gateErr,
		estErr,
		maskErr,
		cidrErr,
	)
	if err == nil {
		opts.Config, err = controllers.LoadRESTConfig(opts.Kubeconfig)
	}
	if err != nil {
		return usageError(stderr, "agent", err)
	}

	log := zap.New(zap.UseFlagOptions(&zapOpts))
	ctrl.SetLogger(log)
	if softLimit > 0 {
		debug.SetMemoryLimit(softLimit)
		log.Info("Go soft memory limit set", "bytes", softLimit, "from", *memoryLimit)
	}
	// The agent's rulesets come from a compile.Compiler and are never modified.
	applier, err := netlink.New(netlink.Options{Table: opts.TableName, NetNSPath: opts.NetNS, ShareDesired: true})
	if err != nil {
		fmt.Fprintf(stderr, "nftpolicy agent: %v\n", err)
		return exitFailure
	}
	defer applier.Close()
	opts.Applier = applier
	if *policyCounters {
		opts.PolicyCounters = func(ctx context.Context) (map[string]controllers.CounterRead, error) {
			vals, err := applier.Counters(ctx)
			out := make(map[string]controllers.CounterRead, len(vals))
			for name, v := range vals {
				out[name] = controllers.CounterRead{Packets: v.Packets, Created: v.Created}
			}
			return out, err
		}
	}
	if opts.DenyLog.Rate > 0 {
		opts.OpenDenyLog = func() (controllers.DenyLogSource, error) {
			return openDenyLog(opts.NetNS, opts.DenyLog.Group)
		}
	}
	if err := controllers.RunAgent(ctrl.SetupSignalHandler(), opts, log); err != nil {
		log.Error(err, "agent failed")
		return exitFailure
	}
	return exitOK
}

// checkTaintKey checks --startup-taint: empty, or a taint key (a qualified name).
func checkTaintKey(key string) error {
	if key == "" {
		return nil
	}
	if errs := validation.IsQualifiedName(key); len(errs) > 0 {
		return fmt.Errorf("--startup-taint: %q is not a taint key: %s", key, strings.Join(errs, "; "))
	}
	return nil
}

// parseCtMarkMask reads --ct-mark-mask: a number (0x for hex) that
// compile.CheckCtMarkMask accepts.
func parseCtMarkMask(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return 0, fmt.Errorf("--ct-mark-mask: %q is not a 32-bit number", v)
	}
	if err := compile.CheckCtMarkMask(uint32(n)); err != nil {
		return 0, fmt.Errorf("--ct-mark-mask: %w", err)
	}
	return uint32(n), nil
}

// unknownFromNode is the --unknown-pod-cidrs value that reads them from the Node.
const unknownFromNode = "node"

// parseCIDRs reads --unknown-pod-cidrs: comma-separated prefixes, host bits zero
// ("node" alone is handled by the caller).
func parseCIDRs(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil || p != p.Masked() {
			return nil, fmt.Errorf("--unknown-pod-cidrs: %q is not a CIDR (network address/bits); want CIDRs or node alone", f)
		}
		out = append(out, p)
	}
	return out, nil
}

// memoryLimitPercent is the share of --memory-limit given to the Go runtime as its
// soft limit: the rest is for what the runtime does not count (the binary's text,
// and some slack for the kernel's accounting).
const memoryLimitPercent = 80

// goMemoryLimit returns the soft memory limit for the --memory-limit value v: 0
// for none (v empty or 0, or $GOMEMLIMIT set, which the runtime already applies).
func goMemoryLimit(v string) (int64, error) {
	if v == "" || os.Getenv("GOMEMLIMIT") != "" {
		return 0, nil
	}
	q, err := resource.ParseQuantity(v)
	if err != nil || q.Sign() < 0 {
		return 0, fmt.Errorf("--memory-limit: %q is not a memory quantity (e.g. 128Mi)", v)
	}
	return q.Value() / 100 * memoryLimitPercent, nil
}

var rateRE = regexp.MustCompile(`^([0-9]+)/(second|minute|hour)$`)

// denyLogOptions reads --deny-log-rate ("0" or N/second, N/minute, N/hour),
// --deny-log-burst and --deny-log-group.
func denyLogOptions(rate string, burst, group uint) (compile.DenyLog, error) {
	if group > 65535 {
		return compile.DenyLog{}, fmt.Errorf("--deny-log-group=%d: want 0-65535", group)
	}
	if burst > 1<<32-1 {
		return compile.DenyLog{}, fmt.Errorf("--deny-log-burst=%d: too large", burst)
	}
	if rate == "0" {
		return compile.DenyLog{}, nil
	}
	m := rateRE.FindStringSubmatch(rate)
	var n uint64
	var err error
	if m != nil {
		n, err = strconv.ParseUint(m[1], 10, 32)
	}
	if m == nil || err != nil || n == 0 {
		return compile.DenyLog{}, fmt.Errorf("--deny-log-rate=%q: want N/second, N/minute or N/hour (N at least 1), or 0 to disable", rate)
	}
	per := map[string]nft.LimitUnit{"second": nft.PerSecond, "minute": nft.PerMinute, "hour": nft.PerHour}[m[2]]
	return compile.DenyLog{Group: uint16(group), Rate: uint32(n), Per: per, Burst: uint32(burst)}, nil
}

// openDenyLog binds the deny log's NFLOG group in the network namespace at
// netns ("" for the agent's own).
func openDenyLog(netns string, group uint16) (controllers.DenyLogSource, error) {
	cfg := nflog.Config{Group: group, ReadBuffer: 1 << 20, QueueThreshold: 16, FlushTimeout: 100 * time.Millisecond}
	if netns != "" {
		f, err := os.Open(netns)
		if err != nil {
			return nil, err
		}
		defer f.Close() // the socket, once open, stays in the namespace
		cfg.NetNS = int(f.Fd())
	}
	return nflog.Open(cfg)
}

// removeTable is what 'nftpolicy cleanup' calls: the netlink applier's Delete.
var removeTable controllers.TableRemover = func(ctx context.Context, netns, table string) error {
	a, err := netlink.New(netlink.Options{Table: table, NetNSPath: netns})
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Delete(ctx)
}

func runCleanup(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("cleanup")
	opts := controllers.CleanupOptions{RemoveTable: removeTable, Out: stdout}
	netnsFlag(fs, &opts.NetNS)
	tableFlag(fs, &opts.TableName)
	cniGateFlags(fs, &opts.CNIGateConfDir, &opts.CNIGateBinDir, "remove")
	fs.StringVar(&opts.CNICacheDir, "cni-cache-dir", cnigate.DefaultCacheDir,
		"libcni's cache directory (mounted from the host): the gate's plugin binary stays while a pod's network configuration cached there "+
			"at its set-up names it (CRI-O tears pods down with that configuration); with --cni-gate-conf-dir")
	if code, done := parse(fs, args, stdout, stderr); done {
		return code
	}
	cacheDir := error(nil)
	if !filepath.IsAbs(opts.CNICacheDir) {
		cacheDir = errors.New("--cni-cache-dir must be an absolute path")
	}
	if err := errors.Join(checkTableName(opts.TableName), checkNetNS(opts.NetNS), checkCNIGate(opts.CNIGateConfDir, opts.CNIGateBinDir), cacheDir); err != nil {
		return usageError(stderr, "cleanup", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := controllers.RunCleanup(ctx, opts); err != nil {
		fmt.Fprintf(stderr, "nftpolicy cleanup: %v\n", err)
		return exitFailure
	}
	return exitOK
}

func newFlagSet(cmd string) *flag.FlagSet {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: nftpolicy %s [flags]\n\nFlags:\n", cmd)
		fs.PrintDefaults()
	}
	return fs
}

func netnsFlag(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "netns", "",
		"program the table inside the network namespace at this path (e.g. /var/run/netns/node-1); default: the agent's own")
}

// cniGateFlags are the node's CNI directories, where the agent keeps the CNI
// gate (verb "keep") and cleanup removes it ("remove").
func cniGateFlags(fs *flag.FlagSet, confDir, binDir *string, verb string) {
	fs.StringVar(confDir, "cni-gate-conf-dir", "",
		"the node's CNI network configuration directory (e.g. /etc/cni/net.d, mounted from the host): "+verb+
			" the CNI gate's entry in the configuration the runtime uses, so that after a reboot no pod's network comes up "+
			"before the table is in force; with --cni-gate-bin-dir; empty: no gate")
	fs.StringVar(binDir, "cni-gate-bin-dir", "",
		"the node's CNI plugin directory (e.g. /opt/cni/bin, mounted from the host): "+verb+" the gate's plugin binary "+
			cnigate.PluginType+" there; with --cni-gate-conf-dir")
}

// gatePluginName is the CNI gate's plugin binary, beside nftpolicy's (the
// image has both; make build builds both).
const gatePluginName = "nftpolicy-cni-gate"

// gatePlugin returns the path of the gate's plugin binary, beside the running one.
func gatePlugin() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("--cni-gate-conf-dir: locating the agent's binary: %w", err)
	}
	p := filepath.Join(filepath.Dir(exe), gatePluginName)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("--cni-gate-conf-dir: the gate's plugin is not beside the agent's binary: %w", err)
	}
	return p, nil
}

// checkCNIGate checks --cni-gate-conf-dir and --cni-gate-bin-dir: both or
// neither, absolute.
func checkCNIGate(confDir, binDir string) error {
	switch {
	case confDir == "" && binDir == "":
		return nil
	case confDir == "" || binDir == "":
		return errors.New("--cni-gate-conf-dir and --cni-gate-bin-dir go together")
	case !filepath.IsAbs(confDir) || !filepath.IsAbs(binDir):
		return errors.New("--cni-gate-conf-dir and --cni-gate-bin-dir must be absolute paths")
	}
	return nil
}

func tableFlag(fs *flag.FlagSet, p *string) {
	fs.StringVar(p, "table-name", defaultTableName, "name of the nftables inet table this agent owns")
}

// parse parses args; done reports that the command must stop with code:
// -h prints the usage on stdout (exit 0), anything wrong is one line (exit 2).
func parse(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) (code int, done bool) {
	fs.SetOutput(io.Discard) // the flag package would print the whole usage on every error
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		return exitOK, true
	case err != nil:
		return usageError(stderr, fs.Name(), err), true
	case fs.NArg() > 0:
		return usageError(stderr, fs.Name(), fmt.Errorf("unexpected argument %q", fs.Arg(0))), true
	}
	return 0, false
}

var newlines = regexp.MustCompile(`\s*\n\s*`)

// usageError prints err as one line and returns the usage exit code.
// errors.Join separates its errors with newlines; they become "; ".
func usageError(stderr io.Writer, cmd string, err error) int {
	msg := newlines.ReplaceAllString(err.Error(), "; ")
	fmt.Fprintf(stderr, "nftpolicy %s: %s (run 'nftpolicy %s -h' for usage)\n", cmd, msg, cmd)
	return exitUsage
}

func checkRequired(flagName, env, v string) error {
	if v == "" {
		return fmt.Errorf("--%s is required (or set $%s)", flagName, env)
	}
	return nil
}

// checkAddr accepts "0" (disabled) or host:port with a numeric port.
func checkAddr(flagName, addr string) error {
	if addr == "0" {
		return nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err == nil {
		_, err = strconv.ParseUint(port, 10, 16)
	}
	if err != nil {
		return fmt.Errorf("--%s=%q: want host:port with a numeric port, or 0 to disable", flagName, addr)
	}
	return nil
}

func checkPositive(flagName string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("--%s=%s: must be positive", flagName, d)
	}
	return nil
}

func checkNotNegative(flagName string, d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("--%s=%s: must not be negative", flagName, d)
	}
	return nil
}

// tableNameRE is nft's identifier syntax, restricted to what needs no quoting.
var tableNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_-]{0,63}$`)

func checkTableName(name string) error {
	if !tableNameRE.MatchString(name) {
		return fmt.Errorf("--table-name=%q: want a letter or _ then up to 63 letters, digits, _ or -", name)
	}
	return nil
}

// nsGetNSType is the NS_GET_NSTYPE ioctl, _IO(0xb7, 0x3) (Linux >= 4.11).
const nsGetNSType = 0xb703

// checkNetNS checks that path, when set, opens and is a network namespace:
// a file on nsfs (a /proc/PID/ns/net or a bind mount of one, as `ip netns`
// makes) whose namespace type is CLONE_NEWNET.
func checkNetNS(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("--netns: %w", err)
	}
	defer func() { _ = f.Close() }()
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("--netns: statfs %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("--netns: %s is not a namespace file (not on nsfs)", path)
	}
	typ, err := unix.IoctlRetInt(int(f.Fd()), nsGetNSType)
	if err == nil && typ != unix.CLONE_NEWNET {
		return fmt.Errorf("--netns: %s is a namespace but not a network namespace", path)
	}
	return nil
}
