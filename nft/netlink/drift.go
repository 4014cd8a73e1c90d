package netlink

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
)

// kernelTable is what the kernel holds of the Applier's table, as read once per
// FullSync for drift and adoption; tab is nil when there is no such table.
type kernelTable struct {
	tab    *nftables.Table
	chains map[string]*nftables.Chain
	sets   map[string]*nftables.Set // named sets only
	objs   map[string]kernelObject
	// elems: each named set's elements, as the last read of them found them
	// (setElements). FullSync compares and then adopts under the Applier's
	// lock, so an adoption after a drift compare reads no set again.
	elems map[string][]nftables.SetElement
}

// setElements lists the elements of the kernel's set ks, and keeps them in kt
// for the adoption that may follow (keptElements).
func (a *Applier) setElements(kt *kernelTable, ks *nftables.Set) ([]nftables.SetElement, error) {
	got, err := a.reader.GetSetElements(ks)
	if err != nil {
		return nil, fmt.Errorf("listing elements of set %s: %w", ks.Name, err)
	}
	if kt.elems == nil {
		kt.elems = map[string][]nftables.SetElement{}
	}
	kt.elems[ks.Name] = got
	return got, nil
}

// keptElements is what setElements last found in ks, or a fresh read of it.
func (a *Applier) keptElements(kt *kernelTable, ks *nftables.Set) ([]nftables.SetElement, error) {
	if got, ok := kt.elems[ks.Name]; ok {
		return got, nil
	}
	return a.setElements(kt, ks)
}

// readTable reads the Applier's table, its chains and its named sets.
func (a *Applier) readTable() (*kernelTable, error) {
	kt := &kernelTable{chains: map[string]*nftables.Chain{}, sets: map[string]*nftables.Set{}}
	tables, err := a.reader.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	for _, t := range tables {
		if t.Name == a.opts.Table {
			kt.tab = t
		}
	}
	if kt.tab == nil {
		return kt, nil
	}
	chains, err := a.reader.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == a.opts.Table {
			kt.chains[c.Name] = c
		}
	}
	sets, err := a.reader.GetSets(kt.tab)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		if !s.Anonymous {
			kt.sets[s.Name] = s
		}
	}
	if kt.objs, err = a.readObjects(kt.tab); err != nil {
		return nil, err
	}
	return kt, nil
}

// elementDiff counts the elements of s, as the kernel holds them once added,
// that got (the kernel's elements of that set) lacks, and those of got that s
// lacks.
func elementDiff(s *nft.Set, got []nftables.SetElement) (missing, unexpected int, err error) {
	want, _, err := kernelElements(s, s.Elements, true) // as added: with verdicts
	if err != nil {
		return 0, 0, err
	}
	if needsZeroEnd(s, s.Elements) {
		want = append(want, zeroEndElement(s))
	}
	count := make(map[string]int, len(want))
	for _, e := range want {
		count[elemID(e)]++
	}
	for _, e := range got {
		count[elemID(e)]--
	}
	for _, n := range count {
		if n > 0 {
			missing += n
		} else {
			unexpected -= n
		}
	}
	return missing, unexpected, nil
}

// drift is how the kernel's table differs from what was applied.
type drift struct {
	lines []string // every difference, described
	// rules are the chains whose only difference is their rules' contents
	// (bytecode or comments, with the right count): each has one line, and
	// rewriting them repairs it.
	rules []string
}

// rulesOnly reports whether rewriting d.rules repairs every difference.
func (d drift) rulesOnly() bool { return len(d.lines) > 0 && len(d.lines) == len(d.rules) }

// repairable reports whether repair mends d from the last applied table alone:
// no difference, or rules only.
func (d drift) repairable() bool { return len(d.lines) == 0 || d.rulesOnly() }

// drift compares the table the kernel holds (kt) with last (what this Applier
// applied; nil when it applied nothing yet or failed) and describes the
// differences: missing and unexpected chains, sets and named objects (and objects
// whose definition changed), base chain hooks, rules (their count, then each by
// bytecode, as Read compares them, and comment), and set elements (by key and,
// in maps, verdict). Under the Applier's lock: last is what the kernel should
// hold throughout.
func (a *Applier) drift(last *nft.Ruleset, kt *kernelTable) (drift, error) {
	return a.compare(last, kt, func(_ string, read func(*nft.Ruleset) error) error { return read(last) })
}

// contentRead runs read, which reads the rules of a chain or the elements of a
// set (key: "chain NAME", "set NAME"), giving it what the kernel should have
// held then.
type contentRead func(key string, read func(should *nft.Ruleset) error) error

// compare is drift with each chain's rules and each set's elements read
// through content: last is what the kernel should hold of kt's shape (which
// chains, sets and objects, base chain hooks), and each content read says what
// it should have held of that chain or set at the time.
func (a *Applier) compare(last *nft.Ruleset, kt *kernelTable, content contentRead) (drift, error) {
	table := a.opts.Table
	if kt.tab == nil {
		if last != nil {
			return drift{lines: []string{fmt.Sprintf("table inet %s missing", table)}}, nil
		}
		return drift{}, nil
	}
	if last == nil {
		return drift{lines: []string{fmt.Sprintf("table inet %s existed before this agent's first sync (%d chains, %d sets)", table, len(kt.chains), len(kt.sets))}}, nil
	}

	var d drift
	rc, err := a.newRuleComparer(last, kt)
	if err != nil {
		return d, err
	}
	known := map[string]bool{} // "chain NAME" and "set NAME" of last
	for _, c := range nft.SortedChains(last) {
		known["chain "+c.Name] = true
		kc := kt.chains[c.Name]
		if kc == nil {
			d.lines = append(d.lines, fmt.Sprintf("chain %s missing", c.Name))
			continue
		}
		if (kc.Hooknum == nil) != (c.Hook == nil) {
			d.lines = append(d.lines, fmt.Sprintf("chain %s: base chain %v, want %v", c.Name, kc.Hooknum != nil, c.Hook != nil))
		} else if c.Hook != nil && !sameKernelHook(kc, c.Hook) {
			d.lines = append(d.lines, fmt.Sprintf("chain %s: hook differs", c.Name))
		}
		var rules []*nftables.Rule
		var want *nft.Chain
		differs := -1
		err := content("chain "+c.Name, func(should *nft.Ruleset) (err error) {
			if rules, err = a.reader.GetRules(kt.tab, kc); err != nil {
				return err
			}
			if want = chainOf(should, last, &c); want != nil && len(rules) == len(want.Rules) {
				differs, err = rc.firstDifference(want, rules)
			}
			return err
		})
		if err != nil {
			return d, fmt.Errorf("listing rules of chain %s: %w", c.Name, err)
		}
		switch {
		case want == nil:
		case len(rules) != len(want.Rules):
			d.lines = append(d.lines, fmt.Sprintf("chain %s: %d rules, want %d", c.Name, len(rules), len(want.Rules)))
		case differs >= 0:
			d.lines = append(d.lines, fmt.Sprintf("chain %s: rule %d differs", c.Name, differs))
			d.rules = append(d.rules, c.Name)
		}
	}
	for _, name := range sortedKeys(kt.chains) {
		if !known["chain "+name] {
			d.lines = append(d.lines, fmt.Sprintf("chain %s unexpected", name))
		}
	}
	var index setIndex
	for _, s := range nft.SortedSets(last) {
		known["set "+s.Name] = true
		ks := kt.sets[s.Name]
		if ks == nil {
			d.lines = append(d.lines, fmt.Sprintf("set %s missing", s.Name))
			continue
		}
		var missing, unexpected int
		err := content("set "+s.Name, func(should *nft.Ruleset) (err error) {
			want := &s
			if should != last {
				want = index.find(should, s.Name)
			}
			if want == nil {
				return nil // gone from the model since the table was listed: nothing to compare
			}
			got, err := a.setElements(kt, ks) // fresh: a read ahead may read a set again
			if err != nil {
				return err
			}
			missing, unexpected, err = elementDiff(want, got)
			return err
		})
		if err != nil {
			return d, err
		}
		if missing > 0 {
			d.lines = append(d.lines, fmt.Sprintf("set %s: %d elements missing", s.Name, missing))
		}
		if unexpected > 0 {
			d.lines = append(d.lines, fmt.Sprintf("set %s: %d elements unexpected", s.Name, unexpected))
		}
	}
	for _, name := range sortedKeys(kt.sets) {
		if !known["set "+name] {
			d.lines = append(d.lines, fmt.Sprintf("set %s unexpected", name))
		}
	}
	d.lines = append(d.lines, objectDrift(last, kt.objs)...)
	return d, nil
}

// chainOf returns should's chain c (c itself when should is last), nil when
// should has none.
func chainOf(should, last *nft.Ruleset, c *nft.Chain) *nft.Chain {
	if should == last {
		return c
	}
	return should.Chain(c.Name)
}

// sameKernelHook reports whether the kernel's base chain kc has hook h: type,
// hook, priority and policy.
func sameKernelHook(kc *nftables.Chain, h *nft.Hook) bool {
	policy := nft.Accept
	if kc.Policy != nil && *kc.Policy == nftables.ChainPolicyDrop {
		policy = nft.Drop
	}
	return string(kc.Type) == h.Type && hookName(*kc.Hooknum) == h.Hook &&
		kc.Priority != nil && int(*kc.Priority) == h.Priority && policy == h.Policy
}

// ruleComparer compares the kernel's rules with the model's by bytecode, as
// this package loads them, and comment (sameExprs: as Read does).
type ruleComparer struct {
	a    *Applier
	kt   *kernelTable
	enc  *encoder
	anon map[string][]nftables.SetElement // the kernel's anonymous sets, by name; read when a rule names one not read yet
}

func (a *Applier) newRuleComparer(r *nft.Ruleset, kt *kernelTable) (*ruleComparer, error) {
	conn, err := nftables.New(nftables.WithTestDial(nopDial))
	if err != nil {
		return nil, err
	}
	enc := newEncoder(conn, a.opts.Table, nft.Transaction{}, nil, r)
	enc.anon = map[uint32][]nftables.SetElement{}
	return &ruleComparer{a: a, kt: kt, enc: enc}, nil
}

// firstDifference returns the position of the first rule of got that is not
// want's rule there, or -1. got has want's count of rules.
func (rc *ruleComparer) firstDifference(want *nft.Chain, got []*nftables.Rule) (int, error) {
	for i, kr := range got {
		if err := rc.readAnonymous(kr); err != nil {
			return 0, err
		}
		ex, err := rc.enc.ruleExprs(0, &want.Rules[i])
		if err != nil {
			return 0, fmt.Errorf("encoding rule %d: %w", i, err)
		}
		comment, _ := userdata.GetString(kr.UserData, userdata.TypeComment)
		if comment != want.Rules[i].Comment || !sameExprs(ex, kr.Exprs, rc.enc.anon, rc.anon) {
			return i, nil
		}
	}
	return -1, nil
}

// readAnonymous reads the table's anonymous sets again when kr names one not
// read yet (the first time, or its chain was rewritten since).
func (rc *ruleComparer) readAnonymous(kr *nftables.Rule) error {
	for _, x := range kr.Exprs {
		if l, ok := x.(*expr.Lookup); ok && strings.HasPrefix(l.SetName, "__set") {
			if _, read := rc.anon[l.SetName]; !read {
				var err error
				rc.anon, err = rc.a.anonymousSets(rc.kt)
				return err
			}
		}
	}
	return nil
}

// setIndex finds sets by name in the last ruleset it was asked about.
type setIndex struct {
	of   *nft.Ruleset
	sets map[string]*nft.Set
}

func (x *setIndex) find(r *nft.Ruleset, name string) *nft.Set {
	if x.of != r {
		x.of, x.sets = r, make(map[string]*nft.Set, len(r.Sets))
		for i := range r.Sets {
			x.sets[r.Sets[i].Name] = &r.Sets[i]
		}
	}
	return x.sets[name]
}

// elemID identifies a kernel element by key, key end, interval-end flag and, in a
// verdict map, verdict (the kernel's view; comments are not compared). A map
// element whose verdict was changed behind our back is thus one missing and one
// unexpected element.
func elemID(e nftables.SetElement) string {
	id := hex.EncodeToString(e.Key) + "-" + hex.EncodeToString(e.KeyEnd)
	if e.IntervalEnd {
		id += "-end"
	}
	if v := e.VerdictData; v != nil { // ours, as encoded for the kernel
		id += fmt.Sprintf("-verdict%d:%s", int32(v.Kind), v.Chain)
	} else if len(e.Val) > 0 { // the kernel's: the library leaves the verdict's attributes raw
		code, chain := decodeVerdict(e.Val)
		id += fmt.Sprintf("-verdict%d:%s", code, chain)
	}
	return id
}

// decodeVerdict reads the NFTA_VERDICT_CODE and NFTA_VERDICT_CHAIN attributes of
// a verdict map element's data, as GetSetElements returns them in Val.
func decodeVerdict(b []byte) (code int32, chain string) {
	ad, err := mnl.NewAttributeDecoder(b)
	if err != nil {
		return 0, "?" + hex.EncodeToString(b)
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	return code, chain
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
