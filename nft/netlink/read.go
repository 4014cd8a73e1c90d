package netlink

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
)

// UnreadableRule is the comment of a rule Read could not describe in the model.
const UnreadableRule = "nftpolicy: rule not understood"

// unreadableKey is a key no tracer knows: a walk that reaches an unreadable rule
// fails and names it, rather than guess what the kernel does with it.
const unreadableKey nft.Key = 255

// Read describes the table the kernel holds, in the model, so that it can be walked
// (`nftpolicy explain --live`) and compared with what it should be. It reads the
// table with the same reader FullSync uses for drift and adoption. It returns nil
// and no error when there is no table.
//
// hint is what the kernel should hold (the fresh compile). The kernel keeps neither
// nft's rule text nor set key types in the model's terms, so Read relies on hint
// for them: a kernel rule is described as the hint rule (of the same chain, in any
// position) whose bytecode, as this package would load it, equals the kernel's
// expression for expression (counter values aside; an anonymous set's elements are
// not compared), with the kernel's comment; any other rule becomes a rule with the
// comment UnreadableRule that a walk cannot pass. Set key types come from nft's type
// magic, which names each field; elements are decoded from their bytes, intervals
// included, with their verdicts and comments.
func (a *Applier) Read(ctx context.Context, hint *nft.Ruleset) (*nft.Ruleset, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.readMu.Lock()
	defer a.readMu.Unlock()
	if a.reader == nil {
		return nil, errClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out, err := a.readParts(hint)
	if errors.Is(err, errGenerationMoved) {
		return nil, fmt.Errorf("%w: the node's rules change faster than they can be read, try again", err)
	}
	return out, err
}

// readParts is Read's reading of the table; the caller holds readMu. Another
// process (the agent, beside explain) may commit meanwhile: each part (the
// table's shape, its objects, each set's elements, each chain's rules) is read
// until one read of it begins and ends on the same generation (gen.go), so
// that no part misses what it held throughout. The parts may come from
// transactions a few milliseconds apart: on a busy node the whole table,
// 250 ms of dumps at 60,000 elements, is rarely read between two of the
// agent's syncs (10 ms apart at the least).
func (a *Applier) readParts(hint *nft.Ruleset) (*nft.Ruleset, error) {
	var kt *kernelTable
	err := a.consistent(func() (err error) {
		kt, err = a.readTable()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nft/netlink: reading table %s: %w", a.opts.Table, err)
	}
	if kt.tab == nil {
		return nil, nil
	}
	if hint == nil {
		hint = &nft.Ruleset{Table: a.opts.Table}
	}
	out := &nft.Ruleset{Table: a.opts.Table}
	for _, name := range sortedKeys(kt.objs) { // read with the shape, consistently
		if o := kt.objs[name]; o.ok { // an object the model cannot describe is left out
			out.Objects = append(out.Objects, o.def)
		}
	}
	for _, name := range sortedKeys(kt.sets) {
		var s nft.Set
		err := a.consistent(func() (err error) { s, err = a.readSet(kt.sets[name], hint.FindSet(name)); return err })
		if err != nil {
			return nil, fmt.Errorf("nft/netlink: set %s: %w", name, err)
		}
		out.Sets = append(out.Sets, s)
	}
	conn, err := nftables.New(nftables.WithTestDial(nopDial))
	if err != nil {
		return nil, err
	}
	enc := newEncoder(conn, a.opts.Table, nft.Transaction{}, nil, hint)
	enc.anon = map[uint32][]nftables.SetElement{}
	var anon map[string][]nftables.SetElement
	if err := a.consistent(func() (err error) { anon, err = a.anonymousSets(kt); return err }); err != nil {
		return nil, err
	}
	same := func(want, got []expr.Any) bool { return sameExprs(want, got, enc.anon, anon) }
	for _, name := range sortedKeys(kt.chains) {
		kc := kt.chains[name]
		c := nft.Chain{Name: name}
		if kc.Hooknum != nil {
			c.Hook = &nft.Hook{Type: string(kc.Type), Hook: hookName(*kc.Hooknum), Policy: nft.Accept}
			if kc.Priority != nil {
				c.Hook.Priority = int(*kc.Priority)
			}
			if kc.Policy != nil && *kc.Policy == nftables.ChainPolicyDrop {
				c.Hook.Policy = nft.Drop
			}
		}
		var rules []*nftables.Rule
		if err := a.consistent(func() (err error) { rules, err = a.reader.GetRules(kt.tab, kc); return err }); err != nil {
			return nil, fmt.Errorf("nft/netlink: listing rules of chain %s: %w", name, err)
		}
		var candidates []nft.Rule
		var encoded [][]expr.Any
		if hc := hint.Chain(name); hc != nil {
			for i := range hc.Rules {
				ex, err := enc.ruleExprs(0, &hc.Rules[i])
				if err != nil {
					continue
				}
				candidates = append(candidates, hc.Rules[i])
				encoded = append(encoded, ex)
			}
		}
		for _, kr := range rules {
			comment, _ := userdata.GetString(kr.UserData, userdata.TypeComment)
			r := nft.Rule{Matches: []nft.Match{{Keys: []nft.Key{unreadableKey}, Values: []nft.Element{nft.Elem(nft.Num(0))}}}, Comment: UnreadableRule}
			matched := false
			for i, ex := range encoded {
				if same(ex, kr.Exprs) {
					r, matched = candidates[i], true
					r.Comment = comment
					break
				}
			}
			if !matched {
				if sr, ok := statementsOnly(kr.Exprs); ok {
					r = sr
					r.Comment = comment
				}
			}
			c.Rules = append(c.Rules, r)
		}
		out.Chains = append(out.Chains, c)
	}
	return out, nil
}

// statementsOnly describes a rule made of statements alone (counters, logs, limits,
// named objects, ct mark set; no match), and at most a closing accept, drop or
// return, whatever wrote it: its bytecode says all there is to say about it.
func statementsOnly(exprs []expr.Any) (nft.Rule, bool) {
	var r nft.Rule
	if len(exprs) == 0 {
		return r, false
	}
	// A closing verdict (accept, drop, return; not jump or goto, whose chain the
	// walk would need) is part of what the bytecode says plainly.
	if v, ok := exprs[len(exprs)-1].(*expr.Verdict); ok {
		switch v.Kind {
		case expr.VerdictAccept:
			r.Verdict = nft.Verdict{Kind: nft.Accept}
		case expr.VerdictDrop:
			r.Verdict = nft.Verdict{Kind: nft.Drop}
		case expr.VerdictReturn:
			r.Verdict = nft.Verdict{Kind: nft.Return}
		default:
			return r, false
		}
		exprs = exprs[:len(exprs)-1]
	}
	for i := 0; i < len(exprs); i++ {
		// `ct mark set ct mark and ~M or V`: load, mask, set (read back as a load
		// into register 0: see sameExprs).
		if ld, ok := exprs[i].(*expr.Ct); ok && ld.Key == expr.CtKeyMARK && !ld.SourceRegister && ld.Register == 1 && i+2 < len(exprs) {
			bw, okb := exprs[i+1].(*expr.Bitwise)
			set, oks := exprs[i+2].(*expr.Ct)
			if !okb || !oks || set.Key != expr.CtKeyMARK || bw.Len != 4 || len(bw.Mask) != 4 || len(bw.Xor) != 4 || (!set.SourceRegister && set.Register != 0) || r.Counter || r.Log != nil {
				return r, false
			}
			r.Statements = append(r.Statements, nft.CtMarkSet{Mask: ^binary.NativeEndian.Uint32(bw.Mask), Value: binary.NativeEndian.Uint32(bw.Xor)})
			i += 2
			continue
		}
		switch x := exprs[i].(type) {
		case *expr.Counter:
			if r.Counter || r.Log != nil {
				return r, false // not in the model's order
			}
			r.Counter = true
		case *expr.Log:
			if r.Log != nil || x.Key&^(1<<unix.NFTA_LOG_GROUP|1<<unix.NFTA_LOG_PREFIX) != 0 {
				return r, false
			}
			r.Log = &nft.Log{Group: x.Group, Prefix: string(bytes.TrimRight(x.Data, "\x00"))}
		case *expr.Objref:
			if r.Counter || r.Log != nil {
				return r, false
			}
			switch x.Type {
			case int(nftables.ObjTypeCounter):
				r.Statements = append(r.Statements, nft.CounterRef{Name: x.Name})
			case int(nftables.ObjTypeLimit):
				r.Statements = append(r.Statements, nft.LimitRef{Name: x.Name})
			default:
				return r, false
			}
		case *expr.Limit:
			per, known := map[expr.LimitTime]nft.LimitUnit{
				expr.LimitTimeSecond: nft.PerSecond, expr.LimitTimeMinute: nft.PerMinute,
				expr.LimitTimeHour: nft.PerHour, expr.LimitTimeDay: nft.PerDay,
			}[x.Unit]
			if r.Counter || r.Log != nil || !known || x.Type != expr.LimitTypePkts || x.Over || x.Rate > 1<<32-1 {
				return r, false
			}
			r.Statements = append(r.Statements, nft.Limit{Rate: uint32(x.Rate), Per: per, Burst: x.Burst})
		default:
			return r, false
		}
	}
	return r, true
}

// nopDial stands in for the kernel while Read encodes hint rules to compare them.
func nopDial(req []mnl.Message) ([]mnl.Message, error) { return req, nil }

func hookName(h nftables.ChainHook) string {
	switch h {
	case unix.NF_INET_PRE_ROUTING:
		return "prerouting"
	case unix.NF_INET_LOCAL_IN:
		return "input"
	case unix.NF_INET_FORWARD:
		return "forward"
	case unix.NF_INET_LOCAL_OUT:
		return "output"
	case unix.NF_INET_POST_ROUTING:
		return "postrouting"
	}
	return fmt.Sprintf("hook%d", h)
}

// anonymousSets reads the elements of the table's anonymous sets, by name.
func (a *Applier) anonymousSets(kt *kernelTable) (map[string][]nftables.SetElement, error) {
	sets, err := a.reader.GetSets(kt.tab)
	if err != nil {
		return nil, fmt.Errorf("nft/netlink: listing sets: %w", err)
	}
	out := map[string][]nftables.SetElement{}
	for _, s := range sets {
		if !s.Anonymous {
			continue
		}
		elems, err := a.reader.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("nft/netlink: listing elements of %s: %w", s.Name, err)
		}
		out[s.Name] = elems
	}
	return out, nil
}

// sameExprs compares bytecode: counter values aside, anonymous sets by their
// elements (wantAnon by set ID, gotAnon by name). Byteorder expressions are left
// out on both sides: google/nftables v0.3.0 does not read them back, and the keys
// and set they serve decide them; nor does it read a `ct set`'s source register.
func sameExprs(want, got []expr.Any, wantAnon map[uint32][]nftables.SetElement, gotAnon map[string][]nftables.SetElement) bool {
	noByteorder := func(xs []expr.Any) []expr.Any {
		return slices.DeleteFunc(slices.Clone(xs), func(x expr.Any) bool { _, ok := x.(*expr.Byteorder); return ok })
	}
	want, got = noByteorder(want), noByteorder(got)
	if len(want) != len(got) {
		return false
	}
	for i := range want {
		switch w := want[i].(type) {
		case *expr.Counter:
			if _, ok := got[i].(*expr.Counter); !ok {
				return false
			}
		case *expr.Lookup:
			g, ok := got[i].(*expr.Lookup)
			if !ok || w.SourceRegister != g.SourceRegister || w.IsDestRegSet != g.IsDestRegSet || w.Invert != g.Invert ||
				(w.IsDestRegSet && w.DestRegister != g.DestRegister) {
				return false
			}
			wa, ga := strings.HasPrefix(w.SetName, "__set"), strings.HasPrefix(g.SetName, "__set")
			switch {
			case wa != ga:
				return false
			case wa && !sameElements(wantAnon[w.SetID], gotAnon[g.SetName]):
				return false
			case !wa && w.SetName != g.SetName:
				return false
			}
		case *expr.Ct:
			g, ok := got[i].(*expr.Ct)
			if !ok || w.Key != g.Key || w.Direction != g.Direction {
				return false
			}
			// google/nftables v0.3.0 reads `ct set` (a source register) back as a
			// load into register 0.
			readAsLoad := !g.SourceRegister && g.Register == 0
			if w.SourceRegister && !g.SourceRegister && !readAsLoad || !w.SourceRegister && (g.SourceRegister || w.Register != g.Register) {
				return false
			}
		case *expr.Log:
			g, ok := got[i].(*expr.Log)
			if !ok || w.Group != g.Group || !bytes.Equal(w.Data, g.Data) {
				return false
			}
		case *expr.Verdict:
			g, ok := got[i].(*expr.Verdict)
			if !ok || w.Kind != g.Kind || w.Chain != g.Chain {
				return false
			}
		default:
			if !reflect.DeepEqual(want[i], got[i]) {
				return false
			}
		}
	}
	return true
}

func sameElements(want, got []nftables.SetElement) bool {
	ids := func(es []nftables.SetElement) []string {
		out := make([]string, len(es))
		for i, e := range es {
			out[i] = elemID(e)
		}
		slices.Sort(out)
		return out
	}
	return len(want) > 0 && slices.Equal(ids(want), ids(got))
}

// typeOfMagic: nft's datatype magic numbers, for the types of the model.
var typeOfMagic = func() map[uint32]nft.DataType {
	m := map[uint32]nft.DataType{}
	for t := nft.TypeIPv4Addr; t <= nft.TypeIfName; t++ {
		if dt, err := setDatatype(t); err == nil {
			m[dt.GetNFTMagic()] = t
		}
	}
	return m
}()

// keyTypes splits nft's (possibly concatenated) type magic: 6 bits per field.
func keyTypes(magic uint32) ([]nft.DataType, error) {
	var out []nft.DataType
	for magic != 0 {
		t, ok := typeOfMagic[magic&0x3f]
		if !ok {
			return nil, fmt.Errorf("key type magic %d not in the model", magic&0x3f)
		}
		out = append([]nft.DataType{t}, out...)
		magic >>= 6
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no key type")
	}
	return out, nil
}

func (a *Applier) readSet(ks *nftables.Set, hint *nft.Set) (nft.Set, error) {
	elems, err := a.reader.GetSetElements(ks)
	if err != nil {
		return nft.Set{Name: ks.Name}, fmt.Errorf("listing elements: %w", err)
	}
	return decodeSet(ks, hint, elems)
}

// decodeSet describes the kernel's set ks, holding elems, in the model; hint is
// the model's set of that name, if any (see readSet).
func decodeSet(ks *nftables.Set, hint *nft.Set, elems []nftables.SetElement) (nft.Set, error) {
	s := nft.Set{Name: ks.Name, Interval: ks.Interval, Verdicts: ks.IsMap, Comment: ks.Comment}
	if s.Comment == "" && hint != nil {
		// google/nftables v0.3.0 does not read a set's comment back.
		s.Comment = hint.Comment
	}
	var err error
	if s.Type, err = keyTypes(ks.KeyType.GetNFTMagic()); err != nil && !ks.IsMap {
		return s, err
	}
	if ks.IsMap {
		// google/nftables v0.3.0 reports a map's key type as its data type (see
		// sameSet): take the hint's when its key length fits, else tell addresses
		// by their length.
		s.Type = nil
		if hint != nil {
			if kt, err := keyType(hint.Type); err == nil && (len(elems) == 0 || int(kt.Bytes) == len(elems[0].Key)) {
				s.Type = hint.Type
			}
		}
		if s.Type == nil && len(elems) > 0 {
			switch len(elems[0].Key) {
			case 4:
				s.Type = []nft.DataType{nft.TypeIPv4Addr}
			case 16:
				s.Type = []nft.DataType{nft.TypeIPv6Addr}
			}
		}
		if s.Type == nil {
			// An empty map the hint does not know: its key type cannot be told
			// (Type stays empty, and a comparison with any map shows it).
			return s, nil
		}
	}
	concat := len(s.Type) > 1
	decode := func(key []byte) ([]nft.Value, error) { return decodeKey(s.Type, key, concat && s.Interval) }
	if !s.Interval || concat {
		for _, e := range elems {
			if e.IntervalEnd {
				continue
			}
			lo, err := decode(e.Key)
			if err != nil {
				return s, err
			}
			if len(e.KeyEnd) > 0 {
				hi, err := decode(e.KeyEnd)
				if err != nil {
					return s, err
				}
				for i := range lo {
					lo[i] = span(s.Type[i], lo[i], hi[i])
				}
			}
			s.Elements = append(s.Elements, element(s, e, lo))
		}
		return s, nil
	}
	// A single-field interval set: starts and ends (the first key past a range) in
	// key order; at one key an end sorts before a start (adjacent ranges).
	slices.SortFunc(elems, func(x, y nftables.SetElement) int {
		if c := bytes.Compare(x.Key, y.Key); c != 0 {
			return c
		}
		if x.IntervalEnd != y.IntervalEnd {
			if x.IntervalEnd {
				return -1
			}
			return 1
		}
		return 0
	})
	for i, e := range elems {
		if e.IntervalEnd {
			continue
		}
		lo, err := decode(e.Key)
		if err != nil {
			return s, err
		}
		hiKey := bytes.Repeat([]byte{0xff}, len(e.Key))
		if i+1 < len(elems) && elems[i+1].IntervalEnd {
			hiKey = prev(elems[i+1].Key)
		}
		hi, err := decode(hiKey)
		if err != nil {
			return s, err
		}
		s.Elements = append(s.Elements, element(s, e, []nft.Value{span(s.Type[0], lo[0], hi[0])}))
	}
	return s, nil
}

func element(s nft.Set, e nftables.SetElement, key []nft.Value) nft.Element {
	el := nft.Element{Key: key, Comment: e.Comment}
	if s.Verdicts {
		code, chain := decodeVerdict(e.Val)
		el.Verdict = verdictOf(code, chain)
	}
	return el
}

func verdictOf(code int32, chain string) nft.Verdict {
	switch code {
	case 1: // NF_ACCEPT
		return nft.Verdict{Kind: nft.Accept}
	case 0: // NF_DROP
		return nft.Verdict{Kind: nft.Drop}
	case unix.NFT_JUMP:
		return nft.Verdict{Kind: nft.Jump, Chain: chain}
	case unix.NFT_GOTO:
		return nft.Verdict{Kind: nft.Goto, Chain: chain}
	case unix.NFT_RETURN:
		return nft.Verdict{Kind: nft.Return}
	}
	return nft.Verdict{Kind: nft.Continue}
}

// span is lo-hi as one value of type t (a single value when equal).
func span(t nft.DataType, lo, hi nft.Value) nft.Value {
	switch t {
	case nft.TypeIPv4Addr, nft.TypeIPv6Addr:
		return nft.AddrRange(lo.Addr, hi.Addr)
	case nft.TypeIfName:
		return lo
	}
	return nft.NumRange(lo.Num, hi.Num)
}

// prev is b-1 as a big-endian number (b is not zero: an end follows a start).
func prev(b []byte) []byte {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}

// decodeKey is keyBytes backwards.
func decodeKey(types []nft.DataType, key []byte, netOrder bool) ([]nft.Value, error) {
	var out []nft.Value
	off := 0
	for _, t := range types {
		n := t.Len()
		if off+n > len(key) {
			return nil, fmt.Errorf("key of %d bytes too short for %v", len(key), types)
		}
		b := key[off : off+n]
		var v nft.Value
		switch t {
		case nft.TypeIPv4Addr, nft.TypeIPv6Addr:
			a, _ := netip.AddrFromSlice(b)
			v = nft.Addr(a)
		case nft.TypeIfName:
			v = nft.Str(string(bytes.TrimRight(b, "\x00")))
		case nft.TypeInetService:
			v = nft.Num(uint32(binary.BigEndian.Uint16(b)))
		case nft.TypeCtState:
			if netOrder {
				v = nft.Num(binary.BigEndian.Uint32(b))
			} else {
				v = nft.Num(binary.NativeEndian.Uint32(b))
			}
		default:
			v = nft.Num(uint32(b[0]))
		}
		out = append(out, v)
		off += n
		if len(types) > 1 {
			off = (off + 3) &^ 3
		}
	}
	return out, nil
}
