package netlink

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
)

// maxElemListBytes bounds the encoded element list of one message. The list is one
// netlink attribute, whose length field has 16 bits; the library does not split it.
const maxElemListBytes = 60000

// encoder queues the messages of one transaction on the writing Conn and remembers,
// for each message, which operation it came from.
type encoder struct {
	conn    *nftables.Conn
	table   *nftables.Table
	tx      nft.Transaction
	last    *nft.Ruleset // nil for a full replace
	desired *nft.Ruleset
	sets    map[string]*nft.Set // desired's sets by name; built on first use
	descs   []msgDesc
	nextID  uint32
	setIDs  map[string]uint32 // sets created in this batch, for lookups by ID
	// patches for the transport, by message index.
	patches map[int]func(*mnl.Message)

	elements int // model elements added or deleted
}

// msgDesc says where a message came from, to name the object the kernel refused.
type msgDesc struct {
	op     int    // index in tx.Ops
	detail string // what the message does, when it is not the op itself
	// For element messages: the kernel elements in order, and for each the index of
	// the model element it stands for in elems (-1: the interval set's leading end).
	set    *nft.Set
	elems  []nft.Element
	src    []int32
	delete bool
}

func newEncoder(conn *nftables.Conn, table string, tx nft.Transaction, last, desired *nft.Ruleset) *encoder {
	e := &encoder{
		conn:    conn,
		table:   &nftables.Table{Name: table, Family: nftables.TableFamilyINet},
		tx:      tx,
		last:    last,
		desired: desired,
		setIDs:  map[string]uint32{},
	}
	return e
}

// set returns desired's set of that name, or nil.
func (e *encoder) set(name string) *nft.Set {
	if e.sets == nil {
		e.sets = make(map[string]*nft.Set, len(e.desired.Sets))
		for i := range e.desired.Sets {
			e.sets[e.desired.Sets[i].Name] = &e.desired.Sets[i]
		}
	}
	return e.sets[name]
}

func (e *encoder) note(d msgDesc, n int) {
	for range n {
		e.descs = append(e.descs, d)
	}
}

func (e *encoder) newID() uint32 {
	e.nextID++
	return e.nextID
}

func (e *encoder) encode() error {
	zero := e.zeroEndChanges()
	for i, op := range e.tx.Ops {
		d := msgDesc{op: i}
		var err error
		switch op.Kind {
		case nft.OpAddTable:
			e.conn.AddTable(e.table)
			e.note(d, 1)
		case nft.OpDelTable:
			e.conn.DelTable(e.table)
			e.note(d, 1)
		case nft.OpAddChain:
			var c *nftables.Chain
			if c, err = e.chain(op.Name, op.Hook); err == nil {
				e.conn.AddChain(c)
				e.note(d, 1)
			}
		case nft.OpFlushChain:
			e.conn.FlushChain(&nftables.Chain{Name: op.Name, Table: e.table})
			e.note(d, 1)
		case nft.OpDelChain:
			e.conn.DelChain(&nftables.Chain{Name: op.Name, Table: e.table})
			e.note(d, 1)
		case nft.OpAddSet:
			var s *nftables.Set
			if s, err = e.namedSet(op.Set); err == nil {
				if err = e.conn.AddSet(s, nil); err == nil {
					e.setIDs[op.Name] = s.ID
					e.note(d, 1)
				}
			}
		case nft.OpDelSet:
			e.conn.DelSet(&nftables.Set{Name: op.Name, Table: e.table})
			e.note(d, 1)
		case nft.OpAddObject:
			var o *nftables.NamedObj
			if o, err = e.object(op.Object); err == nil {
				e.conn.AddObj(o)
				e.note(d, 1)
			}
		case nft.OpDelObject:
			var o *nftables.NamedObj
			if o, err = e.object(op.Object); err == nil {
				e.conn.DeleteObject(o)
				e.note(d, 1)
			}
		case nft.OpAddElements, nft.OpDelElements:
			err = e.elementOp(i, op, zero)
		case nft.OpAddRule:
			err = e.rule(i, op)
		default:
			err = fmt.Errorf("unknown operation kind %d", op.Kind)
		}
		if err != nil {
			return fmt.Errorf("encoding %s: %w", op, err)
		}
	}
	return nil
}

func (e *encoder) chain(name string, h *nft.Hook) (*nftables.Chain, error) {
	c := &nftables.Chain{Name: name, Table: e.table}
	if h == nil {
		return c, nil
	}
	num, ok := map[string]nftables.ChainHook{
		"prerouting": unix.NF_INET_PRE_ROUTING, "input": unix.NF_INET_LOCAL_IN, "forward": unix.NF_INET_FORWARD,
		"output": unix.NF_INET_LOCAL_OUT, "postrouting": unix.NF_INET_POST_ROUTING,
	}[h.Hook]
	if !ok {
		return nil, fmt.Errorf("unknown hook %q", h.Hook)
	}
	var policy nftables.ChainPolicy
	switch h.Policy {
	case nft.Accept:
		policy = nftables.ChainPolicyAccept
	case nft.Drop:
		policy = nftables.ChainPolicyDrop
	default:
		return nil, fmt.Errorf("base chain policy %v", h.Policy)
	}
	c.Hooknum = nftables.ChainHookRef(num)
	c.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(h.Priority))
	c.Type = nftables.ChainType(h.Type)
	c.Policy = &policy
	return c, nil
}

// Set key types, as nft declares them: the magic numbers of nft's datatypes, which
// `nft list` reads back to print keys.
func setDatatype(t nft.DataType) (nftables.SetDatatype, error) {
	switch t {
	case nft.TypeIPv4Addr:
		return nftables.TypeIPAddr, nil
	case nft.TypeIPv6Addr:
		return nftables.TypeIP6Addr, nil
	case nft.TypeInetProto:
		return nftables.TypeInetProto, nil
	case nft.TypeInetService:
		return nftables.TypeInetService, nil
	case nft.TypeCtState:
		return nftables.TypeCTState, nil
	case nft.TypeICMPv6Type:
		return nftables.TypeICMP6Type, nil
	case nft.TypeNFProto:
		return nftables.TypeNFProto, nil
	case nft.TypeIfName:
		return nftables.TypeIFName, nil
	}
	return nftables.SetDatatype{}, fmt.Errorf("unknown data type %v", t)
}

func keyType(types []nft.DataType) (nftables.SetDatatype, error) {
	if len(types) == 0 {
		return nftables.SetDatatype{}, fmt.Errorf("set without key type")
	}
	dts := make([]nftables.SetDatatype, len(types))
	for i, t := range types {
		dt, err := setDatatype(t)
		if err != nil {
			return dt, err
		}
		dts[i] = dt
	}
	if len(dts) == 1 {
		return dts[0], nil
	}
	return nftables.ConcatSetType(dts...)
}

// hostOrder reports whether values of t are in host byte order, as nft keeps them.
func hostOrder(t nft.DataType) bool {
	return t == nft.TypeCtState || t == nft.TypeIfName || t == nft.TypeInetProto || t == nft.TypeNFProto
}

func (e *encoder) namedSet(s *nft.Set) (*nftables.Set, error) {
	kt, err := keyType(s.Type)
	if err != nil {
		return nil, err
	}
	ns := &nftables.Set{
		Table:         e.table,
		Name:          s.Name,
		ID:            e.newID(),
		KeyType:       kt,
		Interval:      s.Interval,
		Concatenation: s.Interval && len(s.Type) > 1,
		IsMap:         s.Verdicts,
		Comment:       s.Comment,
	}
	if s.Verdicts {
		ns.DataType = nftables.TypeVerdict
	}
	// nft records the key byte order in the set's user data (big endian for addresses
	// and ports, host for strings and ct state, none for one-byte types and concatenations).
	if len(s.Type) == 1 {
		switch t := s.Type[0]; {
		case t == nft.TypeCtState || t == nft.TypeIfName:
			ns.KeyByteOrder = binaryutil.NativeEndian
		case t.Len() > 1 || t == nft.TypeICMPv6Type:
			ns.KeyByteOrder = binaryutil.BigEndian
		}
	}
	return ns, nil
}

// --- Values -----------------------------------------------------------------

// fieldBytes encodes one value (its low end, or its high end when hi) as the kernel
// holds it: network byte order for addresses and ports, host byte order for ct state
// unless netOrder (interval concatenations convert it), strings zero-padded.
func fieldBytes(t nft.DataType, v nft.Value, hi, netOrder bool) ([]byte, error) {
	switch t {
	case nft.TypeIPv4Addr, nft.TypeIPv6Addr:
		a := v.Addr
		if hi && v.Range {
			a = v.AddrEnd
		}
		a = a.Unmap()
		if !a.IsValid() || a.Is4() != (t == nft.TypeIPv4Addr) {
			return nil, fmt.Errorf("address %v does not fit %v", a, t)
		}
		return a.AsSlice(), nil
	case nft.TypeIfName:
		if v.Range {
			return nil, fmt.Errorf("interface name ranges are not supported")
		}
		if len(v.Str) == 0 || len(v.Str) >= unix.IFNAMSIZ {
			return nil, fmt.Errorf("bad interface name %q", v.Str)
		}
		b := make([]byte, unix.IFNAMSIZ)
		copy(b, v.Str)
		return b, nil
	}
	n := v.Num
	if hi && v.Range {
		n = v.NumEnd
	}
	switch t {
	case nft.TypeInetService:
		if n > 0xffff {
			return nil, fmt.Errorf("port %d out of range", n)
		}
		return binary.BigEndian.AppendUint16(nil, uint16(n)), nil
	case nft.TypeInetProto, nft.TypeICMPv6Type, nft.TypeNFProto, nft.TypeCtDir:
		if n > 0xff {
			return nil, fmt.Errorf("%v value %d out of range", t, n)
		}
		return []byte{byte(n)}, nil
	case nft.TypeCtState:
		if netOrder {
			return binary.BigEndian.AppendUint32(nil, n), nil
		}
		return binary.NativeEndian.AppendUint32(nil, n), nil
	}
	return nil, fmt.Errorf("unknown data type %v", t)
}

// keyBytes encodes an element's key (low or high end). A concatenation pads every
// field to a multiple of 4 bytes, as the kernel's registers are 32 bits wide.
func keyBytes(types []nft.DataType, key []nft.Value, hi, interval bool) ([]byte, error) {
	if len(key) != len(types) {
		return nil, fmt.Errorf("key has %d fields, type has %d", len(key), len(types))
	}
	concat := len(types) > 1
	var out []byte
	for i, t := range types {
		b, err := fieldBytes(t, key[i], hi, concat && interval)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
		if concat {
			for len(out)%4 != 0 {
				out = append(out, 0)
			}
		}
	}
	return out, nil
}

func hasRange(key []nft.Value) bool {
	for _, v := range key {
		if v.Range {
			return true
		}
	}
	return false
}

// next returns b+1 as a big-endian number, and false when b is all ones.
func next(b []byte) ([]byte, bool) {
	out := slices.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return nil, false
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func verdictData(v nft.Verdict) (*expr.Verdict, error) {
	switch v.Kind {
	case nft.Accept:
		return &expr.Verdict{Kind: expr.VerdictAccept}, nil
	case nft.Drop:
		return &expr.Verdict{Kind: expr.VerdictDrop}, nil
	case nft.Return:
		return &expr.Verdict{Kind: expr.VerdictReturn}, nil
	case nft.Jump:
		return &expr.Verdict{Kind: expr.VerdictJump, Chain: v.Chain}, nil
	case nft.Goto:
		return &expr.Verdict{Kind: expr.VerdictGoto, Chain: v.Chain}, nil
	}
	return nil, fmt.Errorf("no verdict")
}

// kernelElements turns model elements into the kernel's, in the order nft sends them.
// Plain interval sets hold each range as its start and an interval-end element at
// end+1 (none when the range reaches the top of the type: an open interval);
// concatenated interval sets hold each element once with a key end. Deletes carry keys
// only. src maps each kernel element to its model element. The end element at zero
// that nft puts first in a plain interval set is the caller's business (zeroEnd).
func kernelElements(s *nft.Set, elems []nft.Element, add bool) (out []nftables.SetElement, src []int32, err error) {
	concat := len(s.Type) > 1
	for i, m := range elems {
		key, err := keyBytes(s.Type, m.Key, false, s.Interval)
		if err != nil {
			return nil, nil, fmt.Errorf("element %s: %w", nft.RenderElement(s.Type, m, s.Verdicts), err)
		}
		if hasRange(m.Key) && !s.Interval {
			return nil, nil, fmt.Errorf("element %s: range in a set without flags interval", nft.RenderElement(s.Type, m, s.Verdicts))
		}
		el := nftables.SetElement{Key: key}
		if add {
			el.Comment = m.Comment
			if s.Verdicts {
				if el.VerdictData, err = verdictData(m.Verdict); err != nil {
					return nil, nil, fmt.Errorf("element %s: %w", nft.RenderElement(s.Type, m, s.Verdicts), err)
				}
			}
		}
		var end *nftables.SetElement
		if s.Interval {
			hi, err := keyBytes(s.Type, m.Key, true, true)
			if err != nil {
				return nil, nil, err
			}
			if concat {
				el.KeyEnd = hi
			} else if n, ok := next(hi); ok {
				end = &nftables.SetElement{Key: n, IntervalEnd: true}
			}
		}
		out = append(out, el)
		src = append(src, int32(i))
		if end != nil {
			out = append(out, *end)
			src = append(src, int32(i))
		}
	}
	return out, src, nil
}

// startsAtZero reports whether some element's range starts at the lowest value.
func startsAtZero(s *nft.Set, elems []nft.Element) bool {
	for _, m := range elems {
		if k, err := keyBytes(s.Type, m.Key, false, true); err == nil && isZero(k) {
			return true
		}
	}
	return false
}

// needsZeroEnd reports whether nft would open the set's element list with an
// interval end at zero: a plain interval set whose first range starts above zero.
func needsZeroEnd(s *nft.Set, elems []nft.Element) bool {
	return s.Interval && len(s.Type) == 1 && len(elems) > 0 && !startsAtZero(s, elems)
}

func zeroEndElement(s *nft.Set) nftables.SetElement {
	return nftables.SetElement{Key: make([]byte, s.Type[0].Len()), IntervalEnd: true}
}

// zeroEndChanges decides, for plain interval sets kept across an incremental
// transaction, whether the leading zero end must be added (+1) or deleted (-1), so
// that the set ends up as nft would create it from scratch.
func (e *encoder) zeroEndChanges() map[string]int {
	if e.last == nil {
		return nil
	}
	created := map[string]bool{}
	touched := map[string]*nft.Set{}
	for _, op := range e.tx.Ops {
		switch op.Kind {
		case nft.OpAddSet:
			created[op.Name] = true
		case nft.OpAddElements, nft.OpDelElements:
			if !created[op.Name] && op.Set.Interval && len(op.Set.Type) == 1 {
				touched[op.Name] = op.Set
			}
		}
	}
	out := map[string]int{}
	for name, s := range touched {
		var before []nft.Element
		if old := e.last.FindSet(name); old != nil {
			before = old.Elements
		}
		after := e.desired.FindSet(name).Elements
		switch b, a := needsZeroEnd(s, before), needsZeroEnd(s, after); {
		case b && !a:
			out[name] = -1
		case !b && a:
			out[name] = +1
		}
	}
	return out
}

func (e *encoder) elementOp(i int, op nft.Op, zero map[string]int) error {
	add := op.Kind == nft.OpAddElements
	ks, src, err := kernelElements(op.Set, op.Elements, add)
	if err != nil {
		return err
	}
	set := &nftables.Set{Name: op.Name, Table: e.table, ID: e.setIDs[op.Name]}
	if e.setIDs[op.Name] != 0 && add && needsZeroEnd(op.Set, op.Elements) {
		// A set created in this batch: nft's leading zero end comes first.
		ks = append([]nftables.SetElement{zeroEndElement(op.Set)}, ks...)
		src = append([]int32{-1}, src...)
	}
	// A kept set whose leading zero end comes or goes: delete it with the first
	// element operation on the set, add it with the last one.
	if z := zero[op.Name]; z != 0 {
		first, last := e.firstLastElementOps(op.Name)
		zd := msgDesc{op: i, detail: "interval end at zero of set " + op.Name, set: op.Set, src: []int32{-1}, delete: z < 0}
		zs := []nftables.SetElement{zeroEndElement(op.Set)}
		switch {
		case z < 0 && i == first && !add:
			ks, src = append(zs, ks...), append([]int32{-1}, src...)
		case z < 0 && i == first:
			if err := e.conn.SetDeleteElements(set, zs); err != nil {
				return err
			}
			e.note(zd, 1)
		case z > 0 && i == last && add:
			ks, src = append(zs, ks...), append([]int32{-1}, src...)
		case z > 0 && i == last:
			defer func() {
				if err == nil {
					if err = e.conn.SetAddElements(set, zs); err == nil {
						e.note(zd, 1)
					}
				}
			}()
		}
	}
	e.elements += len(op.Elements)
	// Split the list so that each message's element attribute stays under 64 KiB.
	for start := 0; start < len(ks); {
		size, end := 0, start
		for end < len(ks) && (end == start || size+elemSize(ks[end]) <= maxElemListBytes) {
			size += elemSize(ks[end])
			end++
		}
		d := msgDesc{op: i, set: op.Set, elems: op.Elements, src: src[start:end], delete: !add}
		if add {
			err = e.conn.SetAddElements(set, ks[start:end])
		} else {
			err = e.conn.SetDeleteElements(set, ks[start:end])
		}
		if err != nil {
			return err
		}
		e.note(d, 1)
		start = end
	}
	return nil
}

func (e *encoder) firstLastElementOps(name string) (first, last int) {
	first, last = -1, -1
	for i, op := range e.tx.Ops {
		if (op.Kind == nft.OpAddElements || op.Kind == nft.OpDelElements) && op.Name == name {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	return first, last
}

// elemSize bounds the encoded size of one element in a NEWSETELEM message.
func elemSize(el nftables.SetElement) int {
	n := 4 + 8 + int(align4(uint32(len(el.Key))))
	if len(el.KeyEnd) > 0 {
		n += 8 + int(align4(uint32(len(el.KeyEnd))))
	}
	if el.IntervalEnd {
		n += 8
	}
	if v := el.VerdictData; v != nil {
		n += 4 + 4 + 8 + 4 + int(align4(uint32(len(v.Chain)+1)))
	}
	if el.Comment != "" {
		n += 4 + int(align4(uint32(len(el.Comment)+3)))
	}
	return n
}

// --- Rules ------------------------------------------------------------------

// ruleBuilder translates one rule into expressions the way nft 1.0.6 does, so that
// the kernel holds the same bytecode whether nft or this package loaded the rule.
type ruleBuilder struct {
	e     *encoder
	op    int
	exprs []expr.Any
	// The protocol context: what earlier expressions of the rule established about
	// the packet (-1: nothing). nft adds a dependency (`meta nfproto ipv4` before
	// `ip saddr` in an inet table) only when the context does not already imply it.
	nfproto, l4proto int
}

func (e *encoder) rule(i int, op nft.Op) error {
	r := op.Rule
	b := &ruleBuilder{e: e, op: i, nfproto: -1, l4proto: -1}
	for _, m := range r.Matches {
		if err := b.match(m); err != nil {
			return err
		}
	}
	if m := r.CtMark; m != nil {
		// nft: [ct load mark] [bitwise (reg & mask) ^ 0] [cmp value]
		b.add(&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: hostU32(m.Mask), Xor: make([]byte, 4)},
			&expr.Cmp{Op: cmpOp(m.Negate), Register: 1, Data: hostU32(m.Value)})
	}
	for _, st := range r.Statements {
		x, err := statement(st)
		if err != nil {
			return err
		}
		b.add(x...)
	}
	if r.Counter {
		b.add(&expr.Counter{})
	}
	if l := r.Log; l != nil {
		lg := &expr.Log{Key: 1 << unix.NFTA_LOG_GROUP, Group: l.Group}
		if l.Prefix != "" {
			lg.Key |= 1 << unix.NFTA_LOG_PREFIX
			lg.Data = []byte(l.Prefix)
		}
		b.add(lg)
	}
	switch {
	case r.VMap != nil:
		def := e.set(r.VMap.Map)
		b.deps(r.VMap.Keys)
		b.load(r.VMap.Keys, def != nil && def.Interval)
		b.add(&expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: r.VMap.Map, SetID: e.setIDs[r.VMap.Map]})
	case r.Verdict.Kind != nft.Continue:
		v, err := verdictData(r.Verdict)
		if err != nil {
			return err
		}
		b.add(v)
	}
	rule := &nftables.Rule{Table: e.table, Chain: &nftables.Chain{Name: op.Name, Table: e.table}, Exprs: b.exprs}
	if r.Comment != "" {
		rule.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
	}
	e.conn.AddRule(rule)
	e.note(msgDesc{op: i}, 1)
	return nil
}

func (b *ruleBuilder) add(x ...expr.Any) { b.exprs = append(b.exprs, x...) }

// hostU32 is a 32-bit register value in host byte order (ct mark is a host-order u32).
func hostU32(n uint32) []byte { return binary.NativeEndian.AppendUint32(nil, n) }

// statement is the expressions of one of the model's statements, as nft encodes it.
func statement(st nft.Statement) ([]expr.Any, error) {
	switch st := st.(type) {
	case nft.Limit:
		l, err := limitExpr(st)
		if err != nil {
			return nil, err
		}
		return []expr.Any{l}, nil
	case nft.CounterRef:
		return []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeCounter), Name: st.Name}}, nil
	case nft.LimitRef:
		return []expr.Any{&expr.Objref{Type: int(nftables.ObjTypeLimit), Name: st.Name}}, nil
	case nft.CtMarkSet:
		// nft: [ct load mark] [bitwise (reg & ~mask) ^ value] [ct set mark]
		return []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: hostU32(^st.Mask), Xor: hostU32(st.Value)},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true}}, nil
	}
	return nil, fmt.Errorf("unknown statement %T", st)
}

func limitExpr(l nft.Limit) (*expr.Limit, error) {
	unit, ok := map[nft.LimitUnit]expr.LimitTime{
		nft.PerSecond: expr.LimitTimeSecond, nft.PerMinute: expr.LimitTimeMinute,
		nft.PerHour: expr.LimitTimeHour, nft.PerDay: expr.LimitTimeDay,
	}[l.Per]
	if !ok {
		return nil, fmt.Errorf("limit per %v", l.Per)
	}
	return &expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(l.Rate), Unit: unit, Burst: l.Burst}, nil
}

// object is the kernel's named object for o: a counter starts at zero.
func (e *encoder) object(o *nft.Object) (*nftables.NamedObj, error) {
	if o == nil {
		return nil, fmt.Errorf("no object definition")
	}
	no := &nftables.NamedObj{Table: e.table, Name: o.Name}
	switch o.Kind {
	case nft.CounterObject:
		no.Type, no.Obj = nftables.ObjTypeCounter, &expr.Counter{}
	case nft.LimitObject:
		l, err := limitExpr(o.Limit)
		if err != nil {
			return nil, err
		}
		no.Type, no.Obj = nftables.ObjTypeLimit, l
	default:
		return nil, fmt.Errorf("object %s: unknown kind %v", o.Name, o.Kind)
	}
	return no, nil
}

// deps adds the implicit dependencies of keys that the context lacks.
func (b *ruleBuilder) deps(keys []nft.Key) {
	for _, k := range keys {
		switch k {
		case nft.KeyIPSaddr, nft.KeyIPDaddr:
			b.needNFProto(nft.NFProtoIPv4)
		case nft.KeyIP6Saddr, nft.KeyIP6Daddr:
			b.needNFProto(nft.NFProtoIPv6)
		case nft.KeyICMPv6Type:
			if b.l4proto != nft.ProtoICMPv6 {
				b.needNFProto(nft.NFProtoIPv6)
				b.needL4Proto(nft.ProtoICMPv6)
			}
		}
	}
}

func (b *ruleBuilder) needNFProto(p int) {
	if b.nfproto != p {
		b.add(&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p)}})
		b.nfproto = p
	}
}

func (b *ruleBuilder) needL4Proto(p int) {
	if b.l4proto != p {
		b.add(&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p)}})
		b.l4proto = p
	}
}

// register returns the register number nft uses for a 32-bit slot: the 128-bit
// register number when the slot starts one, the 32-bit register number otherwise.
func register(slot int) uint32 {
	if slot%4 == 0 {
		return uint32(unix.NFT_REG_1 + slot/4)
	}
	return uint32(unix.NFT_REG32_00 + slot)
}

// loadKey is the expression that loads key k into register reg.
func loadKey(k nft.Key, reg uint32) expr.Any {
	net, tr := expr.PayloadBaseNetworkHeader, expr.PayloadBaseTransportHeader
	switch k {
	case nft.KeyIPSaddr:
		return &expr.Payload{DestRegister: reg, Base: net, Offset: 12, Len: 4}
	case nft.KeyIPDaddr:
		return &expr.Payload{DestRegister: reg, Base: net, Offset: 16, Len: 4}
	case nft.KeyIP6Saddr:
		return &expr.Payload{DestRegister: reg, Base: net, Offset: 8, Len: 16}
	case nft.KeyIP6Daddr:
		return &expr.Payload{DestRegister: reg, Base: net, Offset: 24, Len: 16}
	case nft.KeyTHDport:
		return &expr.Payload{DestRegister: reg, Base: tr, Offset: 2, Len: 2}
	case nft.KeyTHSport:
		return &expr.Payload{DestRegister: reg, Base: tr, Offset: 0, Len: 2}
	case nft.KeyICMPv6Type:
		return &expr.Payload{DestRegister: reg, Base: tr, Offset: 0, Len: 1}
	case nft.KeyL4Proto:
		return &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}
	case nft.KeyNFProto:
		return &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg}
	case nft.KeyIIFName:
		return &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg}
	case nft.KeyOIFName:
		return &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: reg}
	case nft.KeyCtState:
		return &expr.Ct{Key: expr.CtKeySTATE, Register: reg}
	case nft.KeyCtDirection:
		return &expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg}
	}
	return nil
}

// load loads keys into consecutive 32-bit register slots starting at register 1.
// For a lookup in a concatenated interval set, nft converts every host-order field to
// network order (a no-op for one-byte fields, but nft emits it all the same).
func (b *ruleBuilder) load(keys []nft.Key, interval bool) {
	slot := 0
	for _, k := range keys {
		reg := register(slot)
		b.add(loadKey(k, reg))
		n := k.Type().Len()
		if interval && len(keys) > 1 && hostOrder(k.Type()) && k.Type() != nft.TypeIfName {
			size := uint32(2)
			if n > 2 {
				size = 4
			}
			b.add(&expr.Byteorder{SourceRegister: reg, DestRegister: reg, Op: expr.ByteorderHton, Len: uint32(n), Size: size})
		}
		slot += (n + 3) / 4
	}
}

func (b *ruleBuilder) match(m nft.Match) error {
	if len(m.Keys) == 0 {
		return fmt.Errorf("match without key")
	}
	for _, k := range m.Keys {
		if loadKey(k, 1) == nil {
			return fmt.Errorf("unknown key %v", k)
		}
	}
	b.deps(m.Keys)
	switch {
	case m.Set != "":
		def := b.e.set(m.Set)
		b.load(m.Keys, def != nil && def.Interval)
		b.add(&expr.Lookup{SourceRegister: 1, SetName: m.Set, SetID: b.e.setIDs[m.Set], Invert: m.Negate})
	case len(m.Values) == 1 && len(m.Keys) == 1:
		if err := b.compare(m.Keys[0], m.Values[0], m.Negate); err != nil {
			return err
		}
	case len(m.Values) == 0:
		return fmt.Errorf("match without set or values")
	default:
		if err := b.anonymousSet(m); err != nil {
			return err
		}
	}
	// An equality with one value sets the protocol context for what follows.
	if !m.Negate && m.Set == "" && len(m.Keys) == 1 && len(m.Values) == 1 && len(m.Values[0].Key) == 1 && !m.Values[0].Key[0].Range {
		switch m.Keys[0] {
		case nft.KeyNFProto:
			b.nfproto = int(m.Values[0].Key[0].Num)
		case nft.KeyL4Proto:
			b.l4proto = int(m.Values[0].Key[0].Num)
		}
	}
	return nil
}

func cmpOp(negate bool) expr.CmpOp {
	if negate {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// compare encodes `key [!=] value` for one literal value.
func (b *ruleBuilder) compare(k nft.Key, el nft.Element, negate bool) error {
	if len(el.Key) != 1 {
		return fmt.Errorf("value with %d fields for one key", len(el.Key))
	}
	t, v := k.Type(), el.Key[0]
	lo, err := fieldBytes(t, v, false, false)
	if err != nil {
		return err
	}
	switch {
	case t == nft.TypeCtState:
		// nft: `ct state != x` compares the whole state; `ct state x,y` tests bits.
		b.add(loadKey(k, 1))
		if negate {
			b.add(&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: lo})
			return nil
		}
		b.add(&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: lo, Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)})
		return nil
	case !v.Range:
		b.add(loadKey(k, 1), &expr.Cmp{Op: cmpOp(negate), Register: 1, Data: lo})
		return nil
	}
	hi, err := fieldBytes(t, v, true, false)
	if err != nil {
		return err
	}
	if p, ok := rangePrefix(v.Addr, v.AddrEnd); ok && (t == nft.TypeIPv4Addr || t == nft.TypeIPv6Addr) {
		// A prefix: nft loads only the prefix's bytes when it ends on a byte
		// boundary, and masks the address otherwise.
		pl := loadKey(k, 1).(*expr.Payload)
		bits := p.Bits()
		if bits > 0 && bits%8 == 0 {
			pl.Len = uint32(bits / 8)
			b.add(pl, &expr.Cmp{Op: cmpOp(negate), Register: 1, Data: lo[:bits/8]})
			return nil
		}
		mask := make([]byte, len(lo))
		for i := range bits {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		b.add(pl, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(lo)), Mask: mask, Xor: make([]byte, len(lo))},
			&expr.Cmp{Op: cmpOp(negate), Register: 1, Data: lo})
		return nil
	}
	b.add(loadKey(k, 1))
	if negate {
		b.add(&expr.Range{Op: expr.CmpOpNeq, Register: 1, FromData: lo, ToData: hi})
		return nil
	}
	b.add(&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: lo}, &expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: hi})
	return nil
}

// rangePrefix reports whether lo-hi is exactly one prefix.
func rangePrefix(lo, hi netip.Addr) (netip.Prefix, bool) {
	if !lo.IsValid() || !hi.IsValid() || lo.Is4() != hi.Is4() {
		return netip.Prefix{}, false
	}
	l, h := lo.AsSlice(), hi.AsSlice()
	for bits := 0; bits <= lo.BitLen(); bits++ {
		p, err := lo.Prefix(bits)
		if err != nil || p.Addr() != lo {
			continue
		}
		last := slices.Clone(l)
		for i := bits; i < len(last)*8; i++ {
			last[i/8] |= 0x80 >> (i % 8)
		}
		if bytes.Equal(last, h) {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// anonymousSet encodes a match against several literal values the way nft does: a
// constant anonymous set created in the same batch, just before the rule, and a
// lookup that finds it by its batch ID. Ranges make it an interval set, whose
// adjacent and overlapping ranges nft merges.
func (b *ruleBuilder) anonymousSet(m nft.Match) error {
	types := make([]nft.DataType, len(m.Keys))
	for i, k := range m.Keys {
		types[i] = k.Type()
	}
	concat := len(types) > 1
	interval := false
	for _, v := range m.Values {
		interval = interval || hasRange(v.Key)
	}
	def := &nft.Set{Name: "__set%d", Type: types, Interval: interval}
	var elems []nftables.SetElement
	switch {
	case interval && !concat:
		type rng struct {
			lo, hi  []byte
			comment string
		}
		var rs []rng
		for _, v := range m.Values {
			lo, err := keyBytes(types, v.Key, false, true)
			if err != nil {
				return err
			}
			hi, err := keyBytes(types, v.Key, true, true)
			if err != nil {
				return err
			}
			rs = append(rs, rng{lo, hi, v.Comment})
		}
		slices.SortFunc(rs, func(x, y rng) int { return bytes.Compare(x.lo, y.lo) })
		var merged []rng
		for _, r := range rs {
			if n := len(merged); n > 0 {
				prev := &merged[n-1]
				if after, ok := next(prev.hi); !ok || bytes.Compare(r.lo, after) <= 0 {
					if bytes.Compare(r.hi, prev.hi) > 0 {
						prev.hi = r.hi
					}
					continue
				}
			}
			merged = append(merged, r)
		}
		if !isZero(merged[0].lo) {
			elems = append(elems, zeroEndElement(def))
		}
		for _, r := range merged {
			elems = append(elems, nftables.SetElement{Key: r.lo, Comment: r.comment})
			if n, ok := next(r.hi); ok {
				elems = append(elems, nftables.SetElement{Key: n, IntervalEnd: true})
			}
		}
	default:
		ks, _, err := kernelElements(def, m.Values, true)
		if err != nil {
			return err
		}
		slices.SortFunc(ks, func(x, y nftables.SetElement) int { return bytes.Compare(x.Key, y.Key) })
		ks = slices.CompactFunc(ks, func(x, y nftables.SetElement) bool { return bytes.Equal(x.Key, y.Key) })
		elems = ks
	}
	kt, err := keyType(types)
	if err != nil {
		return err
	}
	s := &nftables.Set{
		Table:         b.e.table,
		Name:          "__set%d",
		ID:            b.e.newID(),
		Anonymous:     true,
		Constant:      true,
		Interval:      interval,
		Concatenation: interval && concat,
		KeyType:       kt,
	}
	if s.Concatenation {
		// The library writes the set description twice here (size, then concat
		// fields); the kernel keeps the last, so the size must be in that one too.
		s.Size = uint32(len(elems))
	}
	if err := b.e.conn.AddSet(s, elems); err != nil {
		return err
	}
	if len(types) == 1 && types[0] == nft.TypeIfName {
		if b.e.patches == nil {
			b.e.patches = map[int]func(*mnl.Message){}
		}
		b.e.patches[len(b.e.descs)] = setKeyByteOrderHost
	}
	b.e.note(msgDesc{op: b.op, detail: "anonymous set of rule"}, 2)
	b.load(m.Keys, interval)
	b.add(&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID, Invert: m.Negate})
	return nil
}
