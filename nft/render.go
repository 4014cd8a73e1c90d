package nft

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Render returns r as `nft -f` input: one `table inet NAME { ... }` block with named
// objects (sorted by name), sets (sorted by name), base chains (sorted by name) and regular chains (sorted by name).
// Elements are sorted by key. The output is deterministic: golden files compare it,
// verbose logs print it, and kernel tests load it with the nft CLI to check that the
// netlink encoding means the same thing.
func Render(r *Ruleset) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table %s %s {\n", Family, r.Table)
	first := true
	sep := func() {
		if !first {
			b.WriteString("\n")
		}
		first = false
	}
	for _, o := range SortedObjects(r) {
		sep()
		renderObject(&b, o)
	}
	for _, s := range SortedSets(r) {
		sep()
		renderSet(&b, s)
	}
	for _, c := range SortedChains(r) {
		sep()
		renderChain(&b, c)
	}
	b.WriteString("}\n")
	return b.String()
}

// SortedSets returns r's sets in render order (by name), elements sorted by key.
func SortedSets(r *Ruleset) []Set {
	out := slices.Clone(r.Sets)
	slices.SortFunc(out, func(a, b Set) int { return strings.Compare(a.Name, b.Name) })
	for i := range out {
		out[i].Elements = SortedElements(out[i].Elements)
	}
	return out
}

// SortedChains returns r's chains in render order: base chains, then regular chains,
// each by name.
func SortedChains(r *Ruleset) []Chain {
	out := slices.Clone(r.Chains)
	slices.SortFunc(out, func(a, b Chain) int {
		if (a.Hook == nil) != (b.Hook == nil) {
			if a.Hook != nil {
				return -1
			}
			return 1
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

// SortedElements returns a sorted copy of elems (by key, field by field).
func SortedElements(elems []Element) []Element {
	out := slices.Clone(elems)
	slices.SortFunc(out, CompareElements)
	return out
}

// CompareElements orders elements by key, field by field.
func CompareElements(a, b Element) int {
	for i := 0; i < len(a.Key) && i < len(b.Key); i++ {
		if c := compareValues(a.Key[i], b.Key[i]); c != 0 {
			return c
		}
	}
	return cmp.Compare(len(a.Key), len(b.Key))
}

func compareValues(a, b Value) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Num, b.Num); c != 0 {
		return c
	}
	if c := strings.Compare(a.Str, b.Str); c != 0 {
		return c
	}
	if c := a.AddrEnd.Compare(b.AddrEnd); c != 0 {
		return c
	}
	return cmp.Compare(a.NumEnd, b.NumEnd)
}

func renderSet(b *strings.Builder, s Set) {
	kind := "set"
	if s.Verdicts {
		kind = "map"
	}
	fmt.Fprintf(b, "\t%s %s {\n", kind, s.Name)
	types := make([]string, len(s.Type))
	for i, t := range s.Type {
		types[i] = t.String()
	}
	if s.Verdicts {
		fmt.Fprintf(b, "\t\ttype %s : verdict\n", strings.Join(types, " . "))
	} else {
		fmt.Fprintf(b, "\t\ttype %s\n", strings.Join(types, " . "))
	}
	if s.Interval {
		b.WriteString("\t\tflags interval\n")
	}
	if s.Comment != "" {
		fmt.Fprintf(b, "\t\tcomment %s\n", quote(s.Comment))
	}
	if len(s.Elements) > 0 {
		b.WriteString("\t\telements = {")
		for i, e := range s.Elements {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n\t\t\t")
			b.WriteString(RenderElement(s.Type, e, s.Verdicts))
		}
		b.WriteString("\n\t\t}\n")
	}
	b.WriteString("\t}\n")
}

// RenderElement renders one element of a set whose key fields have the given types.
// It is also the element's identity in Plan: two elements that render alike are equal.
func RenderElement(types []DataType, e Element, withVerdict bool) string {
	parts := make([]string, len(e.Key))
	for i, v := range e.Key {
		var t DataType
		if i < len(types) {
			t = types[i]
		}
		parts[i] = RenderValue(t, v)
	}
	s := strings.Join(parts, " . ")
	if e.Comment != "" {
		s += " comment " + quote(e.Comment)
	}
	if withVerdict {
		s += " : " + e.Verdict.String()
	}
	return s
}

func renderChain(b *strings.Builder, c Chain) {
	fmt.Fprintf(b, "\tchain %s {\n", c.Name)
	if h := c.Hook; h != nil {
		fmt.Fprintf(b, "\t\ttype %s hook %s priority %d; policy %s;\n", h.Type, h.Hook, h.Priority, Verdict{Kind: h.Policy})
	}
	for _, r := range c.Rules {
		fmt.Fprintf(b, "\t\t%s\n", RenderRule(r))
	}
	b.WriteString("\t}\n")
}

// RenderRule renders one rule as nft statement text (without chain or table).
func RenderRule(r Rule) string {
	var parts []string
	for _, m := range r.Matches {
		parts = append(parts, renderMatch(m))
	}
	if m := r.CtMark; m != nil {
		op := "=="
		if m.Negate {
			op = "!="
		}
		parts = append(parts, fmt.Sprintf("ct mark and 0x%08x %s 0x%08x", m.Mask, op, m.Value))
	}
	for _, st := range r.Statements {
		parts = append(parts, RenderStatement(st))
	}
	if r.Counter {
		parts = append(parts, "counter")
	}
	if r.Log != nil {
		l := fmt.Sprintf("log group %d", r.Log.Group)
		if r.Log.Prefix != "" {
			l = fmt.Sprintf("log prefix %s group %d", quote(r.Log.Prefix), r.Log.Group)
		}
		parts = append(parts, l)
	}
	if r.VMap != nil {
		parts = append(parts, keysText(r.VMap.Keys)+" vmap @"+r.VMap.Map)
	} else if r.Verdict.Kind != Continue {
		parts = append(parts, r.Verdict.String())
	}
	if r.Comment != "" {
		parts = append(parts, "comment "+quote(r.Comment))
	}
	return strings.Join(parts, " ")
}

// RenderStatement renders one statement as nft writes it.
func RenderStatement(st Statement) string {
	switch st := st.(type) {
	case Limit:
		return fmt.Sprintf("limit rate %d/%s burst %d packets", st.Rate, st.Per, st.Burst)
	case CounterRef:
		return "counter name " + quote(st.Name)
	case LimitRef:
		return "limit name " + quote(st.Name)
	case CtMarkSet:
		return fmt.Sprintf("ct mark set ct mark and 0x%08x or 0x%08x", ^st.Mask, st.Value)
	}
	return fmt.Sprintf("<unknown statement %T>", st)
}

func renderMatch(m Match) string {
	s := keysText(m.Keys)
	op := " "
	if m.Negate {
		op = " != "
	}
	if m.Set != "" {
		return s + op + "@" + m.Set
	}
	types := make([]DataType, len(m.Keys))
	for i, k := range m.Keys {
		types[i] = k.Type()
	}
	if len(m.Values) == 1 {
		return s + op + RenderElement(types, m.Values[0], false)
	}
	vals := make([]string, len(m.Values))
	for i, e := range SortedElements(m.Values) {
		vals[i] = RenderElement(types, e, false)
	}
	return s + op + "{ " + strings.Join(vals, ", ") + " }"
}

func keysText(keys []Key) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k.String()
	}
	return strings.Join(parts, " . ")
}

// String is the nft expression for the key.
func (k Key) String() string {
	switch k {
	case KeyIPSaddr:
		return "ip saddr"
	case KeyIPDaddr:
		return "ip daddr"
	case KeyIP6Saddr:
		return "ip6 saddr"
	case KeyIP6Daddr:
		return "ip6 daddr"
	case KeyL4Proto:
		return "meta l4proto"
	case KeyNFProto:
		return "meta nfproto"
	case KeyTHDport:
		return "th dport"
	case KeyTHSport:
		return "th sport"
	case KeyCtState:
		return "ct state"
	case KeyICMPv6Type:
		return "icmpv6 type"
	case KeyIIFName:
		return "iifname"
	case KeyOIFName:
		return "oifname"
	case KeyCtDirection:
		return "ct direction"
	}
	return fmt.Sprintf("key%d", uint8(k))
}

// String is the nft text of the verdict ("" for Continue).
func (v Verdict) String() string {
	switch v.Kind {
	case Accept:
		return "accept"
	case Drop:
		return "drop"
	case Return:
		return "return"
	case Jump:
		return "jump " + v.Chain
	case Goto:
		return "goto " + v.Chain
	}
	return ""
}

// String is the nft text of the verdict kind.
func (k VerdictKind) String() string { return Verdict{Kind: k}.String() }

// RenderValue renders one value of type t as nft writes it.
func RenderValue(t DataType, v Value) string {
	switch t {
	case TypeIPv4Addr, TypeIPv6Addr:
		if !v.Range {
			return v.Addr.String()
		}
		if p, ok := rangePrefix(v.Addr, v.AddrEnd); ok {
			return p.String()
		}
		return v.Addr.String() + "-" + v.AddrEnd.String()
	case TypeInetProto:
		if v.Range {
			return fmt.Sprintf("%d-%d", v.Num, v.NumEnd)
		}
		return protoName(v.Num)
	case TypeCtState:
		return ctStateText(v.Num)
	case TypeICMPv6Type:
		if n, ok := icmpv6Names[v.Num]; ok && !v.Range {
			return n
		}
	case TypeNFProto:
		switch v.Num {
		case NFProtoIPv4:
			return "ipv4"
		case NFProtoIPv6:
			return "ipv6"
		}
	case TypeIfName:
		return strconv.Quote(v.Str)
	case TypeCtDir:
		switch {
		case v.Range:
		case v.Num == CtOriginal:
			return "original"
		case v.Num == CtReply:
			return "reply"
		}
	}
	if v.Range {
		return fmt.Sprintf("%d-%d", v.Num, v.NumEnd)
	}
	return strconv.FormatUint(uint64(v.Num), 10)
}

func protoName(n uint32) string {
	switch n {
	case ProtoICMP:
		return "icmp"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMPv6:
		return "ipv6-icmp"
	case ProtoSCTP:
		return "sctp"
	}
	return strconv.FormatUint(uint64(n), 10)
}

var icmpv6Names = map[uint32]string{
	1: "destination-unreachable", 2: "packet-too-big", 3: "time-exceeded", 4: "parameter-problem",
	128: "echo-request", 129: "echo-reply",
	133: "nd-router-solicit", 134: "nd-router-advert", 135: "nd-neighbor-solicit",
	136: "nd-neighbor-advert", 137: "nd-redirect",
}

func ctStateText(mask uint32) string {
	names := []struct {
		bit  uint32
		name string
	}{{CtInvalid, "invalid"}, {CtEstablished, "established"}, {CtRelated, "related"}, {CtNew, "new"}, {CtUntracked, "untracked"}}
	var out []string
	for _, n := range names {
		if mask&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ",")
}

// rangePrefix reports whether lo-hi is exactly one prefix.
func rangePrefix(lo, hi netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= lo.BitLen(); bits++ {
		p := netip.PrefixFrom(lo, bits)
		if p.Masked().Addr() == lo && lastAddr(p) == hi {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// quote writes s as an nft quoted string, the way nft lists one: between double
// quotes, byte for byte. nft's quoted strings have no escapes (a backslash is
// itself, and nothing can stand for a quote); Validate keeps quotes, backslashes,
// control characters and invalid UTF-8 out of the strings Render quotes, so the
// text loads with nft -f and reads as the kernel's listing does. (Go's %q wrote a
// tab as \t and a broken byte as \xc3, which nft read as those characters.)
func quote(s string) string { return `"` + s + `"` }
