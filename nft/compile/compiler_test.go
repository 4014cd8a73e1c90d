package compile

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
)

// cluster is the objects a Compiler has been told about, by namespace/name.
type cluster struct {
	pods       map[objKey]*corev1.Pod
	namespaces map[string]*corev1.Namespace
	policies   map[objKey]*networkingv1.NetworkPolicy
	cnps       map[string]*cnpv1.ClusterNetworkPolicy
	nodes      map[string]*corev1.Node
}

func (cl *cluster) snapshot(node string) Snapshot {
	s := Snapshot{NodeName: node}
	s.Pods = slices.Collect(maps.Values(cl.pods))
	s.Namespaces = slices.Collect(maps.Values(cl.namespaces))
	s.Policies = slices.Collect(maps.Values(cl.policies))
	s.ClusterNetworkPolicies = slices.Collect(maps.Values(cl.cnps))
	s.Nodes = slices.Collect(maps.Values(cl.nodes))
	return s
}

// TestCompilerMatchesCompile feeds a Compiler random changes, one object at a time
// (pods relabelled, readdressed, moved between nodes, finished, switched to
// hostNetwork, given other ports, deleted, created, also in namespaces without an
// object; namespaces relabelled, deleted, recreated; policies replaced, deleted,
// created), and after every few changes compares its result, text and problems, with
// a fresh Compile of the same objects.
func TestCompilerMatchesCompile(t *testing.T) { compilerMatchesCompile(t, randomWorld, 400) }

// TestCompilerMatchesCompileTiers is TestCompilerMatchesCompile on clusters with
// ClusterNetworkPolicies and nodes, whose changes (policies replaced, deleted,
// created; nodes relabelled, readdressed, deleted, created) join the others.
func TestCompilerMatchesCompileTiers(t *testing.T) {
	compilerMatchesCompile(t, randomTieredWorld, 200)
}

func compilerMatchesCompile(t *testing.T, gen func(*rand.Rand) world, cases int) {
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	steps := 60
	if testing.Short() {
		cases /= 10
	}
	compared, unchanged := 0, 0
	for i := range cases {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		w := gen(rng)
		node := fmt.Sprintf("node-%d", 1+rng.IntN(2))
		cl := &cluster{pods: map[objKey]*corev1.Pod{}, namespaces: map[string]*corev1.Namespace{}, policies: map[objKey]*networkingv1.NetworkPolicy{},
			cnps: map[string]*cnpv1.ClusterNetworkPolicy{}, nodes: map[string]*corev1.Node{}}
		opts := Options{Table: "t"}
		if i%2 == 1 { // every other case with the deny log and policy counters on
			opts.DenyLog, opts.PolicyCounters = observeOpts.DenyLog, true
		}
		c := NewCompiler(node, opts)
		for _, ns := range w.namespaces {
			cl.namespaces[ns.Name] = ns
			c.SetNamespace(ns)
		}
		for _, p := range w.pods {
			cl.pods[objKey{p.Namespace, p.Name}] = p
			c.SetPod(p)
		}
		for _, np := range w.policies {
			cl.policies[objKey{np.Namespace, np.Name}] = np
			c.SetPolicy(np)
		}
		for _, n := range w.nodes {
			cl.nodes[n.Name] = n
			c.SetNode(n)
		}
		for _, cnp := range w.cnps {
			cl.cnps[cnp.Name] = cnp
			c.SetClusterNetworkPolicy(cnp)
		}
		var log []string
		var last string // the last result, rendered
		var lastProblems []Problem
		for step := range steps {
			if step%(1+rng.IntN(3)) == 0 {
				same := c.Unchanged()
				got, gotProblems := c.Compile()
				want, wantProblems := Compile(cl.snapshot(node), opts)
				compared++
				if same {
					// The agent skips the sync: the fresh result must be the last one.
					unchanged++
					if w := nft.Render(want); w != last || !slices.Equal(wantProblems, lastProblems) {
						t.Fatalf("seed %d case %d: Unchanged after:\n%s\nlast:\n%s\nfresh:\n%s\nproblems %v, last %v",
							seed, i, strings.Join(log, "\n"), last, w, wantProblems, lastProblems)
					}
				}
				last, lastProblems = nft.Render(got), gotProblems
				if g, w := nft.Render(got), nft.Render(want); g != w {
					t.Fatalf("seed %d case %d (rerun with -seed %d) after:\n%s\nincremental:\n%s\nfresh:\n%s",
						seed, i, seed, strings.Join(log, "\n"), g, w)
				}
				if !slices.Equal(gotProblems, wantProblems) {
					t.Fatalf("seed %d case %d after:\n%s\nproblems: %v\nwant: %v", seed, i, strings.Join(log, "\n"), gotProblems, wantProblems)
				}
			}
			log = append(log, randomChange(rng, cl, c, w))
		}
	}
	t.Logf("seed %d: %d cases, %d comparisons, %d of them Unchanged", seed, cases, compared, unchanged)
	if unchanged == 0 {
		t.Error("no comparison followed changes the compiler called Unchanged: the check above never ran")
	}
}

// randomChange makes one change to cl and tells c; it returns what it did.
func randomChange(rng *rand.Rand, cl *cluster, c *Compiler, w world) string {
	pick := func(xs ...string) string { return xs[rng.IntN(len(xs))] }
	podKeys := slices.SortedFunc(maps.Keys(cl.pods), func(a, b objKey) int { return strings.Compare(a.ns+"/"+a.name, b.ns+"/"+b.name) })
	if w.nodes != nil && rng.IntN(4) == 0 {
		return randomTierChange(rng, cl, c, podKeys, w)
	}
	switch n := rng.IntN(20); {
	case n < 10 && len(podKeys) > 0: // change a pod
		key := podKeys[rng.IntN(len(podKeys))]
		p := cl.pods[key].DeepCopy()
		what := ""
		switch rng.IntN(9) {
		case 0:
			what = "relabel"
			p.Labels = map[string]string{"pod": pick("a", "b", "c")}
			if a := pick("web", "db", ""); a != "" {
				p.Labels["app"] = a
			}
		case 1:
			what = "readdress"
			ip := fmt.Sprintf("10.244.%d.%d", 1+rng.IntN(2), 100+rng.IntN(20))
			p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
			p.Status.PodIP = ip
		case 2:
			what = "move"
			p.Spec.NodeName = pick("node-1", "node-2")
		case 3:
			what = "phase"
			p.Status.Phase = corev1.PodPhase(pick(string(corev1.PodRunning), string(corev1.PodSucceeded), string(corev1.PodFailed)))
		case 4:
			what = "hostNetwork"
			p.Spec.HostNetwork = !p.Spec.HostNetwork
		case 5:
			what = "ports"
			p.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
				{Name: "http", ContainerPort: []int32{80, 81, 8080}[rng.IntN(3)]},
				{Name: pick("serve-80-tcp", "serve-81-udp", "dns"), ContainerPort: 80 + int32(rng.IntN(2)), Protocol: corev1.ProtocolUDP},
			}}}
		case 6:
			what = "no IPs"
			p.Status.PodIPs, p.Status.PodIP = nil, ""
		case 7:
			what = "status only"
			p.Status.Message = "hello"
		case 8:
			what = "delete"
			delete(cl.pods, key)
			c.DeletePod(key.ns, key.name)
			return fmt.Sprintf("pod %s/%s: %s", key.ns, key.name, what)
		}
		cl.pods[key] = p
		c.SetPod(p)
		return fmt.Sprintf("pod %s/%s: %s", key.ns, key.name, what)
	case n < 12: // a new pod, sometimes in a namespace without an object
		ns := pick("x", "y", "z", "w")
		node := pick("node-1", "node-2")
		k := rng.IntN(30)
		p := modelPod(ns, fmt.Sprintf("n%d", k), node, fmt.Sprintf("10.244.%d.%d", 1+rng.IntN(2), 100+rng.IntN(20)),
			fmt.Sprintf("fd00:10:244:9::%x", k), upstreamPorts())
		p.Labels["app"] = pick("web", "db")
		cl.pods[objKey{ns, p.Name}] = p
		c.SetPod(p)
		return fmt.Sprintf("pod %s/%s: create", ns, p.Name)
	case n < 15: // a namespace
		name := pick("x", "y", "z", "w")
		if _, ok := cl.namespaces[name]; ok && rng.IntN(3) == 0 {
			delete(cl.namespaces, name)
			c.DeleteNamespace(name)
			return "namespace " + name + ": delete"
		}
		l := map[string]string{"ns": pick(name, "x", "y")}
		if e := pick("prod", "dev", ""); e != "" {
			l["env"] = e
		}
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
		cl.namespaces[name] = ns
		c.SetNamespace(ns)
		return fmt.Sprintf("namespace %s: set %v", name, l)
	default: // a policy
		var pods []*corev1.Pod
		for _, k := range podKeys {
			if len(refPodIPs(cl.pods[k])) > 0 { // randomIPBlock picks from their addresses
				pods = append(pods, cl.pods[k])
			}
		}
		if len(pods) == 0 {
			pods = w.pods
		}
		np := randomPolicy(rng, fmt.Sprintf("p%d", rng.IntN(6)), pods)
		key := objKey{np.Namespace, np.Name}
		if _, ok := cl.policies[key]; ok && rng.IntN(3) == 0 {
			delete(cl.policies, key)
			c.DeletePolicy(key.ns, key.name)
			return fmt.Sprintf("policy %s/%s: delete", key.ns, key.name)
		}
		cl.policies[key] = np
		c.SetPolicy(np)
		return fmt.Sprintf("policy %s/%s: set", key.ns, key.name)
	}
}

// compilerOf is a Compiler for node told about the namespaces, pods and
// policies, in that order.
func compilerOf(node string, nss []*corev1.Namespace, pods []*corev1.Pod, pols []*networkingv1.NetworkPolicy) *Compiler {
	c := NewCompiler(node, Options{})
	for _, ns := range nss {
		c.SetNamespace(ns)
	}
	for _, p := range pods {
		c.SetPod(p)
	}
	for _, np := range pols {
		c.SetPolicy(np)
	}
	return c
}

// TestCompilerKeyTableBounded: keys of elements that are gone do not pile up in the
// key table, and dropping the table changes no result.
func TestCompilerKeyTableBounded(t *testing.T) {
	nss, pods, pols := bigCluster(2000, 200, 20, 4, true)
	c := compilerOf("node-000", nss, pods, pols)
	rs, _ := c.Compile()
	if n := c.keys.len(); n < 4096 {
		t.Fatalf("only %d keys: the test needs more than the table's slack", n)
	}
	t.Logf("%d elements, %d distinct keys", rs.Counts().Elements, c.keys.len())
	// Most pods go: far fewer elements, and the table is dropped.
	for _, p := range pods[100:] {
		c.DeletePod(p.Namespace, p.Name)
	}
	got, _ := c.Compile()
	if n := c.keys.len(); n > 4096 {
		t.Errorf("key table kept %d keys for %d elements", n, got.Counts().Elements)
	}
	want, _ := Compile(Snapshot{NodeName: "node-000", Pods: pods[:100], Namespaces: nss, Policies: pols}, Options{})
	if nft.Render(got) != nft.Render(want) {
		t.Error("after the key table was dropped: incremental result differs from a fresh compile")
	}
	// And again, with fills from the new table.
	for _, p := range pods[100:200] {
		c.SetPod(p)
	}
	got, _ = c.Compile()
	want, _ = Compile(Snapshot{NodeName: "node-000", Pods: pods[:200], Namespaces: nss, Policies: pols}, Options{})
	if nft.Render(got) != nft.Render(want) {
		t.Error("after refills: incremental result differs from a fresh compile")
	}
}

// randomTierChange changes a ClusterNetworkPolicy or a node.
func randomTierChange(rng *rand.Rand, cl *cluster, c *Compiler, podKeys []objKey, w world) string {
	if rng.IntN(3) == 0 { // a node
		name := fmt.Sprintf("node-%d", 1+rng.IntN(3))
		if _, ok := cl.nodes[name]; ok && rng.IntN(4) == 0 {
			delete(cl.nodes, name)
			c.DeleteNode(name)
			return "node " + name + ": delete"
		}
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"zone": []string{"a", "b"}[rng.IntN(2)]}}}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.18.0.%d", 1+rng.IntN(4))}}
		if rng.IntN(2) == 0 {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("fd00:172:18::%d", 1+rng.IntN(4))})
		}
		cl.nodes[name] = n
		c.SetNode(n)
		return fmt.Sprintf("node %s: set %v %v", name, n.Labels, n.Status.Addresses)
	}
	var pods []*corev1.Pod
	for _, k := range podKeys {
		if len(refPodIPs(cl.pods[k])) > 0 {
			pods = append(pods, cl.pods[k])
		}
	}
	if len(pods) == 0 {
		pods = w.pods
	}
	cnp := netpolref.RandomClusterPolicy(rng, fmt.Sprintf("c%d", rng.IntN(5)), pods)
	if _, ok := cl.cnps[cnp.Name]; ok && rng.IntN(3) == 0 {
		delete(cl.cnps, cnp.Name)
		c.DeleteClusterNetworkPolicy(cnp.Name)
		return "cnp " + cnp.Name + ": delete"
	}
	cl.cnps[cnp.Name] = cnp
	c.SetClusterNetworkPolicy(cnp)
	return "cnp " + cnp.Name + ": set"
}

// Options.SyncedBoot: every table compiled with it, the first and each
// incremental one after it, holds the one empty set named for the boot (the
// CNI gate's mark), a valid one; without it, no such set.
func TestSyncedBoot(t *testing.T) {
	const boot = "8d2f6c1e-3b4a-4f0e-9c1d-2a7b5e6f8091"
	marks := func(rs *nft.Ruleset) []string {
		var out []string
		for _, s := range rs.Sets {
			if strings.HasPrefix(s.Name, nft.SetSyncedBootPrefix) {
				out = append(out, fmt.Sprintf("%s/%d", s.Name, len(s.Elements)))
			}
		}
		return out
	}
	c := NewCompiler("node-1", Options{SyncedBoot: boot})
	want := []string{nft.SyncedBootSet(boot) + "/0"}
	for i := range 3 {
		if i > 0 {
			c.SetPod(&corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: fmt.Sprintf("p%d", i), Labels: map[string]string{"app": "a"}},
				Spec:       corev1.PodSpec{NodeName: "node-1"},
				Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.0.0.%d", i), PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.0.0.%d", i)}}},
			})
		}
		rs, _ := c.Compile()
		if err := rs.Validate(); err != nil {
			t.Fatalf("compile %d: %v", i, err)
		}
		if got := marks(rs); !slices.Equal(got, want) {
			t.Errorf("compile %d: marks %q, want %q", i, got, want)
		}
	}
	rs, _ := Compile(Snapshot{NodeName: "node-1"}, Options{})
	if got := marks(rs); len(got) != 0 {
		t.Errorf("without SyncedBoot: marks %q", got)
	}
}
