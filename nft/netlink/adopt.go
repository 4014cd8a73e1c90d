package netlink

import (
	"github.com/google/nftables"

	"github.com/nftpolicy/nftpolicy/nft"
)

// adoptable describes the table the kernel holds, which this Applier did not
// write (a previous agent's), as a "last applied" ruleset for nft.PlanRewrite
// towards desired, so that a restarted agent keeps the sets that are already
// right instead of replacing them (replaced sets drop packets for a moment
// around the commit: see nft.PlanRewrite).
//
// Only what can be told exactly from the kernel is kept: a set whose key type,
// flags and elements (keys and map verdicts, byte for byte) equal desired's is
// kept; a set of desired's key type and flags whose elements differ is
// described with the elements it holds, when they read back exactly (decoded,
// then encoded again, byte for byte the kernel's), so that the plan deletes and
// adds elements in place (patched: a policy changed while no agent ran, and
// the connections the restart judges again look up that very set); a set that
// differs in any other way is described so that the plan deletes and creates
// it again; a set or chain desired lacks is described so that the plan
// deletes it. Every chain is flushed and refilled. A base chain whose hook,
// priority, type or policy differs, or a chain that is a base chain on one side
// only, makes the table not adoptable (ok false): the caller replaces it whole.
// The plan it leads to is one transaction like any other: if the kernel refuses
// it, nothing changed and the caller replaces the table.
func (a *Applier) adoptable(desired *nft.Ruleset, kt *kernelTable) (last *nft.Ruleset, kept, patched, keptObjs int, ok bool) {
	if kt == nil || kt.tab == nil {
		return nil, 0, 0, 0, false
	}
	last = &nft.Ruleset{Table: a.opts.Table}
	// A rule no desired chain has: every chain of last differs from desired's, so
	// that the plan flushes it (PlanRewrite does anyway; this also covers a chain
	// desired lacks, flushed before it is deleted).
	flushMe := []nft.Rule{{Comment: "adopted: rewritten"}}
	enc := newEncoder(nil, a.opts.Table, nft.Transaction{}, nil, desired)
	want := map[string]*nft.Chain{}
	for i := range desired.Chains {
		want[desired.Chains[i].Name] = &desired.Chains[i]
	}
	for _, name := range sortedKeys(kt.chains) {
		kc := kt.chains[name]
		c := nft.Chain{Name: kc.Name, Rules: flushMe}
		if d := want[kc.Name]; d != nil {
			if (d.Hook == nil) != (kc.Hooknum == nil) {
				return nil, 0, 0, 0, false
			}
			if d.Hook != nil {
				wc, err := enc.chain(d.Name, d.Hook)
				if err != nil || !sameBaseChain(wc, kc) {
					return nil, 0, 0, 0, false
				}
				h := *d.Hook
				c.Hook = &h
			}
		} // else obsolete: flushed, then deleted at the end of the plan
		last.Chains = append(last.Chains, c)
	}

	wantSets := map[string]*nft.Set{}
	for i := range desired.Sets {
		wantSets[desired.Sets[i].Name] = &desired.Sets[i]
	}
	for _, name := range sortedKeys(kt.sets) {
		ks := kt.sets[name]
		d := wantSets[ks.Name]
		if d == nil {
			last.Sets = append(last.Sets, nft.Set{Name: ks.Name}) // obsolete: deleted
			continue
		}
		s := *d // elements included: kept as they are
		got, typeOK := a.elementsOfType(kt, d, ks)
		switch {
		case typeOK && holdsExactly(d, got):
			kept++
		case typeOK:
			if elems, exact := exactElements(d, ks, got); exact {
				s.Elements = elems // patched
				patched++
				break
			}
			fallthrough
		default:
			s.Comment = d.Comment + " (adopted: differs)" // re-created
			s.Elements = nil
		}
		last.Sets = append(last.Sets, s)
	}
	// Objects: kept when exactly desired's (a counter keeps its count), deleted or
	// re-created otherwise; one the model cannot describe is not ours.
	if last.Objects, keptObjs, ok = adoptObjects(desired, kt.objs); !ok {
		return nil, 0, 0, 0, false
	}
	return last, kept, patched, keptObjs, true
}

// sameBaseChain compares the hook, priority, type and policy of two base chains.
func sameBaseChain(want, got *nftables.Chain) bool {
	return got.Hooknum != nil && *got.Hooknum == *want.Hooknum &&
		got.Priority != nil && *got.Priority == *want.Priority &&
		got.Type == want.Type &&
		got.Policy != nil && *got.Policy == *want.Policy
}

// elementsOfType returns the elements of the kernel's set ks when it has d's key
// type and flags (false otherwise, or when they cannot be read), read once per
// kernelTable.
func (a *Applier) elementsOfType(kt *kernelTable, d *nft.Set, ks *nftables.Set) ([]nftables.SetElement, bool) {
	if !a.sameSetType(d, ks) {
		return nil, false
	}
	got, err := a.keptElements(kt, ks)
	return got, err == nil
}

// holdsExactly reports whether got, a kernel set's elements, are exactly d's,
// as the kernel holds them.
func holdsExactly(d *nft.Set, got []nftables.SetElement) bool {
	missing, unexpected, err := elementDiff(d, got)
	return err == nil && missing == 0 && unexpected == 0
}

// sameSetType reports whether the kernel's set ks has d's key type and flags.
func (a *Applier) sameSetType(d *nft.Set, ks *nftables.Set) bool {
	kt, err := keyType(d.Type)
	if err != nil || ks.Interval != d.Interval || ks.IsMap != d.Verdicts {
		return false
	}
	// google/nftables v0.3.0 reports a map's key type as its data type
	// (verdict); for maps the byte-for-byte element comparison stands in (an
	// empty map of another key type would be kept, and then refuse the first
	// element of the wrong length: a failed transaction, which the caller
	// answers with a replacement).
	return ks.IsMap || ks.KeyType.Bytes == kt.Bytes && ks.KeyType.GetNFTMagic() == kt.GetNFTMagic()
}

// exactElements decodes got, the elements of the kernel's set ks (of d's type
// and flags), into the model, and reports whether they describe it exactly:
// encoded as an Apply would add them, they are byte for byte the kernel's. Then
// a plan from them deletes and adds only what differs from desired; otherwise
// the set is re-created, so that nothing the model cannot describe stays in it.
func exactElements(d *nft.Set, ks *nftables.Set, got []nftables.SetElement) ([]nft.Element, bool) {
	rs, err := decodeSet(ks, d, got)
	if err != nil {
		return nil, false
	}
	probe := *d
	probe.Elements = rs.Elements
	return rs.Elements, holdsExactly(&probe, got)
}
