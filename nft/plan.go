package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Transaction is the ordered operations of one kernel transaction: what Plan returns
// and what an Applier sends as one atomic batch. It is a plain value, like Ruleset.
type Transaction struct {
	// Full is true when the transaction replaces the whole table.
	Full bool
	Ops  []Op
	// ChainsRewritten counts the chains that are added, or flushed and refilled.
	ChainsRewritten int
}

// OpKind is the kind of one operation of a Transaction.
type OpKind uint8

const (
	OpAddTable    OpKind = iota + 1 // create the table; a no-op when it exists
	OpDelTable                      // delete the table and everything in it
	OpAddChain                      // create an empty chain, with its hook if it has one
	OpFlushChain                    // delete every rule of a chain
	OpDelChain                      // delete a chain that nothing refers to any more
	OpAddRule                       // append one rule to a chain
	OpAddSet                        // create an empty set or verdict map
	OpDelSet                        // delete a set or map, with its elements
	OpAddElements                   // add elements to a set or map
	OpDelElements                   // delete elements from a set or map
	OpAddObject                     // create a named counter or limit
	OpDelObject                     // delete a named counter or limit nothing uses any more
)

// Op is one operation of a Transaction.
type Op struct {
	Kind OpKind
	// Name is the chain or set the operation is about (the table for table operations).
	Name string
	// Hook is the hook of the chain OpAddChain creates; nil for a regular chain.
	Hook *Hook
	// Rule is the rule OpAddRule appends to chain Name.
	Rule *Rule
	// Set is the definition of the set that OpAddSet creates or that OpAddElements and
	// OpDelElements change. Its Elements field is always empty: the op's are in Elements.
	Set      *Set
	Elements []Element
	// Object is the object OpAddObject creates or OpDelObject deletes.
	Object *Object
}

// String describes the operation for errors and logs.
func (op Op) String() string {
	switch op.Kind {
	case OpAddTable:
		return "add table " + Family + " " + op.Name
	case OpDelTable:
		return "delete table " + Family + " " + op.Name
	case OpAddChain:
		if h := op.Hook; h != nil {
			return fmt.Sprintf("add chain %s { type %s hook %s priority %d; policy %s; }", op.Name, h.Type, h.Hook, h.Priority, h.Policy)
		}
		return "add chain " + op.Name
	case OpFlushChain:
		return "flush chain " + op.Name
	case OpDelChain:
		return "delete chain " + op.Name
	case OpAddRule:
		return "add rule to chain " + op.Name + ": " + RenderRule(*op.Rule)
	case OpAddSet:
		if op.Set != nil && op.Set.Verdicts {
			return "add map " + op.Name
		}
		return "add set " + op.Name
	case OpDelSet:
		return "delete set " + op.Name
	case OpAddElements:
		return fmt.Sprintf("add %d elements to set %s", len(op.Elements), op.Name)
	case OpDelElements:
		return fmt.Sprintf("delete %d elements from set %s", len(op.Elements), op.Name)
	case OpAddObject:
		if op.Object != nil {
			return "add " + op.Object.Kind.String() + " " + op.Name
		}
		return "add object " + op.Name
	case OpDelObject:
		if op.Object != nil {
			return "delete " + op.Object.Kind.String() + " " + op.Name
		}
		return "delete object " + op.Name
	}
	return fmt.Sprintf("op%d %s", op.Kind, op.Name)
}

// String lists the operations, one per line.
func (t Transaction) String() string {
	var b strings.Builder
	for _, op := range t.Ops {
		b.WriteString(op.String())
		b.WriteString("\n")
	}
	return b.String()
}

// Elements counts the set and map elements the transaction adds or deletes.
func (t Transaction) Elements() int {
	n := 0
	for _, op := range t.Ops {
		if op.Kind == OpAddElements || op.Kind == OpDelElements {
			n += len(op.Elements)
		}
	}
	return n
}

// Stats summarises the transaction in model terms: Operations counts Ops, which is not
// the number of netlink messages an Applier sends for them (element lists are split,
// anonymous sets take messages of their own).
func (t Transaction) Stats() Stats {
	return Stats{Full: t.Full, Operations: len(t.Ops), Elements: t.Elements(), ChainsRewritten: t.ChainsRewritten}
}

// Plan returns the operations of the one transaction that turns the table from last
// (what was applied before) into desired. Plan is pure and changes neither argument;
// the operations share memory with both, so use them before changing either.
//
// When last is nil (first sync, or after a failure) or names another table, the
// transaction replaces the whole table: add table (a no-op if it exists), delete
// table, add table, every chain (empty), every set, every element, every rule. The
// add-delete-add in one batch replaces whatever table of that name existed (a previous
// agent's) atomically, without a moment where there is no table.
//
// Otherwise it is incremental. A set whose definition (type, flags, verdicts, comment)
// is unchanged only gets element adds and deletes, element identity being its
// RenderElement text (so a changed verdict or comment is a delete plus an add). A set
// whose definition changed is deleted and created again. A chain whose hook changed is
// deleted and created again; a chain whose rules changed, or that refers to a set being
// re-created, is flushed and refilled. Named objects (counters, limits) are like sets
// without elements: kept while their definition is the same (so a counter keeps its
// count across rule rewrites), deleted and created again when it changed (the chains
// that use them are then refilled). Pod churn, which changes only elements, yields
// element operations only.
//
// The order is what lets the kernel accept it as one batch, where every message is
// checked against the state left by the messages before it:
//
//  1. add new objects, new sets and new chains, empty: rules and map elements added
//     below may refer to them;
//  2. flush the chains to rewrite, and the chains to delete or re-create: this drops
//     every rule reference to the sets and chains that go away;
//  3. delete elements from kept sets: this drops the map elements' references to chains;
//  4. delete obsolete and re-created sets and objects (no rule refers to them any
//     more, step 2);
//  5. delete and re-create chains whose hook changed (references gone in steps 2-4);
//  6. create the re-created sets and objects;
//  7. add rules: every set and chain they name exists now;
//  8. add elements: every chain a map element jumps to exists now;
//  9. delete obsolete chains last, when no rule (step 2) and no map element (steps 3
//     and 4) refers to them any more.
func Plan(last, desired *Ruleset) Transaction {
	if last == nil || last.Table != desired.Table {
		return fullPlan(desired)
	}
	return plan(last, desired, nil)
}

// PlanRewrite is Plan for a table known to hold last, that must also be made
// exactly desired again: every chain is flushed and refilled (repairing any rule
// that changed behind our back), while sets and maps, like in Plan, keep their
// elements and get only the difference. That matters for the packets in flight:
// when a set is deleted and created again in one transaction, as a full
// replacement does, its lookups miss for a moment around the commit, and packets
// that it would allow are dropped (measured: test/bench/datapath). A rewrite
// keeps every set that stays, so no allowed packet sees an empty one.
//
// With last nil, or for another table, it is Plan's full replacement.
func PlanRewrite(last, desired *Ruleset) Transaction {
	if last == nil || last.Table != desired.Table {
		return fullPlan(desired)
	}
	return plan(last, desired, func(string) bool { return true })
}

// PlanRepair is Plan for a table known to hold last but for the rules of the
// named chains, which are flushed and refilled as PlanRewrite does.
func PlanRepair(last, desired *Ruleset, chains []string) Transaction {
	if last == nil || last.Table != desired.Table {
		return fullPlan(desired)
	}
	return plan(last, desired, func(name string) bool { return slices.Contains(chains, name) })
}

// plan is Plan; rewrite, when set, names chains to flush and refill even when
// their rules did not change.
func plan(last, desired *Ruleset, rewrite func(chain string) bool) Transaction {
	var t Transaction
	add := func(op Op) { t.Ops = append(t.Ops, op) }

	lastSets := setsByName(last)
	var newSets, keptSets, recreatedSets, obsoleteSets []*Set
	desiredSets := SortedSetsNoElems(desired)
	for i := range desiredSets {
		s := &desiredSets[i]
		switch old := lastSets[s.Name]; {
		case old == nil:
			newSets = append(newSets, s)
		case SameSetDefinition(old, s):
			keptSets = append(keptSets, s)
		default:
			recreatedSets = append(recreatedSets, s)
		}
	}
	desiredSetNames := setsByName(desired)
	for _, s := range sortedSetPtrs(last) {
		if desiredSetNames[s.Name] == nil {
			obsoleteSets = append(obsoleteSets, s)
		}
	}
	recreated := map[string]bool{}
	for _, s := range recreatedSets {
		recreated[s.Name] = true
	}

	lastObjs := objectsByName(last)
	var newObjs, recreatedObjs, obsoleteObjs []*Object
	desiredObjs := SortedObjects(desired)
	for i := range desiredObjs {
		o := &desiredObjs[i]
		switch old := lastObjs[o.Name]; {
		case old == nil:
			newObjs = append(newObjs, o)
		case *old != *o:
			recreatedObjs = append(recreatedObjs, o)
		}
	}
	desiredObjNames := objectsByName(desired)
	lastObjsSorted := SortedObjects(last)
	for i := range lastObjsSorted {
		if o := &lastObjsSorted[i]; desiredObjNames[o.Name] == nil {
			obsoleteObjs = append(obsoleteObjs, o)
		}
	}
	recreatedObj := map[string]bool{}
	for _, o := range recreatedObjs {
		recreatedObj[o.Name] = true
	}

	lastChains := chainsByName(last)
	var newChains, rewriteChains, recreatedChains, flushChains, obsoleteChains []*Chain
	desiredChains := SortedChains(desired)
	for i := range desiredChains {
		c := &desiredChains[i]
		old := lastChains[c.Name]
		forced := rewrite != nil && rewrite(c.Name)
		switch {
		case old == nil:
			newChains = append(newChains, c)
		case !sameHook(old.Hook, c.Hook):
			recreatedChains = append(recreatedChains, c)
			if len(old.Rules) > 0 {
				flushChains = append(flushChains, c)
			}
		case forced || !sameRules(old.Rules, c.Rules) || refersToAny(old.Rules, recreated) || refersToObjects(old.Rules, recreatedObj):
			rewriteChains = append(rewriteChains, c)
			if forced || len(old.Rules) > 0 {
				flushChains = append(flushChains, c)
			}
		}
	}
	desiredChainNames := chainsByName(desired)
	lastSorted := SortedChains(last)
	for i := range lastSorted {
		if c := &lastSorted[i]; desiredChainNames[c.Name] == nil {
			obsoleteChains = append(obsoleteChains, c)
			if len(c.Rules) > 0 {
				flushChains = append(flushChains, c)
			}
		}
	}
	slices.SortStableFunc(flushChains, compareChains)

	// 1. New objects, sets and chains, empty.
	for _, o := range newObjs {
		add(Op{Kind: OpAddObject, Name: o.Name, Object: o})
	}
	for _, s := range newSets {
		add(Op{Kind: OpAddSet, Name: s.Name, Set: s})
	}
	for _, c := range newChains {
		add(Op{Kind: OpAddChain, Name: c.Name, Hook: c.Hook})
	}
	// 2. Flush.
	for _, c := range flushChains {
		add(Op{Kind: OpFlushChain, Name: c.Name})
	}
	// 3. Element deletes, and the adds kept for step 8.
	type elemAdd struct {
		set   *Set
		elems []Element
	}
	var adds []elemAdd
	for _, s := range keptSets {
		old := lastSets[s.Name]
		del, ins := diffElements(s.Type, s.Verdicts, old.Elements, desiredSetNames[s.Name].Elements)
		if len(del) > 0 {
			add(Op{Kind: OpDelElements, Name: s.Name, Set: s, Elements: del})
		}
		if len(ins) > 0 {
			adds = append(adds, elemAdd{s, ins})
		}
	}
	// 4. Obsolete and re-created sets go.
	var dels []*Set
	dels = append(dels, obsoleteSets...)
	dels = append(dels, recreatedSets...)
	slices.SortFunc(dels, func(a, b *Set) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range dels {
		add(Op{Kind: OpDelSet, Name: s.Name})
	}
	delObjs := append(slices.Clone(obsoleteObjs), recreatedObjs...)
	slices.SortFunc(delObjs, func(a, b *Object) int { return strings.Compare(a.Name, b.Name) })
	for _, o := range delObjs {
		if old := lastObjs[o.Name]; old != nil {
			add(Op{Kind: OpDelObject, Name: o.Name, Object: old})
		}
	}
	// 5. Chains whose hook changed.
	for _, c := range recreatedChains {
		add(Op{Kind: OpDelChain, Name: c.Name})
		add(Op{Kind: OpAddChain, Name: c.Name, Hook: c.Hook})
	}
	// 6. Re-created sets and objects.
	for _, s := range recreatedSets {
		add(Op{Kind: OpAddSet, Name: s.Name, Set: s})
	}
	for _, o := range recreatedObjs {
		add(Op{Kind: OpAddObject, Name: o.Name, Object: o})
	}
	// 7. Rules.
	var fill []*Chain
	fill = append(fill, newChains...)
	fill = append(fill, recreatedChains...)
	fill = append(fill, rewriteChains...)
	slices.SortStableFunc(fill, compareChains)
	for _, c := range fill {
		for i := range c.Rules {
			add(Op{Kind: OpAddRule, Name: c.Name, Rule: &c.Rules[i]})
		}
	}
	t.ChainsRewritten = len(fill)
	// 8. Elements.
	for _, s := range newSets {
		adds = append(adds, elemAdd{s, desiredSetNames[s.Name].Elements})
	}
	for _, s := range recreatedSets {
		adds = append(adds, elemAdd{s, desiredSetNames[s.Name].Elements})
	}
	slices.SortStableFunc(adds, func(a, b elemAdd) int { return strings.Compare(a.set.Name, b.set.Name) })
	for _, a := range adds {
		if elems := uniqueElements(a.set, a.elems); len(elems) > 0 {
			add(Op{Kind: OpAddElements, Name: a.set.Name, Set: a.set, Elements: elems})
		}
	}
	// 9. Obsolete chains.
	for _, c := range obsoleteChains {
		add(Op{Kind: OpDelChain, Name: c.Name})
	}
	return t
}

func fullPlan(desired *Ruleset) Transaction {
	t := Transaction{Full: true}
	add := func(op Op) { t.Ops = append(t.Ops, op) }
	add(Op{Kind: OpAddTable, Name: desired.Table})
	add(Op{Kind: OpDelTable, Name: desired.Table})
	add(Op{Kind: OpAddTable, Name: desired.Table})
	chains := SortedChains(desired)
	for i := range chains {
		add(Op{Kind: OpAddChain, Name: chains[i].Name, Hook: chains[i].Hook})
	}
	objs := SortedObjects(desired)
	for i := range objs {
		add(Op{Kind: OpAddObject, Name: objs[i].Name, Object: &objs[i]})
	}
	sets := SortedSetsNoElems(desired)
	byName := setsByName(desired)
	for i := range sets {
		add(Op{Kind: OpAddSet, Name: sets[i].Name, Set: &sets[i]})
	}
	for i := range sets {
		if elems := uniqueElements(&sets[i], byName[sets[i].Name].Elements); len(elems) > 0 {
			add(Op{Kind: OpAddElements, Name: sets[i].Name, Set: &sets[i], Elements: elems})
		}
	}
	for i := range chains {
		c := &chains[i]
		for j := range c.Rules {
			add(Op{Kind: OpAddRule, Name: c.Name, Rule: &c.Rules[j]})
		}
	}
	t.ChainsRewritten = len(chains)
	return t
}

// SortedSetsNoElems returns r's set definitions sorted by name, without elements.
func SortedSetsNoElems(r *Ruleset) []Set {
	out := make([]Set, len(r.Sets))
	for i, s := range r.Sets {
		s.Elements = nil
		out[i] = s
	}
	slices.SortFunc(out, func(a, b Set) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// SameSetDefinition reports whether a and b define the same set apart from elements:
// name, key type, flags, verdicts and comment.
func SameSetDefinition(a, b *Set) bool {
	return a.Name == b.Name && slices.Equal(a.Type, b.Type) && a.Interval == b.Interval &&
		a.Verdicts == b.Verdicts && a.Comment == b.Comment
}

func sameHook(a, b *Hook) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func compareChains(a, b *Chain) int {
	if (a.Hook == nil) != (b.Hook == nil) {
		if a.Hook != nil {
			return -1
		}
		return 1
	}
	return strings.Compare(a.Name, b.Name)
}

// setsByName indexes r's sets; with duplicate names (which Validate rejects) the first wins.
func setsByName(r *Ruleset) map[string]*Set {
	m := make(map[string]*Set, len(r.Sets))
	for i := range r.Sets {
		if m[r.Sets[i].Name] == nil {
			m[r.Sets[i].Name] = &r.Sets[i]
		}
	}
	return m
}

func sortedSetPtrs(r *Ruleset) []*Set {
	out := make([]*Set, len(r.Sets))
	for i := range r.Sets {
		out[i] = &r.Sets[i]
	}
	slices.SortFunc(out, func(a, b *Set) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// objectsByName indexes r's objects; with duplicate names the first wins.
func objectsByName(r *Ruleset) map[string]*Object {
	m := make(map[string]*Object, len(r.Objects))
	for i := range r.Objects {
		if m[r.Objects[i].Name] == nil {
			m[r.Objects[i].Name] = &r.Objects[i]
		}
	}
	return m
}

func chainsByName(r *Ruleset) map[string]*Chain {
	m := make(map[string]*Chain, len(r.Chains))
	for i := range r.Chains {
		if m[r.Chains[i].Name] == nil {
			m[r.Chains[i].Name] = &r.Chains[i]
		}
	}
	return m
}

// sameRules reports whether two rule lists render alike. Structural equality is the
// fast path; rules that differ structurally may still render alike (the values of an
// anonymous set in another order), and RenderRule decides.
func sameRules(a, b []Rule) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !ruleEqual(&a[i], &b[i]) && RenderRule(a[i]) != RenderRule(b[i]) {
			return false
		}
	}
	return true
}

func ruleEqual(a, b *Rule) bool {
	if a.Counter != b.Counter || a.Verdict != b.Verdict || a.Comment != b.Comment || len(a.Matches) != len(b.Matches) {
		return false
	}
	if (a.Log == nil) != (b.Log == nil) || (a.Log != nil && *a.Log != *b.Log) {
		return false
	}
	if (a.CtMark == nil) != (b.CtMark == nil) || (a.CtMark != nil && *a.CtMark != *b.CtMark) {
		return false
	}
	if !slices.Equal(a.Statements, b.Statements) { // statements are comparable values
		return false
	}
	if (a.VMap == nil) != (b.VMap == nil) || (a.VMap != nil && (a.VMap.Map != b.VMap.Map || !slices.Equal(a.VMap.Keys, b.VMap.Keys))) {
		return false
	}
	for i := range a.Matches {
		ma, mb := &a.Matches[i], &b.Matches[i]
		if ma.Negate != mb.Negate || ma.Set != mb.Set || !slices.Equal(ma.Keys, mb.Keys) || len(ma.Values) != len(mb.Values) {
			return false
		}
		for j := range ma.Values {
			if !elementEqual(&ma.Values[j], &mb.Values[j]) {
				return false
			}
		}
	}
	return true
}

func elementEqual(a, b *Element) bool {
	if len(a.Key) != len(b.Key) || a.Verdict != b.Verdict || a.Comment != b.Comment {
		return false
	}
	if len(a.Key) > 0 && &a.Key[0] == &b.Key[0] {
		return true // one key: the compiler hands out shared keys (keyTable)
	}
	for i := range a.Key {
		if !valueEqual(&a.Key[i], &b.Key[i]) {
			return false
		}
	}
	return true
}

// valueEqual is a == b, with the fields that usually differ first (Plan compares
// every element of every kept set).
func valueEqual(a, b *Value) bool {
	return a.Addr == b.Addr && a.Num == b.Num && a.Range == b.Range && a.NumEnd == b.NumEnd &&
		a.AddrEnd == b.AddrEnd && a.Str == b.Str
}

// refersToAny reports whether a rule names one of the sets (by lookup or vmap).
func refersToAny(rules []Rule, sets map[string]bool) bool {
	if len(sets) == 0 {
		return false
	}
	for _, r := range rules {
		if r.VMap != nil && sets[r.VMap.Map] {
			return true
		}
		for _, m := range r.Matches {
			if m.Set != "" && sets[m.Set] {
				return true
			}
		}
	}
	return false
}

// diffElements returns the elements of last that desired lacks, and the elements of
// desired that last lacks, both in render order without duplicates.
func diffElements(types []DataType, verdicts bool, last, desired []Element) (del, add []Element) {
	if len(last) == len(desired) && (len(last) == 0 || &last[0] == &desired[0]) {
		return nil, nil // the same elements: a set passed again unchanged
	}
	// Pod churn leaves most sets alone and changes a few elements of the others:
	// strip the common head and tail (structurally equal, hence equal in render)
	// and compare what is left.
	p := 0
	for p < len(last) && p < len(desired) && elementEqual(&last[p], &desired[p]) {
		p++
	}
	if p == len(last) && p == len(desired) {
		return nil, nil
	}
	q := 0
	for q < len(last)-p && q < len(desired)-p && elementEqual(&last[len(last)-1-q], &desired[len(desired)-1-q]) {
		q++
	}
	if p == 0 && q == 0 {
		return keyDiff(types, verdicts, last, desired)
	}
	del, add = keyDiff(types, verdicts, last[p:len(last)-q], desired[p:len(desired)-q])
	// An element of the middle may render like one of the common head or tail (a
	// duplicate): that one is in both rulesets, neither deleted nor added.
	common := [2][]Element{last[:p], last[len(last)-q:]}
	inCommon := func(e Element) bool {
		k := ""
		for _, part := range common {
			for i := range part {
				if !mayRenderAlike(types, &part[i], &e) {
					continue
				}
				if k == "" {
					k = ElementKey(types, e, verdicts)
				}
				if ElementKey(types, part[i], verdicts) == k {
					return true
				}
			}
		}
		return false
	}
	del = slices.DeleteFunc(del, inCommon)
	add = slices.DeleteFunc(add, inCommon)
	return del, add
}

// mayRenderAlike is a cheap necessary condition for two elements to render alike.
func mayRenderAlike(types []DataType, a, b *Element) bool {
	if a.Comment != b.Comment || len(a.Key) != len(b.Key) {
		return false
	}
	if len(a.Key) == 0 || len(types) == 0 {
		return true
	}
	x, y := &a.Key[0], &b.Key[0]
	switch types[0] {
	case TypeIPv4Addr, TypeIPv6Addr:
		return x.Addr == y.Addr && x.Range == y.Range
	case TypeInetService, TypeInetProto, TypeICMPv6Type:
		return x.Num == y.Num && x.Range == y.Range
	}
	return true
}

// keyDiff is diffElements by element keys.
func keyDiff(types []DataType, verdicts bool, last, desired []Element) (del, add []Element) {
	have := make(map[string]struct{}, len(last))
	for i := range last {
		have[ElementKey(types, last[i], verdicts)] = struct{}{}
	}
	want := make(map[string]struct{}, len(desired))
	for i := range desired {
		k := ElementKey(types, desired[i], verdicts)
		if _, dup := want[k]; dup {
			continue
		}
		want[k] = struct{}{}
		if _, ok := have[k]; !ok {
			add = append(add, desired[i])
		}
	}
	seen := make(map[string]struct{})
	for i := range last {
		k := ElementKey(types, last[i], verdicts)
		if _, ok := want[k]; ok {
			continue
		}
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		del = append(del, last[i])
	}
	slices.SortFunc(del, CompareElements)
	slices.SortFunc(add, CompareElements)
	return del, add
}

// uniqueElements returns elems sorted, without elements that render alike.
func uniqueElements(s *Set, elems []Element) []Element {
	out := SortedElements(elems)
	seen := make(map[string]struct{}, len(out))
	n := 0
	for _, e := range out {
		k := ElementKey(s.Type, e, s.Verdicts)
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		out[n] = e
		n++
	}
	return out[:n]
}

// ElementKey is the identity of an element of a set whose key fields have the given
// types: two elements have the same key exactly when RenderElement renders them alike
// (the same text, comment and, for maps, verdict). It is a compact binary string,
// cheaper to build than the text for the common types.
func ElementKey(types []DataType, e Element, withVerdict bool) string {
	b := make([]byte, 0, 48)
	for i, v := range e.Key {
		var t DataType
		if i < len(types) {
			t = types[i]
		}
		b = append(b, byte(t))
		switch t {
		case TypeIPv4Addr, TypeIPv6Addr:
			b = appendAddrKey(b, v)
		case TypeInetService, TypeInetProto, TypeICMPv6Type:
			if v.Range {
				b = append(b, 1)
				b = binary.BigEndian.AppendUint32(b, v.Num)
				b = binary.BigEndian.AppendUint32(b, v.NumEnd)
			} else {
				b = append(b, 0)
				b = binary.BigEndian.AppendUint32(b, v.Num)
			}
		default:
			s := RenderValue(t, v)
			b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
			b = append(b, s...)
		}
	}
	b = append(b, 0xff)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Comment)))
	b = append(b, e.Comment...)
	if withVerdict {
		b = append(b, byte(e.Verdict.Kind))
		if e.Verdict.Kind == Jump || e.Verdict.Kind == Goto {
			b = append(b, e.Verdict.Chain...)
		}
	}
	return string(b)
}

func appendAddrKey(b []byte, v Value) []byte {
	appendAddr := func(b []byte, a netip.Addr) []byte {
		s, _ := a.MarshalBinary() // includes the zone, as String does
		b = append(b, byte(len(s)))
		return append(b, s...)
	}
	if v.Range {
		b = append(b, 1)
		b = appendAddr(b, v.Addr)
		return appendAddr(b, v.AddrEnd)
	}
	b = append(b, 0)
	return appendAddr(b, v.Addr)
}

// Applied returns what the table holds once t, planned from last to desired, is
// applied: a copy of desired that shares nothing with it. The sets and chains t
// touches are copied from desired; the others are last's, which Plan found equal
// (so an Applier that keeps the result copies only what changed).
func (t Transaction) Applied(last, desired *Ruleset) *Ruleset {
	if last == nil || t.Full {
		return desired.Clone()
	}
	sets, chains := map[string]bool{}, map[string]bool{}
	for _, op := range t.Ops {
		switch op.Kind {
		case OpAddSet, OpDelSet, OpAddElements, OpDelElements:
			sets[op.Name] = true
		case OpAddChain, OpFlushChain, OpDelChain, OpAddRule:
			chains[op.Name] = true
		}
	}
	lastSets := setsByName(last)
	lastChains := chainsByName(last)
	out := &Ruleset{Table: desired.Table, Objects: slices.Clone(desired.Objects)} // values
	var changed Ruleset
	for _, s := range desired.Sets {
		if old := lastSets[s.Name]; old != nil && !sets[s.Name] {
			out.Sets = append(out.Sets, *old)
		} else {
			changed.Sets = append(changed.Sets, s)
		}
	}
	for _, c := range desired.Chains {
		if old := lastChains[c.Name]; old != nil && !chains[c.Name] {
			out.Chains = append(out.Chains, *old)
		} else {
			changed.Chains = append(changed.Chains, c)
		}
	}
	cp := changed.Clone()
	out.Sets = append(out.Sets, cp.Sets...)
	out.Chains = append(out.Chains, cp.Chains...)
	return out
}

// Clone returns a deep copy of r: changing one never changes the other. Appliers keep
// a clone of what they applied, so callers may reuse and change their Rulesets.
func (r *Ruleset) Clone() *Ruleset {
	if r == nil {
		return nil
	}
	out := &Ruleset{Table: r.Table, Objects: slices.Clone(r.Objects)}
	if r.Sets != nil {
		out.Sets = make([]Set, len(r.Sets))
		for i, s := range r.Sets {
			s.Type = slices.Clone(s.Type)
			s.Elements = cloneElements(s.Elements)
			out.Sets[i] = s
		}
	}
	if r.Chains != nil {
		out.Chains = make([]Chain, len(r.Chains))
		for i, c := range r.Chains {
			out.Chains[i] = cloneChain(c)
		}
	}
	return out
}

func cloneChain(c Chain) Chain {
	if c.Hook != nil {
		h := *c.Hook
		c.Hook = &h
	}
	if c.Rules != nil {
		rules := make([]Rule, len(c.Rules))
		for j, rule := range c.Rules {
			rules[j] = cloneRule(rule)
		}
		c.Rules = rules
	}
	return c
}

func cloneRule(r Rule) Rule {
	if r.Matches != nil {
		ms := make([]Match, len(r.Matches))
		for i, m := range r.Matches {
			m.Keys = slices.Clone(m.Keys)
			m.Values = cloneElements(m.Values)
			ms[i] = m
		}
		r.Matches = ms
	}
	r.Statements = slices.Clone(r.Statements)
	if r.Log != nil {
		l := *r.Log
		r.Log = &l
	}
	if r.CtMark != nil {
		m := *r.CtMark
		r.CtMark = &m
	}

	if r.VMap != nil {
		v := *r.VMap
		v.Keys = slices.Clone(v.Keys)
		r.VMap = &v
	}
	return r
}

func cloneElements(elems []Element) []Element {
	if elems == nil {
		return nil
	}
	n := 0
	for _, e := range elems {
		n += len(e.Key)
	}
	values := make([]Value, 0, n) // one allocation for every key
	out := make([]Element, len(elems))
	for i, e := range elems {
		if e.Key != nil {
			start := len(values)
			values = append(values, e.Key...)
			e.Key = values[start:len(values):len(values)]
		}
		out[i] = e
	}
	return out
}
