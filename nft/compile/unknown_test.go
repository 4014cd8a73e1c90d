package compile

import (
	"net/netip"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
)

// TestSetUnknownLocalPods: a Compiler whose pod CIDRs change (the agent reads them
// from the Node object, which may gain them late) compiles exactly what a fresh
// Compile with those CIDRs does, and nothing of the drops once they are gone.
func TestSetUnknownLocalPods(t *testing.T) {
	w := loadCase(t, goldenCase{name: "no-policies", upstream: true, node: "node-1"})
	snap := Snapshot{NodeName: "node-1", Pods: w.pods, Namespaces: w.namespaces, Policies: w.policies}
	cidrs := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	for _, mode := range []Established{EstablishedKeep, EstablishedRecheck} {
		c := NewCompiler(snap.NodeName, Options{Established: mode})
		for _, ns := range snap.Namespaces {
			c.SetNamespace(ns)
		}
		for _, p := range snap.Pods {
			c.SetPod(p)
		}
		for _, np := range snap.Policies {
			c.SetPolicy(np)
		}
		off, _ := Compile(snap, Options{Established: mode})
		on, _ := Compile(snap, Options{Established: mode, UnknownLocalPods: cidrs})
		for i, step := range []struct {
			cidrs []netip.Prefix
			want  *nft.Ruleset
		}{{nil, off}, {cidrs, on}, {cidrs[:1], nil}, {nil, off}, {cidrs, on}} {
			c.SetUnknownLocalPods(step.cidrs)
			got, _ := c.Compile()
			want := step.want
			if want == nil {
				want, _ = Compile(snap, Options{Established: mode, UnknownLocalPods: step.cidrs})
			}
			if g, w := nft.Render(got), nft.Render(want); g != w {
				t.Errorf("%v step %d (%v): the Compiler's table differs from a fresh Compile's:\n%s", mode, i, step.cidrs, lineDiff(w, g))
			}
		}
	}
}
