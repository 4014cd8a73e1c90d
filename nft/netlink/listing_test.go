package netlink

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// TestListingReadsAsWritten (kernel): the promise that a person reads `nft list
// ruleset` and understands which policy made each object, checked on what the
// kernel lists for compiled worlds of long and odd names (testdata/listing-*.yaml)
// in keep and strict mode, with the deny log and policy counters. The table the
// Applier writes lists with comments that are UTF-8 (a rule name cut inside a
// character gave a lone byte: grep called the listing binary, nft -j dropped the
// comment), that name a policy ("isolated by +1 more" named none), and that tell
// apart rules of different verdicts in a chain (a long ClusterNetworkPolicy name
// gave a Deny and two Accepts one comment); Render's text loads with nft -f into
// the same listing (it quoted with Go's escapes), and the listing loads back.
func TestListingReadsAsWritten(t *testing.T) {
	requireKernel(t)
	unknown := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	observe := compile.DenyLog{Group: 100, Rate: 100, Burst: 20}
	variants := []struct {
		name string
		opts compile.Options
	}{
		{"keep", compile.Options{}},
		{"keep-observe", compile.Options{DenyLog: observe, PolicyCounters: true}},
		{"strict", compile.Options{Established: compile.EstablishedRecheck, DenyLog: observe, PolicyCounters: true, UnknownLocalPods: unknown}},
	}
	for _, world := range []string{"listing-long-names", "listing-odd-names"} {
		snap := loadSnapshot(t, "testdata/"+world+".yaml")
		for _, v := range variants {
			t.Run(world+"/"+v.name, func(t *testing.T) {
				rs, _ := compile.Compile(snap, v.opts)
				if err := rs.Validate(); err != nil {
					t.Fatal(err)
				}
				ns := nfttest.NewNetNS(t, "np3-listing")
				mustApply(t, newApplier(t, ns, rs.Table), rs)
				list := nftRun(t, ns, "", "list", "table", "inet", rs.Table)
				for _, f := range misleadingComments(list) {
					t.Error(f)
				}
				rendered := nfttest.NewNetNS(t, "np3-listing-r")
				nftRun(t, rendered, nft.Render(rs), "-f", "-")
				if got, want := listing(t, rendered, rs.Table), nfttest.SortBlocks(list); got != want {
					t.Errorf("nft -f of Render lists otherwise than the applied table (- applied, + Render):\n%s", diffText(want, got))
				}
				restored := nfttest.NewNetNS(t, "np3-listing-l")
				nftRun(t, restored, list, "-f", "-")
				if got := nftRun(t, restored, "", "list", "table", "inet", rs.Table); got != list {
					t.Errorf("the listing loaded back lists otherwise (- listed, + loaded back):\n%s", diffText(list, got))
				}
			})
		}
	}
}

var (
	commentRE  = regexp.MustCompile(`comment "([^"]*)"`)
	namesNone  = regexp.MustCompile(`(by|of) \+\d+ more$`)
	verdictsRE = regexp.MustCompile(` (accept|drop|return|(?:jump|goto) \S+)$`)
)

// misleadingComments reads a listing as a person would and says what misleads:
// a comment that is not UTF-8, one that names no policy, and one comment on
// rules of different verdicts in one chain.
func misleadingComments(listing string) []string {
	var out []string
	for _, m := range commentRE.FindAllStringSubmatch(listing, -1) {
		if !utf8.ValidString(m[1]) {
			out = append(out, fmt.Sprintf("comment not UTF-8: %q", m[1]))
		}
		if namesNone.MatchString(m[1]) {
			out = append(out, fmt.Sprintf("comment names no policy: %q", m[1]))
		}
	}
	for _, block := range strings.Split(listing, "\n\tchain ")[1:] {
		chain := strings.Fields(block)[0]
		verdicts := map[string][]string{}
		for _, line := range strings.Split(block, "\n") {
			i := strings.Index(line, ` comment "`)
			if i < 0 {
				continue
			}
			c := commentRE.FindStringSubmatch(line[i:])[1]
			v := verdictsRE.FindStringSubmatch(line[:i])
			if v == nil {
				continue // a log rule: no verdict
			}
			if !slices.Contains(verdicts[c], v[1]) {
				verdicts[c] = append(verdicts[c], v[1])
			}
		}
		for c, vs := range verdicts {
			if len(vs) > 1 {
				out = append(out, fmt.Sprintf("chain %s: one comment on rules that %s: %q", chain, strings.Join(vs, ", "), c))
			}
		}
	}
	return out
}

// loadSnapshot reads a world of Kubernetes objects (nfttest.LoadObjects) as
// seen by node-1.
func loadSnapshot(t *testing.T, path string) compile.Snapshot {
	t.Helper()
	o, err := nfttest.LoadObjects(path)
	if err != nil {
		t.Fatal(err)
	}
	return compile.Snapshot{NodeName: "node-1", Namespaces: o.Namespaces, Nodes: o.Nodes, Pods: o.Pods,
		Policies: o.Policies, ClusterNetworkPolicies: o.ClusterPolicies}
}
