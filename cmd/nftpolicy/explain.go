package main

// The explain subcommand: flags -> explainOptions -> runExplain. The cluster comes
// from manifests (-f), from the API server (listed once, with the caller's own
// credentials, by a plain uncached client), or both (the files overlay the list).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnpv1alpha2 "sigs.k8s.io/network-policy-api/apis/v1alpha2"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/controllers"
	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/explain"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
)

type explainOptions struct {
	question   explain.Question
	kubeconfig string
	useCluster bool     // list the API server (no -f, or --kubeconfig given)
	files      []string // -f
	output     string   // text or json
	live       bool
	netns      string
	nodeName   string
	table      string
}

// fileList is the repeatable -f flag.
type fileList []string

func (f *fileList) String() string     { return strings.Join(*f, ",") }
func (f *fileList) Set(v string) error { *f = append(*f, v); return nil }

const explainUsageHead = `Usage: nftpolicy explain --from X --to Y [--port PROTO/N] [flags]

Explains whether a connection from X to Y is allowed by the NetworkPolicies, and why:
the policies that isolate each end, the rule that allows it (or that none does), and
the packet's walk through the table nftpolicy compiles for the node that judges it.
X and Y are namespace/pod, an IP address, or node/NAME.

The cluster: without -f the API server is listed ($KUBECONFIG, else in-cluster);
-f alone reads only the files (offline); -f with --kubeconfig, or run inside a pod,
overlays the files on the listed cluster (a proposed policy against the real pods).

Flags:
`

func runExplain(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("explain")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), explainUsageHead)
		fs.PrintDefaults()
	}
	var o explainOptions
	var files fileList
	from := fs.String("from", "", "the source: namespace/pod, an IP address or node/NAME (required)")
	to := fs.String("to", "", "the destination: namespace/pod, an IP address or node/NAME (required)")
	port := fs.String("port", "", "PROTO/N, N or PROTO (tcp, udp, sctp; default tcp); empty: every port of every protocol")
	family := fs.Int("family", 0, "4 or 6: the address family when an end has both (default 4 when both ends have it)")
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "path to a kubeconfig (default $KUBECONFIG, else in-cluster); with -f, list this cluster too")
	fs.Var(&files, "f", "a manifest file, a directory of them, or - for stdin (repeatable; YAML or JSON, multi-document, kind: List)")
	fs.StringVar(&o.output, "o", "text", "output: text or json (schema: docs/explain.md)")
	fs.BoolVar(&o.live, "live", false, "on a node: walk the table the kernel holds (read over netlink) instead of the fresh compile, and list their differences")
	fs.StringVar(&o.netns, "netns", "", "with --live: the network namespace to read, a name under /var/run/netns or a path (default: this process's)")
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "with --live: the node this table belongs to (default $NODE_NAME, else the host name)")
	tableFlag(fs, &o.table)
	if code, done := parse(fs, args, stdout, stderr); done {
		return code
	}
	o.files = files
	// -f alone is offline; with --kubeconfig, or inside a pod (kubectl exec ...
	// explain --live -f proposed.yaml), the files overlay the cluster.
	o.useCluster = len(o.files) == 0 || o.kubeconfig != "" || os.Getenv("KUBERNETES_SERVICE_HOST") != ""
	if o.kubeconfig == "" {
		o.kubeconfig = os.Getenv("KUBECONFIG")
	}
	if o.netns != "" && !strings.Contains(o.netns, "/") {
		o.netns = filepath.Join("/var/run/netns", o.netns)
	}
	if o.live && o.nodeName == "" {
		o.nodeName, _ = os.Hostname()
	}
	var errs []error
	check := func(err error) { errs = append(errs, err) }
	if *from == "" || *to == "" {
		check(errors.New("--from and --to are required"))
	} else {
		var err error
		o.question.From, err = explain.ParseRef(*from)
		check(prefix("--from", err))
		o.question.To, err = explain.ParseRef(*to)
		check(prefix("--to", err))
	}
	proto, n, err := parsePort(*port)
	check(err)
	o.question.Protocol, o.question.Port = proto, n
	switch *family {
	case 0, 4, 6:
		o.question.Family = *family
	default:
		check(fmt.Errorf("--family=%d: want 4 or 6", *family))
	}
	if o.output != "text" && o.output != "json" {
		check(fmt.Errorf("-o=%q: want text or json", o.output))
	}
	if o.netns != "" && !o.live {
		check(errors.New("--netns is for --live"))
	}
	fs.Visit(func(f *flag.Flag) { // given, not $NODE_NAME's default
		if f.Name == "node-name" && !o.live {
			check(errors.New("--node-name is for --live"))
		}
	})
	check(checkTableName(o.table))
	if o.live {
		check(checkNetNS(o.netns))
	}
	if err := errors.Join(errs...); err != nil {
		return usageError(stderr, "explain", err)
	}
	if err := explainRun(o, os.Stdin, stdout); err != nil {
		fmt.Fprintf(stderr, "nftpolicy explain: %s\n", newlines.ReplaceAllString(err.Error(), "; "))
		return exitFailure
	}
	return exitOK
}

func prefix(p string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %w", p, err)
}

// parsePort reads PROTO/N, N or PROTO.
func parsePort(s string) (corev1.Protocol, int, error) {
	if s == "" {
		return "", 0, nil
	}
	protoText, num, hasNum := strings.Cut(s, "/")
	if !hasNum {
		if _, err := strconv.Atoi(s); err == nil {
			protoText, num, hasNum = "tcp", s, true
		}
	}
	var proto corev1.Protocol
	switch strings.ToLower(protoText) {
	case "tcp":
		proto = corev1.ProtocolTCP
	case "udp":
		proto = corev1.ProtocolUDP
	case "sctp":
		proto = corev1.ProtocolSCTP
	default:
		return "", 0, fmt.Errorf("--port=%q: want PROTO/N, N or PROTO with PROTO tcp, udp or sctp", s)
	}
	if !hasNum {
		return proto, 0, nil
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("--port=%q: the port must be 1-65535", s)
	}
	return proto, n, nil
}

// explainRun loads the cluster, reads the live table if asked, explains and prints.
func explainRun(o explainOptions, stdin io.Reader, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var c explain.Cluster
	room := readRoom()
	if o.useCluster {
		if err := room.check(0); err != nil { // not even room to list
			return err
		}
		cfg, err := controllers.LoadRESTConfig(o.kubeconfig)
		if err != nil {
			return err
		}
		if room.limited { // refuse before listing what there is no room for
			if n, ok := countPods(ctx, cfg); ok {
				if err := room.check(n); err != nil {
					return err
				}
			}
		}
		if c, err = listCluster(ctx, cfg); err != nil {
			return err
		}
	}
	for _, f := range o.files {
		objs, err := readManifests(f, stdin)
		if err != nil {
			return err
		}
		overlay(&c, objs)
	}
	if err := room.check(len(c.Pods) + len(c.PodRecords)); err != nil {
		return err
	}
	// The agent's defaults: a walk shows the table a node holds (with --live, the
	// kernel's table tells the options it was compiled with).
	opts := explain.Options{Table: o.table, Compile: compile.Options{PolicyCounters: true, Established: compile.EstablishedRecheck}}
	if o.live {
		a, err := netlink.New(netlink.Options{Table: o.table, NetNSPath: o.netns})
		if err != nil {
			return fmt.Errorf("--live: %w", err)
		}
		defer a.Close()
		// Read once to learn the agent's compile options (deny log, counters),
		// then again with the fresh compile under them as the hint.
		first, err := a.Read(ctx, nil)
		if err != nil {
			return fmt.Errorf("--live: reading table inet %s: %w", o.table, err)
		}
		opts.Compile, opts.Epoch = explain.CompileOptionsOf(first)
		if first != nil && (first.FindSet(nft.SetLocalPodsV4) != nil || first.FindSet(nft.SetLocalPodsV6) != nil) {
			// The agent drops unknown local addresses (--unknown-pod-cidrs); the
			// DaemonSet's takes the CIDRs from the Node, so the compile does too.
			var why string
			opts.Compile.UnknownLocalPods, why = unknownCIDRsOf(c, o.nodeName)
			if len(opts.Compile.UnknownLocalPods) == 0 {
				c.Notes = append(c.Notes, fmt.Sprintf("node %s's table drops unknown local pod addresses, but %s: "+
					"its drops are not in the fresh compile", o.nodeName, why))
			}
		}
		rs, err := a.Read(ctx, compileHint(c, o, opts.Compile, opts.Epoch))
		if err != nil {
			return fmt.Errorf("--live: reading table inet %s: %w", o.table, err)
		}
		opts.Live, opts.LiveNode = rs, o.nodeName
		if rs == nil {
			opts.Live = &nft.Ruleset{Table: o.table}
			c.Notes = append(c.Notes, fmt.Sprintf("the kernel holds no table inet %s here: every part of node %s's fresh compile is missing from it", o.table, o.nodeName))
		}
		if !c.HasNode(o.nodeName) {
			c.Notes = append(c.Notes, fmt.Sprintf("node %s (--node-name, else $NODE_NAME, else the host name) is no Node of the cluster and runs none of its pods: the live table is compared with an empty node's compile", o.nodeName))
		}
	}
	a, err := explain.Explain(c, o.question, opts)
	if a == nil {
		return err
	}
	// With --live, an answer can come with an error (a kernel rule explain cannot
	// read): print what is known, then fail.
	if o.output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false) // "->" in summaries, not "-\u003e"
		return errors.Join(err, enc.Encode(a))
	}
	_, werr := io.WriteString(stdout, a.Text())
	return errors.Join(err, werr)
}

// bigListTimeout bounds explain's lists of pods and Nodes, the lists whose
// size grows with the cluster (100,000 pods arrive in ~3 s from a quiet
// apiserver); the others take the config's 30 s, and all of explain its minute.
const bigListTimeout = time.Minute

// listCluster lists pods, namespaces, nodes and NetworkPolicies once.
func listCluster(ctx context.Context, cfg *rest.Config) (explain.Cluster, error) {
	var c explain.Cluster
	cfg = rest.CopyConfig(cfg)
	// Protobuf where the apiserver has it (not for ClusterNetworkPolicies,
	// which come as JSON): a quarter of JSON's bytes and decoding time.
	cfg.ContentType = runtime.ContentTypeProtobuf
	cfg.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	cfg.Timeout = 30 * time.Second
	s := runtime.NewScheme()
	if err := errors.Join(corev1.AddToScheme(s), networkingv1.AddToScheme(s), cnpv1.Install(s), cnpv1alpha2.Install(s)); err != nil {
		return c, err
	}
	cl, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return c, fmt.Errorf("API server %s: %w", cfg.Host, err)
	}
	// The pods as the agent lists them, and the Nodes likewise: one protobuf
	// list each, decoded as it arrives, each object pruned to what the
	// compiler reads, the pods kept as its records (controllers.ListPodRecords,
	// ListNodes; the files of -f overlay them as objects). At 100,000 pods and
	// thousands of Nodes, whole objects are gigabytes to decode, and explain
	// run in the agent's container shares its memory limit (docs/explain.md,
	// "On a large cluster").
	c.PodRecords, err = controllers.ListPodRecords(ctx, cfg, bigListTimeout)
	if errors.Is(err, controllers.ErrNotProtobuf) { // something re-encodes: list them whole
		c.Pods, err = listWhole[*corev1.Pod](ctx, cl, &corev1.PodList{})
	}
	if err != nil {
		return c, fmt.Errorf("API server %s: %w", cfg.Host, err)
	}
	c.Nodes, err = controllers.ListNodes(ctx, cfg, bigListTimeout)
	if errors.Is(err, controllers.ErrNotProtobuf) {
		c.Nodes, err = listWhole[*corev1.Node](ctx, cl, &corev1.NodeList{})
	}
	switch {
	case apierrors.IsForbidden(err):
		// Credentials without list on Nodes (the agent's own service account
		// has it): explain works without them, node/NAME aside.
		c.Notes = append(c.Notes, "nodes not listed (forbidden): a node's address counts as external, and node/NAME is unknown")
	case err != nil:
		return c, fmt.Errorf("API server %s: %w", cfg.Host, err)
	}
	var nss corev1.NamespaceList
	var pols networkingv1.NetworkPolicyList
	for _, l := range []client.ObjectList{&nss, &pols} {
		if err := cl.List(ctx, l); err != nil {
			return c, fmt.Errorf("API server %s: %w", cfg.Host, err)
		}
	}
	for i := range nss.Items {
		c.Namespaces = append(c.Namespaces, &nss.Items[i])
	}
	for i := range pols.Items {
		c.Policies = append(c.Policies, &pols.Items[i])
	}
	cnps, err := listClusterPolicies(ctx, cl)
	if err != nil {
		return c, fmt.Errorf("API server %s: %w", cfg.Host, err)
	}
	c.ClusterPolicies = cnps
	return c, nil
}

// countPods asks the API server how many pods there are, listing one pod's
// metadata (its remainingItemCount); false when it cannot tell.
func countPods(ctx context.Context, cfg *rest.Config) (int, bool) {
	cfg = rest.CopyConfig(cfg)
	cfg.Timeout = 30 * time.Second
	cl, err := client.New(cfg, client.Options{})
	if err != nil {
		return 0, false
	}
	l := &metav1.PartialObjectMetadataList{}
	l.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	if err := cl.List(ctx, l, client.Limit(1)); err != nil || l.RemainingItemCount == nil {
		return 0, false
	}
	return len(l.Items) + int(*l.RemainingItemCount), true
}

// listWhole lists list's kind through cl, whole objects, and returns its items.
func listWhole[T runtime.Object](ctx context.Context, cl client.Client, list client.ObjectList) ([]T, error) {
	if err := cl.List(ctx, list); err != nil {
		return nil, err
	}
	objs, err := meta.ExtractList(list)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		t, ok := o.(T)
		if !ok {
			return nil, fmt.Errorf("listing %T: an item is a %T", list, o)
		}
		out = append(out, t)
	}
	return out, nil
}

// listClusterPolicies lists the ClusterNetworkPolicies as the agent reads them:
// v1beta1 when served, else v1alpha2 (the same schema), else none (the CRD is
// not installed).
func listClusterPolicies(ctx context.Context, cl client.Client) ([]*cnpv1.ClusterNetworkPolicy, error) {
	var out []*cnpv1.ClusterNetworkPolicy
	var beta cnpv1.ClusterNetworkPolicyList
	err := cl.List(ctx, &beta)
	if err == nil {
		for i := range beta.Items {
			out = append(out, &beta.Items[i])
		}
		return out, nil
	}
	if !meta.IsNoMatchError(err) && !apierrors.IsNotFound(err) {
		return nil, err
	}
	var alpha cnpv1alpha2.ClusterNetworkPolicyList
	if err := cl.List(ctx, &alpha); err != nil {
		if meta.IsNoMatchError(err) || apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	for i := range alpha.Items {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&alpha.Items[i])
		if err != nil {
			return nil, err
		}
		var c cnpv1.ClusterNetworkPolicy
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u, &c); err != nil {
			return nil, err
		}
		out = append(out, &c)
	}
	return out, nil
}

// readManifests reads a file, every *.yaml, *.yml and *.json of a directory (sorted),
// or stdin for "-".
func readManifests(path string, stdin io.Reader) ([]runtime.Object, error) {
	if path == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return nil, fmt.Errorf("-f -: %w", err)
		}
		return decodeManifests("-", b)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("-f %w", err)
	}
	if !st.IsDir() {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("-f %w", err)
		}
		return decodeManifests(path, b)
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("-f %w", err)
	}
	var out []runtime.Object
	for _, e := range entries {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		objs, err := readManifests(filepath.Join(path, e.Name()), stdin)
		if err != nil {
			return nil, err
		}
		out = append(out, objs...)
	}
	return out, nil
}

// decodeManifests reads YAML or JSON documents; a List (kubectl get -o yaml) is its
// items. Kinds explain does not need (Deployments, Services...) are skipped.
func decodeManifests(name string, b []byte) ([]runtime.Object, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var out []runtime.Object
	for doc := 1; ; doc++ {
		var u unstructured.Unstructured
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("-f %s: document %d: %w", name, doc, err)
		}
		if len(u.Object) == 0 {
			continue
		}
		objs, err := typed(&u)
		if err != nil {
			return nil, fmt.Errorf("-f %s: document %d: %w", name, doc, err)
		}
		out = append(out, objs...)
	}
}

func typed(u *unstructured.Unstructured) ([]runtime.Object, error) {
	if _, has := u.Object["items"]; has && !u.IsList() && strings.HasSuffix(u.GetKind(), "List") {
		return nil, fmt.Errorf("%s: items is not a list of objects", u.GetKind())
	}
	if u.IsList() {
		var out []runtime.Object
		err := u.EachListItem(func(o runtime.Object) error {
			objs, err := typed(o.(*unstructured.Unstructured))
			out = append(out, objs...)
			return err
		})
		return out, err
	}
	var obj runtime.Object
	gvk := u.GroupVersionKind()
	switch {
	case gvk.Group == "" && gvk.Kind == "Pod":
		obj = &corev1.Pod{}
	case gvk.Group == "" && gvk.Kind == "Namespace":
		obj = &corev1.Namespace{}
	case gvk.Group == "" && gvk.Kind == "Node":
		obj = &corev1.Node{}
	case gvk.Group == "networking.k8s.io" && gvk.Kind == "NetworkPolicy":
		obj = &networkingv1.NetworkPolicy{}
	case gvk.Group == cnpv1.GroupName && gvk.Kind == "ClusterNetworkPolicy" && (gvk.Version == "v1beta1" || gvk.Version == "v1alpha2"):
		obj = &cnpv1.ClusterNetworkPolicy{} // v1alpha2 has the same schema
	default:
		return nil, nil
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, obj, true); err != nil {
		return nil, fmt.Errorf("%s %s: %w", gvk.Kind, u.GetName(), err)
	}
	return []runtime.Object{obj}, nil
}

// overlay puts objs into c, replacing what has the same kind, namespace and name
// (a namespaced object without a namespace is in "default", as kubectl applies it).
func overlay(c *explain.Cluster, objs []runtime.Object) {
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.Pod:
			if o.Namespace == "" {
				o.Namespace = "default"
			}
			c.Pods = replace(c.Pods, o, func(p *corev1.Pod) bool { return p.Namespace == o.Namespace && p.Name == o.Name })
		case *corev1.Namespace:
			c.Namespaces = replace(c.Namespaces, o, func(n *corev1.Namespace) bool { return n.Name == o.Name })
		case *corev1.Node:
			c.Nodes = replace(c.Nodes, o, func(n *corev1.Node) bool { return n.Name == o.Name })
		case *networkingv1.NetworkPolicy:
			if o.Namespace == "" {
				o.Namespace = "default"
			}
			c.Policies = replace(c.Policies, o, func(p *networkingv1.NetworkPolicy) bool { return p.Namespace == o.Namespace && p.Name == o.Name })
		case *cnpv1.ClusterNetworkPolicy:
			c.ClusterPolicies = replace(c.ClusterPolicies, o, func(p *cnpv1.ClusterNetworkPolicy) bool { return p.Name == o.Name })
		}
	}
}

func replace[T any](list []T, o T, same func(T) bool) []T {
	if i := slices.IndexFunc(list, same); i >= 0 {
		list[i] = o
		return list
	}
	return append(list, o)
}

// unknownCIDRsOf returns the pod CIDRs of node in c, as the agent's
// --unknown-pod-cidrs=node reads them, or why there are none.
func unknownCIDRsOf(c explain.Cluster, node string) ([]netip.Prefix, string) {
	for _, n := range c.Nodes {
		if n.Name == node {
			return controllers.NodePodCIDRs(n)
		}
	}
	return nil, "there is no Node " + node
}

// compileHint is the fresh compile of the node --live reads: Read describes the
// kernel's rules in its terms.
func compileHint(c explain.Cluster, o explainOptions, opts compile.Options, epoch uint32) *nft.Ruleset {
	opts.Table = o.table
	rs, _ := compile.Compile(c.Snapshot(o.nodeName), opts)
	if opts.Established == compile.EstablishedRecheck && epoch > 1 {
		mask := opts.CtMarkMask
		if mask == 0 {
			mask = compile.DefaultCtMarkMask
		}
		compile.StampEpoch(rs, mask, epoch)
	}
	return rs
}
