package nft

import (
	"fmt"
	"net/netip"
)

// Family is the only table family nftpolicy uses: one table serves IPv4 and IPv6.
const Family = "inet"

// Ruleset is the desired (or last applied) content of the one table nftpolicy owns.
// It is a plain value: building one touches nothing, and two Rulesets that render to
// the same text mean the same thing to the kernel. Order of Sets, Chains and Elements
// carries no meaning; Render and Plan sort.
type Ruleset struct {
	Table   string   // table name; the family is always Family
	Sets    []Set    // named sets and verdict maps
	Objects []Object // named counters and limits
	Chains  []Chain
}

// Chain is a base chain (Hook != nil) or a regular chain reached by jump/goto/vmap.
type Chain struct {
	Name  string
	Hook  *Hook // nil for a regular chain
	Rules []Rule
}

// Hook attaches a base chain to a netfilter hook.
type Hook struct {
	Type     string      // "filter"
	Hook     string      // "prerouting", "input", "forward", "output", "postrouting"
	Priority int         // e.g. 0 for "filter"
	Policy   VerdictKind // Accept or Drop
}

// Rule is a conjunction of matches followed by optional statements and one verdict.
// Evaluation order in nft text: matches, the ct mark match, statements, counter,
// log, then the verdict (or vmap).
type Rule struct {
	Matches []Match
	CtMark  *CtMarkMatch // `ct mark and Mask == Value`: after Matches
	// Statements run in order after the matches, before Counter and Log. A Limit
	// that the packet exceeds ends the rule there; see Limit.
	Statements []Statement
	Counter    bool
	Log        *Log
	VMap       *VMap   // a verdict-map lookup; when set, Verdict must be zero
	Verdict    Verdict // zero value = continue to the next rule
	Comment    string  // at most MaxCommentLen bytes
}

// CtMarkMatch compares the bits Mask of the packet's connection mark with Value
// (`ct mark and Mask == Value`, or != when Negate). Value has no bit outside Mask. A
// packet without a connection (untracked, or invalid) never matches, negated or not.
type CtMarkMatch struct {
	Mask, Value uint32
	Negate      bool
}

// CtMarkSet is the statement `ct mark set ct mark and ~Mask or Value`: it sets the
// bits Mask of the packet's connection mark to Value and keeps every other bit
// (other users of the connection mark, CNI plugins and service meshes, own them).
// Value has no bit outside Mask. A packet without a connection changes nothing.
type CtMarkSet struct {
	Mask, Value uint32
}

func (CtMarkSet) isStatement() {}

// Log sends matching packets to an nflog group.
type Log struct {
	Group  uint16
	Prefix string // at most MaxLogPrefixLen bytes
}

// MaxLogPrefixLen is the longest log prefix the kernel takes (NF_LOG_PREFIXLEN
// less the terminating zero).
const MaxLogPrefixLen = 127

// Statement is an action of a rule other than its anonymous Counter, its Log and
// its verdict: a Limit, a CounterRef, a LimitRef or a CtMarkSet. The set is closed (the method is unexported) so that
// every reader of the model (Render, Plan, Validate, the netlink encoder, the
// packet tracer) knows each kind.
type Statement interface{ isStatement() }

// Limit is `limit rate RATE/PER burst BURST packets`: a token bucket in the
// kernel, one per rule. A packet within the rate goes on through the rule; a
// packet over it ends the rule as a failed match does, and goes on to the next
// rule: nothing after the limit happens to it, not even the verdict. A limit can
// therefore only gate what is optional, and Validate refuses a rule with both a
// limit and a verdict (or vmap): put the limited statements in a rule of their own
// before the rule that decides.
type Limit struct {
	Rate  uint32    // packets per Per; at least 1
	Per   LimitUnit // the time unit of Rate
	Burst uint32    // packets allowed at once above the rate; at least 1
}

func (Limit) isStatement() {}

// LimitUnit is the time unit of a limit's rate.
type LimitUnit uint8

const (
	PerSecond LimitUnit = iota + 1
	PerMinute
	PerHour
	PerDay
)

// String is the unit as nft writes it ("second").
func (u LimitUnit) String() string {
	switch u {
	case PerSecond:
		return "second"
	case PerMinute:
		return "minute"
	case PerHour:
		return "hour"
	case PerDay:
		return "day"
	}
	return fmt.Sprintf("unit%d", uint8(u))
}

// VMap is `<keys> vmap @<Map>`: the packet's key selects the verdict.
type VMap struct {
	Keys []Key
	Map  string
}

// VerdictKind is what happens to a packet at the end of a rule.
type VerdictKind uint8

const (
	Continue VerdictKind = iota // no verdict: go on to the next rule
	Accept
	Drop
	Return
	Jump
	Goto
)

// Verdict is a verdict; Chain is set for Jump and Goto.
type Verdict struct {
	Kind  VerdictKind
	Chain string
}

// Match compares one key, or a concatenation of keys, with a named set (Set) or with
// literal values (Values): one literal value (single or range) is a comparison, more
// than one is an anonymous set. Exactly one of Set and Values is used.
//
// For bitmask keys (KeyCtState) one literal value is a mask and the match is
// "any of these bits is set", as in `ct state established,related`.
type Match struct {
	Keys   []Key
	Negate bool
	Set    string
	Values []Element
}

// Key is a packet field that a rule can match or look up.
type Key uint8

const (
	KeyIPSaddr     Key = iota + 1 // ip saddr
	KeyIPDaddr                    // ip daddr
	KeyIP6Saddr                   // ip6 saddr
	KeyIP6Daddr                   // ip6 daddr
	KeyL4Proto                    // meta l4proto
	KeyNFProto                    // meta nfproto
	KeyTHDport                    // th dport (TCP, UDP, SCTP, UDP-Lite share the offset)
	KeyTHSport                    // th sport
	KeyCtState                    // ct state (bitmask)
	KeyICMPv6Type                 // icmpv6 type
	KeyIIFName                    // meta iifname (string; exact match)
	KeyOIFName                    // meta oifname
	KeyCtDirection                // ct direction (CtOriginal or CtReply)
)

// DataType is the type of a set key field or of a key, as nft names it.
type DataType uint8

const (
	TypeIPv4Addr DataType = iota + 1
	TypeIPv6Addr
	TypeInetProto
	TypeInetService
	TypeCtState
	TypeICMPv6Type
	TypeNFProto
	TypeIfName
	TypeCtDir
)

// Set is a named set or, when Verdicts is true, a verdict map (`map NAME { type K : verdict }`).
type Set struct {
	Name     string
	Type     []DataType // key type; more than one is a concatenation
	Interval bool       // `flags interval`: elements may be ranges and prefixes
	Verdicts bool       // a verdict map: every element carries a Verdict
	Comment  string
	Elements []Element
}

// Element is one set or map element, or one literal value of a Match.
type Element struct {
	Key     []Value // one value per key field
	Verdict Verdict // maps only
	Comment string  // shown by `nft list`; used to name the pod behind a map element
}

// Value is one field of an element: a single value or an inclusive range.
// Address types use Addr/AddrEnd; numeric types use Num/NumEnd; TypeIfName uses Str.
type Value struct {
	Addr    netip.Addr
	AddrEnd netip.Addr // valid when Range
	Num     uint32
	NumEnd  uint32 // valid when Range
	Str     string
	Range   bool
}

// Addr is the single address a.
func Addr(a netip.Addr) Value { return Value{Addr: a.Unmap()} }

// AddrRange is the inclusive address range lo-hi.
func AddrRange(lo, hi netip.Addr) Value {
	lo, hi = lo.Unmap(), hi.Unmap()
	if lo == hi {
		return Value{Addr: lo}
	}
	return Value{Addr: lo, AddrEnd: hi, Range: true}
}

// Prefix is the range of addresses in p (a /32 or /128 is a single address).
func Prefix(p netip.Prefix) Value {
	p = p.Masked()
	if p.IsSingleIP() {
		return Addr(p.Addr())
	}
	return AddrRange(p.Addr(), lastAddr(p))
}

// Num is the single number n (protocol, port, ICMPv6 type, ct state mask).
func Num(n uint32) Value { return Value{Num: n} }

// NumRange is the inclusive numeric range lo-hi.
func NumRange(lo, hi uint32) Value {
	if lo == hi {
		return Num(lo)
	}
	return Value{Num: lo, NumEnd: hi, Range: true}
}

// Str is an interface name value.
func Str(s string) Value { return Value{Str: s} }

// Elem builds an element from its key fields.
func Elem(fields ...Value) Element { return Element{Key: fields} }

// InSet matches keys (concatenated when more than one) against the named set.
func InSet(set string, keys ...Key) Match { return Match{Keys: keys, Set: set} }

// Is matches one key against one or more literal values.
func Is(key Key, values ...Value) Match {
	m := Match{Keys: []Key{key}}
	for _, v := range values {
		m.Values = append(m.Values, Element{Key: []Value{v}})
	}
	return m
}

// Not negates a match.
func Not(m Match) Match { m.Negate = !m.Negate; return m }

// IPProtocol numbers used by the compiler and rendered by name.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
	ProtoSCTP   = 132
)

// NFProto numbers (meta nfproto).
const (
	NFProtoIPv4 = 2
	NFProtoIPv6 = 10
)

// Connection-tracking state bits (ct state), as the kernel defines them.
const (
	CtInvalid     = 1
	CtEstablished = 2
	CtRelated     = 4
	CtNew         = 8
	CtUntracked   = 64
)

// Connection-tracking directions (ct direction).
const (
	CtOriginal = 0
	CtReply    = 1
)

// Type returns the data type a key yields.
func (k Key) Type() DataType {
	switch k {
	case KeyIPSaddr, KeyIPDaddr:
		return TypeIPv4Addr
	case KeyIP6Saddr, KeyIP6Daddr:
		return TypeIPv6Addr
	case KeyL4Proto:
		return TypeInetProto
	case KeyNFProto:
		return TypeNFProto
	case KeyTHDport, KeyTHSport:
		return TypeInetService
	case KeyCtState:
		return TypeCtState
	case KeyICMPv6Type:
		return TypeICMPv6Type
	case KeyIIFName, KeyOIFName:
		return TypeIfName
	case KeyCtDirection:
		return TypeCtDir
	}
	return 0
}

// Len is the size in bytes of a value of this type in a set key (before the
// 4-byte alignment concatenations apply).
func (t DataType) Len() int {
	switch t {
	case TypeIPv4Addr, TypeCtState:
		return 4
	case TypeIPv6Addr, TypeIfName:
		return 16
	case TypeInetProto, TypeICMPv6Type, TypeNFProto, TypeCtDir:
		return 1
	case TypeInetService:
		return 2
	}
	return 0
}

// String is the nft name of the type.
func (t DataType) String() string {
	switch t {
	case TypeIPv4Addr:
		return "ipv4_addr"
	case TypeIPv6Addr:
		return "ipv6_addr"
	case TypeInetProto:
		return "inet_proto"
	case TypeInetService:
		return "inet_service"
	case TypeCtState:
		return "ct_state"
	case TypeICMPv6Type:
		return "icmpv6_type"
	case TypeNFProto:
		return "nf_proto"
	case TypeIfName:
		return "ifname"
	case TypeCtDir:
		return "ct_dir"
	}
	return fmt.Sprintf("type%d", uint8(t))
}

// Counts summarises a ruleset's size (for metrics and logs).
type Counts struct {
	Chains, Rules, Sets, Elements int
}

// Counts returns the number of chains, rules, sets and elements of r.
func (r *Ruleset) Counts() Counts {
	c := Counts{Chains: len(r.Chains), Sets: len(r.Sets)}
	for i := range r.Chains {
		c.Rules += len(r.Chains[i].Rules)
	}
	for i := range r.Sets {
		c.Elements += len(r.Sets[i].Elements)
	}
	return c
}

// Chain returns the chain with the given name, or nil.
func (r *Ruleset) Chain(name string) *Chain {
	for i := range r.Chains {
		if r.Chains[i].Name == name {
			return &r.Chains[i]
		}
	}
	return nil
}

// FindSet returns the set or map with the given name, or nil.
func (r *Ruleset) FindSet(name string) *Set {
	for i := range r.Sets {
		if r.Sets[i].Name == name {
			return &r.Sets[i]
		}
	}
	return nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
