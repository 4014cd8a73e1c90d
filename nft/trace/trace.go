package trace

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Tracer walks packets through one Ruleset the way the kernel's nf_tables evaluates
// it: the base chains of a hook in priority order, rules in order, matches on literal
// values, anonymous sets and named sets (intervals and concatenations included),
// jump, goto, return, verdict maps, accept and drop, and the non-terminal statements
// of the model (see statements).
type Tracer struct {
	rs     *nft.Ruleset
	chains map[string]*nft.Chain
	sets   map[string]*nft.Set
	bases  map[string][]*nft.Chain // by hook, in evaluation order
}

// New prepares r for tracing. r must not change while the Tracer is in use; a Tracer
// is safe for concurrent use.
func New(r *nft.Ruleset) *Tracer {
	t := &Tracer{rs: r, chains: map[string]*nft.Chain{}, sets: map[string]*nft.Set{}, bases: map[string][]*nft.Chain{}}
	for i := range r.Chains {
		c := &r.Chains[i]
		t.chains[c.Name] = c
		if c.Hook != nil {
			t.bases[c.Hook.Hook] = append(t.bases[c.Hook.Hook], c)
		}
	}
	for _, bases := range t.bases {
		// The kernel does not define the order of two base chains at one priority;
		// the name makes ours deterministic.
		slices.SortFunc(bases, func(a, b *nft.Chain) int {
			return cmp.Or(cmp.Compare(a.Hook.Priority, b.Hook.Priority), strings.Compare(a.Name, b.Name))
		})
	}
	for i := range r.Sets {
		t.sets[r.Sets[i].Name] = &r.Sets[i]
	}
	return t
}

// Ruleset is the ruleset the Tracer walks.
func (t *Tracer) Ruleset() *nft.Ruleset { return t.rs }

// Step is one rule that matched on the way (its statements applied, its verdict
// taken), or the policy of a base chain (Index -1, Rule nil).
type Step struct {
	Chain   string
	Index   int       // the rule's position in the chain; -1: the chain's policy
	Rule    *nft.Rule // nil for the policy
	Verdict nft.Verdict
	// Hits are the elements of named sets and maps the rule's matches and verdict
	// map found, in rule order: which peer (address, protocol, port) let it match,
	// and which map element chose the verdict.
	Hits []Hit
	// Statements are the non-terminal statements the rule applied, as nft prints
	// them ("counter", "log group 1").
	Statements []string
}

// Hit is the element of a named set or verdict map that a lookup found.
type Hit struct {
	Set     *nft.Set
	Element *nft.Element
}

// String renders the element as `nft list set` does (verdict included for maps).
func (h Hit) String() string {
	return "@" + h.Set.Name + " " + nft.RenderElement(h.Set.Type, *h.Element, h.Set.Verdicts)
}

// Text is the rule as `nft list ruleset` prints it, comment included, or
// "policy accept|drop" for a chain's policy.
func (s Step) Text() string {
	if s.Rule == nil {
		return "policy " + s.Verdict.String()
	}
	return nft.RenderRule(*s.Rule)
}

// String is one line: chain[index]: rule => verdict, then the elements it hit.
func (s Step) String() string {
	line := fmt.Sprintf("%s[%d]: %s => %s", s.Chain, s.Index, s.Text(), cmp.Or(s.Verdict.String(), "continue"))
	for _, h := range s.Hits {
		line += "\n    matched " + h.String()
	}
	return line
}

// Trace is the outcome of a packet's walk through one hook.
type Trace struct {
	Hook    string
	Packet  Packet          // as it entered the hook
	Verdict nft.VerdictKind // nft.Accept or nft.Drop
	Steps   []Step
	CtMark  uint32 // the connection's mark when the walk ended (ct mark set statements)
	// Walked is every rule the walk evaluated, matched or not, in order: what
	// the packet cost the kernel (a rule that fails its first match costs that
	// match), where Steps has only the rules that matched.
	Walked []RuleRef
}

// RuleRef is one rule of the ruleset: the chain and the rule's position in it.
type RuleRef struct {
	Chain string
	Index int
}

// String shows the steps, one a line, then the verdict.
func (t Trace) String() string {
	var b strings.Builder
	for _, s := range t.Steps {
		b.WriteString(s.String())
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "verdict: %s\n", t.Verdict)
	return b.String()
}

// Forward traces p through the forward hook, where nftpolicy judges pod traffic.
func (t *Tracer) Forward(p Packet) (Trace, error) { return t.Hook("forward", p) }

// maxJumpDepth is the kernel's jump stack (NFT_JUMP_STACK_SIZE).
const maxJumpDepth = 16

// maxSteps bounds a walk: a goto loop has no stack to overflow.
const maxSteps = 1_000_000

// Hook traces p through every base chain on hook, by priority (then name): a drop
// ends the walk, an accept (verdict or policy) passes the packet on to the next base
// chain. With no base chain on the hook, the packet is accepted. It fails on a
// reference to a missing chain or set, a key the tracer does not know, a jump stack
// deeper than the kernel's, or a loop.
func (t *Tracer) Hook(hook string, p Packet) (Trace, error) {
	tr := Trace{Hook: hook, Packet: p, Verdict: nft.Accept, Steps: make([]Step, 0, 8)}
	for _, base := range t.bases[hook] {
		v, err := t.walk(base, &p, &tr)
		if err != nil {
			return tr, err
		}
		if v == nft.Drop {
			tr.Verdict = nft.Drop
			break
		}
	}
	tr.CtMark = p.CtMark
	return tr, nil
}

// Chain traces p through the regular chain name as if a base chain of hook jumped to
// it: the walk ends with the chain's return (Verdict Accept, meaning "passed on") or a
// drop or accept inside it. explain uses it to show what one direction of policy
// would decide when the other dropped the packet first.
func (t *Tracer) Chain(hook, name string, p Packet) (Trace, error) {
	tr := Trace{Hook: hook, Packet: p, Verdict: nft.Accept, Steps: make([]Step, 0, 8)}
	c := t.chains[name]
	if c == nil {
		return tr, fmt.Errorf("no chain %s", name)
	}
	// A stand-in base chain whose only rule jumps to name and whose policy is
	// accept: a return from name ends the walk as the caller's policy would.
	start := &nft.Chain{Name: name, Hook: &nft.Hook{Hook: hook, Policy: nft.Accept}, Rules: c.Rules}
	v, err := t.walk(start, &p, &tr)
	if err != nil {
		return tr, err
	}
	// The stand-in's policy is no step of the real table.
	if n := len(tr.Steps); n > 0 && tr.Steps[n-1].Index == -1 && tr.Steps[n-1].Chain == name {
		tr.Steps = tr.Steps[:n-1]
	}
	tr.Verdict = v
	return tr, nil
}

type frame struct {
	chain *nft.Chain
	next  int
}

// walk evaluates base (and what it jumps to) for p, which statements may change.
func (t *Tracer) walk(base *nft.Chain, p *Packet, tr *Trace) (nft.VerdictKind, error) {
	cur, i := base, 0
	var stack []frame
	policy := func() nft.VerdictKind {
		tr.Steps = append(tr.Steps, Step{Chain: base.Name, Index: -1, Verdict: nft.Verdict{Kind: base.Hook.Policy}})
		return base.Hook.Policy
	}
	for steps := 0; ; steps++ {
		if steps > maxSteps {
			return 0, errors.New("ruleset loops")
		}
		if i >= len(cur.Rules) { // end of chain: implicit return
			if len(stack) == 0 {
				return policy(), nil
			}
			cur, i = stack[len(stack)-1].chain, stack[len(stack)-1].next
			stack = stack[:len(stack)-1]
			continue
		}
		idx := i
		rule := &cur.Rules[i]
		i++
		tr.Walked = append(tr.Walked, RuleRef{cur.Name, idx})
		var hits []Hit
		ok, err := t.matchAll(rule.Matches, p, &hits)
		if err != nil {
			return 0, fmt.Errorf("chain %s rule %d: %w", cur.Name, idx, err)
		}
		if ok && rule.CtMark != nil {
			m := rule.CtMark
			ok = p.tracked() && (p.CtMark&m.Mask == m.Value) != m.Negate
		}
		if !ok {
			continue
		}
		stmts := statements(rule, p)
		v := rule.Verdict
		if rule.VMap != nil {
			m := t.sets[rule.VMap.Map]
			if m == nil {
				return 0, fmt.Errorf("chain %s rule %d: no map %s", cur.Name, idx, rule.VMap.Map)
			}
			e, found, err := lookup(m, rule.VMap.Keys, p)
			if err != nil {
				return 0, fmt.Errorf("chain %s rule %d: %w", cur.Name, idx, err)
			}
			if !found {
				// No element: the lookup fails like a match, after the statements
				// before it ran (nft evaluates left to right).
				if len(stmts) > 0 {
					tr.Steps = append(tr.Steps, Step{Chain: cur.Name, Index: idx, Rule: rule, Hits: hits, Statements: stmts})
				}
				continue
			}
			v = e.Verdict
			hits = append(hits, Hit{m, e})
		}
		tr.Steps = append(tr.Steps, Step{Chain: cur.Name, Index: idx, Rule: rule, Verdict: v, Hits: hits, Statements: stmts})
		switch v.Kind {
		case nft.Continue:
		case nft.Accept, nft.Drop:
			return v.Kind, nil
		case nft.Return:
			if len(stack) == 0 {
				return policy(), nil
			}
			cur, i = stack[len(stack)-1].chain, stack[len(stack)-1].next
			stack = stack[:len(stack)-1]
		case nft.Jump, nft.Goto:
			next := t.chains[v.Chain]
			if next == nil {
				return 0, fmt.Errorf("chain %s rule %d: %s to missing chain %s", cur.Name, idx, v.Kind, v.Chain)
			}
			if v.Kind == nft.Jump {
				if len(stack) >= maxJumpDepth {
					return 0, fmt.Errorf("chain %s rule %d: jump stack deeper than %d", cur.Name, idx, maxJumpDepth)
				}
				stack = append(stack, frame{cur, i})
			}
			cur, i = next, 0
		default:
			return 0, fmt.Errorf("chain %s rule %d: unknown verdict %d", cur.Name, idx, v.Kind)
		}
	}
}

// statements applies the rule's non-terminal statements to p, in the order nft
// evaluates them (after the matches, before the verdict), and names them for the
// step. Counters and logs leave the packet as it is; a statement that sets a mark
// would change p here, so that later rules see it.
//
// A limit (anonymous or named) is taken as within its rate: the walk has no clock
// and no bucket. Validate keeps limits out of rules with a verdict, so the
// assumption decides only whether the rule's other statements (a log) run, never
// a verdict; the step says so.
func statements(r *nft.Rule, p *Packet) []string {
	var out []string
	for _, st := range r.Statements {
		if s, ok := st.(nft.CtMarkSet); ok && p.tracked() {
			p.CtMark = p.CtMark&^s.Mask | s.Value
		}
		text := nft.RenderStatement(st)
		switch st.(type) {
		case nft.Limit, nft.LimitRef:
			text += " (taken as within its rate)"
		}
		out = append(out, text)
	}
	if r.Counter {
		out = append(out, "counter")
	}
	if l := r.Log; l != nil {
		out = append(out, fmt.Sprintf("log group %d", l.Group))
	}
	return out
}

func (t *Tracer) matchAll(ms []nft.Match, p *Packet, hits *[]Hit) (bool, error) {
	for _, m := range ms {
		ok, err := t.match(m, p, hits)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func (t *Tracer) match(m nft.Match, p *Packet, hits *[]Hit) (bool, error) {
	vals, ok, err := fields(m.Keys, p)
	if err != nil {
		return false, err
	}
	if m.Set != "" {
		s := t.sets[m.Set]
		if s == nil {
			return false, fmt.Errorf("no set %s", m.Set)
		}
		if !ok {
			return false, nil
		}
		e := find(s.Elements, m.Keys, vals)
		if e != nil && !m.Negate {
			*hits = append(*hits, Hit{s, e})
		}
		return (e != nil) != m.Negate, nil
	}
	if !ok {
		return false, nil
	}
	if len(m.Keys) == 1 && m.Keys[0] == nft.KeyCtState && len(m.Values) == 1 && !m.Negate {
		// A bitmask: any of the bits (`ct state established,related`). Negated, nft
		// compares the whole state (`ct state != invalid`), as below.
		return vals[0].num&m.Values[0].Key[0].Num != 0, nil
	}
	return (find(m.Values, m.Keys, vals) != nil) != m.Negate, nil
}

// fields reads the packet's value of each key; ok is false when one is missing.
func fields(keys []nft.Key, p *Packet) ([]value, bool, error) {
	vals := make([]value, len(keys))
	ok := true
	for i, k := range keys {
		v, has, err := p.field(k)
		if err != nil {
			return nil, false, err
		}
		vals[i], ok = v, ok && has
	}
	return vals, ok, nil
}

// lookup finds the element of s whose key holds the packet's keys.
func lookup(s *nft.Set, keys []nft.Key, p *Packet) (*nft.Element, bool, error) {
	vals, ok, err := fields(keys, p)
	if err != nil || !ok {
		return nil, false, err
	}
	e := find(s.Elements, keys, vals)
	return e, e != nil, nil
}

// find returns the first element whose every key field holds the packet's value.
func find(elems []nft.Element, keys []nft.Key, vals []value) *nft.Element {
next:
	for i := range elems {
		e := &elems[i]
		if len(e.Key) != len(keys) {
			continue
		}
		for j, k := range keys {
			if !has(k.Type(), e.Key[j], vals[j]) {
				continue next
			}
		}
		return e
	}
	return nil
}
