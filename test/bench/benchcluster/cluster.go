// Package benchcluster is the cluster the control-plane benchmarks measure
// against, built the same way for the API server (test/bench/controlplane) and
// for the in-process sync benchmarks (controllers): 100 namespaces (labels ns,
// team a..e), 10,000 pods (100 per namespace, pod i on node-(i % 100), labels app
// of 50 and tier of 5, named port serve-80-tcp/80, an address each) and 1,000
// policies in four shapes in rotation. Seeded: the same cluster every run.
// Shape100k is the same recipe at 100,000 pods in 2,000 namespaces on 2,000
// nodes with 5,000 policies.
package benchcluster

import (
	"fmt"
	"math/rand/v2"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// The cluster's shape.
const (
	Namespaces    = 100
	PodsPerNS     = 100 // 10,000 pods
	Nodes         = 100 // pod i runs on node-(i % Nodes): 100 pods per node
	PoliciesPerNS = 10  // 1,000 policies
	Apps          = 50
	Tiers         = 5
	Teams         = "abcde"
	NamedPort     = "serve-80-tcp"
)

// Shape is a cluster's size; the rest (labels, policy shapes, addresses) is
// the same at every size.
type Shape struct {
	Namespaces, PodsPerNS, Nodes int
	// Policies is spread over the namespaces, namespace n getting one more
	// than Policies/Namespaces when n < Policies%Namespaces.
	Policies int
	// DeploymentPods gives every pod what a Deployment's running pod carries
	// besides (DeploymentShaped): the benchmarks' pods are thin by default.
	DeploymentPods bool
}

// Shapes: the 10k point (Objects) and the 100k point of a 2,000-5,000 node
// cluster (the agent's node holds 50 pods).
var (
	Shape10k  = Shape{Namespaces: Namespaces, PodsPerNS: PodsPerNS, Nodes: Nodes, Policies: Namespaces * PoliciesPerNS}
	Shape100k = Shape{Namespaces: 2000, PodsPerNS: 50, Nodes: 2000, Policies: 5000}
)

// Pods is the number of pods of the shape.
func (s Shape) Pods() int { return s.Namespaces * s.PodsPerNS }

// Objects returns the 10k cluster's objects, pods with their status (phase and
// address) filled in, in creation order.
func Objects() ([]*corev1.Namespace, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	return Shape10k.Objects()
}

// Objects returns the cluster's objects, pods with their status (phase and
// address) filled in, in creation order. The 10k shape gives the same objects
// as before shapes existed.
func (s Shape) Objects() ([]*corev1.Namespace, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	rng := rand.New(rand.NewPCG(5, 1))
	var nss []*corev1.Namespace
	for n := range s.Namespaces {
		name := fmt.Sprintf("ns-%d", n)
		nss = append(nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name,
			Labels: map[string]string{"ns": name, "team": string(Teams[n%len(Teams)])}}})
	}
	// Policies select apps that exist in their namespace.
	appsIn := make([][]int, s.Namespaces)
	pods := make([]*corev1.Pod, 0, s.Pods())
	for i := range s.Pods() {
		n := i / s.PodsPerNS
		app := rng.IntN(Apps)
		appsIn[n] = append(appsIn[n], app)
		ip := fmt.Sprintf("10.%d.%d.%d", 64+i>>16, (i>>8)&255, i&255)
		pods = append(pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", n), Name: fmt.Sprintf("pod-%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": fmt.Sprintf("tier-%d", rng.IntN(Tiers))}},
			Spec:   PodSpecOn(fmt.Sprintf("node-%d", i%s.Nodes)),
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		})
		if s.DeploymentPods {
			DeploymentShaped(pods[len(pods)-1], i)
		}
	}
	var nps []*networkingv1.NetworkPolicy
	for n := range s.Namespaces {
		count := s.Policies / s.Namespaces
		if n < s.Policies%s.Namespaces {
			count++
		}
		for j := range count {
			app := appsIn[n][rng.IntN(len(appsIn[n]))]
			nps = append(nps, mixedPolicy(fmt.Sprintf("ns-%d", n), j, fmt.Sprintf("app-%d", app), rng))
		}
	}
	return nss, pods, nps
}

// PodSpecOn is the spec of every pod of the cluster, on node.
func PodSpecOn(node string) corev1.PodSpec {
	return corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
		Name: "serve", Image: "registry.k8s.io/e2e-test-images/agnhost:2.53",
		Ports: []corev1.ContainerPort{{Name: NamedPort, ContainerPort: 80, Protocol: corev1.ProtocolTCP}},
	}}}
}

// DeploymentShaped adds to p (pod i) what a running pod of a Deployment
// carries that no policy reads: its owner, template hash, service account
// volume and mounts, environment, resources, probes, security context,
// tolerations, and the kubelet's conditions, container status and host
// address. With the managed fields the apiserver records for its creation and
// status update, ~10.7 KB of JSON: real pods' bytes, for what lists and
// watches cost. Its pod-template-hash label is the pod's own (a Deployment's
// pods share theirs; a StatefulSet's pod-name label is each pod's own): no
// two pods share a label map, the agent's and explain's worst case.
func DeploymentShaped(p *corev1.Pod, i int) {
	hash := fmt.Sprintf("%010x", uint64(i)*2654435761)[:10]
	p.GenerateName = p.Labels["app"] + "-" + hash + "-"
	p.Labels["pod-template-hash"] = hash
	p.Annotations = map[string]string{"kubectl.kubernetes.io/restartedAt": "2026-12-01T10:00:00Z"}
	p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: p.Labels["app"] + "-" + hash,
		UID: "5b6c1d2e-3f40-4a5b-8c6d-7e8f9a0b1c2d", Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}}
	p.Spec.ServiceAccountName = "default"
	p.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-x7k2p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr.To(int32(420)),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr.To(int64(3607))}},
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items: []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace",
				FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"}}}}},
		}}}}}
	c := &p.Spec.Containers[0]
	c.Env = []corev1.EnvVar{{Name: "LOG_LEVEL", Value: "info"}, {Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.name"}}}, {Name: "GOMAXPROCS", Value: "2"}}
	c.Resources = corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "kube-api-access-x7k2p", ReadOnly: true, MountPath: "/var/run/secrets/kubernetes.io/serviceaccount"}}
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromString(NamedPort)}},
			PeriodSeconds: 10, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3}
	}
	c.LivenessProbe, c.ReadinessProbe = probe("/healthz"), probe("/readyz")
	c.SecurityContext = &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false), RunAsNonRoot: ptr.To(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}
	p.Spec.Tolerations = []corev1.Toleration{
		{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To(int64(300))},
		{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To(int64(300))}}
	start := metav1.NewTime(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC))
	for _, t := range []corev1.PodConditionType{corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.PodReady, corev1.ContainersReady, corev1.PodScheduled} {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: start})
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: c.Name, Ready: true, Started: ptr.To(true), Image: c.Image,
		ImageID:     "registry.k8s.io/e2e-test-images/agnhost@sha256:4b1d0f8e2c6a9b3d5e7f1a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2d",
		ContainerID: fmt.Sprintf("containerd://%064x", i),
		State:       corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: start}},
		VolumeMounts: []corev1.VolumeMountStatus{{Name: "kube-api-access-x7k2p", MountPath: "/var/run/secrets/kubernetes.io/serviceaccount",
			ReadOnly: true, RecursiveReadOnly: ptr.To(corev1.RecursiveReadOnlyDisabled)}}}}
	host := fmt.Sprintf("10.250.%d.%d", (i>>8)&255, i&255)
	p.Status.HostIP, p.Status.HostIPs = host, []corev1.HostIP{{IP: host}}
	p.Status.StartTime = &start
	p.Status.QOSClass = corev1.PodQOSBurstable
}

// mixedPolicy is policy j of a namespace: four shapes in rotation, from a plain
// same-namespace tier peer on a numbered port to ingress plus egress.
func mixedPolicy(ns string, j int, app string, rng *rand.Rand) *networkingv1.NetworkPolicy {
	tier := func() *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"tier": fmt.Sprintf("tier-%d", rng.IntN(Tiers))}}
	}
	team := func() *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"team": string(Teams[rng.IntN(len(Teams))])}}
	}
	tcp := corev1.ProtocolTCP
	udp := corev1.ProtocolUDP
	port80 := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr.To(intstr.FromInt32(80))}}
	named := []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: ptr.To(intstr.FromString(NamedPort))}}
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("np-%d", j)},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}},
	}
	switch j % 4 {
	case 0:
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: port80}}
	case 1:
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: team()}}, Ports: named}}
	case 2:
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{PodSelector: tier(), NamespaceSelector: team()}, {PodSelector: tier()}},
			Ports: port80,
		}}
	case 3:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: named}}
		np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
			{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: team()}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: ptr.To(intstr.FromInt32(53))}}},
			{To: []networkingv1.NetworkPolicyPeer{{PodSelector: tier()}}, Ports: port80},
		}
	}
	return np
}
