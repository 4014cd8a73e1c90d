package nfttest

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Packet is what the tracer knows of a packet: the fields nftpolicy's rules can look
// at. Saddr and Daddr have the packet's family (both IPv4 or both IPv6).
type Packet struct {
	Saddr, Daddr     netip.Addr
	L4Proto          uint8  // nft.ProtoTCP, ...
	SPort, DPort     uint16 // for TCP, UDP, SCTP, UDP-Lite and DCCP
	ICMPv6Type       uint8  // when L4Proto is nft.ProtoICMPv6
	CtState          uint32 // exactly one state bit: nft.CtNew, nft.CtEstablished, ...
	CtReply          bool   // ct direction reply (a reply of the connection, not its original direction)
	CtMark           uint32 // the connection's mark as the packet arrives
	IIFName, OIFName string
}

func (p Packet) String() string {
	s := fmt.Sprintf("%s -> %s proto %d", p.Saddr, p.Daddr, p.L4Proto)
	if hasPorts(p.L4Proto) {
		s += fmt.Sprintf(" dport %d", p.DPort)
	}
	return s + " ct " + nft.RenderValue(nft.TypeCtState, nft.Num(p.CtState))
}

// Step is one rule that matched on the way, or the policy of a base chain (Rule -1).
type Step struct {
	Chain   string
	Rule    int         // index in the chain; -1: the chain's policy
	Verdict nft.Verdict // what the rule (or its vmap) decided; Continue for none
}

// Trace is the outcome of a packet's walk through one hook.
type Trace struct {
	Verdict nft.VerdictKind // nft.Accept or nft.Drop
	Path    []Step
	CtMark  uint32 // the connection's mark after the walk (ct mark set statements)
	rs      *nft.Ruleset
}

// String shows the path, one step a line, with each rule's text.
func (t Trace) String() string {
	var b strings.Builder
	for _, s := range t.Path {
		text := "policy"
		if c := t.rs.Chain(s.Chain); c != nil && s.Rule >= 0 && s.Rule < len(c.Rules) {
			text = nft.RenderRule(c.Rules[s.Rule])
		}
		fmt.Fprintf(&b, "%s[%d]: %s => %s\n", s.Chain, s.Rule, text, cmp.Or(s.Verdict.String(), "continue"))
	}
	fmt.Fprintf(&b, "verdict: %s\n", t.Verdict)
	return b.String()
}

// Tracer walks packets through a Ruleset the way the kernel's nf_tables evaluates
// it: base chains of a hook in priority order, rules in order, matches on literal
// values, anonymous sets and named sets (intervals and concatenations included),
// ct direction, ct mark matches and `ct mark set` (the mark a walk leaves is
// Trace.CtMark), jump, goto, return, verdict maps, accept and drop. Counters and
// logs do nothing.
// A field the packet lacks makes the match fail, negated or not: ip saddr of an IPv6
// packet, as nft's implicit protocol dependency does; th dport of a protocol without
// ports (where the kernel would read whatever bytes sit there; nftpolicy's rules
// always pair th dport with meta l4proto, which makes the difference moot).
type Tracer struct {
	rs     *nft.Ruleset
	chains map[string]*nft.Chain
	sets   map[string]*nft.Set
	bases  map[string][]*nft.Chain // by hook, in evaluation order
}

// NewTracer prepares r for tracing. r must not change while the Tracer is in use.
func NewTracer(r *nft.Ruleset) *Tracer {
	t := &Tracer{rs: r, chains: map[string]*nft.Chain{}, sets: map[string]*nft.Set{}, bases: map[string][]*nft.Chain{}}
	for i := range r.Chains {
		c := &r.Chains[i]
		t.chains[c.Name] = c
		if c.Hook != nil {
			t.bases[c.Hook.Hook] = append(t.bases[c.Hook.Hook], c)
		}
	}
	for _, bases := range t.bases {
		slices.SortFunc(bases, func(a, b *nft.Chain) int {
			return cmp.Or(cmp.Compare(a.Hook.Priority, b.Hook.Priority), strings.Compare(a.Name, b.Name))
		})
	}
	for i := range r.Sets {
		t.sets[r.Sets[i].Name] = &r.Sets[i]
	}
	return t
}

// Forward traces p through the forward hook.
func (t *Tracer) Forward(p Packet) (Trace, error) { return t.Hook("forward", p) }

// maxJumpDepth is the kernel's jump stack (NFT_JUMP_STACK_SIZE).
const maxJumpDepth = 16

// Hook traces p through every base chain on the hook, by priority (then name): a
// drop ends the walk, an accept (verdict or policy) passes on to the next base chain.
// It fails on a reference to a missing chain or set, or a jump stack deeper than the
// kernel's. With no base chain on the hook, the packet is accepted.
func (t *Tracer) Hook(hook string, p Packet) (Trace, error) {
	tr := Trace{Verdict: nft.Accept, rs: t.rs, Path: make([]Step, 0, 8), CtMark: p.CtMark}
	for _, base := range t.bases[hook] {
		v, err := t.walk(base, p, &tr)
		if err != nil {
			return tr, err
		}
		if v == nft.Drop {
			tr.Verdict = nft.Drop
			break
		}
	}
	return tr, nil
}

type frame struct {
	chain *nft.Chain
	next  int
}

func (t *Tracer) walk(base *nft.Chain, p Packet, tr *Trace) (nft.VerdictKind, error) {
	cur, i := base, 0
	var stack []frame
	policy := func() nft.VerdictKind {
		tr.Path = append(tr.Path, Step{Chain: base.Name, Rule: -1, Verdict: nft.Verdict{Kind: base.Hook.Policy}})
		return base.Hook.Policy
	}
	for steps := 0; ; steps++ {
		if steps > 1_000_000 {
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
		ok, err := t.matchAll(rule.Matches, p)
		if err != nil {
			return 0, fmt.Errorf("chain %s rule %d: %w", cur.Name, idx, err)
		}
		if ok && rule.CtMark != nil {
			// The mark as earlier rules of this walk left it; no mark without a connection.
			m := rule.CtMark
			ok = tracked(p) && (tr.CtMark&m.Mask == m.Value) != m.Negate
		}
		if !ok {
			continue
		}
		if s := rule.CtMarkSet; s != nil && tracked(p) {
			tr.CtMark = tr.CtMark&^s.Mask | s.Value
		}
		v := rule.Verdict
		if rule.VMap != nil {
			m := t.sets[rule.VMap.Map]
			if m == nil {
				return 0, fmt.Errorf("chain %s rule %d: no map %s", cur.Name, idx, rule.VMap.Map)
			}
			e, found := lookup(m, rule.VMap.Keys, p)
			if !found {
				continue // no element: the rule does not match
			}
			v = e.Verdict
		}
		tr.Path = append(tr.Path, Step{Chain: cur.Name, Rule: idx, Verdict: v})
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
		}
	}
}

func (t *Tracer) matchAll(ms []nft.Match, p Packet) (bool, error) {
	for _, m := range ms {
		ok, err := t.match(m, p)
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func (t *Tracer) match(m nft.Match, p Packet) (bool, error) {
	if m.Set != "" {
		s := t.sets[m.Set]
		if s == nil {
			return false, fmt.Errorf("no set %s", m.Set)
		}
		if !available(m.Keys, p) {
			return false, nil
		}
		_, found := lookup(s, m.Keys, p)
		return found != m.Negate, nil
	}
	if !available(m.Keys, p) {
		return false, nil
	}
	if len(m.Keys) == 1 && m.Keys[0] == nft.KeyCtState && len(m.Values) == 1 {
		// A bitmask: any of the bits.
		hit := p.CtState&m.Values[0].Key[0].Num != 0
		return hit != m.Negate, nil
	}
	found := false
	for _, e := range m.Values {
		if elementHas(e, m.Keys, p) {
			found = true
			break
		}
	}
	return found != m.Negate, nil
}

// lookup finds the element of s whose key contains the packet's keys.
func lookup(s *nft.Set, keys []nft.Key, p Packet) (nft.Element, bool) {
	if !available(keys, p) {
		return nft.Element{}, false
	}
	for _, e := range s.Elements {
		if elementHas(e, keys, p) {
			return e, true
		}
	}
	return nft.Element{}, false
}

func elementHas(e nft.Element, keys []nft.Key, p Packet) bool {
	if len(e.Key) != len(keys) {
		return false
	}
	for i, k := range keys {
		if !valueHas(e.Key[i], k, p) {
			return false
		}
	}
	return true
}

// valueHas reports whether the element field v holds the packet's value of k.
func valueHas(v nft.Value, k nft.Key, p Packet) bool {
	switch k.Type() {
	case nft.TypeIPv4Addr, nft.TypeIPv6Addr:
		a := addrOf(k, p)
		if v.Range {
			return v.Addr.Compare(a) <= 0 && a.Compare(v.AddrEnd) <= 0
		}
		return v.Addr == a
	case nft.TypeIfName:
		name := p.IIFName
		if k == nft.KeyOIFName {
			name = p.OIFName
		}
		if prefix, ok := strings.CutSuffix(v.Str, "*"); ok {
			return strings.HasPrefix(name, prefix)
		}
		return v.Str == name
	}
	n := numOf(k, p)
	if v.Range {
		return v.Num <= n && n <= v.NumEnd
	}
	return v.Num == n
}

// tracked reports whether the packet has a connection (ct mark and ct direction exist).
func tracked(p Packet) bool { return p.CtState&(nft.CtInvalid|nft.CtUntracked) == 0 }

// available reports whether the packet has every key (its family, its protocol).
func available(keys []nft.Key, p Packet) bool {
	for _, k := range keys {
		switch k {
		case nft.KeyCtDirection:
			if !tracked(p) {
				return false
			}
		case nft.KeyIPSaddr, nft.KeyIPDaddr:
			if !p.Saddr.Is4() {
				return false
			}
		case nft.KeyIP6Saddr, nft.KeyIP6Daddr:
			if !p.Saddr.Is6() {
				return false
			}
		case nft.KeyTHDport, nft.KeyTHSport:
			if !hasPorts(p.L4Proto) {
				return false
			}
		case nft.KeyICMPv6Type:
			if !p.Saddr.Is6() || p.L4Proto != nft.ProtoICMPv6 {
				return false
			}
		}
	}
	return true
}

func hasPorts(proto uint8) bool {
	switch proto {
	case nft.ProtoTCP, nft.ProtoUDP, nft.ProtoSCTP, 136 /* UDP-Lite */, 33 /* DCCP */ :
		return true
	}
	return false
}

func addrOf(k nft.Key, p Packet) netip.Addr {
	switch k {
	case nft.KeyIPSaddr, nft.KeyIP6Saddr:
		return p.Saddr
	}
	return p.Daddr
}

func numOf(k nft.Key, p Packet) uint32 {
	switch k {
	case nft.KeyL4Proto:
		return uint32(p.L4Proto)
	case nft.KeyNFProto:
		if p.Saddr.Is4() {
			return nft.NFProtoIPv4
		}
		return nft.NFProtoIPv6
	case nft.KeyTHDport:
		return uint32(p.DPort)
	case nft.KeyTHSport:
		return uint32(p.SPort)
	case nft.KeyCtState:
		return p.CtState
	case nft.KeyICMPv6Type:
		return uint32(p.ICMPv6Type)
	case nft.KeyCtDirection:
		if p.CtReply {
			return nft.CtReply
		}
		return nft.CtOriginal
	}
	return 0
}
