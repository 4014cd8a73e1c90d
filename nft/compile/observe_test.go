package compile

import (
	"strings"
	"testing"

	"github.com/nftpolicy/nftpolicy/nft"
)

var observeOpts = Options{DenyLog: DenyLog{Group: 100, Rate: 100, Burst: 20}, PolicyCounters: true}

// TestAttribution: every deny log prefix and every counter a group chain uses
// maps back, through Attribution, to that chain, its direction and its policies;
// with the options off the chains carry neither.
func TestAttribution(t *testing.T) {
	for _, name := range []string{"union", "named-port-groups", "namespaces"} {
		c := goldenCase{name: name, upstream: name == "union", node: "node-1"}
		w := loadCase(t, c)
		comp := NewCompiler(c.node, observeOpts)
		for _, ns := range w.namespaces {
			comp.SetNamespace(ns)
		}
		for _, p := range w.pods {
			comp.SetPod(p)
		}
		for _, np := range w.policies {
			comp.SetPolicy(np)
		}
		rs, _ := comp.Compile()
		at := comp.Attribution()
		if err := rs.Validate(); err != nil {
			t.Fatal(err)
		}
		groups, logs, counters := 0, 0, 0
		for _, ch := range rs.Chains {
			ingress := strings.HasPrefix(ch.Name, "ing-")
			if !ingress && !strings.HasPrefix(ch.Name, "eg-") {
				continue
			}
			groups++
			isolating := strings.TrimPrefix(ch.Rules[len(ch.Rules)-1].Comment, "isolated by ")
			for _, r := range ch.Rules {
				if r.Log != nil {
					logs++
					g, ok := at.Groups[r.Log.Prefix]
					if !ok || g.Chain != ch.Name || g.Ingress != ingress {
						t.Errorf("%s: prefix %q maps to %+v", ch.Name, r.Log.Prefix, g)
					}
					var refs []string
					for _, p := range g.Policies {
						refs = append(refs, p.String())
					}
					if strings.Join(refs, ", ") != isolating {
						t.Errorf("%s: prefix %q policies %v, chain isolated by %q", ch.Name, r.Log.Prefix, refs, isolating)
					}
					if len(r.Log.Prefix) > 64 || r.Verdict.Kind != nft.Continue {
						t.Errorf("%s: deny log rule %s", ch.Name, nft.RenderRule(r))
					}
				}
				for _, st := range r.Statements {
					ref, ok := st.(nft.CounterRef)
					if !ok {
						continue
					}
					counters++
					gc, ok := at.Counters[ref.Name]
					want := VerdictAllow
					if r.Verdict.Kind == nft.Drop {
						want = VerdictDeny
					}
					var refs []string
					for _, p := range gc.Policies {
						refs = append(refs, p.String())
					}
					if !ok || gc.Chain != ch.Name || gc.Ingress != ingress || gc.Verdict != want || strings.Join(refs, ", ") != isolating ||
						len(r.Statements) != 1 || !strings.HasSuffix(ref.Name, "-"+want) {
						t.Errorf("%s: counter %s maps to %+v", ch.Name, ref.Name, gc)
					}
				}
			}
		}
		if groups == 0 || logs != groups || counters != 7*groups || len(at.Groups) != groups || len(at.Counters) != 2*groups {
			t.Errorf("%s: %d groups, %d deny log rules, %d counter uses, %d attributed groups", name, groups, logs, counters, len(at.Groups))
		}

		// Off: no objects, no statements, an empty attribution.
		plain := NewCompiler(c.node, Options{})
		for _, ns := range w.namespaces {
			plain.SetNamespace(ns)
		}
		for _, p := range w.pods {
			plain.SetPod(p)
		}
		for _, np := range w.policies {
			plain.SetPolicy(np)
		}
		rs, _ = plain.Compile()
		if len(rs.Objects) != 0 || strings.Contains(nft.Render(rs), " log ") || len(plain.Attribution().Groups)+len(plain.Attribution().Counters) != 0 {
			t.Errorf("%s: options off, yet objects, logs or attribution", name)
		}
	}
}

func TestDenyLogPrefix(t *testing.T) {
	for chain, want := range map[string]string{
		"ing-3fa9c2d1-x/allow-a_and_2": "nftpolicy-deny ing-3fa9c2d1",
		"eg-00000000-y/p":              "nftpolicy-deny eg-00000000",
		"odd":                          "nftpolicy-deny odd",
	} {
		if got := DenyLogPrefix(chain); got != want {
			t.Errorf("DenyLogPrefix(%q) = %q, want %q", chain, got, want)
		}
	}
}

// TestAttributionTiers: in the tiers (Admin and Baseline cases, keep and strict
// mode), every rule of a tier chain maps through Attribution.Tiers to the
// ClusterNetworkPolicy rule its comment names; every counter a tier rule counts
// into names that rule and its verdict; every deny log prefix (drop chains and
// their reply twins, group reply chains) maps back to its chain, rule or
// policies, and says whether it judges replies.
func TestAttributionTiers(t *testing.T) {
	for _, src := range []string{"cnp-admin", "cnp-baseline", "cnp-problems"} {
		for _, est := range []Established{EstablishedKeep, EstablishedRecheck} {
			c := goldenCase{name: src, upstream: true, node: "node-1"}
			w := loadCase(t, c)
			opts := observeOpts
			opts.Established = est
			comp := Load(w.snapshot(c.node), opts)
			rs, _ := comp.Compile()
			at := comp.Attribution()
			if err := rs.Validate(); err != nil {
				t.Fatal(err)
			}
			tierRules, counted, logs := 0, 0, 0
			for _, ch := range rs.Chains {
				rules, isTier := at.Tiers[ch.Name]
				if isTier && len(rules) != len(ch.Rules) {
					t.Errorf("%s %s: %d rules, %d attributed", src, ch.Name, len(ch.Rules), len(rules))
					continue
				}
				for i, r := range ch.Rules {
					if isTier && rules[i] != nil {
						tierRules++
						cr := rules[i]
						if !strings.HasPrefix(r.Comment, strings.TrimSuffix(cr.String(), ", fails closed: deny all")) {
							t.Errorf("%s %s[%d]: comment %q, attributed to %q", src, ch.Name, i, r.Comment, cr)
						}
						for _, st := range r.Statements {
							if ref, ok := st.(nft.CounterRef); ok {
								counted++
								gc := at.Counters[ref.Name]
								if gc.Cluster == nil || *gc.Cluster != *cr || gc.Verdict != cr.Verdict() || !strings.HasSuffix(ref.Name, "-"+cr.Verdict()) {
									t.Errorf("%s %s[%d]: counter %s maps to %+v, want %s", src, ch.Name, i, ref.Name, gc, cr)
								}
							}
						}
						if cr.Verdict() == VerdictDeny && (r.Verdict.Kind != nft.Goto || !strings.Contains(r.Verdict.Chain, "-drop")) {
							t.Errorf("%s %s[%d]: a denying rule does not go to its drop chain: %s", src, ch.Name, i, nft.RenderRule(r))
						}
					}
					if r.Log == nil {
						continue
					}
					logs++
					g, ok := at.Groups[r.Log.Prefix]
					reply := strings.HasSuffix(ch.Name, "-reply")
					switch {
					case !ok || g.Chain != ch.Name || g.Reply != reply || len(r.Log.Prefix) > 64:
						t.Errorf("%s %s: prefix %q maps to %+v", src, ch.Name, r.Log.Prefix, g)
					case g.Cluster != nil && !strings.HasPrefix(ch.Rules[i+1].Comment, strings.TrimSuffix(g.Cluster.String(), ", fails closed: deny all")):
						t.Errorf("%s %s: prefix %q names %s, the drop says %q", src, ch.Name, r.Log.Prefix, g.Cluster, ch.Rules[i+1].Comment)
					case g.Cluster == nil && len(g.Policies) == 0:
						t.Errorf("%s %s: prefix %q names no policy", src, ch.Name, r.Log.Prefix)
					}
				}
			}
			if tierRules == 0 || counted != tierRules || logs == 0 {
				t.Errorf("%s %s: %d tier rules, %d counted, %d deny log rules", src, est, tierRules, counted, logs)
			}
		}
	}
}
