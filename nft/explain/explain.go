package explain

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/internal/netpolref"
	"github.com/nftpolicy/nftpolicy/nft/trace"
)

// Cluster is what explain knows of the cluster: the objects the agent watches, and
// the nodes (whose addresses name `node/NAME` ends).
type Cluster struct {
	Pods []*corev1.Pod
	// PodRecords are pods as the compiler reads them (compile.PodOf), which a
	// caller listing 100,000 pods keeps instead of objects (an eighth of
	// their memory); a pod of Pods with the same namespace and name wins.
	PodRecords []*compile.Pod
	Namespaces []*corev1.Namespace
	Nodes      []*corev1.Node
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the Admin and Baseline tiers (v1alpha2 objects converted
	// to v1beta1, as the agent does).
	ClusterPolicies []*cnpv1.ClusterNetworkPolicy
	// Notes are what the caller could not load (nodes it may not list, ...),
	// repeated in the answer.
	Notes []string
}

// Snapshot is the cluster as node's agent compiles it.
func (c *Cluster) Snapshot(node string) compile.Snapshot {
	return compile.Snapshot{NodeName: node, Pods: c.Pods, PodRecords: c.PodRecords, Namespaces: c.Namespaces,
		Policies: c.Policies, ClusterNetworkPolicies: c.ClusterPolicies, Nodes: c.Nodes}
}

// Question is "from X to Y", on one protocol and port or on every port.
type Question struct {
	From, To Ref
	// Protocol is TCP, UDP or SCTP. With a Port, "" is TCP; without, "" asks about
	// all three.
	Protocol corev1.Protocol
	Port     int // 1-65535; 0: every port
	Family   int // 4 or 6; 0: IPv4 when both ends have it, else IPv6
}

// Options tune Explain.
type Options struct {
	Table string // the table name the agent uses; nft.DefaultTable when empty
	// Compile are the agent's compile options (deny log, policy counters): they add
	// steps to the walks, never change a verdict. Compile.Table is Table. With
	// Live, CompileOptionsOf tells them from the kernel's table.
	// Compile.UnknownLocalPods are LiveNode's pod CIDRs: only LiveNode's compile
	// drops unknown addresses by them.
	Compile compile.Options
	// Epoch is the epoch a recheck-mode table stamps (compile.StampEpoch); 0 is 1,
	// where an agent starts.
	Epoch uint32
	// Live is the table read back from LiveNode's kernel: the walk on that node uses
	// it instead of the fresh compile, and Answer.Live lists every difference.
	Live     *nft.Ruleset
	LiveNode string
}

// Verdicts in answers.
const (
	Allow   = "allow"
	Deny    = "deny"
	Partial = "partial" // without a port: some ports allowed, others not
	Unknown = "unknown" // --live: the kernel's table has a rule explain cannot read
)

// Answer is explain's answer. Its JSON form is the documented schema of
// `nftpolicy explain -o json` (docs/explain.md): fields are only ever added.
type Answer struct {
	Verdict  string `json:"verdict"` // allow or deny; without a port also partial; with --live also unknown
	Summary  string `json:"summary"`
	From     End    `json:"from"`
	To       End    `json:"to"`
	Family   int    `json:"family"`             // 4 or 6
	Protocol string `json:"protocol,omitempty"` // tcp, udp, sctp; "" when all three were asked
	Port     int    `json:"port,omitempty"`     // 0 when every port was asked
	// DetailPort is the port the egress and ingress details are for, when the
	// question covered every port: the first denied port (the lowest, TCP first),
	// else the first allowed.
	DetailPort string    `json:"detailPort,omitempty"`
	Egress     Direction `json:"egress"`
	Ingress    Direction `json:"ingress"`
	// Ports, when the question covered every port: each protocol's ports cut into
	// ranges with one outcome.
	Ports []PortRange `json:"ports,omitempty"`
	// Problems are what the compiler could not enforce as written, for the policies
	// of the two ends' namespaces (policy: reason).
	Problems []string `json:"problems,omitempty"`
	Live     *Live    `json:"live,omitempty"`
	// Notes are what the caller could not load (Cluster.Notes).
	Notes []string `json:"notes,omitempty"`
	// Mismatch lists every disagreement between the policy attribution and the walk.
	// Always empty unless explain has a bug; the verdict is the walk's.
	Mismatch []string `json:"mismatch,omitempty"`
}

// Direction is the answer for the egress of the source or the ingress of the
// destination.
type Direction struct {
	Verdict    string    `json:"verdict"`            // allow or deny, from the walk
	JudgedBy   string    `json:"judgedBy,omitempty"` // the node whose table judges it; "" when no policy can
	Note       string    `json:"note,omitempty"`     // why no policy judges it, or why the walk did not reach it
	IsolatedBy []string  `json:"isolatedBy"`         // namespace/name of the policies that isolate the pod
	AllowedBy  []RuleRef `json:"allowedBy"`          // every rule of theirs that allows the connection
	Trace      *Walk     `json:"trace,omitempty"`    // the walk through JudgedBy's table
	// DecidedBy is the tier that decided, when some ClusterNetworkPolicy exists:
	// Admin, NetworkPolicy or Baseline; "" when none did (allowed by default).
	DecidedBy string `json:"decidedBy,omitempty"`
	// Tiers are the ClusterNetworkPolicy tiers consulted, in order: Admin (when a
	// policy of it selects the pod), then Baseline (when Admin did not decide and
	// no NetworkPolicy isolates the pod). NetworkPolicy's part is IsolatedBy and
	// AllowedBy.
	Tiers []TierStep `json:"tiers,omitempty"`
	// exempt: the connection is one NetworkPolicy never judges ("to its own
	// node, which NetworkPolicy always allows"); IsolatedBy is then empty and
	// Note names the policies that isolate the pod for other traffic.
	exempt string
	// shared: the end's address is another local pod's too; the table judges
	// the address, and the pod's policies alone do not explain the verdict.
	shared bool
}

// TierStep is what one ClusterNetworkPolicy tier decided for a direction.
type TierStep struct {
	Tier string `json:"tier"` // Admin or Baseline
	// Action of the rule that decided: Accept, Deny or Pass; "none" when no rule
	// of the tier's policies matched (the next tier judges).
	Action   string `json:"action"`
	Policy   string `json:"policy,omitempty"`   // cnp/<name> of that rule
	Priority *int32 `json:"priority,omitempty"` // its spec.priority
	Rule     int    `json:"rule"`               // its index in spec.ingress or spec.egress; -1 with none
	RuleName string `json:"ruleName,omitempty"`
	// FailClosed: the rule cannot be enforced as written and denies all (see
	// problems).
	FailClosed bool `json:"failClosed,omitempty"`
	// Selecting are the tier's policies that select the pod for this direction
	// (cnp/<name>), in evaluation order (priority, then name).
	Selecting []string `json:"selecting"`
}

// Walk is the packet's walk through one node's table.
type Walk struct {
	Node  string `json:"node"`
	Table string `json:"table"` // "compiled" (the fresh compile) or "kernel" (read back, --live)
	// Reached is false when the packet would not get here: an earlier node, or the
	// other direction on this node, dropped it. The walk then shows what this
	// direction would decide; From names where it starts.
	Reached bool   `json:"reached"`
	From    string `json:"from"` // "hook forward" or "chain NAME"
	Packet  string `json:"packet"`
	Steps   []Step `json:"steps"`
	Verdict string `json:"verdict"` // accept or drop
}

// Step is one rule of a walk, as `nft list ruleset` prints it.
type Step struct {
	Chain      string   `json:"chain"`
	Rule       int      `json:"rule"` // index in the chain; -1 for the chain's policy
	Text       string   `json:"text"`
	Verdict    string   `json:"verdict"`              // accept, drop, jump X, goto X, return, continue
	Matched    []string `json:"matched,omitempty"`    // set and map elements the rule found
	Statements []string `json:"statements,omitempty"` // counter, log, ...
}

// PortRange is a range of destination ports with one outcome.
type PortRange struct {
	Protocol  string    `json:"protocol"`
	First     int       `json:"first"`
	Last      int       `json:"last"`
	Verdict   string    `json:"verdict"`
	Egress    string    `json:"egress"`
	Ingress   string    `json:"ingress"`
	AllowedBy []RuleRef `json:"allowedBy,omitempty"` // egress rules, then ingress rules
	// Why is each direction's verdict in a few words, egress then ingress: the
	// tier and rule that decided, or the NetworkPolicy rules that allow ("egress
	// on node-1 denied by Admin cnp/no-ssh (priority 10) rule 0"). A range has
	// one outcome: its ports share verdicts and reasons.
	Why []string `json:"why"`
}

// Live is the comparison of the kernel's table with the fresh compile.
type Live struct {
	Node        string   `json:"node"`
	Differences []string `json:"differences"` // empty: the kernel holds exactly the compile
	// Disagreements are the directions where the kernel's table decides otherwise
	// than the policies (and so than the fresh compile).
	Disagreements []string `json:"disagreements,omitempty"`
	// Error is why the kernel's table could not be walked (verdict unknown).
	Error string `json:"error,omitempty"`
}

// Explain answers q over c. It fails with a *NotFoundError when an end is not in the
// cluster or has no address of the family, and with a *WalkError when a table cannot
// be walked; when that table is the kernel's (Options.Live), it also returns the
// answer, verdict unknown, with the table's differences from the compile.
func Explain(c Cluster, q Question, opts Options) (*Answer, error) {
	if opts.Table == "" {
		opts.Table = nft.DefaultTable
	}
	fromC, err := c.resolve(q.From)
	if err != nil {
		return nil, err
	}
	toC, err := c.resolve(q.To)
	if err != nil {
		return nil, err
	}
	family, err := chooseFamily(fromC, toC, q.Family)
	if err != nil {
		return nil, err
	}
	x := &explainer{c: &c, opts: opts, from: fromC.end(family), to: toC.end(family), attr: newAttributor(&c),
		tables: map[string]*trace.Tracer{}, kind: map[string]string{}, hook: map[string]string{}, rules: map[string]*compile.Attribution{}}
	x.crossed = x.crossedNodes()
	x.fromSharers, x.toSharers = c.sharers(x.from), c.sharers(x.to)
	a := &Answer{From: x.from, To: x.to, Family: family, Port: q.Port, Notes: c.Notes}
	var problems []compile.Problem
	for _, n := range x.crossed {
		rs, comp, ps := x.compile(n)
		x.rules[n] = comp.Attribution()
		problems = append(problems, ps...)
		x.kind[n] = "compiled"
		if opts.Live != nil && opts.LiveNode == n {
			a.Live = &Live{Node: n, Differences: nonNil(Diff(rs, opts.Live))}
			rs = opts.Live
			x.kind[n] = "kernel"
		}
		x.tables[n] = trace.New(rs)
	}
	if opts.Live != nil && a.Live == nil {
		// The live node is not crossed: its table is still compared, not walked.
		rs, _, _ := x.compile(opts.LiveNode)
		a.Live = &Live{Node: opts.LiveNode, Differences: nonNil(Diff(rs, opts.Live))}
		a.Notes = append(slices.Clone(a.Notes), fmt.Sprintf("node %s does not judge this connection: its table was compared with the fresh compile, not walked", opts.LiveNode))
	}
	a.Problems = x.problems(problems)
	err = x.answer(q, a)
	var we *WalkError
	if errors.As(err, &we) && we.Kernel && a.Live != nil {
		// The kernel holds something explain cannot walk: say so, with the
		// differences, rather than guess.
		a.Verdict = Unknown
		a.Summary = fmt.Sprintf("UNKNOWN: %s -> %s: %v", x.from.Ref, x.to.Ref, err)
		a.Live.Error = err.Error()
		a.Egress, a.Ingress = Direction{Verdict: Unknown}, Direction{Verdict: Unknown}
		a.Ports = nil
		return a, err
	}
	if err != nil {
		return nil, err
	}
	return a, nil
}

// CompileOptionsOf tells the compile options an agent used from the table it wrote
// (read back without a hint), and the epoch it stamps: the deny log from the
// deny-log limit and the group of a log rule that uses it, policy counters from
// counters named like policy counters (compile.PolicyCounterName), recheck mode,
// its mask and epoch from the ct-stamp chain's ct mark set. The fresh compile must
// use them for the two tables to compare.
func CompileOptionsOf(kernel *nft.Ruleset) (compile.Options, uint32) {
	var o compile.Options
	var epoch uint32
	if kernel == nil {
		return o, 0
	}
	// Recheck mode stamps connections in chain ct-stamp (its one rule is plain
	// statements and a verdict, readable without a hint).
	if st := kernel.Chain(nft.ChainStamp); st != nil {
		for _, r := range st.Rules {
			for _, x := range r.Statements {
				if m, ok := x.(nft.CtMarkSet); ok && compile.CheckCtMarkMask(m.Mask) == nil {
					o.Established, o.CtMarkMask = compile.EstablishedRecheck, m.Mask
					epoch = m.Value >> bits.TrailingZeros32(m.Mask)
				}
			}
		}
	}
	if l := kernel.FindObject(nft.ObjDenyLog); l != nil && l.Kind == nft.LimitObject {
		o.DenyLog = compile.DenyLog{Rate: l.Limit.Rate, Per: l.Limit.Per, Burst: l.Limit.Burst}
	found:
		for _, c := range kernel.Chains {
			for _, r := range c.Rules {
				if r.Log != nil && slices.Contains(r.Statements, nft.Statement(nft.LimitRef{Name: nft.ObjDenyLog})) {
					o.DenyLog.Group = r.Log.Group
					break found
				}
			}
		}
	}
	// The agent marks its table with the node's boot (the CNI gate's).
	for _, st := range kernel.Sets {
		if id, ok := strings.CutPrefix(st.Name, nft.SetSyncedBootPrefix); ok && len(st.Elements) == 0 {
			o.SyncedBoot = id
		}
	}
	// The agent's only named counters are the policy counters (two per group
	// chain, nft/doc.go "Policy counters").
	for _, ob := range kernel.Objects {
		if ob.Kind == nft.CounterObject {
			o.PolicyCounters = true
		}
	}
	return o, epoch
}

// WalkError is a table that cannot be walked: a reference to a missing chain or
// set, or (Kernel: in a table read back from the kernel) a rule explain cannot read.
type WalkError struct {
	Node   string
	Kernel bool
	Err    error
}

func (e *WalkError) Error() string {
	which := "compiled"
	if e.Kernel {
		which = "kernel's"
	}
	return fmt.Sprintf("walking the %s table of node %s: %v", which, e.Node, e.Err)
}

func (e *WalkError) Unwrap() error { return e.Err }

// answer fills a with the verdicts, directions and walks.
func (x *explainer) answer(q Question, a *Answer) error {
	if q.Port != 0 {
		proto := q.Protocol
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		a.Protocol = strings.ToLower(string(proto))
		r, err := x.evaluate(proto, q.Port, true)
		if err != nil {
			return err
		}
		a.Verdict, a.Egress, a.Ingress, a.Mismatch = r.verdict, r.egress, r.ingress, r.mismatch
		if a.Live != nil {
			a.Live.Disagreements = r.liveDisagree
		}
		a.Summary = x.summary(r, a.Protocol+"/"+fmt.Sprint(q.Port))
		return nil
	}
	protos := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP}
	if q.Protocol != "" {
		protos = []corev1.Protocol{q.Protocol}
		a.Protocol = strings.ToLower(string(q.Protocol))
	}
	// The details are for the first denied port, else the first allowed one.
	type portRef struct {
		proto corev1.Protocol
		port  int
	}
	var firstDenied, firstAllowed *portRef
	for _, proto := range protos {
		var cur *PortRange
		for _, seg := range x.segments(proto) {
			r, err := x.evaluate(proto, seg[0], false)
			if err != nil {
				return err
			}
			a.Mismatch = append(a.Mismatch, r.mismatch...)
			if a.Live != nil {
				a.Live.Disagreements = append(a.Live.Disagreements, r.liveDisagree...)
			}
			name := strings.ToLower(string(proto))
			switch {
			case r.verdict == Deny && firstDenied == nil:
				firstDenied = &portRef{proto, seg[0]}
			case r.verdict != Deny && firstAllowed == nil:
				firstAllowed = &portRef{proto, seg[0]}
			}
			pr := PortRange{Protocol: name, First: seg[0], Last: seg[1], Verdict: r.verdict, Egress: r.egress.Verdict, Ingress: r.ingress.Verdict,
				AllowedBy: append(slices.Clone(r.egress.AllowedBy), r.ingress.AllowedBy...),
				Why:       []string{directionWhy("egress", r.egress), directionWhy("ingress", r.ingress)}}
			if cur != nil && cur.Last+1 == pr.First && sameOutcome(*cur, pr) {
				cur.Last = pr.Last
				continue
			}
			a.Ports = append(a.Ports, pr)
			cur = &a.Ports[len(a.Ports)-1]
		}
	}
	detail := firstDenied
	if detail == nil {
		detail = firstAllowed
	}
	// The details again, with their walks.
	r, err := x.evaluate(detail.proto, detail.port, true)
	if err != nil {
		return err
	}
	a.DetailPort = fmt.Sprintf("%s/%d", strings.ToLower(string(detail.proto)), detail.port)
	a.Egress, a.Ingress = r.egress, r.ingress
	switch {
	case firstAllowed != nil && firstDenied != nil:
		a.Verdict = Partial
	case firstAllowed != nil:
		a.Verdict = Allow
	default:
		a.Verdict = Deny
	}
	a.Summary = x.portsSummary(a)
	return nil
}

func sameOutcome(a, b PortRange) bool {
	return a.Protocol == b.Protocol && a.Verdict == b.Verdict && a.Egress == b.Egress && a.Ingress == b.Ingress &&
		slices.Equal(a.AllowedBy, b.AllowedBy) && slices.Equal(a.Why, b.Why)
}

type explainer struct {
	c        *Cluster
	opts     Options
	from, to End
	attr     *attributor
	crossed  []string                 // nodes whose forward hook the packet crosses, in order
	tables   map[string]*trace.Tracer // by node
	kind     map[string]string        // by node: compiled or kernel
	hook     map[string]string        // by node: the hook the packet crosses there (forward, or input)
	rules    map[string]*compile.Attribution
	// sharers of each end: the other local pods of its node that claim its
	// address (Cluster.sharers), once per question.
	fromSharers, toSharers []string
}

// compile compiles node n's table as its agent does (options, epoch).
func (x *explainer) compile(n string) (*nft.Ruleset, *compile.Compiler, []compile.Problem) {
	copts := x.opts.Compile
	copts.Table = x.opts.Table
	if n != x.opts.LiveNode {
		// Unknown-address drops are by one node's own pod CIDRs (the live
		// node's, read from its table); no known pod meets another node's.
		copts.UnknownLocalPods = nil
	}
	comp := compile.Load(x.c.Snapshot(n), copts)
	rs, ps := comp.Compile()
	if copts.Established == compile.EstablishedRecheck && x.opts.Epoch > 1 {
		mask := copts.CtMarkMask
		if mask == 0 {
			mask = compile.DefaultCtMarkMask
		}
		compile.StampEpoch(rs, mask, x.opts.Epoch)
	}
	return rs, comp, ps
}

// crossedNodes: a pod's packets cross its node's forward hook, except those between a
// node and its own pods (output and input hooks, where no policy applies).
//
// With ClusterNetworkPolicies, a pod's traffic to its own node (or to a
// hostNetwork pod there) crosses the node's input hook, where the tiers judge
// the pod's egress (nft/doc.go): that node is crossed at hook input.
func (x *explainer) crossedNodes() []string {
	var out []string
	if x.from.addr == x.to.addr {
		return nil // a pod talking to itself never leaves its network namespace
	}
	if x.from.Kind == KindPod && (x.to.Kind != KindNode || x.to.Node != x.from.Node) {
		out = append(out, x.from.Node)
		x.hook[x.from.Node] = "forward"
	} else if x.from.Kind == KindPod && len(x.c.ClusterPolicies) > 0 {
		out = append(out, x.from.Node)
		x.hook[x.from.Node] = "input"
	}
	if x.to.Kind == KindPod && (x.from.Kind != KindNode || x.from.Node != x.to.Node) && !slices.Contains(out, x.to.Node) {
		out = append(out, x.to.Node)
		x.hook[x.to.Node] = "forward"
	}
	return out
}

// problems keeps the compiler's problems about the policies of the two ends'
// namespaces and about pods (shared addresses), once each.
func (x *explainer) problems(ps []compile.Problem) []string {
	var out []string
	for _, p := range ps {
		keep := p.Policy.Name == ""
		for _, e := range []End{x.from, x.to} {
			if e.pod != nil && p.Policy.Namespace == e.pod.Namespace {
				keep = true
			}
		}
		if s := p.String(); keep && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// segments cuts 1-65535 where any table the packet crosses or any policy's port
// could change the outcome: every port a walk or the attribution can tell apart is
// a bound, so one port stands for its whole segment. Segments are [first, last].
func (x *explainer) segments(proto corev1.Protocol) [][2]int {
	bounds := map[int]bool{1: true}
	add := func(lo, hi int) {
		bounds[lo] = true
		bounds[hi+1] = true
	}
	for _, n := range x.crossed {
		rs := x.tables[n].Ruleset()
		for _, s := range rs.Sets {
			for f, t := range s.Type {
				if t != nft.TypeInetService {
					continue
				}
				for _, e := range s.Elements {
					if f < len(e.Key) {
						add(valueBounds(e.Key[f]))
					}
				}
			}
		}
		for _, c := range rs.Chains {
			for _, r := range c.Rules {
				for _, m := range r.Matches {
					for f, k := range m.Keys {
						if k.Type() != nft.TypeInetService {
							continue
						}
						for _, e := range m.Values {
							if f < len(e.Key) {
								add(valueBounds(e.Key[f]))
							}
						}
					}
				}
			}
		}
	}
	for _, np := range x.c.Policies {
		var ports [][]networkingv1.NetworkPolicyPort
		for _, r := range np.Spec.Ingress {
			ports = append(ports, r.Ports)
		}
		for _, r := range np.Spec.Egress {
			ports = append(ports, r.Ports)
		}
		for _, pps := range ports {
			for _, pp := range pps {
				if pp.Port == nil {
					continue
				}
				if n, ok := netpolref.PortNumber(pp); ok {
					end := n
					if pp.EndPort != nil {
						end = int(*pp.EndPort)
					}
					add(n, end)
				}
			}
		}
	}
	for _, cnp := range x.c.ClusterPolicies {
		var protos [][]cnpv1.ClusterNetworkPolicyProtocol
		for _, r := range cnp.Spec.Ingress {
			protos = append(protos, r.Protocols)
		}
		for _, r := range cnp.Spec.Egress {
			protos = append(protos, r.Protocols)
		}
		for _, pps := range protos {
			for _, pp := range pps {
				_, dp := netpolref.CNPPort(pp)
				switch {
				case dp == nil:
				case dp.Range != nil:
					add(int(dp.Range.Start), int(dp.Range.End))
				default:
					add(int(dp.Number), int(dp.Number))
				}
			}
		}
	}
	if x.to.pod != nil {
		rec := compile.PodOf(x.to.pod)
		for _, np := range rec.Ports() {
			add(int(np.Port), int(np.Port))
		}
	}
	var starts []int
	for b := range bounds {
		if b >= 1 && b <= 65535 {
			starts = append(starts, b)
		}
	}
	slices.Sort(starts)
	out := make([][2]int, len(starts))
	for i, s := range starts {
		end := 65535
		if i+1 < len(starts) {
			end = starts[i+1] - 1
		}
		out[i] = [2]int{s, end}
	}
	return out
}

func valueBounds(v nft.Value) (int, int) {
	if v.Range {
		return int(v.Num), int(v.NumEnd)
	}
	return int(v.Num), int(v.Num)
}

// result is the outcome for one protocol and port.
type result struct {
	proto           corev1.Protocol
	port            int
	verdict         string
	egress, ingress Direction
	dropNode        string // the node that dropped the packet
	mismatch        []string
	liveDisagree    []string // the kernel's table decides otherwise than the policies
}

func (x *explainer) packet(proto corev1.Protocol, port int) trace.Packet {
	p := trace.Packet{Saddr: x.from.addr, Daddr: x.to.addr, DPort: uint16(port), CtState: nft.CtNew}
	switch proto {
	case corev1.ProtocolUDP:
		p.L4Proto = nft.ProtoUDP
	case corev1.ProtocolSCTP:
		p.L4Proto = nft.ProtoSCTP
	default:
		p.L4Proto = nft.ProtoTCP
	}
	return p
}

// evaluate walks the packet through every crossed node, splits each walk into its
// egress and ingress parts, and attributes both directions. withSteps keeps the walks.
func (x *explainer) evaluate(proto corev1.Protocol, port int, withSteps bool) (*result, error) {
	r := &result{proto: proto, port: port, verdict: Allow}
	pkt := x.packet(proto, port)
	egAttr := x.attr.direction(true, x.from, x.to, proto, port)
	ingAttr := x.attr.direction(false, x.from, x.to, proto, port)
	egJ := x.attr.judge(true, x.from, x.to, proto, port)
	ingJ := x.attr.judge(false, x.from, x.to, proto, port)
	r.egress = Direction{Verdict: Allow, IsolatedBy: nonNil(egAttr.isolatedBy), AllowedBy: nonNilRefs(egAttr.allowedBy)}
	r.ingress = Direction{Verdict: Allow, IsolatedBy: nonNil(ingAttr.isolatedBy), AllowedBy: nonNilRefs(ingAttr.allowedBy)}
	if len(x.c.ClusterPolicies) > 0 {
		r.egress.DecidedBy, r.egress.Tiers = tierSteps(egJ, false)
		r.ingress.DecidedBy, r.ingress.Tiers = tierSteps(ingJ, true)
	}

	reached := true
	var egWalk, ingWalk *trace.Trace // the walks each direction is read from
	var egNode, ingNode string
	for _, n := range x.crossed {
		tr, err := x.tables[n].Hook(x.hook[n], pkt)
		if err != nil {
			return nil, &WalkError{Node: n, Kernel: x.kind[n] == "kernel", Err: err}
		}
		var full *Walk // one walk per node, shared by the directions it judges
		if withSteps {
			full = x.walk(n, tr, reached, "hook "+x.hook[n])
		}
		eg, egReached := section(tr, false)
		ing, ingReached := section(tr, true)
		if x.from.pod != nil && x.from.Node == n {
			d := &r.egress
			d.JudgedBy = n
			d.Verdict = verdictText(eg)
			d.Trace = full
			egWalk, egNode = &tr, n
			if !egReached && eg != nft.Drop {
				d.Note = "the table of node " + n + " never consults chain " + nft.ChainEgress
			}
		}
		if x.to.pod != nil && x.to.Node == n {
			d := &r.ingress
			d.JudgedBy = n
			if ingReached || eg != nft.Drop || x.from.Node != n || x.from.pod == nil {
				d.Verdict = verdictText(ing)
				d.Trace = full
				ingWalk, ingNode = &tr, n
				if !ingReached && tr.Verdict != nft.Drop {
					d.Note = "the table of node " + n + " never consults chain " + nft.ChainIngress
				}
			} else {
				// Egress dropped the packet on this node first: walk ingress alone.
				entry := ingressEntry(x.tables[n].Ruleset())
				alone, err := x.tables[n].Chain("forward", entry, pkt)
				if err != nil {
					return nil, &WalkError{Node: n, Kernel: x.kind[n] == "kernel", Err: fmt.Errorf("chain %s: %w", entry, err)}
				}
				d.Verdict = verdictText(alone.Verdict)
				d.Note = "egress dropped the packet first on this node; the walk shows chain " + entry + " alone"
				ingWalk, ingNode = &alone, n
				if withSteps {
					d.Trace = x.walk(n, alone, false, "chain "+entry)
				}
			}
		}
		if tr.Verdict == nft.Drop && reached {
			r.verdict = Deny
			r.dropNode = n
			reached = false
		}
	}
	x.notes(r)
	for _, d := range []struct {
		dir    *Direction
		end    End
		others []string
	}{{&r.egress, x.from, x.fromSharers}, {&r.ingress, x.to, x.toSharers}} {
		if others := d.others; len(others) > 0 && d.dir.JudgedBy != "" {
			d.dir.shared = true
			n := fmt.Sprintf("address %s is also pod %s's on node %s (a problem the agent reports): the table judges the address, "+
				"by the policies of the one that is isolated, and drops its traffic where their policies differ",
				d.end.addr, strings.Join(others, ", pod "), d.end.Node)
			if d.dir.Note != "" {
				n = d.dir.Note + "; " + n
			}
			d.dir.Note = n
		}
	}
	for _, d := range []struct {
		dir  *Direction
		attr attribution
	}{{&r.egress, egAttr}, {&r.ingress, ingAttr}} {
		d.dir.exempt = d.attr.exempt
		if len(d.attr.isolating) > 0 {
			n := fmt.Sprintf("%s isolate%s the pod for its other traffic", strings.Join(d.attr.isolating, ", "),
				map[bool]string{true: "s", false: ""}[len(d.attr.isolating) == 1])
			if d.dir.Note != "" {
				n = d.dir.Note + "; " + n
			}
			d.dir.Note = n
		}
	}
	// The attribution must agree with the walk wherever a policy judges: the
	// verdict, and with the tiers the rule of each tier that decided.
	disagree := func(node, msg string) {
		if x.kind[node] == "kernel" {
			// Not explain's bug: the kernel holds another table than the compile.
			r.liveDisagree = append(r.liveDisagree, msg)
		} else {
			r.mismatch = append(r.mismatch, msg)
		}
	}
	check := func(name string, d Direction, a attribution, j netpolref.Judgement, walk *trace.Trace, node string, ingress bool) {
		if d.JudgedBy == "" || d.shared {
			return // a shared address: the table judges it, not the pod (the note says so)
		}
		what := fmt.Sprintf("%s %s/%d", name, strings.ToLower(string(proto)), port)
		if want := verdictText(boolVerdict(j.Allowed)); want != d.Verdict {
			walker := "the walk on "
			if x.kind[d.JudgedBy] == "kernel" {
				walker = "the kernel's table on "
			}
			disagree(d.JudgedBy, fmt.Sprintf("%s: %s%s says %s, the policies say %s", what, walker, d.JudgedBy, d.Verdict, want))
		}
		if j.By == netpolref.ByNetworkPolicy && !j.OwnNode && a.allows() != j.Allowed {
			disagree(d.JudgedBy, fmt.Sprintf("%s: the NetworkPolicy rules found (%d) do not explain the verdict %s", what, len(a.allowedBy), verdictText(boolVerdict(j.Allowed))))
		}
		if walk != nil && len(x.c.ClusterPolicies) > 0 {
			for _, m := range x.tierWalkCheck(walk, node, ingress, j) {
				disagree(d.JudgedBy, what+": "+m)
			}
		}
	}
	check("egress", r.egress, egAttr, egJ, egWalk, egNode, false)
	check("ingress", r.ingress, ingAttr, ingJ, ingWalk, ingNode, true)
	return r, nil
}

// tierSteps is the tiers' part of a direction's answer.
func tierSteps(j netpolref.Judgement, ingress bool) (string, []TierStep) {
	var out []TierStep
	add := func(tier string, v netpolref.TierVerdict) {
		st := TierStep{Tier: tier, Action: v.Decision.String(), Rule: -1, Selecting: []string{}}
		for _, p := range v.Selecting {
			st.Selecting = append(st.Selecting, "cnp/"+p.Name)
		}
		if p := v.Policy; p != nil {
			prio := p.Spec.Priority
			st.Policy, st.Priority, st.Rule, st.FailClosed = "cnp/"+p.Name, &prio, v.Rule, v.FailClosed
			if ingress {
				st.RuleName = p.Spec.Ingress[v.Rule].Name
			} else {
				st.RuleName = p.Spec.Egress[v.Rule].Name
			}
		}
		out = append(out, st)
	}
	if len(j.Admin.Selecting) > 0 {
		add(netpolref.ByAdmin, j.Admin)
	}
	if j.Baseline != nil && len(j.Baseline.Selecting) > 0 {
		add(netpolref.ByBaseline, *j.Baseline)
	}
	return j.By, out
}

// tierWalkCheck compares the tier rules a walk took in one direction with the
// judgement: each tier that decided must have decided by the same rule in the
// walk, and a tier that did not decide must have no rule taken.
func (x *explainer) tierWalkCheck(walk *trace.Trace, node string, ingress bool, j netpolref.Judgement) []string {
	at := x.rules[node]
	took := map[string]*compile.ClusterRule{}
	for _, s := range walk.Steps {
		if at == nil || s.Verdict.Kind == nft.Continue || s.Index < 0 {
			continue
		}
		rules := at.Tiers[s.Chain]
		if s.Index >= len(rules) || rules[s.Index] == nil || rules[s.Index].Ingress != ingress {
			continue
		}
		if cr := rules[s.Index]; took[cr.Tier] == nil {
			took[cr.Tier] = cr
		}
	}
	var out []string
	want := func(tier string, v *netpolref.TierVerdict) {
		got := took[tier]
		switch {
		case (v == nil || v.Decision == netpolref.NoDecision) && got != nil:
			out = append(out, fmt.Sprintf("the walk took %s, the policies say no %s rule matches", got, tier))
		case v == nil || v.Decision == netpolref.NoDecision:
		case got == nil:
			out = append(out, fmt.Sprintf("the policies say cnp/%s rule %d decides in %s (%s), the walk took no %s rule", v.Policy.Name, v.Rule, tier, v.Decision, tier))
		case got.Policy != v.Policy.Name || got.Index != v.Rule || got.Verdict() != map[netpolref.Decision]string{
			netpolref.Accepted: compile.VerdictAllow, netpolref.Denied: compile.VerdictDeny, netpolref.Passed: compile.VerdictPass}[v.Decision]:
			out = append(out, fmt.Sprintf("the walk took %s, the policies say cnp/%s rule %d (%s)", got, v.Policy.Name, v.Rule, v.Decision))
		}
	}
	want(netpolref.ByAdmin, &j.Admin)
	want(netpolref.ByBaseline, j.Baseline)
	return out
}

// ingressEntry is the chain that judges the destination's ingress in rs: all
// tiers when the table has them, else NetworkPolicy's dispatch.
func ingressEntry(rs *nft.Ruleset) string {
	if rs.Chain(nft.ChainIngressTiers) != nil {
		return nft.ChainIngressTiers
	}
	return nft.ChainIngress
}

// notes explains directions that no node judges.
func (x *explainer) notes(r *result) {
	if len(x.crossed) == 0 {
		note := "traffic between a node and its own pods never crosses the forward hook: no policy applies"
		switch {
		case x.from.addr == x.to.addr:
			note = "traffic to its own address never leaves the sender: no policy applies"
		case x.from.pod == nil && x.to.pod == nil:
			note = "neither end is a pod: NetworkPolicies judge only pods' traffic"
		}
		r.egress.Note, r.ingress.Note = note, note
		return
	}
	if r.egress.JudgedBy == "" && r.egress.Note == "" {
		r.egress.Note = fmt.Sprintf("the source is %s, not a pod: no egress policy judges it", describeKind(x.from))
	}
	if r.ingress.JudgedBy == "" && r.ingress.Note == "" {
		r.ingress.Note = fmt.Sprintf("the destination is %s, not a pod: no ingress policy judges it", describeKind(x.to))
	}
}

func describeKind(e End) string {
	switch {
	case e.Kind == KindNode && e.Pod != "":
		return "a hostNetwork pod (node " + e.Node + ")"
	case e.Kind == KindNode:
		return "node " + e.Node
	}
	return "an external address"
}

func (x *explainer) walk(node string, tr trace.Trace, reached bool, from string) *Walk {
	w := &Walk{Node: node, Table: x.kind[node], Reached: reached, From: from, Packet: tr.Packet.String(), Verdict: tr.Verdict.String()}
	for _, s := range tr.Steps {
		st := Step{Chain: s.Chain, Rule: s.Index, Text: s.Text(), Verdict: s.Verdict.String(), Statements: s.Statements}
		if st.Verdict == "" {
			st.Verdict = "continue"
		}
		for _, h := range s.Hits {
			st.Matched = append(st.Matched, h.String())
		}
		w.Steps = append(w.Steps, st)
	}
	return w
}

// section reads from a walk what the part of it behind one direction's
// dispatch chains (egress: admin-egress, pod-egress, baseline-egress; ingress:
// ingress-tiers and the three of its tiers) decided: drop when the packet was
// dropped there, accept otherwise; reached is false when the walk never entered
// them. An Admin egress Accept's goto ingress-tiers ends the egress part.
func section(tr trace.Trace, ingress bool) (nft.VerdictKind, bool) {
	dir := map[string]bool{
		nft.ChainAdminEgress: false, nft.ChainEgress: false, nft.ChainBaselineEgress: false,
		nft.ChainIngressTiers: true, nft.ChainAdminIngress: true, nft.ChainIngress: true, nft.ChainBaselineIngress: true,
	}
	in, cur, reached := false, false, false
	for _, s := range tr.Steps {
		if s.Verdict.Kind == nft.Jump || s.Verdict.Kind == nft.Goto {
			if d, ok := dir[s.Verdict.Chain]; ok {
				in, cur = true, d
				reached = reached || d == ingress
				continue
			}
		}
		if s.Verdict.Kind == nft.Drop && in && cur == ingress {
			return nft.Drop, true
		}
	}
	return nft.Accept, reached
}

func verdictText(v nft.VerdictKind) string {
	if v == nft.Drop {
		return Deny
	}
	return Allow
}

func boolVerdict(ok bool) nft.VerdictKind {
	if ok {
		return nft.Accept
	}
	return nft.Drop
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func nonNilRefs(s []RuleRef) []RuleRef {
	if s == nil {
		return []RuleRef{}
	}
	return s
}
