package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftpolicy/nftpolicy/test/e2e/cluster"
)

// ControlPlane is an envtest kube-apiserver and etcd: no scheduler, no
// controllers, no kubelet. Objects are what the test writes, nothing more.
// Every tier that needs a control plane (test/e2e, test/deploy,
// test/bench/controlplane) starts it here, so none of them can leave an
// apiserver or etcd running after it dies.
type ControlPlane struct {
	// Client is an admin client.
	Client client.Client
	// Config is the admin REST config.
	Config *rest.Config
	// Kubeconfig is a kubeconfig file for the agents and kubectl: user
	// ControlPlaneOptions.User (nftpolicy-e2e) in group system:masters.
	Kubeconfig string
	// Assets is the directory of the control plane binaries (and kubectl).
	Assets string

	env *envtest.Environment
	dir string
	// The watchdog that kills the apiserver and etcd envtest started if this
	// process dies without stopping them (see guard).
	watchdog      *exec.Cmd
	watchdogStdin io.WriteCloser
	// servers are the apiserver and etcd, as started by envtest and after
	// every Down/Up.
	servers []*server
}

// server is one process of the control plane: what it was started with, so
// that Up can start it again the same way (same ports, certificates, data).
type server struct {
	name string
	argv []string
	pid  int
	// cmd is set once Up has started the process again (a child of ours, with
	// a parent-death signal); nil while it is envtest's.
	cmd *exec.Cmd
	// exited is closed when cmd has exited.
	exited chan struct{}
}

// ControlPlaneOptions configures StartControlPlane.
type ControlPlaneOptions struct {
	// Configure, when set, is called with the environment before it starts:
	// the place for extra apiserver or etcd flags
	// (env.ControlPlane.GetAPIServer().Configure().Append(...)).
	Configure func(env *envtest.Environment)
	// User names the kubeconfig's user (group system:masters); nftpolicy-e2e
	// if empty.
	User string
}

// StartControlPlane starts envtest from the binaries in $KUBEBUILDER_ASSETS
// and writes dir/kubeconfig.
func StartControlPlane(dir string, opts ControlPlaneOptions) (*ControlPlane, error) {
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return nil, errors.New("KUBEBUILDER_ASSETS is unset: export KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)")
	}
	crds, err := ClusterPolicyCRDDir()
	if err != nil {
		return nil, err
	}
	if opts.User == "" {
		opts.User = "nftpolicy-e2e"
	}
	cp := &ControlPlane{
		Assets: assets,
		dir:    dir,
		env: &envtest.Environment{
			// A loaded 2-core machine can take a while to bring up the apiserver.
			ControlPlaneStartTimeout: 2 * time.Minute,
			ControlPlaneStopTimeout:  time.Minute,
			CRDInstallOptions:        envtest.CRDInstallOptions{Paths: []string{crds}, ErrorIfPathMissing: true},
		},
	}
	if opts.Configure != nil {
		opts.Configure(cp.env)
	}
	cfg, err := cp.env.Start()
	if err != nil {
		// envtest may have started etcd before the apiserver failed.
		return nil, errors.Join(fmt.Errorf("starting the control plane from %s: %w", assets, err), cp.env.Stop())
	}
	cp.Config = cfg
	if err := errors.Join(cp.guard(), cp.setup(dir, opts.User)); err != nil {
		return nil, errors.Join(err, cp.Stop())
	}
	return cp, nil
}

func (cp *ControlPlane) setup(dir, userName string) error {
	var err error
	if cp.Client, err = client.New(cp.Config, client.Options{Scheme: scheme.Scheme}); err != nil {
		return err
	}
	user, err := cp.env.AddUser(envtest.User{Name: userName, Groups: []string{"system:masters"}}, nil)
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
	var errs []error
	// Processes Up restarted are ours to stop, apiserver first; envtest's own
	// are gone then and its Stop only removes their directories.
	for _, s := range slices.Backward(cp.servers) {
		errs = append(errs, s.stop())
	}
	errs = append(errs, cp.env.Stop())
	cp.standDown()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping the control plane: %w", err)
	}
	return nil
}

// standDown tells the watchdog that the processes it guards are stopped.
func (cp *ControlPlane) standDown() {
	if cp.watchdog == nil {
		return
	}
	_, _ = io.WriteString(cp.watchdogStdin, "stop\n")
	cp.watchdogStdin.Close()
	_ = cp.watchdog.Wait()
	cp.watchdog = nil
}

// guard starts a watchdog that SIGKILLs the apiserver and etcd if this
// process dies without stopping them (a test binary's -timeout, SIGKILL, a
// closed output pipe): envtest starts them in their own process group and
// without a parent-death signal, so they would outlive it. The watchdog reads
// a pipe only this process writes to: "stop" means stand down; end of file
// means this process is gone. It also records how the two were started, for Up.
func (cp *ControlPlane) guard() error {
	// etcd first: Up starts them in this order.
	for _, name := range []string{"etcd", "kube-apiserver"} {
		pid, err := claimChild(name)
		if err != nil {
			return err
		}
		argv, err := cmdline(pid)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		cp.servers = append(cp.servers, &server{name: name, argv: argv, pid: pid})
	}
	var pids []string
	for _, s := range cp.servers {
		pids = append(pids, strconv.Itoa(s.pid))
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

// PID returns the process id of the control plane's server called name
// ("etcd" or "kube-apiserver"), as the watchdog knows it (Up restarts them under
// new ids), or 0 when there is none.
func (cp *ControlPlane) PID(name string) int {
	for _, s := range cp.servers {
		if s.name == name {
			return s.pid
		}
	}
	return 0
}

// Down kills the apiserver and etcd (SIGKILL, the apiserver first), as a
// crashed or unreachable control plane would be: clients see their
// connections reset. Their data, certificates and users stay for Up.
func (cp *ControlPlane) Down() error {
	cp.standDown() // it would kill whatever reuses the pids later
	var errs []error
	for _, s := range slices.Backward(cp.servers) {
		errs = append(errs, s.kill())
	}
	return errors.Join(errs...)
}

// Up starts etcd and the apiserver again after Down, exactly as they were
// started (same flags, ports, certificates and data), as children that die
// with this process, and waits until the apiserver is ready or ctx is done.
// Their output goes to <dir>/<name>.log.
func (cp *ControlPlane) Up(ctx context.Context) error {
	for _, s := range cp.servers {
		if err := s.start(cp.dir); err != nil {
			return err
		}
		if err := cp.waitServing(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// waitServing polls the server's health endpoint until it answers 200:
// etcd's /health, the apiserver's /readyz.
func (cp *ControlPlane) waitServing(ctx context.Context, s *server) error {
	var get func(context.Context) error
	switch s.name {
	case "etcd":
		u := flagValue(s.argv, "listen-client-urls")
		if i := strings.IndexByte(u, ','); i >= 0 {
			u = u[:i]
		}
		get = func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/health", nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return errors.New(resp.Status)
			}
			return nil
		}
	default:
		cs, err := kubernetes.NewForConfig(cp.Config)
		if err != nil {
			return err
		}
		get = func(ctx context.Context) error {
			return cs.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error()
		}
	}
	var last error
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = get(rctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not serving again (last: %v): %w", s.name, last, ctx.Err())
		case <-s.exited:
			return fmt.Errorf("%s exited while starting again; see %s.log", s.name, s.name)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *server) kill() error {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.cmd = nil
		return nil
	}
	// envtest's: it reaps it, so wait for the pid to go away.
	p, err := os.FindProcess(s.pid)
	if err != nil {
		return err
	}
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s: %w", s.name, err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(s.pid))); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s (pid %d) still there 30s after SIGKILL", s.name, s.pid)
		}
	}
}

func (s *server) start(dir string) error {
	log, err := os.OpenFile(filepath.Join(dir, s.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close() // the child holds its own descriptor
	cmd := exec.Command(s.argv[0], s.argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := StartChild(cmd); err != nil {
		return fmt.Errorf("starting %s again: %w", s.name, err)
	}
	s.cmd, s.pid, s.exited = cmd, cmd.Process.Pid, make(chan struct{})
	exited := s.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	return nil
}

// stop stops a process Up started: SIGTERM, SIGKILL after a minute.
func (s *server) stop() error {
	if s.cmd == nil {
		return nil
	}
	defer func() { s.cmd = nil }()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(time.Minute):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("%s ignored SIGTERM for a minute; killed", s.name)
	}
}

// cmdline returns the argument vector of process pid.
func cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return nil, err
	}
	argv := strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00")
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("process %d has no command line", pid)
	}
	return argv, nil
}

// flagValue returns the value of --name=value or --name value in argv.
func flagValue(argv []string, name string) string {
	for i, a := range argv {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
		if a == "--"+name && i+1 < len(argv) {
			return argv[i+1]
		}
	}
	return ""
}

// claimed holds the pids of the servers of every ControlPlane of this
// process, so that each guards only its own.
var claimed struct {
	sync.Mutex
	pids map[string]bool
}

// claimChild returns the pid of the one child of this process named name
// that no other ControlPlane has claimed, and claims it.
func claimChild(name string) (int, error) {
	claimed.Lock()
	defer claimed.Unlock()
	pids, err := childrenNamed(name)
	if err != nil {
		return 0, err
	}
	pids = slices.DeleteFunc(pids, func(p string) bool { return claimed.pids[p] })
	if len(pids) != 1 {
		return 0, fmt.Errorf("found %d %s processes started by envtest, want 1", len(pids), name)
	}
	if claimed.pids == nil {
		claimed.pids = map[string]bool{}
	}
	claimed.pids[pids[0]] = true
	pid, err := strconv.Atoi(pids[0])
	return pid, err
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
// Port 81's are sidecars (init containers that restart always), so that the
// named-port specs prove both kinds: serve-80-* resolve on containers, serve-81-*
// on sidecars.
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
			c := corev1.Container{
				Name:  "cont-" + suffix,
				Image: "nftpolicy.invalid/podagent:e2e", // nothing pulls it
				Ports: []corev1.ContainerPort{{Name: "serve-" + suffix, ContainerPort: int32(port), Protocol: proto}},
			}
			if port == 81 {
				always := corev1.ContainerRestartPolicyAlways
				c.RestartPolicy = &always
				pod.Spec.InitContainers = append(pod.Spec.InitContainers, c)
				continue
			}
			pod.Spec.Containers = append(pod.Spec.Containers, c)
		}
	}
	if len(pod.Spec.Containers) == 0 { // a pod needs a container: 81's are then that
		for _, c := range pod.Spec.InitContainers {
			c.RestartPolicy = nil
			pod.Spec.Containers = append(pod.Spec.Containers, c)
		}
		pod.Spec.InitContainers = nil
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
