package compile

import (
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// BenchmarkNamespaceRelabel is one Compile of node-0 at the control-plane
// benchmark's 10k shape after a namespace changed its team, which namespace
// selectors of node-0's policies' peers read: the namespace alternates between
// two teams, and every Compile changes the table.
func BenchmarkNamespaceRelabel(b *testing.B) {
	nss, pods, nps := benchcluster.Shape10k.Objects()
	c := compilerOf("node-0", nss, pods, nps)
	c.Compile()
	// The first namespace whose team change changes the table.
	var versions [2]*corev1.Namespace
	for _, ns := range nss {
		moved := ns.DeepCopy()
		moved.Labels = maps.Clone(ns.Labels)
		moved.Labels["team"] = string(benchcluster.Teams[(indexOf(ns.Labels["team"])+1)%len(benchcluster.Teams)])
		before, _ := c.Compile()
		c.SetNamespace(moved)
		after, _ := c.Compile()
		if nft.Render(before) != nft.Render(after) {
			versions = [2]*corev1.Namespace{ns, moved}
			break
		}
		c.SetNamespace(ns)
	}
	if versions[0] == nil {
		b.Fatal("no namespace whose team change changes node-0's table")
	}
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		c.SetNamespace(versions[n%2])
		c.Compile()
		n++
	}
}

// indexOf is the index of team t in benchcluster.Teams.
func indexOf(t string) int {
	for i, x := range benchcluster.Teams {
		if string(x) == t {
			return i
		}
	}
	return 0
}
