package compile

import (
	"strings"

	"github.com/nftpolicy/nftpolicy/nft"
)

// What the deny log and the policy counters add to the tiers (nft/doc.go, "Deny
// log" and "Policy counters"), apart from the tier chains themselves:
//
//   - counters: every rule of a ClusterNetworkPolicy counts the packets it
//     matched into a named counter of its own (`cnp-<hash>-cnp/<name>-eg-<hash>-admin-deny`),
//     shared by every group chain that runs the policy. A packet meets at most
//     one matching rule per tier, so it costs one counter update per tier that
//     decides, none for the rules it does not match.
//   - deny log: a Deny rule (and a rule that fails closed to deny all) does not
//     drop on the spot but goes to a chain of its own that logs through the
//     node's deny-log limit and drops: the limit must never gate the drop, and a
//     rule of its own keeps the rule's match from being evaluated twice. Packets
//     that match nothing pay nothing more.
//
// Both are options; with both off the tier chains are exactly those of cnp_tier.go.

// tierObserve is the options' part that the tier chains need.
type tierObserve struct {
	counters bool
	denyLog  bool
}

func newTierObserve(opts Options) tierObserve {
	return tierObserve{counters: opts.PolicyCounters, denyLog: opts.DenyLog.enabled()}
}

// counterName is the named counter of the rule's matches. It names the tier and
// what the rule does (allow, deny, pass), so that a rule whose tier or action
// changes counts into a new counter: what the old one counted keeps its meaning
// (a policy moved from Admin to Baseline kept its counters, and the Admin
// tier's counts showed as Baseline's).
func (p *clusterPolicy) counterName(r *cnpRule) string {
	return nft.ObjectName("cnp", p.key, p.ref, r.key+"-"+strings.ToLower(p.tier.String())+"-"+clusterRule(p, r).Verdict())
}

// dropChain is the chain that logs and drops what a Deny rule matched (reply:
// strict mode's twin, for replies judged as their connection).
func (p *clusterPolicy) dropChain(r *cnpRule, reply bool) string {
	suffix := r.key + "-drop"
	if reply {
		suffix += "-" + nft.SuffixReply
	}
	return nft.ObjectName("cnp", p.key, p.ref, suffix)
}

// ClusterDenyLogPrefix is the log prefix of a ClusterNetworkPolicy rule's drop
// chain: the fixed word, the head of the policy's object names (cnp-<hash>) and
// the rule's key (ruleKeys: in-<hash>, eg-<hash>), then "reply" for the reply twin.
func clusterDenyLogPrefix(p *clusterPolicy, r *cnpRule, reply bool) string {
	s := DenyLogPrefix(p.setName(r, "v4")) + " " + r.key
	if reply {
		s += " " + nft.SuffixReply
	}
	return s
}

// denies reports whether the rule drops what it matches.
func (r *cnpRule) denies() bool { return r.denyAll || r.action == actDeny }

// statements are the rule's statements: its named counter, when counters are on.
func (o tierObserve) statements(p *clusterPolicy, r *cnpRule) []nft.Statement {
	if !o.counters {
		return nil
	}
	return []nft.Statement{nft.CounterRef{Name: p.counterName(r)}}
}

// verdict is v, or, for a rule that denies with the deny log on, the goto to its
// drop chain.
func (o tierObserve) verdict(p *clusterPolicy, r *cnpRule, v nft.Verdict, reply bool) nft.Verdict {
	if o.denyLog && r.denies() && v.Kind == nft.Drop {
		return nft.Verdict{Kind: nft.Goto, Chain: p.dropChain(r, reply)}
	}
	return v
}

// clusterRule is r as the Attribution names it.
func clusterRule(p *clusterPolicy, r *cnpRule) *ClusterRule {
	return &ClusterRule{Policy: p.name, Tier: p.tier.String(), Priority: p.priority, Ingress: r.ingress, Index: r.index,
		Name: r.name, Action: map[action]string{actAccept: "Accept", actDeny: "Deny", actPass: "Pass"}[r.action], FailClosed: r.denyAll}
}

// observeInto adds to rs what the tiers' rules count and log into (counters, drop
// chains, the deny-log limit) and to at what names them (Attribution.Tiers always;
// Groups and Counters with the deny log and counters on).
func (tp *tierPass) observeInto(rs *nft.Ruleset, at *Attribution, opts Options) {
	if tp == nil || len(tp.cnps) == 0 {
		return
	}
	at.Tiers = map[string][]*ClusterRule{}
	var used []*clusterPolicy
	seen := map[*clusterPolicy]bool{}
	for _, g := range tp.groups {
		for _, f := range g.fam {
			if !f.present {
				continue
			}
			at.Tiers[f.chain] = f.ruleOf
			if tp.strict {
				at.Tiers[f.replyChain] = f.replyRuleOf
			}
		}
		for _, p := range g.pols {
			if !seen[p] {
				seen[p] = true
				used = append(used, p)
			}
		}
	}
	obs := newTierObserve(opts)
	if obs.denyLog && at.Groups == nil {
		at.Groups = map[string]Group{}
	}
	if obs.counters && at.Counters == nil {
		at.Counters = map[string]GroupCounter{}
	}
	limit := false
	for _, p := range used {
		for _, rules := range [][]*cnpRule{p.egress, p.ingress} {
			for _, r := range rules {
				if r.none {
					continue // matches nothing: no nft rule, nothing to count
				}
				cr := clusterRule(p, r)
				if obs.counters {
					name := p.counterName(r)
					rs.Objects = append(rs.Objects, nft.Object{Name: name, Kind: nft.CounterObject})
					at.Counters[name] = GroupCounter{Group: Group{Ingress: r.ingress, Cluster: cr}, Verdict: cr.Verdict()}
				}
				if !obs.denyLog || !r.denies() {
					continue
				}
				limit = true
				replies := []bool{false}
				if tp.strict {
					replies = append(replies, true)
				}
				for _, reply := range replies {
					prefix := clusterDenyLogPrefix(p, r, reply)
					what := "drops"
					if reply {
						what = "drops replies judged as their connection"
					}
					rs.Chains = append(rs.Chains, nft.Chain{Name: p.dropChain(r, reply), Rules: []nft.Rule{
						{Statements: []nft.Statement{nft.LimitRef{Name: nft.ObjDenyLog}}, Log: &nft.Log{Group: opts.DenyLog.Group, Prefix: prefix}},
						{Verdict: nft.Verdict{Kind: nft.Drop}, Comment: cr.comment(": logs and " + what)},
					}})
					at.Groups[prefix] = Group{Chain: p.dropChain(r, reply), Ingress: r.ingress, Reply: reply, Cluster: cr}
				}
			}
		}
	}
	if limit && rs.FindObject(nft.ObjDenyLog) == nil {
		rs.Objects = append(rs.Objects, denyLogLimit(opts))
	}
}
