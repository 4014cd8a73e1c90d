package controllers

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"math/rand"

	corev1 "k8s.io/api/core/v1"

	"k8s.io/apimachinery/pkg/api/apitesting/fuzzer"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metafuzzer "k8s.io/apimachinery/pkg/apis/meta/fuzzer"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/randfill"
)

// listPods makes n pods with what the compiler reads (labels, named ports,
// addresses, node) and what it does not (managed fields, annotations), as the
// apiserver would send them.
func listPods(n int) *corev1.PodList {
	list := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "4242"}}
	for i := range n {
		p := testPod(fmt.Sprintf("ns-%d", i%7), fmt.Sprintf("pod-%d", i), fmt.Sprintf("10.60.%d.%d", i/250, i%250+1), i%3 == 0)
		p.Labels = map[string]string{"app": fmt.Sprintf("app-%d", i%5), "pod": p.Name}
		p.Annotations = map[string]string{"note": strings.Repeat("x", 100)}
		p.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate,
			FieldsV1: metav1.NewFieldsV1(`{"f:status":{"f:podIPs":{}}}`)}}
		p.Spec.NodeName = fmt.Sprintf("node-%d", i%11)
		// What a real pod carries besides: the compiler reads none of it.
		p.ManagedFields = append(p.ManagedFields, metav1.ManagedFieldsEntry{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate,
			FieldsV1: metav1.NewFieldsV1(`{"f:metadata":{"f:generateName":{},"f:labels":{".":{},"f:app":{},"f:pod-template-hash":{}},"f:ownerReferences":{".":{},"k:{\"uid\":\"5b6c\"}":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"c\"}":{".":{},"f:image":{},"f:imagePullPolicy":{},"f:name":{},"f:ports":{".":{},"k:{\"containerPort\":8000,\"protocol\":\"TCP\"}":{".":{},"f:containerPort":{},"f:name":{},"f:protocol":{}}},"f:resources":{},"f:terminationMessagePath":{},"f:terminationMessagePolicy":{}}},"f:dnsPolicy":{},"f:enableServiceLinks":{},"f:restartPolicy":{},"f:schedulerName":{},"f:securityContext":{},"f:terminationGracePeriodSeconds":{}}}`)})
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "app-7d9f8b6c5d", UID: "5b6c"}}
		p.Spec.Volumes = []corev1.Volume{{Name: "kube-api-access-x7k2p", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}}}}}}}
		p.Spec.Tolerations = []corev1.Toleration{{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
			{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}}
		for _, c := range []corev1.PodConditionType{corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.PodReady, corev1.ContainersReady, corev1.PodScheduled} {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()})
		}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", Ready: true, Image: "registry.example/app:1",
			ImageID: "registry.example/app@sha256:4b1d0f8e2c6a9b3d5e7f1a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8c0e2d", ContainerID: "containerd://9f8e7d6c5b4a39281706f5e4d3c2b1a0",
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}
		p.Status.HostIP = "192.168.1.10"
		p.Status.HostIPs = []corev1.HostIP{{IP: "192.168.1.10"}}
		p.Spec.Containers = []corev1.Container{{Name: "c", Image: "registry.example/app:1", Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: int32(8000 + i%3), Protocol: corev1.ProtocolTCP},
			{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}}}
		p.Status.Phase = corev1.PodRunning
		if i%4 == 0 {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: fmt.Sprintf("fd00:60::%x", i+1)})
		}
		list.Items = append(list.Items, *p)
	}
	return list
}

// encodeProtobuf encodes obj as the apiserver does for a protobuf client.
func encodeProtobuf(t testing.TB, obj runtime.Object) []byte {
	t.Helper()
	var buf bytes.Buffer
	gv := corev1.SchemeGroupVersion
	enc := scheme.Codecs.EncoderForVersion(protobuf.NewSerializer(scheme.Scheme, scheme.Scheme), gv)
	if err := enc.Encode(obj, &buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestDecodePodList: the list decoded as it arrives holds, for every pod, the
// record the informer's transform makes of the whole decoded pod, in order,
// with the list's resourceVersion (where the watch resumes).
func TestDecodePodList(t *testing.T) {
	pods := listPods(600)
	body := encodeProtobuf(t, pods)
	got, err := decodePodList(bytes.NewReader(body), func(p *corev1.Pod) runtime.Object { return (&podInterner{}).record(p) })
	if err != nil {
		t.Fatal(err)
	}
	if got.ResourceVersion != "4242" {
		t.Errorf("resourceVersion %q, want 4242", got.ResourceVersion)
	}
	if len(got.Items) != len(pods.Items) {
		t.Fatalf("%d records, want %d", len(got.Items), len(pods.Items))
	}
	for i := range pods.Items {
		want := (&podInterner{}).record(&pods.Items[i])
		rec, ok := got.Items[i].(*cachedPod)
		if !ok {
			t.Fatalf("item %d is a %T", i, got.Items[i])
		}
		if !reflect.DeepEqual(rec.Pod, want.Pod) {
			t.Fatalf("item %d:\n got %+v\nwant %+v", i, rec.Pod, want.Pod)
		}
	}
	// The reflector reads the list through these.
	if items, err := meta.ExtractListWithAlloc(got); err != nil || len(items) != len(pods.Items) {
		t.Fatalf("the reflector would see %d items (%v)", len(items), err)
	}
}

// TestDecodePodListRefusesPartAnswers: a body cut anywhere is an error, never a
// shorter list (which would drop pods from every peer set); so are a JSON
// answer, a Status and a corrupt item.
func TestDecodePodListRefusesPartAnswers(t *testing.T) {
	record := func(p *corev1.Pod) runtime.Object { return (&podInterner{}).record(p) }
	body := encodeProtobuf(t, listPods(4))
	whole := 0
	for cut := range len(body) {
		l, err := decodePodList(bytes.NewReader(body[:cut]), record)
		if err != nil {
			continue
		}
		// Past the list's end only the envelope's empty contentEncoding and
		// contentType remain: optional fields, whose absence is no loss.
		if len(l.Items) != 4 || l.ResourceVersion != "4242" {
			t.Fatalf("cut at %d of %d: a list of %d pods at %q, no error", cut, len(body), len(l.Items), l.ResourceVersion)
		}
		whole++
	}
	if whole > 4 {
		t.Errorf("%d cuts decode whole; only the envelope's last 4 bytes may go", whole)
	}

	if _, err := decodePodList(strings.NewReader(`{"kind":"PodList","apiVersion":"v1","items":[]}`), record); !errors.Is(err, ErrNotProtobuf) {
		t.Errorf("JSON: %v, want ErrNotProtobuf", err)
	}
	status := encodeProtobuf(t, &metav1.Status{Status: metav1.StatusFailure, Message: "no"})
	if _, err := decodePodList(bytes.NewReader(status), record); err == nil || !strings.Contains(err.Error(), `"Status"`) {
		t.Errorf("a Status: %v, want an error naming it", err)
	}

	// Corrupt bytes near the end of a one-pod list (the pod's status, its
	// framing): the decoder errs or decodes a different pod, and never panics.
	one := encodeProtobuf(t, listPods(1))
	for i := len(one) - 40; i < len(one); i++ {
		bad := bytes.Clone(one)
		bad[i] = 0xff
		_, _ = decodePodList(bytes.NewReader(bad), record)
	}
}

// TestDecodePodListSkipsUnknownFields: fields a newer apiserver adds to the
// envelope or the list are skipped, of every wire type.
func TestDecodePodListSkipsUnknownFields(t *testing.T) {
	body := encodeProtobuf(t, listPods(3))
	// Unknown fields after the envelope's own: 9 varint, 10 fixed64, 11 bytes, 12 fixed32.
	extra := []byte{9 << 3 /* | 0 */, 0x96, 0x01, 10<<3 | 1, 1, 2, 3, 4, 5, 6, 7, 8, 11<<3 | 2, 3, 'a', 'b', 'c', 12<<3 | 5, 1, 2, 3, 4}
	got, err := decodePodList(bytes.NewReader(append(bytes.Clone(body), extra...)), func(p *corev1.Pod) runtime.Object { return (&podInterner{}).record(p) })
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Items) != 3 {
		t.Errorf("%d records, want 3", len(got.Items))
	}
}

// BenchmarkDecodePodList is the agent's cost per pod of its first list, with
// the pods pruned to what the record reads before they are decoded, and whole.
func BenchmarkDecodePodList(b *testing.B) {
	body := encodeProtobuf(b, listPods(10000))
	for _, bc := range []struct {
		name string
		k    keep
	}{{"pruned", podFields}, {"whole", nil}} {
		b.Run(bc.name, func(b *testing.B) {
			in := &podInterner{}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := decodePodListKeeping(bytes.NewReader(body), func(p *corev1.Pod) runtime.Object { return in.record(p) }, bc.k); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPrunedPodRecords: for pods with every field filled at random, the record
// made from the pruned pod is the record made from the whole one. A field
// compile.PodOf comes to read that podFields does not keep fails it.
func TestPrunedPodRecords(t *testing.T) {
	f := fuzzer.FuzzerFor(metafuzzer.Funcs, rand.NewSource(7), scheme.Codecs).
		NilChance(0.2).NumElements(1, 3).
		Funcs(func(q *resource.Quantity, c randfill.Continue) {
			*q = *resource.NewQuantity(c.Int63n(1000), resource.DecimalSI)
		}, func(v *intstr.IntOrString, c randfill.Continue) {
			*v = intstr.FromInt32(c.Int31n(65535))
		})
	phases := []corev1.PodPhase{corev1.PodPending, corev1.PodRunning, corev1.PodSucceeded, corev1.PodFailed, "Other"}
	for i := range 300 {
		var p corev1.Pod
		f.Fill(&p)
		// Values the record parses, so that reading them is visible.
		p.Status.Phase = phases[i%len(phases)]
		if i%2 == 0 {
			p.Status.PodIP = fmt.Sprintf("10.80.%d.%d", i/200, i%200+1)
			p.Status.PodIPs = []corev1.PodIP{{IP: p.Status.PodIP}, {IP: fmt.Sprintf("fd00:80::%x", i+1)}}
		}
		for _, cs := range [][]corev1.Container{p.Spec.Containers, p.Spec.InitContainers} {
			for c := range cs {
				for j := range cs[c].Ports {
					cs[c].Ports[j].ContainerPort = int32(1 + (i*7+j)%65535)
					cs[c].Ports[j].Protocol = []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}[j%3]
				}
			}
		}
		for c := range p.Spec.InitContainers { // sidecars and plain ones
			if (i+c)%2 == 0 {
				always := corev1.ContainerRestartPolicyAlways
				p.Spec.InitContainers[c].RestartPolicy = &always
			}
		}
		whole, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		pruned, err := prune(nil, whole, podFields)
		if err != nil {
			t.Fatal(err)
		}
		var fromWhole, fromPruned corev1.Pod
		if err := fromWhole.Unmarshal(whole); err != nil {
			t.Fatal(err)
		}
		if err := fromPruned.Unmarshal(pruned); err != nil {
			t.Fatal(err)
		}
		want, got := (&podInterner{}).record(&fromWhole), (&podInterner{}).record(&fromPruned)
		if !reflect.DeepEqual(got.Pod, want.Pod) {
			t.Fatalf("pod %d: the pruned pod's record\n%+v\nthe whole pod's\n%+v", i, got.Pod, want.Pod)
		}
		if len(pruned) >= len(whole) {
			t.Errorf("pod %d: pruned to %d of %d bytes", i, len(pruned), len(whole))
		}
	}
}
