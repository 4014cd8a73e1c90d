package cnp_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"text/template"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance"
	confv1a1 "sigs.k8s.io/network-policy-api/conformance/apis/v1alpha1"
	"sigs.k8s.io/network-policy-api/conformance/tests"
	confk8s "sigs.k8s.io/network-policy-api/conformance/utils/kubernetes"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
	sigsyaml "sigs.k8s.io/yaml"
)

// The environment that points the test at a running conformance cluster.
const (
	// kubeconfigEnv names the cluster's kubeconfig; unset, the test skips.
	kubeconfigEnv = "NFTPOLICY_CONFORMANCE_KUBECONFIG"
	// reportEnv, when set, is where the suite's ConformanceReport (YAML) goes.
	reportEnv = "NFTPOLICY_CNP_REPORT"
	// keepEnv=1 leaves the base namespaces and pods in place after the run, so
	// that a rerun (go test -run TestClusterNetworkPolicyConformance/NAME)
	// starts at once.
	keepEnv = "NFTPOLICY_CNP_KEEP"
	// versionEnv is the agent's version, for the report.
	versionEnv = "NFTPOLICY_VERSION"
	// sctpEnv=skip skips the SCTP-only tests (sctpTests) instead of running
	// them with the raw SCTP probe (see sctpProbes).
	sctpEnv = "NFTPOLICY_CNP_SCTP"
)

// sctpTests are the upstream tests that exercise SCTP and nothing else. They run
// with the raw SCTP probe like every SCTP probe of the suite, unless sctpEnv says
// to skip them. Listed by name, and checked against the suite's list, so that a
// new suite version cannot make this test skip anything it did not decide to.
var sctpTests = []string{
	"CNPAdminTierEgressSCTP",
	"CNPAdminTierIngressSCTP",
	"CNPBaselineTierEgressSCTP",
	"CNPBaselineTierIngressSCTP",
}

// The base manifests' namespaces and their StatefulSets (two pods each; the
// last is hostNetwork), as the suite's own Setup waits for them.
var (
	baseNamespaces = []string{
		"network-policy-conformance-gryffindor",
		"network-policy-conformance-slytherin",
		"network-policy-conformance-hufflepuff",
		"network-policy-conformance-ravenclaw",
		"network-policy-conformance-forbidden-forrest",
	}
	baseStatefulSets = []string{"harry-potter", "draco-malfoy", "cedric-diggory", "luna-lovegood", "centaur"}
)

// hostNetworkPorts is the suite's default port range for its hostNetwork pods
// (34345 and the 7 above it: the suite uses 8). cluster.sh keeps them out of
// the nodes' ephemeral ports (HOST_NETWORK_PORTS): a change here goes there too.
var hostNetworkPorts = []int{34345, 34346, 34347, 34348, 34349, 34350, 34351, 34352}

// outcome is what the test saw of one upstream test.
type outcome struct {
	name    string
	skipped bool
	ran     bool
	failed  bool
	took    time.Duration
}

func TestClusterNetworkPolicyConformance(t *testing.T) {
	kubeconfig := os.Getenv(kubeconfigEnv)
	if kubeconfig == "" {
		t.Skipf("the upstream ClusterNetworkPolicy suite needs a real cluster: %s unset "+
			"(make conformance-cnp brings one up and sets it)", kubeconfigEnv)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("%s=%s: %v", kubeconfigEnv, kubeconfig, err)
	}
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, cnpv1beta1.Install, apiextensionsv1.AddToScheme} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	clientset, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	all := tests.ConformanceTests
	for _, name := range sctpTests {
		if !slices.ContainsFunc(all, func(ct suite.ConformanceTest) bool { return ct.ShortName == name }) {
			t.Fatalf("the suite has no test %s any more: update sctpTests", name)
		}
	}
	var skip []string
	if os.Getenv(sctpEnv) == "skip" {
		skip = sctpTests
	}
	// The suite execs its probes through this config: its SCTP probes become
	// /sctp-connect (see sctpProbes).
	var probes atomic.Int64
	execCfg := rest.CopyConfig(cfg)
	execCfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &sctpProbes{rt: rt, n: &probes} })
	version := os.Getenv(versionEnv)
	if version == "" {
		version = "dev"
	}
	// The profile suite, as the upstream TestConformanceProfiles runs it with
	// --conformance-profiles=ClusterNetworkPolicy and every feature of that
	// profile: it also checks that the CRDs in the cluster are of the suite's
	// own bundle version, and it writes the conformance report.
	cs, err := suite.NewConformanceProfileTestSuite(suite.ConformanceProfileOptions{
		Options: suite.Options{
			Client:     c,
			ClientSet:  clientset,
			KubeConfig: *execCfg,
			SupportedFeatures: sets.New(
				suite.SupportClusterNetworkPolicy,
				suite.SupportClusterNetworkPolicyNamedPorts,
				suite.SupportClusterNetworkPolicyEgressNodePeers,
			),
			SkipTests:            skip,
			CleanupBaseResources: os.Getenv(keepEnv) != "1",
		},
		Implementation: confv1a1.Implementation{
			Organization:          "nftpolicy",
			Project:               "nftpolicy",
			URL:                   "https://github.com/nftpolicy/nftpolicy",
			Version:               version,
			Contact:               []string{"nftpolicy maintainers"},
			AdditionalInformation: "make conformance-cnp: test/conformance/cnp against test/conformance/cluster.sh",
		},
		ConformanceProfiles: sets.New(suite.CNPConformanceProfileName),
	})
	if err != nil {
		t.Fatalf("the upstream suite: %v", err)
	}
	setup(t, c, &cs.ConformanceTestSuite)

	outcomes := make([]*outcome, len(all))
	run := make([]suite.ConformanceTest, len(all))
	for i, ct := range all {
		o := &outcome{name: ct.ShortName, skipped: slices.Contains(skip, ct.ShortName)}
		outcomes[i] = o
		inner := ct.Test
		ct.Test = func(t *testing.T, s *suite.ConformanceTestSuite) {
			start := time.Now()
			o.ran = true
			defer func() { o.took, o.failed = time.Since(start), t.Failed() }()
			inner(t, s)
		}
		run[i] = ct
	}
	start := time.Now()
	if err := cs.Run(t, run); err != nil {
		t.Fatal(err)
	}
	summarize(t, outcomes, time.Since(start))
	t.Logf("SCTP probes run by /sctp-connect instead of agnhost connect: %d", probes.Load())

	report, err := cs.Report()
	if err != nil {
		t.Fatalf("the conformance report: %v", err)
	}
	raw, err := sigsyaml.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("conformance report:\n%s", raw)
	if out := os.Getenv(reportEnv); out != "" {
		if err := os.WriteFile(out, raw, 0o644); err != nil {
			t.Errorf("writing the report: %v", err)
		}
	}
}

// summarize logs one line per upstream test and the counts, in the form the
// README quotes.
func summarize(t *testing.T, outcomes []*outcome, took time.Duration) {
	var pass, fail, skipped, notRun int
	var b strings.Builder
	for _, o := range outcomes {
		var state string
		switch {
		case o.skipped:
			state, skipped = "SKIP (SCTP only, and NFTPOLICY_CNP_SCTP=skip)", skipped+1
		case !o.ran:
			state, notRun = "NOT RUN (excluded by -run, or its manifests could not be applied)", notRun+1
		case o.failed:
			state, fail = "FAIL", fail+1
		default:
			state, pass = "PASS", pass+1
		}
		fmt.Fprintf(&b, "  %-40s %-5s %6.1fs\n", o.name, strings.Fields(state)[0], o.took.Seconds())
		if strings.Contains(state, "(") {
			b.WriteString("      " + state + "\n")
		}
	}
	t.Logf("upstream ClusterNetworkPolicy suite: %d tests, %d passed, %d failed, %d skipped, %d not run, in %s\n%s",
		len(outcomes), pass, fail, skipped, notRun, took.Round(time.Second), b.String())
	if notRun > 0 {
		// The suite takes a test that -run excluded for one that passed.
		t.Logf("the conformance report below counts the %d tests not run as passed: only a full run's report means anything", notRun)
	}
}

// setup does what the suite's own Setup does, except that it leaves the SCTP
// servers out of the base manifests: it fixes the hostNetwork ports, applies
// base/manifests.yaml (created or updated; deleted at the end unless kept) and
// waits until every StatefulSet is Ready. It also checks that the hostNetwork
// pods run on two different nodes, which the node peer tests rely on.
func setup(t *testing.T, c client.Client, s *suite.ConformanceTestSuite) {
	t.Helper()
	s.HostNetworkPortRangeStart = hostNetworkPorts[0]
	s.HostNetworkPortRangeEnd = hostNetworkPorts[len(hostNetworkPorts)-1]
	s.HostNetworkPorts = hostNetworkPorts
	s.Applier.HostNetworkPorts = hostNetworkPorts
	s.Applier.FS = s.FS

	objs, stripped, err := baseObjects(s.BaseManifests)
	if err != nil {
		t.Fatal(err)
	}
	if want := 2 * len(baseStatefulSets); stripped != want {
		t.Fatalf("left out %d SCTP server containers of the base manifests, want %d (2 per StatefulSet): has the suite changed?", stripped, want)
	}
	t.Logf("base manifests: %d objects, %d SCTP server containers left out", len(objs), stripped)
	ctx := context.Background()
	for _, obj := range objs {
		cur := obj.DeepCopy()
		err := c.Get(ctx, types.NamespacedName{Namespace: obj.GetNamespace(), Name: obj.GetName()}, cur)
		switch {
		case apierrors.IsNotFound(err):
			err = c.Create(ctx, obj)
		case err == nil:
			obj.SetResourceVersion(cur.GetResourceVersion())
			err = c.Update(ctx, obj)
		}
		if err != nil {
			t.Fatalf("applying %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		if s.Cleanup {
			t.Cleanup(func() {
				if err := c.Delete(context.Background(), obj); err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("deleting %s %s: %v", obj.GetKind(), obj.GetName(), err)
				}
			})
		}
	}
	confk8s.NamespacesMustBeReady(t, c, s.TimeoutConfig, baseNamespaces, baseStatefulSets)

	nodes := map[string]string{}
	for i := range 2 {
		name := fmt.Sprintf("centaur-%d", i)
		var pod corev1.Pod
		if err := c.Get(ctx, types.NamespacedName{Namespace: "network-policy-conformance-forbidden-forrest", Name: name}, &pod); err != nil {
			t.Fatal(err)
		}
		nodes[pod.Spec.NodeName] = name
		t.Logf("hostNetwork pod %s on node %s (%s)", name, pod.Spec.NodeName, pod.Status.PodIP)
	}
	if len(nodes) != 2 {
		t.Fatalf("the hostNetwork pods share a node: the node peer tests need one on each of two nodes")
	}
}

// baseObjects renders the suite's base manifests (a template over the
// hostNetwork ports) and returns their objects, with every container that
// serves SCTP (agnhost porter, SERVE_SCTP_PORT_*) removed from the
// StatefulSets, and how many were removed.
func baseObjects(path string) ([]*unstructured.Unstructured, int, error) {
	raw, err := conformance.Manifests.ReadFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("the suite's %s: %w", path, err)
	}
	tmpl, err := template.New(path).Parse(string(raw))
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, confk8s.TemplateData{HostNetworkPorts: hostNetworkPorts}); err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	dec := yaml.NewYAMLOrJSONDecoder(&buf, 4096)
	var objs []*unstructured.Unstructured
	stripped := 0
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(obj); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, 0, fmt.Errorf("%s: %w", path, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		if obj.GetKind() == "StatefulSet" {
			n, err := stripSCTPServers(obj)
			if err != nil {
				return nil, 0, fmt.Errorf("%s: StatefulSet %s: %w", path, obj.GetName(), err)
			}
			stripped += n
		}
		objs = append(objs, obj)
	}
	return objs, stripped, nil
}

func stripSCTPServers(obj *unstructured.Unstructured) (int, error) {
	path := []string{"spec", "template", "spec", "containers"}
	containers, _, err := unstructured.NestedSlice(obj.Object, path...)
	if err != nil {
		return 0, err
	}
	kept := containers[:0]
	for _, ct := range containers {
		m, _ := ct.(map[string]any)
		env, _, _ := unstructured.NestedSlice(m, "env")
		if slices.ContainsFunc(env, func(e any) bool {
			name, _ := e.(map[string]any)["name"].(string)
			return strings.HasPrefix(name, "SERVE_SCTP_PORT_")
		}) {
			continue
		}
		kept = append(kept, ct)
	}
	n := len(containers) - len(kept)
	return n, unstructured.SetNestedSlice(obj.Object, kept, path...)
}

// sctpProbes is the transport of the suite's exec requests. The suite probes
// with `agnhost connect --protocol=sctp` in the client pod, which cannot work
// on this machine: its kernel has no SCTP sockets. sctpProbes rewrites those
// execs, and only those, to run /sctp-connect (test/conformance/sctpconnect,
// in the agnhost:2.45 image cluster.sh makes) with the same arguments: it sends
// a real SCTP INIT from the client pod on a raw socket and reports, in agnhost
// connect's words, whether the server's kernel received it (its ICMP protocol
// unreachable) or it was dropped on the way (TIMEOUT). The verdicts are the
// kernel's; n counts the rewritten probes (one counter for every exec's
// transport).
type sctpProbes struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (p *sctpProbes) RoundTrip(req *http.Request) (*http.Response, error) {
	if strings.HasSuffix(req.URL.Path, "/exec") {
		q := req.URL.Query()
		cmd := q["command"]
		if len(cmd) > 2 && cmd[0] == "/agnhost" && cmd[1] == "connect" && slices.Contains(cmd, "--protocol=sctp") {
			cmd = slices.Clone(cmd)
			cmd[0] = "/sctp-connect"
			q["command"] = cmd
			req = req.Clone(req.Context())
			req.URL.RawQuery = q.Encode()
			p.n.Add(1)
		}
	}
	return p.rt.RoundTrip(req)
}
