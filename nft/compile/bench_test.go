package compile

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// bigCluster is a synthetic cluster: namespaces ns-NNN (labels team, env), pods spread
// evenly over namespaces and nodes (labels app, tier; named ports http, metrics, dns),
// dual-stack, and ten kinds of common policies repeated over the namespaces.
//
// With broad, two kinds reach across namespaces (egress to the db tier of every prod
// namespace, and to one app in every namespace): every egress chain then lists
// thousands of pod addresses. Without, those two stay in the policy's namespace.
func bigCluster(nPods, nPolicies, nNamespaces, nNodes int, broad bool) ([]*corev1.Namespace, []*corev1.Pod, []*networkingv1.NetworkPolicy) {
	var nss []*corev1.Namespace
	for i := range nNamespaces {
		nss = append(nss, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name:   fmt.Sprintf("ns-%03d", i),
			Labels: map[string]string{"team": fmt.Sprintf("team-%d", i%10), "env": []string{"prod", "dev"}[i%2]},
		}})
	}
	ports := []corev1.ContainerPort{
		{Name: "http", ContainerPort: 8080},
		{Name: "metrics", ContainerPort: 9090},
		{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
	}
	var pods []*corev1.Pod
	for k := range nPods {
		ns, j := k%nNamespaces, k/nNamespaces
		pods = append(pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: nss[ns].Name, Name: fmt.Sprintf("pod-%d", j),
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", j%10), "tier": []string{"frontend", "backend", "db"}[j%3]},
			},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%03d", (ns+j)%nNodes), Containers: []corev1.Container{{Name: "c", Ports: ports}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{
				{IP: fmt.Sprintf("10.%d.%d.%d", 64+k>>16, k>>8&255, k&255)},
				{IP: fmt.Sprintf("fd00::%x", k)},
			}},
		})
	}
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	port := func(p intstr.IntOrString, proto *corev1.Protocol) networkingv1.NetworkPolicyPort {
		return networkingv1.NetworkPolicyPort{Port: &p, Protocol: proto}
	}
	sel := func(kv ...string) *metav1.LabelSelector {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return &metav1.LabelSelector{MatchLabels: m}
	}
	var pols []*networkingv1.NetworkPolicy
	for i := range nPolicies {
		ns := nss[i%nNamespaces].Name
		kind := (i / nNamespaces) % 10
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pol-%d", i)}}
		s := &np.Spec
		switch kind {
		case 0: // default deny
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
		case 1: // same namespace
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel()}}}}
		case 2: // one app from another team's app, named port
			s.PodSelector = *sel("app", fmt.Sprintf("app-%d", i%10))
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", fmt.Sprintf("team-%d", (i+1)%10)), PodSelector: sel("app", fmt.Sprintf("app-%d", (i+3)%10))}},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromString("http"), nil)},
			}}
		case 3: // DNS
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("kubernetes.io/metadata.name", "ns-000"), PodSelector: sel("app", "app-0")}},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(53), &udp), port(intstr.FromInt32(53), &tcp)},
			}}
		case 4: // from the corporate network
			end := int32(8100)
			p := port(intstr.FromInt32(8000), nil)
			p.EndPort = &end
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{fmt.Sprintf("192.168.%d.0/24", i%256)}}}},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(443), nil), p},
			}}
		case 5: // backends to databases on 8080
			s.PodSelector = *sel("tier", "backend")
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
			to := networkingv1.NetworkPolicyPeer{PodSelector: sel("tier", "db")}
			if broad { // of every prod namespace
				to.NamespaceSelector = sel("env", "prod")
			}
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{to},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(8080), nil)},
			}}
		case 6: // monitoring scrapes metrics
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("kubernetes.io/metadata.name", "ns-001")}},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromString("metrics"), nil)},
			}}
		case 7: // frontends to the tiers behind them
			s.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"backend", "db"}}}}
			s.Ingress = []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: sel("tier", "frontend")}},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromInt32(80), nil), port(intstr.FromInt32(443), nil)},
			}}
		case 8: // internet egress for frontends
			s.PodSelector = *sel("tier", "frontend")
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{
				CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}}}}}}
		case 9: // egress to one app, named port
			s.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
			to := networkingv1.NetworkPolicyPeer{PodSelector: sel("app", fmt.Sprintf("app-%d", i%10))}
			if broad { // in every namespace
				to.NamespaceSelector = sel()
			}
			s.Egress = []networkingv1.NetworkPolicyEgressRule{{
				To:    []networkingv1.NetworkPolicyPeer{to},
				Ports: []networkingv1.NetworkPolicyPort{port(intstr.FromString("http"), nil)},
			}}
		}
		pols = append(pols, np)
	}
	return nss, pods, pols
}

// BenchmarkCompile: a full compile of 10,000 pods, 1,000 policies, 100 namespaces,
// for one node running 100 pods (of 100 nodes) or 1,000 (of 10), with namespace-local
// policies and with broad ones (see bigCluster). The size of the result is reported:
// compile time follows the number of elements.
func BenchmarkCompile(b *testing.B) {
	for _, broad := range []bool{false, true} {
		for _, nodes := range []int{100, 10} {
			nss, pods, pols := bigCluster(10_000, 1_000, 100, nodes, broad)
			s := Snapshot{NodeName: "node-000", Pods: pods, Namespaces: nss, Policies: pols}
			mix := "local"
			if broad {
				mix = "broad"
			}
			b.Run(fmt.Sprintf("pods=10000/policies=1000/ns=100/%s/local-pods=%d", mix, 10_000/nodes), func(b *testing.B) {
				rs, problems := Compile(s, Options{})
				if len(problems) > 0 {
					b.Fatal(problems)
				}
				if err := rs.Validate(); err != nil {
					b.Fatal(err)
				}
				c := rs.Counts()
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					Compile(s, Options{})
				}
				b.ReportMetric(float64(c.Chains), "chains")
				b.ReportMetric(float64(c.Sets), "sets")
				b.ReportMetric(float64(c.Elements), "elements")
			})
		}
	}
}
