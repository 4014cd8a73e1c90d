package compile

import (
	"fmt"
	"reflect"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestPodObject: the object made from a record is read back as the same
// record, whatever the record holds.
func TestPodObject(t *testing.T) {
	var pods []*corev1.Pod
	for i, phase := range []corev1.PodPhase{corev1.PodRunning, corev1.PodPending, corev1.PodSucceeded, corev1.PodFailed} {
		for j, ips := range [][]string{nil, {"10.1.0.1"}, {"fd00::1", "10.1.0.2"}, {"::ffff:10.1.0.3"}, {"bogus"}} {
			p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: fmt.Sprintf("p-%d-%d", i, j)}}
			p.Status.Phase = phase
			for _, ip := range ips {
				p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
			}
			if j%2 == 0 {
				p.Labels = map[string]string{"app": "a", "tier": fmt.Sprint(j)}
			}
			p.Spec.HostNetwork = i == 1 && j == 1
			p.Spec.NodeName = fmt.Sprintf("node-%d", j)
			if j > 1 {
				p.Spec.Containers = []corev1.Container{
					{Name: "a", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}},
					{Name: "b", Ports: []corev1.ContainerPort{{ContainerPort: 9}, {Name: "s", ContainerPort: 7, Protocol: corev1.ProtocolSCTP}}},
				}
			}
			pods = append(pods, p)
		}
	}
	only := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "podip"}}
	only.Status.PodIP = "10.9.0.1"
	pods = append(pods, only)
	for _, p := range pods {
		rec := PodOf(p)
		if got := PodOf(rec.Object()); !reflect.DeepEqual(got, rec) {
			t.Errorf("%s: record %+v, read back from its object as %+v", p.Name, rec, got)
		}
	}
}
