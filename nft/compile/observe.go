package compile

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/types"

	"github.com/nftpolicy/nftpolicy/nft"
)

// What a group chain adds so that its verdicts can be seen: the deny log and the
// per-policy counters (nft/doc.go, "Deny log" and "Policy counters"). Both are
// options, off by default; with both off a group chain is exactly the six rules of
// the table layout.

// DenyLog hands the packets that group chains drop for isolation to an NFLOG
// group as well, at most Rate packets per second (Burst at once) for the whole
// node: one named limit, shared by every group chain, gates the log statement
// and nothing else. The drop never depends on it.
type DenyLog struct {
	Group uint16        // the NFLOG group the agent reads
	Rate  uint32        // packets per Per; 0 turns the deny log off
	Per   nft.LimitUnit // 0 means nft.PerSecond
	Burst uint32        // packets at once above the rate; 0 means Rate
}

func (d DenyLog) enabled() bool { return d.Rate > 0 }

// DenyLogPrefix is the log prefix of a group chain's deny log rule: a fixed
// word and the chain's unique head (direction and hash), which Attribution maps
// back to the chain's policies. It fits NFLOG's smallest prefix limit (64 bytes).
func DenyLogPrefix(chain string) string {
	head := chain
	if i := strings.IndexByte(chain, '-'); i >= 0 {
		if j := strings.IndexByte(chain[i+1:], '-'); j >= 0 {
			head = chain[:i+1+j]
		}
	}
	return nft.DenyLogPrefix + " " + head
}

// DenyLogReplyPrefix is the log prefix of a group chain's reply twin (strict
// mode): a reply re-judged as its connection and dropped.
func DenyLogReplyPrefix(chain string) string { return DenyLogPrefix(chain) + " " + nft.SuffixReply }

// Verdicts a group counter counts.
const (
	VerdictAllow = "allow"
	VerdictDeny  = "deny"
	VerdictPass  = "pass" // a ClusterNetworkPolicy Pass rule (cnp_tier.go)
)

// Attribution maps what the kernel reports (a deny log prefix, a counter name)
// back to the policies of the Compile that made the table. It is a value: the
// controllers publish it after each sync for the deny log reader and the
// metrics collector, which run on their own goroutines.
type Attribution struct {
	// Groups by deny log prefix (DenyLogPrefix of the chain); set when the
	// deny log is on.
	Groups map[string]Group
	// Counters by counter object name; set when the counters are on.
	Counters map[string]GroupCounter
	// Tiers maps each ClusterNetworkPolicy tier chain (group chains and their
	// reply twins) to its rules: Tiers[chain][i] is the policy rule that rule i
	// of the chain is part of, nil for a rule that is no policy's (strict
	// mode's reply dispatch). Always set while some ClusterNetworkPolicy
	// applies: explain reads it to name the rule a walk took.
	Tiers map[string][]*ClusterRule
}

// Group is one group chain: the direction it judges and the policies that
// isolate its pods, sorted by namespace/name.
type Group struct {
	Chain    string
	Ingress  bool
	Policies []types.NamespacedName
	// Reply: the prefix is the group's reply chain's (strict mode): the packet
	// was a reply of an older epoch, judged as its connection and dropped.
	Reply bool
	// Cluster is set, and Policies empty, for a ClusterNetworkPolicy rule: its
	// drop chain (deny log) or its counter.
	Cluster *ClusterRule
	// UnknownPod: the forward chain's drop of a source in the node's pod
	// CIDRs that no local pod the agent knows has (Options.UnknownLocalPods):
	// a new pod's first packets, before the agent knows it. No policy.
	UnknownPod bool
}

// ClusterRule is one rule of a ClusterNetworkPolicy, as the deny log, the
// counters and explain name it.
type ClusterRule struct {
	Policy   string // the ClusterNetworkPolicy's name (shown as cnp/<name>)
	Tier     string // Admin or Baseline
	Priority int32
	Ingress  bool
	Index    int    // in spec.ingress or spec.egress
	Name     string // the rule's name, if it has one
	Action   string // Accept, Deny or Pass
	// FailClosed: a Deny or Pass rule that cannot be enforced as written and
	// denies all instead (reported as a Problem).
	FailClosed bool
}

// Verdict is what the rule does to a packet it matches: VerdictAllow,
// VerdictDeny or VerdictPass.
func (r *ClusterRule) Verdict() string {
	switch {
	case r.FailClosed || r.Action == "Deny":
		return VerdictDeny
	case r.Action == "Pass":
		return VerdictPass
	}
	return VerdictAllow
}

func (r *ClusterRule) String() string {
	ref, mid, tail := r.parts()
	return ref + mid + ruleName(r.Name) + tail
}

// parts is the rule's String but its name: "cnp/<policy>", " egress rule 2"
// and ": Accept", ", fails closed: deny all" when it does.
func (r *ClusterRule) parts() (ref, mid, tail string) {
	dir := "egress"
	if r.Ingress {
		dir = "ingress"
	}
	tail = ": " + r.Action
	if r.FailClosed {
		tail += ", fails closed: deny all"
	}
	return "cnp/" + r.Policy, fmt.Sprintf(" %s rule %d", dir, r.Index), tail
}

// comment is the rule's String, then more, as a comment: the policy's name is
// cut first when it is too long, the rule's name next (fitComment), never what
// says which rule it is and what it does.
func (r *ClusterRule) comment(more string) string {
	ref, mid, tail := r.parts()
	return fitComment("", ref, mid, r.Name, tail+more)
}

// GroupCounter is one of a group chain's two counters: the packets it allowed,
// or dropped for isolation. Each of the group's policies is credited with them
// (nft/doc.go, "Policy counters").
type GroupCounter struct {
	Group
	Verdict string // VerdictAllow or VerdictDeny
}

// observeRules returns the group chain's statements for an allow rule and for
// the isolation drop, and the deny log rule to put before the drop (nil when
// the deny log is off).
func (g *group) observeRules(opts Options) (allow, deny []nft.Statement, denyLog *nft.Rule) {
	if opts.PolicyCounters {
		// One counter per group and verdict, whatever the number of policies:
		// a packet costs one counter update. The collector credits each policy.
		allow = []nft.Statement{nft.CounterRef{Name: g.counters[0]}}
		deny = []nft.Statement{nft.CounterRef{Name: g.counters[1]}}
	}
	if opts.DenyLog.enabled() {
		denyLog = &nft.Rule{
			Statements: []nft.Statement{nft.LimitRef{Name: nft.ObjDenyLog}},
			Log:        &nft.Log{Group: opts.DenyLog.Group, Prefix: DenyLogPrefix(g.chain)},
		}
	}
	return allow, deny, denyLog
}

// replyDenyLog is the deny log rule of the group's reply chain (strict mode);
// nil when the deny log is off.
func (g *group) replyDenyLog(opts Options) *nft.Rule {
	if !opts.DenyLog.enabled() {
		return nil
	}
	return &nft.Rule{
		Statements: []nft.Statement{nft.LimitRef{Name: nft.ObjDenyLog}},
		Log:        &nft.Log{Group: opts.DenyLog.Group, Prefix: DenyLogReplyPrefix(g.chain)},
	}
}

// denyLogLimit is the one named limit of the node's deny log rules.
func denyLogLimit(opts Options) nft.Object {
	burst, per := opts.DenyLog.Burst, opts.DenyLog.Per
	if burst == 0 {
		burst = opts.DenyLog.Rate
	}
	if per == 0 {
		per = nft.PerSecond
	}
	return nft.Object{Name: nft.ObjDenyLog, Kind: nft.LimitObject, Limit: nft.Limit{Rate: opts.DenyLog.Rate, Per: per, Burst: burst}}
}

// observeObjects returns the named objects the groups' chains and the
// unknown-pod drops use, and the attribution of the compilation.
func observeObjects(opts Options, groups []*group) ([]nft.Object, *Attribution) {
	at := &Attribution{}
	var objs []nft.Object
	info := func(g *group) Group {
		gr := Group{Chain: g.chain, Ingress: g.ingress, Policies: make([]types.NamespacedName, len(g.policies))}
		for i, p := range g.policies {
			gr.Policies[i] = types.NamespacedName{Namespace: p.ns, Name: p.name}
		}
		return gr
	}
	unknown := len(opts.UnknownLocalPods) > 0 // the forward chain logs its drops (unknown.go)
	if opts.DenyLog.enabled() && (len(groups) > 0 || unknown) {
		objs = append(objs, denyLogLimit(opts))
		at.Groups = make(map[string]Group, len(groups))
		if unknown {
			at.Groups[UnknownPodDenyLogPrefix] = Group{Chain: nft.ChainForward, UnknownPod: true}
		}
		for _, g := range groups {
			at.Groups[DenyLogPrefix(g.chain)] = info(g)
			if g.replyV.Name != "" {
				reply := info(g)
				reply.Chain, reply.Reply = g.replyV.Name, true
				at.Groups[DenyLogReplyPrefix(g.chain)] = reply
			}
		}
	}
	if opts.PolicyCounters {
		at.Counters = make(map[string]GroupCounter, 2*len(groups))
		for _, g := range groups {
			for i, v := range []string{VerdictAllow, VerdictDeny} {
				at.Counters[g.counters[i]] = GroupCounter{Group: info(g), Verdict: v}
				objs = append(objs, nft.Object{Name: g.counters[i], Kind: nft.CounterObject})
			}
		}
	}
	return objs, at
}
