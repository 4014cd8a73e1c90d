package compile

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"k8s.io/apimachinery/pkg/labels"
)

// TestPodListAgainstMap drives a podList with random additions, removals,
// replacements and reads, bulk and one at a time, and checks every read
// against the set it should hold, in order.
func TestPodListAgainstMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		var l podList
		want := map[objKey]*podInfo{}
		pod := func() *podInfo {
			k := objKey{fmt.Sprintf("ns-%d", rng.IntN(5)), fmt.Sprintf("p-%03d", rng.IntN(300))}
			return &podInfo{Pod: &Pod{ns: k.ns, name: k.name}}
		}
		for range rng.IntN(400) { // a bulk load, in any order
			if p := pod(); want[objKey{p.ns, p.name}] == nil {
				want[objKey{p.ns, p.name}] = p
				l.add(p)
			}
		}
		for op := range 300 {
			switch p := pod(); {
			case rng.IntN(4) == 0:
				check(t, round, op, l.list(), want)
			case want[objKey{p.ns, p.name}] == nil:
				want[objKey{p.ns, p.name}] = p
				l.add(p)
			case rng.IntN(2) == 0:
				old := want[objKey{p.ns, p.name}]
				want[objKey{p.ns, p.name}] = p
				if !l.replace(old, p) {
					t.Fatalf("round %d op %d: replace did not find %s/%s", round, op, p.ns, p.name)
				}
			default:
				l.remove(want[objKey{p.ns, p.name}])
				delete(want, objKey{p.ns, p.name})
			}
			if l.len() != len(want) {
				t.Fatalf("round %d op %d: %d pods, want %d", round, op, l.len(), len(want))
			}
		}
		check(t, round, -1, l.list(), want)
	}
}

func check(t *testing.T, round, op int, got []*podInfo, want map[objKey]*podInfo) {
	t.Helper()
	keys := slices.SortedFunc(maps.Keys(want), compareKeys)
	if len(got) != len(keys) {
		t.Fatalf("round %d op %d: list has %d pods, want %d", round, op, len(got), len(keys))
	}
	for i, k := range keys {
		if got[i] != want[k] {
			t.Fatalf("round %d op %d: list[%d] is %s/%s, want %s/%s", round, op, i, got[i].ns, got[i].name, k.ns, k.name)
		}
	}
}

// TestIndexReplacePod checks that a pod's new version replaces the old one in
// the label lists its labels keep and moves between those its changes concern.
func TestIndexReplacePod(t *testing.T) {
	ix := newIndex("n1")
	mk := func(node string, l labels.Set) *Pod {
		return &Pod{ns: "a", name: "p", node: node, labels: l, addrs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
	}
	ix.setPod(objKey{"a", "q"}, &Pod{ns: "a", name: "q", node: "n1", labels: labels.Set{"app": "x", "tier": "t"}, addrs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}})
	_, v1 := ix.setPod(objKey{"a", "p"}, mk("n1", labels.Set{"app": "x", "tier": "t", "gone": "1"}))
	old, v2 := ix.setPod(objKey{"a", "p"}, mk("n2", labels.Set{"app": "x", "tier": "u", "new": "2"}))
	if old != v1 {
		t.Fatalf("setPod returned %p as the old version, want %p", old, v1)
	}
	names := func(l *podList) []string {
		var out []string
		for _, p := range l.list() {
			out = append(out, p.name)
		}
		return out
	}
	for _, c := range []struct {
		what string
		l    *podList
		want []string
	}{
		{"all", &ix.all, []string{"p", "q"}},
		{"namespace a", ix.byNS["a"], []string{"p", "q"}},
		{"local", &ix.local, []string{"q"}},
		{"app=x", ix.byLabel[labelKV{"app", "x"}], []string{"p", "q"}},
		{"tier=t", ix.byLabel[labelKV{"tier", "t"}], []string{"q"}},
		{"tier=u", ix.byLabel[labelKV{"tier", "u"}], []string{"p"}},
		{"tier", ix.byKey["tier"], []string{"p", "q"}},
		{"new", ix.byKey["new"], []string{"p"}},
	} {
		if got := names(c.l); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.what, got, c.want)
		}
		for _, p := range c.l.list() {
			if p.name == "p" && p != v2 {
				t.Errorf("%s holds an old version of a/p", c.what)
			}
		}
	}
	if ix.byKey["gone"] != nil || ix.byLabel[labelKV{"gone", "1"}] != nil {
		t.Error("the lists of a label the pod lost are still there")
	}
}

// TestSortAddrs: sortAddrs orders as netip.Addr.Compare does, IPv4 and IPv6
// mixed, duplicates kept.
func TestSortAddrs(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for round := range 500 {
		var addrs []netip.Addr
		for range rng.IntN(60) {
			switch rng.IntN(3) {
			case 0:
				addrs = append(addrs, netip.AddrFrom4([4]byte{10, byte(rng.IntN(3)), byte(rng.IntN(256)), byte(rng.IntN(256))}))
			case 1:
				addrs = append(addrs, netip.AddrFrom4([4]byte{byte(rng.IntN(256)), byte(rng.IntN(256)), 0, byte(rng.IntN(4))}))
			default:
				var b [16]byte
				b[0], b[1], b[15] = 0xfd, byte(rng.IntN(2)), byte(rng.IntN(8))
				addrs = append(addrs, netip.AddrFrom16(b))
			}
		}
		want := slices.Clone(addrs)
		slices.SortFunc(want, netip.Addr.Compare)
		sortAddrs(addrs)
		if !slices.Equal(addrs, want) {
			t.Fatalf("round %d: %v, want %v", round, addrs, want)
		}
	}
}

// TestSetPodRecordsOrdersTheIndex: pods given at once, in any order, leave
// every index list ordered by namespace/name with nothing left to sort.
func TestSetPodRecordsOrdersTheIndex(t *testing.T) {
	var pods []*Pod
	var want []string
	for _, i := range rand.Perm(300) {
		ns, name := fmt.Sprintf("ns-%d", i%7), fmt.Sprintf("p-%d", i)
		want = append(want, ns+"/"+name)
		pods = append(pods, &Pod{ns: ns, name: name, node: fmt.Sprintf("n%d", i%2),
			labels: labels.Set{"app": fmt.Sprintf("a%d", i%3)}, addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, byte(i / 256), byte(i)})}})
	}
	slices.Sort(want)
	c := NewCompiler("n0", Options{})
	c.SetPodRecords(pods)
	var got []string
	for _, p := range c.ix.all.items {
		got = append(got, p.ns+"/"+p.name)
	}
	if !slices.Equal(got, want) {
		t.Errorf("pods in the index:\n%v\nwant\n%v", got, want)
	}
	lists := map[string]*podList{"all": &c.ix.all, "local": &c.ix.local}
	for ns, l := range c.ix.byNS {
		lists["namespace "+ns] = l
	}
	for kv, l := range c.ix.byLabel {
		lists["label "+kv.k+"="+kv.v] = l
	}
	for k, l := range c.ix.byKey {
		lists["key "+k] = l
	}
	for what, l := range lists {
		if l.sorted != len(l.items) || !slices.IsSortedFunc(l.items, comparePods) {
			t.Errorf("%s: %d of %d pods in order", what, l.sorted, len(l.items))
		}
	}
}

// BenchmarkPodListMergeTail is a large list's cost of taking in a tail of 33
// pods (what a find then does): a tier's list in the 100k bench's tier churn.
func BenchmarkPodListMergeTail(b *testing.B) {
	const n, tail = 25000, 33
	rng := rand.New(rand.NewPCG(3, 4))
	pods := make([]*podInfo, n+tail)
	for i := range pods {
		pods[i] = &podInfo{Pod: &Pod{ns: fmt.Sprintf("ns-%d", rng.IntN(2000)), name: fmt.Sprintf("pod-%d", i)}}
	}
	rng.Shuffle(len(pods), func(i, j int) { pods[i], pods[j] = pods[j], pods[i] })
	base := slices.SortedFunc(slices.Values(pods[:n]), comparePods)
	b.ReportAllocs()
	for b.Loop() {
		l := podList{items: slices.Clone(base), sorted: n}
		for _, p := range pods[n:] {
			l.add(p)
		}
		l.list()
	}
}
