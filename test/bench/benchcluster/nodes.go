package benchcluster

import (
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeObject is node-i of a cluster, as a kubelet reports it (NodeStatus).
func NodeObject(i int) *corev1.Node {
	name := fmt.Sprintf("node-%d", i)
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name,
			"kubernetes.io/os": "linux", "topology.kubernetes.io/zone": fmt.Sprintf("zone-%d", i%3)}},
		Spec:   corev1.NodeSpec{ProviderID: "test://" + name},
		Status: NodeStatus(name, fmt.Sprintf("10.250.%d.%d", (i>>8)&255, i&255), time.Unix(1_700_000_000, 0)),
	}
}

// NodeStatus is the status a kubelet writes for Node name at address addr, its
// last heartbeat at beat: the size of a real one (~9.6 KB in protobuf: 50
// images, the kubelet's default --node-status-max-images; five conditions;
// node info), which is what every status rewrite sends to every watcher of
// every Node.
func NodeStatus(name, addr string, beat time.Time) corev1.NodeStatus {
	s := corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}, {Type: corev1.NodeHostName, Address: name}},
		NodeInfo: corev1.NodeSystemInfo{MachineID: strings.Repeat("a", 32), SystemUUID: strings.Repeat("b", 36), BootID: strings.Repeat("c", 36),
			KernelVersion: "6.12.0-amd64", OSImage: "Debian GNU/Linux 13 (trixie)", ContainerRuntimeVersion: "containerd://2.1.0",
			KubeletVersion: "v1.37.2", OperatingSystem: "linux", Architecture: "amd64"},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: 10250}},
	}
	for _, c := range []corev1.NodeConditionType{"MemoryPressure", "DiskPressure", "PIDPressure", "Ready", "NetworkUnavailable"} {
		st := corev1.ConditionFalse
		if c == corev1.NodeReady {
			st = corev1.ConditionTrue
		}
		s.Conditions = append(s.Conditions, corev1.NodeCondition{Type: c, Status: st,
			LastHeartbeatTime: metav1.NewTime(beat), LastTransitionTime: metav1.NewTime(time.Unix(1_690_000_000, 0)),
			Reason: "Kubelet" + string(c), Message: "kubelet reports " + string(c) + " as " + string(st)})
	}
	for i := range 50 {
		digest := fmt.Sprintf("%064x", i*7919+1)
		repo := fmt.Sprintf("registry.example.com/team-%02d/service-%02d", i%17, i)
		s.Images = append(s.Images, corev1.ContainerImage{
			Names:     []string{repo + "@sha256:" + digest, repo + fmt.Sprintf(":v1.%d.%d", i, i*3)},
			SizeBytes: int64(20_000_000 + i*1_234_567),
		})
	}
	return s
}
