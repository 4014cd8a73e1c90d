package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// ControlPlane is an envtest kube-apiserver and etcd: no scheduler, no
// controllers, no kubelet. Objects are what the test writes, nothing more.
type ControlPlane struct {
	// Client is an admin client.
	Client client.Client
	// Config is the admin REST config.
	Config *rest.Config
	// Kubeconfig is a kubeconfig file for the agents and kubectl: user
	// nftpolicy-e2e in group system:masters.
	Kubeconfig string
	// Assets is the directory of the control plane binaries (and kubectl).
	Assets string

	env *envtest.Environment
	// The watchdog that kills the apiserver and etcd if this process dies
	// without stopping them (see guard).
	watchdog      *exec.Cmd
	watchdogStdin io.WriteCloser
}

// StartControlPlane starts envtest from the binaries in $KUBEBUILDER_ASSETS
// and writes dir/kubeconfig.
func StartControlPlane(dir string) (*ControlPlane, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is unset: export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
	crds, err := ClusterPolicyCRDDir()
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{
		Assets: assets,
		env: &envtest.Environment{
			// A loaded 2-core machine can take a while to bring up the apiserver.
			ControlPlaneStartTimeout: 2 * time.Minute,
			ControlPlaneStopTimeout:  time.Minute,
			CRDInstallOptions:        envtest.CRDInstallOptions{Paths: []string{crds}, ErrorIfPathMissing: true},
		},
	}
	cfg, err := cp.env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting the control plane from %s: %w", assets, err)
	}
	cp.Config = cfg
	if err := errors.Join(cp.guard(), cp.setup(dir)); err != nil {
		return nil, errors.Join(err, cp.Stop())
	}
	return cp, nil
}

func (cp *ControlPlane) setup(dir string) error {
	var err error
	if cp.Client, err = client.New(cp.Config, client.Options{Scheme: scheme.Scheme}); err != nil {
		return err
	}
	user, err := cp.env.AddUser(envtest.User{Name: "nftpolicy-e2e", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("adding the agents' user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return err
	}
	cp.Kubeconfig = filepath.Join(dir, "kubeconfig")
	return os.WriteFile(cp.Kubeconfig, kc, 0o600)
}

// Stop stops the apiserver and etcd and removes their data.
func (cp *ControlPlane) Stop() error {
	err := cp.env.Stop()
	if cp.watchdog != nil {
		_, _ = io.WriteString(cp.watchdogStdin, "stop\n")
		cp.watchdogStdin.Close()
		_ = cp.watchdog.Wait()
	}
	if err != nil {
		return fmt.Errorf("stopping the control plane: %w", err)
	}
	return nil
}

// guard starts a watchdog that SIGKILLs the apiserver and etcd if this
// process dies without stopping them (a test binary's -timeout, SIGKILL, a
// closed output pipe): envtest starts them in their own process group and
// without a parent-death signal, so they would outlive it. The watchdog reads
// a pipe only this process writes to: "stop" means stand down; end of file
// means this process is gone.
func (cp *ControlPlane) guard() error {
	pids, err := childrenNamed("etcd", "kube-apiserver")
	if err != nil || len(pids) == 0 {
		return err
	}
	cmd := exec.Command("sh", "-c", `read -r cmd; [ "$cmd" = stop ] || kill -KILL `+strings.Join(pids, " ")+` 2>/dev/null`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // a terminal's Ctrl-C is ours to handle
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the control plane watchdog: %w", err)
	}
	cp.watchdog, cp.watchdogStdin = cmd, stdin
	return nil
}

// childrenNamed returns the pids of this process's children whose command
// name is one of names.
func childrenNamed(names ...string) ([]string, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := strconv.Itoa(os.Getpid())
	var pids []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid ...; comm may contain spaces and parentheses.
		lp, rp := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if lp < 0 || rp < lp {
			continue
		}
		fields := strings.Fields(string(stat[rp+1:]))
		if len(fields) >= 2 && fields[1] == self && slices.Contains(names, string(stat[lp+1:rp])) {
			pids = append(pids, e.Name())
		}
	}
	return pids, nil
}

// CreateNode creates the Node object of a cluster node.
func (cp *ControlPlane) CreateNode(ctx context.Context, n *cluster.Node) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:   n.Name,
			Labels: map[string]string{corev1.LabelHostname: n.Name, corev1.LabelOSStable: "linux"},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:  n.PodCIDRv4.String(),
			PodCIDRs: []string{n.PodCIDRv4.String(), n.PodCIDRv6.String()},
		},
	}
	if err := cp.Client.Create(ctx, node); err != nil {
		return fmt.Errorf("creating node %s: %w", n.Name, err)
	}
	node.Status = corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.IPv4.String()},
			{Type: corev1.NodeInternalIP, Address: n.IPv6.String()},
			{Type: corev1.NodeHostName, Address: n.Name},
		},
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
		}},
	}
	if err := cp.Client.Status().Update(ctx, node); err != nil {
		return fmt.Errorf("node %s status: %w", n.Name, err)
	}
	return nil
}

// namespaceObject is a namespace with the labels the suite selects on.
func namespaceObject(name string, labels map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
}

// podObject is the Pod a kubelet would report for p on node: one container per
// served port and protocol, with the upstream e2e port names (serve-80-tcp,
// ...; SCTP is declared for 80 and 81 like upstream, though nothing serves it).
func podObject(p *cluster.Pod, node string, labels map[string]string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: new(int64),
		},
	}
	for _, port := range p.Ports {
		protos := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}
		if port == 80 || port == 81 {
			protos = append(protos, corev1.ProtocolSCTP)
		}
		for _, proto := range protos {
			suffix := fmt.Sprintf("%d-%s", port, lower(proto))
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{
				Name:  "cont-" + suffix,
				Image: "nftpolicy.invalid/podagent:e2e", // nothing pulls it
				Ports: []corev1.ContainerPort{{Name: "serve-" + suffix, ContainerPort: int32(port), Protocol: proto}},
			})
		}
	}
	return pod
}

// podStatus is what a kubelet writes once the pod's sandbox has addresses.
func podStatus(p *cluster.Pod, node *cluster.Node) corev1.PodStatus {
	now := metav1.Now()
	return corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    node.IPv4.String(),
		HostIPs:   []corev1.HostIP{{IP: node.IPv4.String()}, {IP: node.IPv6.String()}},
		PodIP:     p.IPv4.String(),
		PodIPs:    []corev1.PodIP{{IP: p.IPv4.String()}, {IP: p.IPv6.String()}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
}

func lower(p corev1.Protocol) string {
	switch p {
	case corev1.ProtocolUDP:
		return "udp"
	case corev1.ProtocolSCTP:
		return "sctp"
	}
	return "tcp"
}

// deletePodNow deletes a pod without grace (there is no kubelet to finish a
// graceful deletion) and waits until it is gone from the API.
func (cp *ControlPlane) deletePodNow(ctx context.Context, namespace, name string) error {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if err := cp.Client.Delete(ctx, pod, client.GracePeriodSeconds(0)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", namespace, name, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cp.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod)
		if apierrors.IsNotFound(err) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pod %s/%s still there 30s after deletion (err %v)", namespace, name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
