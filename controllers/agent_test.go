package controllers

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

var _ = Describe("the apiserver", func() {
	It("stores NetworkPolicies and defaults their policyTypes", func(ctx SpecContext) {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "smoke-"}}
		Expect(k8sClient.Create(ctx, ns)).To(Succeed())

		ingressOnly := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "ingress-only"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Ingress:     []networkingv1.NetworkPolicyIngressRule{{}},
			},
		}
		withEgress := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, Name: "with-egress"},
			Spec: networkingv1.NetworkPolicySpec{
				Egress: []networkingv1.NetworkPolicyEgressRule{{}},
			},
		}
		for _, np := range []*networkingv1.NetworkPolicy{ingressOnly, withEgress} {
			Expect(k8sClient.Create(ctx, np)).To(Succeed())
		}

		var got networkingv1.NetworkPolicy
		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(ingressOnly), &got)).To(Succeed())
		Expect(got.Spec.PodSelector.MatchLabels).To(Equal(map[string]string{"app": "db"}))
		Expect(got.Spec.PolicyTypes).To(Equal([]networkingv1.PolicyType{networkingv1.PolicyTypeIngress}))

		Expect(k8sClient.Get(ctx, client.ObjectKeyFromObject(withEgress), &got)).To(Succeed())
		Expect(got.Spec.PolicyTypes).To(ConsistOf(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress))
	})
})

var _ = Describe("nftpolicy agent", Ordered, func() {
	var bin, kubeconfig string

	BeforeAll(func(ctx SpecContext) {
		dir := GinkgoT().TempDir()
		bin = filepath.Join(dir, "nftpolicy")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/nftpolicy/nftpolicy/cmd/nftpolicy")
		build.Stdout, build.Stderr = GinkgoWriter, GinkgoWriter
		Expect(build.Run()).To(Succeed(), "go build ./cmd/nftpolicy")

		// The agent runs as its own user with only the agent's RBAC, so a
		// missing permission shows up here rather than in a cluster.
		const user = "nftpolicy-agent"
		role := agentClusterRole()
		Expect(k8sClient.Create(ctx, role)).To(Succeed())
		Expect(k8sClient.Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role.Name},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
			Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
		})).To(Succeed())

		au, err := testEnv.AddUser(envtest.User{Name: user}, nil)
		Expect(err).NotTo(HaveOccurred())
		kc, err := au.KubeConfig()
		Expect(err).NotTo(HaveOccurred())
		kubeconfig = filepath.Join(dir, "kubeconfig")
		Expect(os.WriteFile(kubeconfig, kc, 0o600)).To(Succeed())
	}, NodeTimeout(5*time.Minute))

	// start runs the agent binary and returns its stderr and a channel with its exit.
	start := func(args []string) (*exec.Cmd, chan error, *bytes.Buffer) {
		agent := exec.Command(bin, args...)
		var stderr bytes.Buffer
		agent.Stdout = GinkgoWriter
		agent.Stderr = &stderr
		Expect(agent.Start()).To(Succeed())
		exited := make(chan error, 1)
		go func() { exited <- agent.Wait() }()
		DeferCleanup(func() {
			_ = agent.Process.Kill() // no-op once it has exited
			GinkgoWriter.Printf("agent stderr:\n%s\n", stderr.String())
		})
		return agent, exited, &stderr
	}
	waitReady := func(ctx SpecContext, base string, exited chan error) {
		Eventually(func(g Gomega) {
			select {
			case err := <-exited:
				exited <- err
				StopTrying(fmt.Sprintf("agent exited before it was ready: %v", err)).Now()
			default:
			}
			g.Expect(httpGet(base + "/readyz")).To(Equal(http.StatusOK))
		}).WithContext(ctx).WithTimeout(60 * time.Second).WithPolling(100 * time.Millisecond).Should(Succeed())
	}
	stop := func(agent *exec.Cmd, exited chan error, stderr *bytes.Buffer) {
		Expect(agent.Process.Signal(syscall.SIGTERM)).To(Succeed())
		var err error
		Eventually(exited).WithTimeout(45 * time.Second).Should(Receive(&err))
		Expect(err).NotTo(HaveOccurred(), "agent exit status")
		Expect(stderr.String()).NotTo(ContainSubstring("panic"))
	}

	It("becomes ready, enforces, leaves its table in place on SIGTERM and adopts it on restart", func(ctx SpecContext) {
		port := freePort()
		args := []string{"agent", "--kubeconfig", kubeconfig, "--node-name", "node-1",
			"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", port),
			"--metrics-bind-address", "0", "--zap-log-level", "debug"}
		// As root, program a private namespace rather than this machine's.
		var ns *nfttest.NetNS
		if os.Geteuid() == 0 {
			var err error
			ns, err = nfttest.CreateNetNS("agent-test-" + nfttest.RandomHex(4))
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(ns.Delete)
			args = append(args, "--netns", ns.Path())

			// A pod on this node isolated by a deny-all policy.
			Expect(k8sClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "agent-proc"}})).To(Succeed())
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "agent-proc", Name: "a"},
				Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Image: "i"}}}}
			Expect(k8sClient.Create(ctx, pod)).To(Succeed())
			pod.Status.Phase = corev1.PodRunning
			pod.Status.PodIPs = []corev1.PodIP{{IP: "10.77.0.5"}}
			Expect(k8sClient.Status().Update(ctx, pod)).To(Succeed())
			policy := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "agent-proc", Name: "deny-all"}}
			Expect(k8sClient.Create(ctx, policy)).To(Succeed())
			DeferCleanup(func(ctx SpecContext) {
				Expect(k8sClient.Delete(ctx, pod, client.GracePeriodSeconds(0))).To(Succeed())
				Expect(k8sClient.Delete(ctx, policy)).To(Succeed())
			})
		}
		list := func() string {
			out, err := ns.NFT("", "list", "table", "inet", "nftpolicy")
			Expect(err).NotTo(HaveOccurred(), "the table must exist")
			return nfttest.SortBlocks(out)
		}

		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		agent, exited, stderr := start(args)
		waitReady(ctx, base, exited)
		Expect(httpGet(base + "/healthz")).To(Equal(http.StatusOK))
		if ns == nil {
			stop(agent, exited, stderr)
			return
		}
		Eventually(list).WithTimeout(10 * time.Second).Should(ContainSubstring(`10.77.0.5 comment "agent-proc/a" : goto ing-`))
		before := list()

		stop(agent, exited, stderr)
		Expect(list()).To(Equal(before), "the table stays in force while the agent is down")

		agent, exited, stderr = start(args)
		waitReady(ctx, base, exited)
		// With --established=recheck (the default) a restarted agent moves to the
		// next epoch at its first sync (nft/doc.go, "Restart"): the two rules that
		// name the epoch change, nothing else does.
		after := list()
		Expect(after).NotTo(Equal(before), "a restart moves strict mode to the next epoch")
		Expect(epochless(after)).To(Equal(epochless(before)), "after restart the table equals a fresh compile of the same cluster, but for the epoch")
		stop(agent, exited, stderr)
	}, NodeTimeout(3*time.Minute))
})

// agentClusterRole is the agent's ClusterRole: config/rbac/role.yaml, what
// controller-gen makes of the +kubebuilder:rbac markers (make verify keeps it
// current).
func agentClusterRole() *rbacv1.ClusterRole {
	role := &rbacv1.ClusterRole{}
	b, err := os.ReadFile(filepath.Join("..", "config", "rbac", "role.yaml"))
	Expect(err).NotTo(HaveOccurred())
	Expect(yaml.UnmarshalStrict(b, role)).To(Succeed(), "config/rbac/role.yaml")
	role.ObjectMeta = metav1.ObjectMeta{Name: "nftpolicy-agent-test"}
	return role
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	Expect(err).NotTo(HaveOccurred())
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

// httpGet returns the status code of GET url, or 0 if it could not connect.
func httpGet(url string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}

// TestReadiness is a plain unit test (it runs under -short): /readyz needs
// both the caches and the first node sync.
func TestReadiness(t *testing.T) {
	var r readiness
	if r.check(nil) == nil || r.Ready() {
		t.Fatal("ready before anything synced")
	}
	r.MarkSynced()
	if r.check(nil) == nil || r.Ready() {
		t.Fatal("ready before the caches synced")
	}
	r.cachesSynced.Store(true)
	if err := r.check(nil); err != nil || !r.Ready() {
		t.Fatalf("not ready after both: %v", err)
	}
}

// epochRE matches the hex words that carry strict mode's epoch under the default
// --ct-mark-mask 0x00ff0000: the epoch's mark (0x00EE0000) and, as nft prints
// `ct mark set ct mark and ~mask or mark`, the combined word (0xffEEffff); and the
// rule comments that name it ("epoch N").
var epochRE = regexp.MustCompile(`0x00[0-9a-f]{2}0000|0xff[0-9a-f]{2}ffff|epoch [0-9]+`)

// epochless is an `nft list` text with the epoch words replaced by one placeholder.
func epochless(s string) string { return epochRE.ReplaceAllString(s, "<epoch>") }
