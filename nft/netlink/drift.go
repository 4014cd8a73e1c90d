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

// drift compares the table the kernel holds with last (what this Applier applied;
// nil when it applied nothing yet or failed) and describes the differences: missing
// and unexpected chains and sets, rule counts, and set elements (by key).
func (a *Applier) drift(last *nft.Ruleset) ([]string, error) {
	table := a.opts.Table
	tables, err := a.reader.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	var tab *nftables.Table
	for _, t := range tables {
		if t.Name == table {
			tab = t
		}
	}
	if tab == nil {
		if last != nil {
			return []string{fmt.Sprintf("table inet %s missing", table)}, nil
		}
		return nil, nil
	}
	chains, err := a.reader.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, err
	}
	haveChains := map[string]*nftables.Chain{}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == table {
			haveChains[c.Name] = c
		}
	}
	allSets, err := a.reader.GetSets(tab)
	if err != nil {
		return nil, err
	}
	haveSets := map[string]*nftables.Set{}
	for _, s := range allSets {
		if !s.Anonymous {
			haveSets[s.Name] = s
		}
	}
	if last == nil {
		return []string{fmt.Sprintf("table inet %s existed before this agent's first sync (%d chains, %d sets)", table, len(haveChains), len(haveSets))}, nil
	}

	var drift []string
	for _, c := range nft.SortedChains(last) {
		kc := haveChains[c.Name]
		if kc == nil {
			drift = append(drift, fmt.Sprintf("chain %s missing", c.Name))
			continue
		}
		rules, err := a.reader.GetRules(tab, kc)
		if err != nil {
			return nil, fmt.Errorf("listing rules of chain %s: %w", c.Name, err)
		}
		if len(rules) != len(c.Rules) {
			drift = append(drift, fmt.Sprintf("chain %s: %d rules, want %d", c.Name, len(rules), len(c.Rules)))
		}
		if (kc.Hooknum == nil) != (c.Hook == nil) {
			drift = append(drift, fmt.Sprintf("chain %s: base chain %v, want %v", c.Name, kc.Hooknum != nil, c.Hook != nil))
		}
		delete(haveChains, c.Name)
	}
	for _, name := range sortedKeys(haveChains) {
		drift = append(drift, fmt.Sprintf("chain %s unexpected", name))
	}
	for _, s := range nft.SortedSets(last) {
		ks := haveSets[s.Name]
		if ks == nil {
			drift = append(drift, fmt.Sprintf("set %s missing", s.Name))
			continue
		}
		delete(haveSets, s.Name)
		got, err := a.reader.GetSetElements(ks)
		if err != nil {
			return nil, fmt.Errorf("listing elements of set %s: %w", s.Name, err)
		}
		want, _, err := kernelElements(&s, s.Elements, true) // as added: with verdicts
		if err != nil {
			return nil, err
		}
		if needsZeroEnd(&s, s.Elements) {
			want = append(want, zeroEndElement(&s))
		}
		count := map[string]int{}
		for _, e := range want {
			count[elemID(e)]++
		}
		for _, e := range got {
			count[elemID(e)]--
		}
		missing, unexpected := 0, 0
		for _, n := range count {
			if n > 0 {
				missing += n
			} else {
				unexpected -= n
			}
		}
		if missing > 0 {
			drift = append(drift, fmt.Sprintf("set %s: %d elements missing", s.Name, missing))
		}
		if unexpected > 0 {
			drift = append(drift, fmt.Sprintf("set %s: %d elements unexpected", s.Name, unexpected))
		}
	}
	for _, name := range sortedKeys(haveSets) {
		drift = append(drift, fmt.Sprintf("set %s unexpected", name))
	}
	return drift, nil
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
