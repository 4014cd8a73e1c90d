package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// TestTrimPodKeepsWhatCompileReads: a trimmed pod compiles exactly like the full
// one, and keeps one container with the named ports only (none without any).
func TestTrimPodKeepsWhatCompileReads(t *testing.T) {
	pod := func(name, ip string, containers ...corev1.Container) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name, Labels: map[string]string{"app": "web"},
				Annotations: map[string]string{"big": "yes"}},
			Spec:   corev1.PodSpec{NodeName: "n1", Containers: containers},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		}
	}
	full := []*corev1.Pod{
		pod("two", "10.0.0.1",
			corev1.Container{Name: "app", Image: "x", Ports: []corev1.ContainerPort{{ContainerPort: 8080}, {Name: "http", ContainerPort: 80}}},
			corev1.Container{Name: "side", Ports: []corev1.ContainerPort{{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}),
		pod("unnamed", "10.0.0.2", corev1.Container{Name: "app", Ports: []corev1.ContainerPort{{ContainerPort: 80}}}),
		pod("remote", "10.0.1.1", corev1.Container{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}),
	}
	full[2].Spec.NodeName = "n2"
	var trimmed []*corev1.Pod
	for _, p := range full {
		obj, err := trimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		trimmed = append(trimmed, obj.(*corev1.Pod))
	}
	if c := trimmed[0].Spec.Containers; len(c) != 1 || len(c[0].Ports) != 2 || c[0].Ports[0].Name != "http" || c[0].Ports[1].Name != "dns" {
		t.Errorf("two containers: trimmed to %+v", c)
	}
	if c := trimmed[1].Spec.Containers; len(c) != 0 {
		t.Errorf("unnamed ports only: trimmed to %+v", c)
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "p"},
		Spec: networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Protocol: &tcp, Port: ptr.To(intstr.FromString("http"))}, {Protocol: &udp, Port: ptr.To(intstr.FromString("dns"))}}}},
			Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{
				{Protocol: &tcp, Port: ptr.To(intstr.FromString("http"))}}}},
		},
	}
	compileText := func(pods []*corev1.Pod) string {
		rs, _ := compile.Compile(compile.Snapshot{NodeName: "n1", Pods: pods, Policies: []*networkingv1.NetworkPolicy{np}}, compile.Options{})
		return nft.Render(rs)
	}
	if got, want := compileText(trimmed), compileText(full); got != want {
		t.Errorf("trimmed pods compile differently:\n%s\nfull pods:\n%s", got, want)
	}
}
