package nft

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxNameLen bounds table, chain and set names. The kernel allows 255 bytes; we keep
// names short enough to read in `nft list ruleset` and leave room for suffixes.
const MaxNameLen = 127

// MaxCommentLen is the longest comment the nft CLI accepts.
const MaxCommentLen = 128

// nameRE is what the nft CLI accepts as an unquoted identifier (its scanner's `string`).
var nameRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9/_.\-]*$`)

// ValidName reports whether s can name a table, chain or set.
func ValidName(s string) bool { return len(s) <= MaxNameLen && nameRE.MatchString(s) }

// Validate checks that r is self-consistent: valid unique names, every set and chain a
// rule or element refers to exists with matching types, element and value shapes fit
// their set's type, and comments are printable by nft. The kernel would reject most of
// these in the middle of a batch; Validate names the offending object up front.
func (r *Ruleset) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !ValidName(r.Table) {
		bad("table name %q is not a valid nft name", r.Table)
	}
	sets := map[string]*Set{}
	for i := range r.Sets {
		s := &r.Sets[i]
		if !ValidName(s.Name) {
			bad("set %q: invalid name", s.Name)
		}
		if sets[s.Name] != nil {
			bad("set %q: defined twice", s.Name)
		}
		sets[s.Name] = s
	}
	objects := map[string]*Object{}
	for i := range r.Objects {
		o := &r.Objects[i]
		if !ValidName(o.Name) {
			bad("object %q: invalid name", o.Name)
		}
		if objects[o.Name] != nil {
			bad("object %q: defined twice", o.Name)
		}
		objects[o.Name] = o
		switch o.Kind {
		case CounterObject:
			if o.Limit != (Limit{}) {
				bad("counter %s: has a limit", o.Name)
			}
		case LimitObject:
			if err := checkLimit(o.Limit); err != nil {
				bad("limit %s: %v", o.Name, err)
			}
		default:
			bad("object %q: unknown kind %v", o.Name, o.Kind)
		}
	}
	chains := map[string]*Chain{}
	for i := range r.Chains {
		c := &r.Chains[i]
		if !ValidName(c.Name) {
			bad("chain %q: invalid name", c.Name)
		}
		if chains[c.Name] != nil {
			bad("chain %q: defined twice", c.Name)
		}
		chains[c.Name] = c
	}
	checkTarget := func(where string, v Verdict) {
		if v.Kind != Jump && v.Kind != Goto {
			if v.Chain != "" {
				bad("%s: verdict %v names a chain", where, v.Kind)
			}
			return
		}
		c := chains[v.Chain]
		switch {
		case c == nil:
			bad("%s: %s to missing chain %q", where, v.Kind, v.Chain)
		case c.Hook != nil:
			bad("%s: %s to base chain %q", where, v.Kind, v.Chain)
		}
	}
	for i := range r.Sets {
		s := &r.Sets[i]
		where := "set " + s.Name
		if len(s.Type) == 0 {
			bad("%s: no key type", where)
		}
		if err := checkComment(s.Comment); err != nil {
			bad("%s: %v", where, err)
		}
		for _, e := range s.Elements {
			ew := where + " element " + RenderElement(s.Type, e, false)
			if err := checkElement(s.Type, e, s.Interval); err != nil {
				bad("%s: %v", ew, err)
			}
			if err := checkComment(e.Comment); err != nil {
				bad("%s: %v", ew, err)
			}
			if s.Verdicts {
				if e.Verdict.Kind == Continue {
					bad("%s: map element without verdict", ew)
				}
				checkTarget(ew, e.Verdict)
			} else if e.Verdict != (Verdict{}) {
				bad("%s: verdict in a set that is not a map", ew)
			}
		}
	}
	for i := range r.Chains {
		c := &r.Chains[i]
		if c.Hook != nil && c.Hook.Policy != Accept && c.Hook.Policy != Drop {
			bad("chain %s: base chain policy must be accept or drop", c.Name)
		}
		for j, rule := range c.Rules {
			where := fmt.Sprintf("chain %s rule %d (%s)", c.Name, j, RenderRule(rule))
			if err := checkComment(rule.Comment); err != nil {
				bad("%s: %v", where, err)
			}
			for _, m := range rule.Matches {
				if err := checkMatch(m, sets); err != nil {
					bad("%s: %v", where, err)
				}
			}
			if m := rule.CtMark; m != nil && (m.Mask == 0 || m.Value&^m.Mask != 0) {
				bad("%s: ct mark match: value 0x%x outside mask 0x%x", where, m.Value, m.Mask)
			}
			for _, st := range rule.Statements {
				if err := checkStatement(st, rule, objects); err != nil {
					bad("%s: %v", where, err)
				}
			}
			if rule.Log != nil && (len(rule.Log.Prefix) > MaxLogPrefixLen || checkQuoted(rule.Log.Prefix) != nil) {
				bad("%s: log prefix longer than %d bytes, not UTF-8, or with a quote, backslash or control character", where, MaxLogPrefixLen)
			}
			if rule.VMap != nil {
				s := sets[rule.VMap.Map]
				switch {
				case rule.Verdict.Kind != Continue:
					bad("%s: both a vmap and a verdict", where)
				case s == nil:
					bad("%s: vmap @%s does not exist", where, rule.VMap.Map)
				case !s.Verdicts:
					bad("%s: @%s is a set, not a verdict map", where, rule.VMap.Map)
				case !slices.Equal(keyTypes(rule.VMap.Keys), s.Type):
					bad("%s: key types do not match map @%s", where, s.Name)
				}
			}
			checkTarget(where, rule.Verdict)
		}
	}
	return errors.Join(errs...)
}

func checkStatement(st Statement, rule Rule, objects map[string]*Object) error {
	gates := func() error {
		if rule.Verdict.Kind != Continue || rule.VMap != nil {
			// A packet over the limit would skip the verdict too.
			return errors.New("a limit in a rule with a verdict: the limit would gate the verdict")
		}
		return nil
	}
	switch st := st.(type) {
	case Limit:
		if err := checkLimit(st); err != nil {
			return err
		}
		return gates()
	case LimitRef:
		if o := objects[st.Name]; o == nil || o.Kind != LimitObject {
			return fmt.Errorf("limit %q does not exist", st.Name)
		}
		return gates()
	case CounterRef:
		if o := objects[st.Name]; o == nil || o.Kind != CounterObject {
			return fmt.Errorf("counter %q does not exist", st.Name)
		}
		return nil
	case CtMarkSet:
		if st.Mask == 0 || st.Value&^st.Mask != 0 {
			return fmt.Errorf("ct mark set: value 0x%x outside mask 0x%x", st.Value, st.Mask)
		}
		return nil
	case nil:
		return errors.New("nil statement")
	}
	return fmt.Errorf("unknown statement %T", st)
}

func keyTypes(keys []Key) []DataType {
	out := make([]DataType, len(keys))
	for i, k := range keys {
		out[i] = k.Type()
	}
	return out
}

func checkMatch(m Match, sets map[string]*Set) error {
	if len(m.Keys) == 0 {
		return errors.New("match without a key")
	}
	types := keyTypes(m.Keys)
	if m.Set != "" {
		if len(m.Values) > 0 {
			return errors.New("match has both a set and values")
		}
		s := sets[m.Set]
		switch {
		case s == nil:
			return fmt.Errorf("set @%s does not exist", m.Set)
		case s.Verdicts:
			return fmt.Errorf("@%s is a verdict map, not a set", m.Set)
		case !slices.Equal(types, s.Type):
			return fmt.Errorf("key types do not match set @%s", m.Set)
		}
		return nil
	}
	if len(m.Values) == 0 {
		return errors.New("match has neither a set nor values")
	}
	if m.Keys[0] == KeyCtState && len(m.Values) != 1 {
		return errors.New("ct state takes one mask value")
	}
	for _, e := range m.Values {
		if err := checkElement(types, e, true); err != nil {
			return err
		}
	}
	return nil
}

func checkElement(types []DataType, e Element, interval bool) error {
	if len(e.Key) != len(types) {
		return fmt.Errorf("key has %d fields, type has %d", len(e.Key), len(types))
	}
	for i, v := range e.Key {
		if v.Range && !interval {
			return errors.New("range in a set without flags interval")
		}
		switch types[i] {
		case TypeIPv4Addr, TypeIPv6Addr:
			want4 := types[i] == TypeIPv4Addr
			if !v.Addr.IsValid() || v.Addr.Is4() != want4 || (v.Range && (v.AddrEnd.Is4() != want4 || v.AddrEnd.Less(v.Addr))) {
				return fmt.Errorf("field %d: %v does not fit %v", i, RenderValue(types[i], v), types[i])
			}
		case TypeIfName:
			if v.Str == "" || len(v.Str) > 15 {
				return fmt.Errorf("field %d: bad interface name %q", i, v.Str)
			}
		default:
			max := uint32(1)<<(8*types[i].Len()) - 1
			if types[i].Len() >= 4 {
				max = ^uint32(0)
			}
			if v.Num > max || (v.Range && (v.NumEnd > max || v.NumEnd < v.Num)) {
				return fmt.Errorf("field %d: %s out of range for %v", i, RenderValue(types[i], v), types[i])
			}
		}
	}
	return nil
}

func checkComment(s string) error {
	if len(s) > MaxCommentLen {
		return fmt.Errorf("comment longer than %d bytes", MaxCommentLen)
	}
	if err := checkQuoted(s); err != nil {
		return fmt.Errorf("comment %q %w", s, err)
	}
	return nil
}

// checkQuoted reports what keeps s from being an nft quoted string that lists
// as it was written (Render's quote): a quote, which nothing can escape; a
// backslash, which nft keeps but readers take for an escape; a control
// character (a newline ends the line, a tab reads as spaces); invalid UTF-8,
// which makes grep call the listing binary and nft -j drop the string.
func checkQuoted(s string) error {
	if !utf8.ValidString(s) {
		return errors.New("is not valid UTF-8")
	}
	if i := strings.IndexFunc(s, func(r rune) bool { return r == '"' || r == '\\' || unicode.IsControl(r) }); i >= 0 {
		return fmt.Errorf("contains a quote, backslash or control character (byte %d)", i)
	}
	return nil
}
