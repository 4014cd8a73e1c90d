// Command demo shows nftpolicy at work on one machine: a real kube-apiserver,
// two nodes and a dozen pods as network namespaces, one nftpolicy agent per
// node, real traffic. It prints who can connect to whom, applies example
// policies, prints it again, shows node-0's nftables table and tears
// everything down. Run it as root with `make demo` (which builds the agent and
// the envtest binaries first), or:
//
//	KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh) go run ./test/e2e/demo [--keep]
//
// --keep leaves everything running, and says how to reach it with kubectl,
// until Ctrl-C.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
	"github.com/nftpolicy/nftpolicy/test/e2e/framework"
)

func main() { os.Exit(run()) }

func run() int {
	keep := flag.Bool("keep", false, "keep the control plane, agents and pods running until Ctrl-C")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root (network namespaces, nftables); try: sudo make demo")
		return 1
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fmt.Fprintln(os.Stderr, "demo: KUBEBUILDER_ASSETS is unset; run 'make demo', or export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
		return 1
	}
	// Ctrl-C cancels whatever is under way; the deferred Close then tears down.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	start := time.Now()
	fmt.Println("Starting a control plane (kube-apiserver, etcd), 2 nodes, 9 pods x/y/z × a/b/c and one nftpolicy agent per node...")
	env, err := framework.Start(ctx, framework.Options{
		Prefix:          "demo",
		NoSignalHandler: true,
		Logf:            func(format string, args ...any) { fmt.Printf("  "+format+"\n", args...) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	defer func() {
		t := time.Now()
		fmt.Println("\nTearing down...")
		if err := env.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "demo: teardown:", err)
		}
		fmt.Printf("Done in %v (whole demo %v).\n", time.Since(t).Round(time.Millisecond), time.Since(start).Round(time.Second))
	}()
	if err := demo(ctx, env, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, env *framework.Env, keep bool) error {
	fmt.Println("\nPods:")
	for _, p := range env.Pods() {
		fmt.Printf("  %-6s %s  %-11s %s\n", p, env.Cluster.Node(p.Node).Name, p.IPv4, p.IPv6)
	}
	if err := printMatrix(ctx, env, "\nConnectivity without any policy"); err != nil {
		return err
	}

	fmt.Println("\nAdding namespace demo: backend (tier=backend), mysql (tier=mysql, serving 3306), frontend (tier=frontend).")
	pods, err := env.AddPods(ctx,
		cluster.PodSpec{Namespace: "demo", Name: "backend", Node: 0, Labels: map[string]string{"tier": "backend"}},
		cluster.PodSpec{Namespace: "demo", Name: "mysql", Node: 1, Labels: map[string]string{"tier": "mysql"}, ExtraPorts: []int{3306}},
		cluster.PodSpec{Namespace: "demo", Name: "frontend", Node: 1, Labels: map[string]string{"tier": "frontend"}},
	)
	if err != nil {
		return err
	}
	backend, mysql, frontend := pods[0], pods[1], pods[2]

	fmt.Println("\nApplying policies:")
	mysqlPort := port(3306)
	policies := []struct {
		np   *netv1.NetworkPolicy
		what string
	}{
		{&netv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "backend-policy"},
			Spec: netv1.NetworkPolicySpec{
				PodSelector: selector("tier", "backend"),
				PolicyTypes: []netv1.PolicyType{netv1.PolicyTypeEgress},
				Egress: []netv1.NetworkPolicyEgressRule{{
					To:    []netv1.NetworkPolicyPeer{{PodSelector: new(selector("tier", "mysql"))}},
					Ports: []netv1.NetworkPolicyPort{mysqlPort},
				}},
			},
		}, "egress from tier=backend only to tier=mysql on TCP 3306"},
		{&netv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "db-policy"},
			Spec: netv1.NetworkPolicySpec{
				PodSelector: selector("tier", "mysql"),
				PolicyTypes: []netv1.PolicyType{netv1.PolicyTypeIngress},
				Ingress: []netv1.NetworkPolicyIngressRule{{
					From:  []netv1.NetworkPolicyPeer{{PodSelector: new(selector("tier", "backend"))}},
					Ports: []netv1.NetworkPolicyPort{mysqlPort},
				}},
			},
		}, "ingress to tier=mysql only from tier=backend on TCP 3306"},
		{&netv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "default-deny"},
			Spec: netv1.NetworkPolicySpec{
				PolicyTypes: []netv1.PolicyType{netv1.PolicyTypeIngress, netv1.PolicyTypeEgress},
			},
		}, "every pod of x: no ingress, no egress"},
	}
	for _, p := range policies {
		if err := env.Create(ctx, p.np); err != nil {
			return err
		}
		fmt.Printf("  %-20s %s\n", p.np.Namespace+"/"+p.np.Name, p.what)
	}

	// What the policies should do to x/y/z, written as the upstream e2e tests
	// write it; WaitForMatrix probes until the network agrees.
	want := framework.NewExpectation(env.Peers(), true)
	want.ExpectPeer(cluster.Peer{}, cluster.Peer{Namespace: "x"}, false)
	want.ExpectPeer(cluster.Peer{Namespace: "x"}, cluster.Peer{}, false)
	res, err := env.WaitForMatrix(ctx, framework.TCP(want, 80))
	if err != nil {
		return err
	}
	if res.Latency != nil {
		fmt.Printf("Enforced on both nodes %v after the last write.\n", res.Latency.Enforced.Round(time.Millisecond))
	}
	if err := printMatrix(ctx, env, "\nConnectivity with the policies"); err != nil {
		return err
	}

	fmt.Println("\nNamespace demo, TCP over IPv4:")
	probes := []struct {
		from, to *cluster.Pod
		port     int
		want     bool
		why      string
	}{
		{backend, mysql, 3306, true, "backend-policy lets it out, db-policy lets it in"},
		{frontend, mysql, 3306, false, "db-policy admits tier=backend only"},
		{backend, frontend, 80, false, "backend-policy: tier=backend may only reach tier=mysql:3306"},
		{frontend, backend, 80, true, "no policy isolates backend's ingress"},
	}
	for _, p := range probes {
		r, err := probeUntil(ctx, env, p.from, p.to, p.port, p.want)
		if err != nil {
			return err
		}
		mark := "as expected"
		if r.OK != p.want {
			mark = "UNEXPECTED"
		}
		fmt.Printf("  %-13s -> %-19s %-17s %s: %s\n", p.from, fmt.Sprintf("%s:%d", p.to, p.port), r, mark, p.why)
	}

	table, err := env.Table(0, false)
	if err != nil {
		return err
	}
	fmt.Printf("\nnode-0: nft list table inet nftpolicy (in network namespace %s)\n%s", env.Cluster.Node(0).NetNS.Name, table)

	if keep {
		return wait(ctx, env)
	}
	return nil
}

// printMatrix prints who reaches whom among x/y/z on TCP port 80 over IPv4.
func printMatrix(ctx context.Context, env *framework.Env, title string) error {
	res, err := env.Cluster.Matrix(ctx, cluster.MatrixSpec{
		From: env.Peers(), Ports: []int{80}, Protocols: []cluster.Protocol{cluster.TCP}, Families: []cluster.Family{cluster.V4},
	})
	if err != nil {
		return err
	}
	fmt.Printf("%s (TCP/80 over IPv4; rows connect to columns, . allowed, X denied):\n", title)
	fmt.Print(indent(res.Table(res.Cases[0]).String()))
	return nil
}

// probeUntil probes until the answer is want (the policies may still be on
// their way), for at most 10 seconds, and returns the last answer.
func probeUntil(ctx context.Context, env *framework.Env, from, to *cluster.Pod, port int, want bool) (cluster.ProbeResult, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := env.Cluster.Probe(ctx, from, to, cluster.TCP, cluster.V4, port, 0)
		if err != nil || r.OK == want || time.Now().After(deadline) {
			return r, err
		}
	}
}

// wait keeps everything up until ctx ends (Ctrl-C), after saying how to look around.
func wait(ctx context.Context, env *framework.Env) error {
	kubectl := relative(filepath.Join(env.CP.Assets, "kubectl"))
	kc := env.CP.Kubeconfig
	fmt.Printf(`
Keeping everything running. Try:
  %[1]s --kubeconfig %[2]s get nodes,pods -A -o wide
  %[1]s --kubeconfig %[2]s get networkpolicies -A
  %[1]s --kubeconfig %[2]s -n x delete networkpolicy default-deny
  ip netns exec %[3]s nft list table inet nftpolicy
  tail -f %[4]s
Press Ctrl-C to tear everything down.
`, kubectl, kc, env.Cluster.Node(0).NetNS.Name, env.Agents[0].LogPath)
	<-ctx.Done()
	return nil
}

func port(n int32) netv1.NetworkPolicyPort {
	tcp := corev1.ProtocolTCP
	p := intstr.FromInt32(n)
	return netv1.NetworkPolicyPort{Protocol: &tcp, Port: &p}
}

func selector(k, v string) metav1.LabelSelector {
	return metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ") + "\n"
}

// relative shortens path to one relative to the working directory, when it is below it.
func relative(path string) string {
	wd, err := os.Getwd()
	if err != nil {
		return path
	}
	if rel, err := filepath.Rel(wd, path); err == nil && !strings.HasPrefix(rel, "..") {
		return rel
	}
	return path
}
