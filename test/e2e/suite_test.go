// The end-to-end suite: a real kube-apiserver, one nftpolicy agent per node and
// pods as network namespaces exchanging real traffic (see test/e2e/framework).
// Every spec writes policies, waits for the reachability matrix it expects, and
// leaves the environment as it found it (no policies, every pod reaching every
// other), so that one environment serves the whole suite.
//
// Run it as root with the envtest binaries:
//
//	KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh) go test ./test/e2e/ -count=1 -v
//
// or `make test-e2e`. It skips itself under -short, without root, or without
// KUBEBUILDER_ASSETS. With NFTPOLICY_E2E_DIR set, the kubeconfig and the
// agents' logs are written there and kept.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

var (
	// env is the one environment every spec shares.
	env *framework.Env
	// Binaries built once by TestMain.
	agentBin, podAgentBin, binDir string
)

// skipReason says why the suite cannot run here, or "".
func skipReason() string {
	switch {
	case testing.Short():
		return "end-to-end suite skipped under -short (needs root, kube-apiserver and etcd)"
	case os.Getenv("KUBEBUILDER_ASSETS") == "":
		return "end-to-end suite skipped: KUBEBUILDER_ASSETS is unset; run 'make test-e2e', " +
			"or export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)"
	case os.Geteuid() != 0:
		return "end-to-end suite skipped: needs root for network namespaces and nftables"
	}
	return ""
}

// TestMain builds the agent and the podagent once, when the suite will run.
func TestMain(m *testing.M) {
	flag.Parse()
	if skipReason() == "" {
		if err := buildBinaries(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			os.Exit(1)
		}
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func buildBinaries() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var err error
	if binDir, err = os.MkdirTemp("", "nftpolicy-e2e-bin-"); err != nil {
		return err
	}
	var how string
	if agentBin, how, err = framework.AgentBinary(ctx, binDir); err != nil {
		return err
	}
	fmt.Printf("e2e: nftpolicy binary %s [%s]\n", agentBin, how)
	podAgentBin, err = cluster.BuildPodAgent(ctx, binDir)
	return err
}

func TestE2E(t *testing.T) {
	if reason := skipReason(); reason != "" {
		t.Skip(reason)
	}
	nfttest.RequireRoot(t) // also needs ip and nft on PATH
	RegisterFailHandler(Fail)
	RunSpecs(t, "nftpolicy end-to-end suite")
}

var _ = BeforeSuite(func(ctx SpecContext) {
	var err error
	env, err = framework.Start(ctx, framework.Options{
		Prefix:          "e2e",
		Dir:             os.Getenv("NFTPOLICY_E2E_DIR"), // kept for inspection when set
		AgentBinary:     agentBin,
		PodAgent:        podAgentBin,
		NoSignalHandler: true, // Ginkgo handles interrupts and runs the cleanup
		Logf:            func(format string, args ...any) { GinkgoWriter.Printf(format+"\n", args...) },
	})
	Expect(err).NotTo(HaveOccurred())
	DeferCleanup(func() {
		Expect(env.Close()).To(Succeed())
	})
	for _, p := range env.Pods() {
		GinkgoWriter.Printf("pod %s on %s: %s %s\n", p, env.Cluster.Node(p.Node).Name, p.IPv4, p.IPv6)
	}
}, NodeTimeout(4*time.Minute))

// Every spec leaves no policy behind and waits for full connectivity again.
var _ = AfterEach(func(ctx SpecContext) {
	Expect(env.Reset(ctx)).To(Succeed())
}, NodeTimeout(2*time.Minute))

// The summary the CI log shows: spec counts, suite time and how fast policy
// changes were enforced.
var _ = ReportAfterSuite("e2e summary", func(r Report) {
	var passed, failed, skipped int
	for _, s := range r.SpecReports {
		if s.LeafNodeType != types.NodeTypeIt {
			continue
		}
		switch {
		case s.State == types.SpecStatePassed:
			passed++
		case s.State == types.SpecStateSkipped || s.State == types.SpecStatePending:
			skipped++
		case s.State.Is(types.SpecStateFailureStates):
			failed++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\ne2e summary: %d specs: %d passed, %d failed, %d skipped; suite took %v\n",
		passed+failed+skipped, passed, failed, skipped, r.RunTime.Round(time.Second))
	if env != nil {
		var enforced, resolution []time.Duration
		for _, l := range env.Latencies() {
			enforced = append(enforced, l.Enforced)
			resolution = append(resolution, l.Resolution)
		}
		fmt.Fprintf(&b, "e2e summary: apply→enforced over %d changes (policy, label, pod writes): p50 %v, p95 %v, max %v; median resolution %v\n",
			len(enforced), framework.Percentile(enforced, 50).Round(time.Millisecond), framework.Percentile(enforced, 95).Round(time.Millisecond),
			framework.Percentile(enforced, 100).Round(time.Millisecond), framework.Percentile(resolution, 50).Round(time.Millisecond))
	}
	// Each failure's message here too: the end of the output is what a CI
	// excerpt shows, and ginkgo's own summary names the spec but not why.
	for _, s := range r.SpecReports {
		if !s.State.Is(types.SpecStateFailureStates) {
			continue
		}
		msg := strings.TrimSpace(s.Failure.Message)
		if lines := strings.Split(msg, "\n"); len(lines) > 4 {
			msg = strings.Join(lines[:4], "\n") + "\n..."
		}
		if len(msg) > 600 {
			msg = msg[:600] + "..."
		}
		name := s.FullText()
		if name == "" {
			name = s.LeafNodeType.String()
		}
		fmt.Fprintf(&b, "e2e failure: %s (%s): %s\n", name, s.Failure.Location, msg)
	}
	fmt.Print(b.String())
})
