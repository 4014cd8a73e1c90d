package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nftpolicy/nftpolicy/controllers"
)

// startupTaint is the taint config/default's agent removes (its --startup-taint default).
var startupTaint = corev1.Taint{Key: controllers.DefaultStartupTaint, Effect: corev1.TaintEffectNoSchedule}

// TestNodePatchPolicy proves config/rbac's ValidatingAdmissionPolicy against the
// API server: the agent's ServiceAccount, with a token bound to its pod as the
// kubelet mounts it, may remove the startup taint from the Node its pod runs on
// and change nothing else of any Node; other users are not affected.
func TestNodePatchPolicy(t *testing.T) {
	c := requireCluster(t)
	ctx := context.Background()
	objs := decode(t, render(t, "default"))
	c.applyObjects(t, slices.DeleteFunc(slices.Clone(objs), func(o *unstructured.Unstructured) bool { return o.GetKind() == "DaemonSet" })...)

	// The policy names the user and the taint config/default deploys.
	policy, err := json.Marshal(find(t, objs, "ValidatingAdmissionPolicy", agentName+"-node").Object)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"'system:serviceaccount:" + namespace + ":" + agentName + "'", "'" + controllers.DefaultStartupTaint + "'"} {
		if !strings.Contains(string(policy), want) {
			t.Errorf("the policy does not name %s: config/rbac/node_patch_policy.yaml and config/default disagree", want)
		}
	}
	ds := typed[appsv1.DaemonSet](t, find(t, objs, "DaemonSet", agentName))
	key := controllers.DefaultStartupTaint
	for _, a := range ds.Spec.Template.Spec.Containers[0].Args {
		if v, ok := strings.CutPrefix(a, "--startup-taint="); ok {
			key = v
		}
	}
	if key != controllers.DefaultStartupTaint {
		t.Errorf("the DaemonSet's --startup-taint is %q, the policy's %q", key, controllers.DefaultStartupTaint)
	}

	other := corev1.Taint{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}
	mine, theirs := "np-node-mine", "np-node-theirs"
	for _, n := range []string{mine, theirs} {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"pool": "a"}},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{other, startupTaint}}}
		if _, err := c.clientset.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.clientset.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{}) })
	}
	bound := c.agentClient(t, mine)
	unbound := c.agentClient(t, "")

	remove := func(i int, key string) []byte {
		return fmt.Appendf(nil, `[{"op":"test","path":"/spec/taints/%d/key","value":%q},{"op":"remove","path":"/spec/taints/%d"}]`, i, key, i)
	}
	patch := func(cs kubernetes.Interface, node string, p []byte, dryRun bool) error {
		opts := metav1.PatchOptions{}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		_, err := cs.CoreV1().Nodes().Patch(ctx, node, types.JSONPatchType, p, opts)
		return err
	}
	// The API server loads a new policy within seconds: until it denies the
	// first case (tried as a dry run, so that nothing changes meanwhile).
	deadline := time.Now().Add(30 * time.Second)
	for err := patch(bound, theirs, remove(1, startupTaint.Key), true); !apierrors.IsForbidden(err); err = patch(bound, theirs, remove(1, startupTaint.Key), true) {
		if time.Now().After(deadline) {
			t.Fatalf("the policy does not deny the agent another Node's taint 30 s after it was applied (last: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	for _, tc := range []struct {
		what  string
		cs    kubernetes.Interface
		node  string
		patch string
	}{
		{"another Node's startup taint", bound, theirs, string(remove(1, startupTaint.Key))},
		{"its taint with a token bound to no node", unbound, mine, string(remove(1, startupTaint.Key))},
		{"another taint of its Node", bound, mine, string(remove(0, other.Key))},
		{"a taint added to its Node", bound, mine, `[{"op":"add","path":"/spec/taints/-","value":{"key":"x","effect":"NoSchedule"}}]`},
		{"its startup taint's effect", bound, mine, `[{"op":"replace","path":"/spec/taints/1/effect","value":"PreferNoSchedule"}]`},
		{"a label of its Node", bound, mine, `[{"op":"replace","path":"/metadata/labels/pool","value":"b"}]`},
		{"an annotation of its Node", bound, mine, `[{"op":"add","path":"/metadata/annotations","value":{"a":"b"}}]`},
		{"its Node's unschedulable", bound, mine, `[{"op":"add","path":"/spec/unschedulable","value":true}]`},
		{"the taint removed with a label added", bound, mine, string(remove(1, startupTaint.Key)[:len(remove(1, startupTaint.Key))-1]) +
			`,{"op":"add","path":"/metadata/labels/x","value":"y"}]`},
	} {
		err := patch(tc.cs, tc.node, []byte(tc.patch), false)
		if !apierrors.IsForbidden(err) {
			t.Errorf("the agent changed %s: want Forbidden, got %v", tc.what, err)
			continue
		}
		t.Logf("%s: %v", tc.what, err)
	}

	// What the agent does (controllers/startuptaint.go): allowed, and only that changes.
	if err := patch(bound, mine, remove(1, startupTaint.Key), false); err != nil {
		t.Fatalf("the agent may not remove the startup taint from its own Node: %v", err)
	}
	for n, want := range map[string][]corev1.Taint{mine: {other}, theirs: {other, startupTaint}} {
		node, err := c.clientset.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// The API server adds node.kubernetes.io/not-ready to a new Node (TaintNodesByCondition).
		taints := slices.DeleteFunc(node.Spec.Taints, func(t corev1.Taint) bool { return strings.HasPrefix(t.Key, "node.kubernetes.io/") })
		if !slices.EqualFunc(taints, want, func(a, b corev1.Taint) bool { return a.MatchTaint(&b) && a.Value == b.Value }) ||
			node.Labels["pool"] != "a" || len(node.Annotations) != 0 || node.Spec.Unschedulable {
			t.Errorf("node %s: taints %v, labels %v, annotations %v, unschedulable %v; want taints %v and nothing else changed",
				n, taints, node.Labels, node.Annotations, node.Spec.Unschedulable, want)
		}
	}

	// The policy binds the agent alone.
	if err := patch(c.clientset, theirs, remove(1, startupTaint.Key), false); err != nil {
		t.Errorf("the admin may not remove the taint: %v", err)
	}
}

// agentClient returns a client of config/default's agent ServiceAccount with a
// token bound to a pod of the agent on node, as the kubelet mounts it in the
// agent's container (the API server records the pod's node in the token); with
// node "", a token bound to nothing.
func (c *cluster) agentClient(t *testing.T, node string) kubernetes.Interface {
	t.Helper()
	cfg := rest.AnonymousClientConfig(c.cfg)
	cfg.BearerToken = c.boundToken(t, agentName, node)
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// boundToken returns a token of ServiceAccount sa bound to a pod of sa on node,
// as the kubelet mounts it in the pod (the API server records the pod's node in
// the token); with node "", a token bound to nothing.
func (c *cluster) boundToken(t *testing.T, sa, node string) string {
	t.Helper()
	ctx := context.Background()
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))}}
	if node != "" {
		pod, err := c.clientset.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: "agent-"},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa, AutomountServiceAccountToken: new(false),
				HostNetwork: true, Containers: []corev1.Container{{Name: "agent", Image: image}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.clientset.CoreV1().Pods(namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))})
		})
		req.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID}
	}
	tr, err := c.clientset.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for service account %s: %v", sa, err)
	}
	return tr.Status.Token
}
