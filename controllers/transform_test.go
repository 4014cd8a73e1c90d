package controllers

import (
	"maps"
	"runtime"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// TestPodRecordKeepsWhatCompileReads: the pod cache's records compile exactly like
// the full pods, and keep the named ports only (none without any).
func TestPodRecordKeepsWhatCompileReads(t *testing.T) {
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
	in := &podInterner{}
	var recs []*cachedPod
	for _, p := range full {
		obj, err := in.trimPod(p)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, obj.(*cachedPod))
	}
	if p := recs[0].Ports(); len(p) != 2 || p[0].Name != "http" || p[1].Name != "dns" {
		t.Errorf("two containers: ports %+v", p)
	}
	if p := recs[1].Ports(); len(p) != 0 {
		t.Errorf("unnamed ports only: ports %+v", p)
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
	want, _ := compile.Compile(compile.Snapshot{NodeName: "n1", Pods: full, Policies: []*networkingv1.NetworkPolicy{np}}, compile.Options{})
	c := compile.NewCompiler("n1", compile.Options{})
	for _, r := range recs {
		c.SetPodRecord(&r.Pod)
	}
	c.SetPolicy(np)
	got, _ := c.Compile()
	if g, w := nft.Render(got), nft.Render(want); g != w {
		t.Errorf("records compile differently:\n%s\nfull pods:\n%s", g, w)
	}
}

// TestPodInternerShares: pods with equal labels (in any order of insertion) and
// equal named ports share one map and one port list; an entry no pod uses any
// more is dropped.
func TestPodInternerShares(t *testing.T) {
	in := &podInterner{}
	mk := func(name string, l map[string]string) *cachedPod {
		return in.record(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name, Labels: l},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}}})
	}
	a := mk("a", map[string]string{"app": "web", "tier": "1"})
	b := mk("b", map[string]string{"tier": "1", "app": "web"})
	c := mk("c", map[string]string{"app": "web", "tier": "2"})
	if a.labels != b.labels || !maps.Equal(a.Labels(), b.Labels()) {
		t.Error("equal labels not shared")
	}
	if a.labels == c.labels || c.Labels()["tier"] != "2" {
		t.Error("different labels shared")
	}
	if a.ports != c.ports || len(a.Ports()) != 1 || a.Ports()[0] != (compile.NamedPort{Name: "http", Proto: 6, Port: 80}) {
		t.Errorf("ports not shared: %+v %+v", a.Ports(), c.Ports())
	}
	// Churn through label values no pod keeps: the table stays bounded.
	for i := range 10000 {
		mk("x", map[string]string{"pod-template-hash": strconv.Itoa(i)})
		if i%1000 == 0 {
			runtime.GC()
		}
	}
	runtime.GC()
	mk("y", map[string]string{"pod-template-hash": "last"})
	if n := len(in.labels.m); n > 4096 {
		t.Errorf("label table holds %d entries after churn", n)
	}
	runtime.KeepAlive([]*cachedPod{a, b, c})
}
