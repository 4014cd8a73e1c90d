package deploy

import (
	"context"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nftpolicy/nftpolicy/controllers"
)

// TestDefaultObjects checks what config/default deploys, object by object.
func TestDefaultObjects(t *testing.T) {
	objs := decode(t, render(t, "default"))
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
		clusterScoped := []string{"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
		want := namespace
		if slices.Contains(clusterScoped, o.GetKind()) {
			want = ""
		}
		if o.GetNamespace() != want {
			t.Errorf("%s %s is in namespace %q, want %q", o.GetKind(), o.GetName(), o.GetNamespace(), want)
		}
	}
	slices.Sort(kinds)
	want := []string{
		"ClusterRole/" + agentName, "ClusterRoleBinding/" + agentName, "DaemonSet/" + agentName,
		"Namespace/" + namespace, "ServiceAccount/" + agentName,
		"ValidatingAdmissionPolicy/" + agentName + "-node", "ValidatingAdmissionPolicyBinding/" + agentName + "-node",
	}
	if !slices.Equal(kinds, want) {
		t.Fatalf("config/default renders %v, want %v", kinds, want)
	}

	ns := find(t, objs, "Namespace", namespace)
	if got := ns.GetLabels()["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace pod-security enforce label = %q, want privileged (hostNetwork and NET_ADMIN)", got)
	}

	crb := typed[rbacv1.ClusterRoleBinding](t, find(t, objs, "ClusterRoleBinding", agentName))
	wantRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: agentName}
	wantSubj := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: agentName, Namespace: namespace}}
	if crb.RoleRef != wantRef || !equality.Semantic.DeepEqual(crb.Subjects, wantSubj) {
		t.Errorf("ClusterRoleBinding binds %+v to %+v, want %+v to %+v", crb.Subjects, crb.RoleRef, wantSubj, wantRef)
	}

	ds := typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", agentName))
	if sa := ds.Spec.Template.Spec.ServiceAccountName; sa != agentName {
		t.Errorf("DaemonSet runs as service account %q, want %s", sa, agentName)
	}
	checkAgentDaemonSet(t, ds, "127.0.0.1:9090")
}

// TestClusterRoleLeastPrivilege checks the generated ClusterRole by shape: no
// wildcards, reads only, except creating Events and patching Nodes (the
// startup taint, which config/rbac's admission policy narrows: TestNodePatchPolicy).
func TestClusterRoleLeastPrivilege(t *testing.T) {
	role := typed[rbacv1.ClusterRole](t, find(t, decode(t, render(t, "default")), "ClusterRole", agentName))
	if role.AggregationRule != nil {
		t.Error("the ClusterRole aggregates other roles")
	}
	if len(role.Rules) == 0 {
		t.Fatal("the ClusterRole has no rules")
	}
	read := []string{"list", "watch"} // from the informer caches; the agent never gets an object from the API
	for i, r := range role.Rules {
		for _, field := range [][]string{r.APIGroups, r.Resources, r.Verbs, r.ResourceNames} {
			for _, v := range field {
				if strings.Contains(v, "*") {
					t.Errorf("rule %d has a wildcard %q: %+v", i, v, r)
				}
			}
		}
		if len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %d grants non-resource URLs %v", i, r.NonResourceURLs)
		}
		for _, res := range r.Resources {
			if strings.Contains(res, "/") {
				t.Errorf("rule %d grants a subresource %q", i, res)
			}
		}
		// The writes: Warning Events on policies the node cannot enforce, and
		// the startup taint's removal from the agent's Node.
		events := slices.Equal(r.APIGroups, []string{"events.k8s.io"}) && slices.Equal(r.Resources, []string{"events"})
		nodes := slices.Equal(r.APIGroups, []string{""}) && slices.Equal(r.Resources, []string{"nodes"})
		reads := slices.DeleteFunc(slices.Clone(r.Verbs), func(v string) bool { return !slices.Contains(read, v) })
		if len(reads) > 0 && !slices.Equal(reads, read) {
			t.Errorf("rule %d grants %v: a read rule grants exactly list and watch, the informers' pair", i, r.Verbs)
		}
		for _, v := range r.Verbs {
			if slices.Contains(read, v) || events && v == "create" || nodes && v == "patch" {
				continue
			}
			t.Errorf("rule %d grants %q on %v/%v; the agent only reads, creates events.k8s.io events and patches nodes", i, v, r.APIGroups, r.Resources)
		}
	}
}

// checkAgentDaemonSet asserts the agent DaemonSet's contract; metricsAddr is
// the --metrics-bind-address the variant must pass.
func checkAgentDaemonSet(t *testing.T, ds *appsv1.DaemonSet, metricsAddr string) {
	t.Helper()
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("hostNetwork is not set: the table must be in the node's network namespace")
	}
	if spec.HostPID || spec.HostIPC {
		t.Error("hostPID or hostIPC is set; the agent needs neither")
	}
	if spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("dnsPolicy = %q, want ClusterFirstWithHostNet", spec.DNSPolicy)
	}
	if spec.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q, want system-node-critical", spec.PriorityClassName)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !equality.Semantic.DeepEqual(spec.Tolerations, want) {
		t.Errorf("tolerations = %+v, want one operator: Exists (every node, control plane included)", spec.Tolerations)
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g != 30 {
		t.Errorf("terminationGracePeriodSeconds = %v, want 30", g)
	}
	if len(spec.Volumes) > 0 {
		t.Errorf("the agent mounts volumes %+v; it needs none", spec.Volumes)
	}
	if s := ds.Spec.UpdateStrategy; s.Type != appsv1.RollingUpdateDaemonSetStrategyType ||
		s.RollingUpdate == nil || s.RollingUpdate.MaxUnavailable == nil || *s.RollingUpdate.MaxUnavailable != intstr.FromInt32(1) {
		t.Errorf("updateStrategy = %+v, want RollingUpdate with maxUnavailable 1", s)
	}
	if len(spec.Containers) != 1 || len(spec.InitContainers) > 0 {
		t.Fatalf("want exactly one container, got %d (and %d init containers)", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	if c.Image != image {
		t.Errorf("image = %q, want %s", c.Image, image)
	}
	// The deny log at a rate a node's log can take, the per-policy counters,
	// strict mode with its mark bits spelled out, and unknown pod addresses
	// isolated by the Node's pod CIDRs, the startup taint: the README's
	// defaults, visible in the DaemonSet for an operator to change.
	wantArgs := []string{"agent", "--health-probe-bind-address=:8081", "--metrics-bind-address=" + metricsAddr,
		"--deny-log-rate=10/second", "--deny-log-burst=20", "--deny-log-group=7600", "--policy-counters=true",
		"--established=recheck", "--ct-mark-mask=0x00ff0000", "--unknown-pod-cidrs=node",
		"--startup-taint=" + controllers.DefaultStartupTaint}
	if len(c.Command) > 0 || !slices.Equal(c.Args, wantArgs) {
		t.Errorf("command %q args %q, want the image's entrypoint with args %q", c.Command, c.Args, wantArgs)
	}
	var nodeName *corev1.EnvVar
	for i := range c.Env {
		if c.Env[i].Name == "NODE_NAME" {
			nodeName = &c.Env[i]
		}
	}
	if nodeName == nil || nodeName.ValueFrom == nil || nodeName.ValueFrom.FieldRef == nil ||
		nodeName.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME = %+v, want the downward API's spec.nodeName", nodeName)
	}
	checkRootNetAdmin(t, "agent", c.SecurityContext)

	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", p.name)
			continue
		}
		if p.probe.HTTPGet.Path != p.path {
			t.Errorf("%s probe path = %q, want %s", p.name, p.probe.HTTPGet.Path, p.path)
		}
		if port := containerPort(c, p.probe.HTTPGet.Port); port != 8081 {
			t.Errorf("%s probe port %s is container port %d, want the health port 8081", p.name, p.probe.HTTPGet.Port.String(), port)
		}
	}
	want := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("384Mi")},
	}
	if !equality.Semantic.DeepEqual(c.Resources, want) {
		t.Errorf("resources = %+v, want %+v", c.Resources, want)
	}
}

// checkRootNetAdmin asserts the security context of a container that programs
// nftables in the host network namespace: uid 0 with NET_ADMIN and nothing else.
func checkRootNetAdmin(t *testing.T, name string, sc *corev1.SecurityContext) {
	t.Helper()
	if sc == nil || sc.Capabilities == nil {
		t.Fatalf("%s: no securityContext capabilities", name)
	}
	if add := sc.Capabilities.Add; !slices.Equal(add, []corev1.Capability{"NET_ADMIN"}) {
		t.Errorf("%s: capabilities add %v, want only NET_ADMIN", name, add)
	}
	if drop := sc.Capabilities.Drop; !slices.Equal(drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s: capabilities drop %v, want ALL", name, drop)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", name)
	}
	// NET_ADMIN only works for uid 0 (see the comment in config/agent/daemonset.yaml).
	if sc.RunAsNonRoot == nil || *sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("%s: runAsNonRoot %v runAsUser %v, want explicitly false and 0", name, sc.RunAsNonRoot, sc.RunAsUser)
	}
}

// containerPort resolves a probe's or service's port (number or name) to a
// container port number, or 0.
func containerPort(c corev1.Container, p intstr.IntOrString) int32 {
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	return 0
}

// TestPrometheusVariant checks config/prometheus: the agent of config/default
// with metrics on :9090, and a Service and ServiceMonitor that reach them.
func TestPrometheusVariant(t *testing.T) {
	def := decode(t, render(t, "default"))
	objs := decode(t, render(t, "prometheus"))

	ds := typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", agentName))
	checkAgentDaemonSet(t, ds, ":9090")
	c := ds.Spec.Template.Spec.Containers[0]
	if containerPort(c, intstr.FromString("metrics")) != 9090 {
		t.Errorf("no container port named metrics = 9090: %+v", c.Ports)
	}
	// Apart from that flag and port, the agent is config/default's.
	base := typed[appsv1.DaemonSet](t, find(t, def, "DaemonSet", agentName))
	patched := ds.DeepCopy()
	pc := &patched.Spec.Template.Spec.Containers[0]
	pc.Args[2] = base.Spec.Template.Spec.Containers[0].Args[2]
	pc.Ports = slices.DeleteFunc(pc.Ports, func(p corev1.ContainerPort) bool { return p.Name == "metrics" })
	if !equality.Semantic.DeepEqual(patched.Spec, base.Spec) {
		t.Error("config/prometheus changes more of the DaemonSet than the metrics flag and port")
	}
	for _, o := range def {
		if o.GetKind() != "DaemonSet" && !equality.Semantic.DeepEqual(o, find(t, objs, o.GetKind(), o.GetName())) {
			t.Errorf("config/prometheus changes %s %s", o.GetKind(), o.GetName())
		}
	}

	svc := typed[corev1.Service](t, find(t, objs, "Service", agentName+"-metrics"))
	if svc.Namespace != namespace {
		t.Errorf("Service namespace = %q, want %s", svc.Namespace, namespace)
	}
	podLabels := ds.Spec.Template.Labels
	for k, v := range svc.Spec.Selector {
		if podLabels[k] != v {
			t.Errorf("Service selector %s=%s does not match the agent's pods %v", k, v, podLabels)
		}
	}
	if len(svc.Spec.Ports) != 1 || containerPort(c, svc.Spec.Ports[0].TargetPort) != 9090 {
		t.Errorf("Service ports %+v do not target the metrics port", svc.Spec.Ports)
	}

	sm := find(t, objs, "ServiceMonitor", agentName)
	if sm.GetNamespace() != namespace {
		t.Errorf("ServiceMonitor namespace = %q, want %s", sm.GetNamespace(), namespace)
	}
	sel, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	for k, v := range sel {
		if svc.Labels[k] != v {
			t.Errorf("ServiceMonitor selector %s=%s does not match the Service's labels %v", k, v, svc.Labels)
		}
	}
	eps, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(eps) != 1 {
		t.Fatalf("ServiceMonitor endpoints = %v, want one", eps)
	}
	if port, _, _ := unstructured.NestedString(eps[0].(map[string]any), "port"); port != svc.Spec.Ports[0].Name {
		t.Errorf("ServiceMonitor endpoint port %q is not the Service's port %q", port, svc.Spec.Ports[0].Name)
	}
}

// The CNI gate's flags, and the node's directory each names: config/cni-gate
// mounts them into the agent there, config/cleanup into its init container.
var (
	cniGateArgs     = []string{"--cni-gate-conf-dir=/host/etc/cni/net.d", "--cni-gate-bin-dir=/host/opt/cni/bin"}
	cniGateHostDirs = map[string]string{"/host/etc/cni/net.d": "/etc/cni/net.d", "/host/opt/cni/bin": "/opt/cni/bin"}
)

// TestCNIGateComponent checks config/cni-gate as a user's overlay adds it
// (testdata/cni-gate: config/default and the component): config/default's
// agent with the two flags appended and the node's CNI directories mounted
// where they point, nothing else changed. The same on config/prometheus
// (testdata/cni-gate-prometheus), whose patch edits the agent's args too.
func TestCNIGateComponent(t *testing.T) {
	for _, v := range []struct{ overlay, base string }{{"cni-gate", "default"}, {"cni-gate-prometheus", "prometheus"}} {
		t.Run(v.overlay, func(t *testing.T) {
			base := decode(t, render(t, v.base))
			objs := decode(t, renderPath(t, filepath.Join("testdata", v.overlay)))
			if len(objs) != len(base) {
				t.Errorf("%d objects, config/%s has %d: the component adds none", len(objs), v.base, len(base))
			}
			for _, o := range base {
				if o.GetKind() != "DaemonSet" && !equality.Semantic.DeepEqual(o, find(t, objs, o.GetKind(), o.GetName())) {
					t.Errorf("the component changes %s %s", o.GetKind(), o.GetName())
				}
			}

			ds := typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", agentName))
			spec := ds.Spec.Template.Spec
			if len(spec.Containers) != 1 {
				t.Fatalf("%d containers, want the agent alone", len(spec.Containers))
			}
			c := spec.Containers[0]
			if n := len(c.Args); n < 2 || !slices.Equal(c.Args[n-2:], cniGateArgs) {
				t.Errorf("args %q, want them to end with %q", c.Args, cniGateArgs)
			}
			// Directory: a node whose runtime keeps its CNI files elsewhere gets
			// an agent that does not start, not directories nothing reads.
			checkCNIGateMounts(t, "agent", spec, c, corev1.HostPathDirectory, nil)

			// Apart from them, config/<base>'s agent.
			want := typed[appsv1.DaemonSet](t, find(t, base, "DaemonSet", agentName))
			got := ds.DeepCopy()
			gc := &got.Spec.Template.Spec.Containers[0]
			gc.Args = gc.Args[:max(len(gc.Args)-len(cniGateArgs), 0)]
			gc.VolumeMounts = nil
			got.Spec.Template.Spec.Volumes = nil
			if !equality.Semantic.DeepEqual(got.Spec, want.Spec) {
				t.Errorf("the component changes more of config/%s's DaemonSet than two flags and their mounts", v.base)
			}
		})
	}
}

// checkCNIGateMounts asserts that container c of spec mounts the node's CNI
// directories read-write (hostPath of type typ) at the paths the gate's flags
// name, and has no other mount. readOnly are more directories, mounted read
// only: cleanup's libcni cache.
func checkCNIGateMounts(t *testing.T, name string, spec corev1.PodSpec, c corev1.Container, typ corev1.HostPathType, readOnly map[string]string) {
	t.Helper()
	dirs := maps.Clone(cniGateHostDirs)
	maps.Copy(dirs, readOnly)
	if len(c.VolumeMounts) != len(dirs) || len(spec.Volumes) != len(dirs) {
		t.Errorf("%s: %d mounts of %d volumes, want %d: the node's CNI directories", name, len(c.VolumeMounts), len(spec.Volumes), len(dirs))
	}
	seen := map[string]bool{}
	for _, m := range c.VolumeMounts {
		host, ok := dirs[m.MountPath]
		if !ok {
			t.Errorf("%s mounts %s, which no gate flag names", name, m.MountPath)
			continue
		}
		seen[m.MountPath] = true
		_, ro := readOnly[m.MountPath]
		if m.ReadOnly != ro || m.SubPath != "" || m.SubPathExpr != "" {
			t.Errorf("%s's mount %s: %+v, want the whole directory, read only %v", name, m.MountPath, m, ro)
		}
		i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 || spec.Volumes[i].HostPath == nil {
			t.Errorf("%s's mount %s is not of a hostPath volume", name, m.MountPath)
			continue
		}
		if hp := spec.Volumes[i].HostPath; hp.Path != host || hp.Type == nil || *hp.Type != typ {
			t.Errorf("%s mounts hostPath %s (type %v) at %s, want %s (type %s)", name, hp.Path, ptr.Deref(hp.Type, ""), m.MountPath, host, typ)
		}
	}
	if len(seen) != len(dirs) {
		t.Errorf("%s mounts %v of %v", name, seen, dirs)
	}
}

// TestCleanupVariant checks config/cleanup: a DaemonSet on every node whose init
// container removes the agent's table, with nothing else of the agent.
func TestCleanupVariant(t *testing.T) {
	objs := decode(t, render(t, "cleanup"))
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind()+"/"+o.GetName())
	}
	slices.Sort(kinds)
	if want := []string{"DaemonSet/" + cleanupName, "Namespace/" + namespace}; !slices.Equal(kinds, want) {
		t.Fatalf("config/cleanup renders %v, want %v (no agent, no RBAC)", kinds, want)
	}
	def := decode(t, render(t, "default"))
	if ns, base := find(t, objs, "Namespace", namespace), find(t, def, "Namespace", namespace); !equality.Semantic.DeepEqual(ns, base) {
		t.Errorf("config/cleanup's namespace differs from config/default's:\n%v\n%v", ns, base)
	}

	ds := typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", cleanupName))
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" ||
		!equality.Semantic.DeepEqual(spec.Tolerations, []corev1.Toleration{{Operator: corev1.TolerationOpExists}}) {
		t.Error("the cleanup DaemonSet must run in every node's network namespace, as the agent does")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the cleanup pods mount a service account token; they never talk to the apiserver")
	}
	if spec.ServiceAccountName != "" {
		t.Errorf("the cleanup pods use service account %q, which config/cleanup does not create", spec.ServiceAccountName)
	}
	if len(spec.InitContainers) != 1 || len(spec.Containers) != 1 {
		t.Fatalf("want one init container (cleanup) and one container (pause), got %d and %d", len(spec.InitContainers), len(spec.Containers))
	}
	ic := spec.InitContainers[0]
	// The CNI gate's removal, on every node whether or not its agent ran with
	// the gate (a no-op where it did not): a gate left behind without the table
	// fails every new pod of a node after its next reboot.
	// With libcni's cache, read only: the gate's plugin stays while a pod
	// set up with its entry lives (CRI-O tears it down with that entry).
	wantArgs := append(append([]string{"cleanup", "--table-name=" + tableName}, cniGateArgs...), "--cni-cache-dir=/host/var/lib/cni")
	if ic.Image != image || !slices.Equal(ic.Args, wantArgs) {
		t.Errorf("init container runs %s %q, want %s %q", ic.Image, ic.Args, image, wantArgs)
	}
	checkRootNetAdmin(t, "cleanup", ic.SecurityContext)
	// DirectoryOrCreate: the cleanup must finish on a node without them too.
	checkCNIGateMounts(t, "cleanup", spec, ic, corev1.HostPathDirectoryOrCreate, map[string]string{"/host/var/lib/cni": "/var/lib/cni"})
	if m := spec.Containers[0].VolumeMounts; len(m) > 0 {
		t.Errorf("the pause container mounts %+v", m)
	}
	pause := spec.Containers[0].SecurityContext
	if pause == nil || pause.RunAsNonRoot == nil || !*pause.RunAsNonRoot || pause.Capabilities == nil ||
		len(pause.Capabilities.Add) > 0 || !slices.Equal(pause.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("the pause container must run as non-root without capabilities: %+v", pause)
	}
}

// TestKustomizeImage checks hack/kustomize-image.sh, which `make deploy IMG=...` uses.
func TestKustomizeImage(t *testing.T) {
	kc := kubectl(t)
	root := repoRoot(t)
	for img, want := range map[string]string{
		"":                                    image,
		"registry.local:5000/np/nftpolicy:v1": "registry.local:5000/np/nftpolicy:v1",
		"registry.local:5000/np/nftpolicy":    "registry.local:5000/np/nftpolicy:latest",
		"quay.io/np/nftpolicy@sha256:" + strings.Repeat("ab", 32): "quay.io/np/nftpolicy@sha256:" + strings.Repeat("ab", 32),
	} {
		for _, dir := range []string{"default", "prometheus", "cleanup"} {
			cmd := exec.CommandContext(context.Background(), filepath.Join(root, "hack", "kustomize-image.sh"), filepath.Join("config", dir), img)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "KUBECTL="+kc)
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("hack/kustomize-image.sh config/%s %s: %v", dir, img, err)
			}
			name := agentName
			if dir == "cleanup" {
				name = cleanupName
			}
			ds := typed[appsv1.DaemonSet](t, find(t, decode(t, out), "DaemonSet", name))
			spec := ds.Spec.Template.Spec
			got := append(spec.InitContainers, spec.Containers...)[0].Image
			if got != want {
				t.Errorf("config/%s with IMG=%q: image %q, want %q", dir, img, got, want)
			}
		}
	}
}
