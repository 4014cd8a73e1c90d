package netlink

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/google/nftables"
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
// that the kernel's set ks lacks, and those of ks that s lacks.
func (a *Applier) elementDiff(s *nft.Set, ks *nftables.Set) (missing, unexpected int, err error) {
	if s == nil {
		return 0, 0, nil // gone from the model since the table was listed: nothing to compare
	}
	got, err := a.reader.GetSetElements(ks)
	if err != nil {
		return 0, 0, fmt.Errorf("listing elements of set %s: %w", s.Name, err)
	}
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

// drift compares the table the kernel holds (kt) with last (what this Applier
// applied; nil when it applied nothing yet or failed) and describes the
// differences: missing and unexpected chains, sets and named objects (and objects
// whose definition changed), rule counts, and set elements (by key and, in maps,
// verdict). Under the Applier's lock: last is what the kernel should hold
// throughout.
func (a *Applier) drift(last *nft.Ruleset, kt *kernelTable) ([]string, error) {
	return a.compare(last, kt, func(_ string, read func(*nft.Ruleset) error) (*nft.Ruleset, error) {
		return last, read(last)
	})
}

// contentRead reads the rules of a chain or the elements of a set (key: "chain
// NAME", "set NAME") and returns what the kernel should have held of it then.
// read is given that ruleset.
type contentRead func(key string, read func(should *nft.Ruleset) error) (*nft.Ruleset, error)

// compare is drift with each chain's rules and each set's elements read
// through content: last is what the kernel should hold of kt's shape (which
// chains, sets and objects, base chain hooks), and each content read says what
// it should have held of that chain or set at the time.
func (a *Applier) compare(last *nft.Ruleset, kt *kernelTable, content contentRead) ([]string, error) {
	table := a.opts.Table
	if kt.tab == nil {
		if last != nil {
			return []string{fmt.Sprintf("table inet %s missing", table)}, nil
		}
		return nil, nil
	}
	if last == nil {
		return []string{fmt.Sprintf("table inet %s existed before this agent's first sync (%d chains, %d sets)", table, len(kt.chains), len(kt.sets))}, nil
	}

	var drift []string
	known := map[string]bool{} // "chain NAME" and "set NAME" of last
	for _, c := range nft.SortedChains(last) {
		known["chain "+c.Name] = true
		kc := kt.chains[c.Name]
		if kc == nil {
			drift = append(drift, fmt.Sprintf("chain %s missing", c.Name))
			continue
		}
		if (kc.Hooknum == nil) != (c.Hook == nil) {
			drift = append(drift, fmt.Sprintf("chain %s: base chain %v, want %v", c.Name, kc.Hooknum != nil, c.Hook != nil))
		}
		var rules []*nftables.Rule
		should, err := content("chain "+c.Name, func(*nft.Ruleset) (err error) {
			rules, err = a.reader.GetRules(kt.tab, kc)
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("listing rules of chain %s: %w", c.Name, err)
		}
		want := &c
		if should != last {
			want = should.Chain(c.Name)
		}
		if want != nil && len(rules) != len(want.Rules) {
			drift = append(drift, fmt.Sprintf("chain %s: %d rules, want %d", c.Name, len(rules), len(want.Rules)))
		}
	}
	for _, name := range sortedKeys(kt.chains) {
		if !known["chain "+name] {
			drift = append(drift, fmt.Sprintf("chain %s unexpected", name))
		}
	}
	var index setIndex
	for _, s := range nft.SortedSets(last) {
		known["set "+s.Name] = true
		ks := kt.sets[s.Name]
		if ks == nil {
			drift = append(drift, fmt.Sprintf("set %s missing", s.Name))
			continue
		}
		var missing, unexpected int
		_, err := content("set "+s.Name, func(should *nft.Ruleset) (err error) {
			want := &s
			if should != last {
				want = index.find(should, s.Name)
			}
			missing, unexpected, err = a.elementDiff(want, ks)
			return err
		})
		if err != nil {
			return nil, err
		}
		if missing > 0 {
			drift = append(drift, fmt.Sprintf("set %s: %d elements missing", s.Name, missing))
		}
		if unexpected > 0 {
			drift = append(drift, fmt.Sprintf("set %s: %d elements unexpected", s.Name, unexpected))
		}
	}
	for _, name := range sortedKeys(kt.sets) {
		if !known["set "+name] {
			drift = append(drift, fmt.Sprintf("set %s unexpected", name))
		}
	}
	drift = append(drift, objectDrift(last, kt.objs)...)
	return drift, nil
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
