package compile

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Established says what a committed policy change does to connections that are
// already open. nft/doc.go ("Established connections") has the table layout of each
// mode and why it is built that way.
type Established uint8

const (
	// EstablishedKeep lets every packet of an established or related connection
	// pass: a connection once allowed lives on whatever the policies become. It
	// is the zero value, so Options{} compiles the table as before strict mode.
	EstablishedKeep Established = iota
	// EstablishedRecheck judges every open connection again after a policy change
	// that may deny it: each connection carries the epoch it was last allowed in
	// (bits of its conntrack mark), and a packet of an older epoch walks the
	// policy chains once more, which stamp it with the current epoch or drop it.
	EstablishedRecheck
)

// DefaultCtMarkMask is the conntrack mark bits strict mode owns unless told
// otherwise: 8 bits (255 epochs) above the bits the components we know of use on
// the connection mark (AWS VPC CNI 0x80, Istio ambient 0x100-0x2ff); kube-proxy,
// Calico and Cilium mark packets (meta mark), not connections.
const DefaultCtMarkMask uint32 = 0x00ff0000

// ParseEstablished reads the --established flag: "recheck" or "keep".
func ParseEstablished(s string) (Established, error) {
	switch s {
	case "recheck":
		return EstablishedRecheck, nil
	case "keep":
		return EstablishedKeep, nil
	}
	return 0, fmt.Errorf("unknown mode %q: want recheck or keep", s)
}

func (e Established) String() string {
	if e == EstablishedRecheck {
		return "recheck"
	}
	return "keep"
}

// CheckCtMarkMask reports whether m can hold strict mode's epochs: one run of at
// least 2 contiguous bits (3 epochs; 8 or more bits are advised: see nft/doc.go).
func CheckCtMarkMask(m uint32) error {
	if m == 0 {
		return errors.New("ct mark mask is empty")
	}
	low := m >> bits.TrailingZeros32(m)
	if low&(low+1) != 0 {
		return fmt.Errorf("ct mark mask 0x%08x is not one run of contiguous bits", m)
	}
	if bits.OnesCount32(m) < 2 {
		return fmt.Errorf("ct mark mask 0x%08x has fewer than 2 bits", m)
	}
	return nil
}

// MaxEpoch is the largest epoch mask can hold. Epoch 0 is never stamped: it is the
// mark of connections no table of ours has judged yet.
func MaxEpoch(mask uint32) uint32 { return mask >> bits.TrailingZeros32(mask) }

// NextEpoch is the epoch after e: 1, 2, ..., MaxEpoch(mask), then 1 again.
func NextEpoch(e, mask uint32) uint32 {
	if e >= MaxEpoch(mask) {
		return 1
	}
	return e + 1
}

// EpochMark is the conntrack mark bits (within mask) that stand for epoch e.
func EpochMark(e, mask uint32) uint32 { return e << bits.TrailingZeros32(mask) & mask }

// strictMode is a Compiler's recheck configuration; nil in keep mode.
type strictMode struct {
	mask  uint32
	epoch uint32
}

func newStrict(opts Options) *strictMode {
	if opts.Established != EstablishedRecheck {
		return nil
	}
	mask := opts.CtMarkMask
	if mask == 0 {
		mask = DefaultCtMarkMask
	}
	return &strictMode{mask: mask, epoch: 1}
}

// SetEpoch sets the epoch the next Compile stamps connections with (1 to
// MaxEpoch; a Compiler starts at 1). It does nothing in keep mode.
func (c *Compiler) SetEpoch(e uint32) {
	if c.strict != nil && c.strict.epoch != e {
		c.strict.epoch = e
		c.changed = true
	}
}

// Epoch is the epoch Compile stamps connections with; 0 in keep mode.
func (c *Compiler) Epoch() uint32 {
	if c.strict == nil {
		return 0
	}
	return c.strict.epoch
}

// StampEpoch changes a ruleset compiled in recheck mode with mask to epoch e: the
// established fast path and the ct-stamp chain, the only rules that name the
// epoch, so that going from one epoch to the next is a transaction of two rules
// (three with the tiers' input chain). The chains it changes get rule slices of
// their own: rules that another ruleset shares (WithEpoch) stay as they were.
func StampEpoch(rs *nft.Ruleset, mask, e uint32) {
	v := EpochMark(e, mask)
	for _, name := range []string{nft.ChainForward, nft.ChainInput} { // input: with the tiers (cnp_table.go)
		if c := rs.Chain(name); c != nil {
			c.Rules = slices.Clone(c.Rules)
			for i := range c.Rules {
				if m := c.Rules[i].CtMark; m != nil && m.Mask == mask {
					c.Rules[i].CtMark = &nft.CtMarkMatch{Mask: mask, Value: v}
					c.Rules[i].Comment = epochComment(e)
				}
			}
		}
	}
	if c := rs.Chain(nft.ChainStamp); c != nil {
		c.Rules = slices.Clone(c.Rules)
		for i := range c.Rules {
			r := &c.Rules[i]
			for j, st := range r.Statements {
				if s, ok := st.(nft.CtMarkSet); ok && s.Mask == mask {
					r.Statements = slices.Clone(r.Statements)
					r.Statements[j] = nft.CtMarkSet{Mask: mask, Value: v}
				}
			}
		}
	}
}

// WithEpoch is rs stamped with epoch e (StampEpoch) as a new Ruleset that shares
// everything with rs but the rules naming the epoch: rs, which an Applier may hold
// as the table in force, stays as it is.
func WithEpoch(rs *nft.Ruleset, mask, e uint32) *nft.Ruleset {
	out := *rs
	out.Chains = slices.Clone(rs.Chains)
	StampEpoch(&out, mask, e)
	return &out
}

func epochComment(e uint32) string {
	return fmt.Sprintf("epoch %d: judged under the policies in force", e)
}

// Narrows reports whether going from last to next may deny a packet that last
// allowed, so that open connections must be judged again: true unless next is
// last plus elements added to allow sets (a new peer for some group, the commonest
// pod event). A new map element isolates an address (a new local pod, or a reused
// address); an element added to a set of a ClusterNetworkPolicy rule that denies
// or passes may deny (tierNarrowingSets); removed elements, and any change to
// chains or rules, may narrow. With last nil (nothing known to be in force),
// true. Both must carry the same epoch.
func Narrows(last, next *nft.Ruleset) bool {
	if last == nil || next == nil {
		return true
	}
	return NarrowsPlan(nft.Plan(last, next), next)
}

// NarrowsPlan is Narrows for tx, the plan (nft.Plan) from a table known to be in
// force to next: for a caller that has it already (nft.PlansAhead).
func NarrowsPlan(tx nft.Transaction, next *nft.Ruleset) bool {
	if tx.Full {
		return true
	}
	var narrowing map[string]bool
	for _, op := range tx.Ops {
		if op.Kind != nft.OpAddElements || op.Set == nil || op.Set.Verdicts {
			return true
		}
		if narrowing == nil {
			narrowing = tierNarrowingSets(next)
		}
		if narrowing[op.Set.Name] {
			return true
		}
	}
	return false
}

// fixedChains is the fixed chains for EstablishedRecheck: see nft/doc.go.
func (s *strictMode) fixedChains() []nft.Chain {
	mark := EpochMark(s.epoch, s.mask)
	chains := fixedChains()
	fwd := &chains[0]
	fwd.Rules = []nft.Rule{
		{
			Matches: []nft.Match{nft.Is(nft.KeyCtState, nft.Num(nft.CtEstablished|nft.CtRelated))},
			CtMark:  &nft.CtMarkMatch{Mask: s.mask, Value: mark},
			Verdict: nft.Verdict{Kind: nft.Accept},
			Comment: epochComment(s.epoch),
		},
		fwd.Rules[1], // neighbour discovery
		{
			Matches: []nft.Match{nft.Is(nft.KeyCtDirection, nft.Num(nft.CtReply))},
			Verdict: nft.Verdict{Kind: nft.Goto, Chain: nft.ChainReplyRecheck},
		},
		fwd.Rules[2], // jump pod-egress
		fwd.Rules[3], // jump pod-ingress
		{Verdict: nft.Verdict{Kind: nft.Goto, Chain: nft.ChainStamp}},
	}
	return append(chains,
		nft.Chain{Name: nft.ChainReplyRecheck, Rules: []nft.Rule{
			{Verdict: nft.Verdict{Kind: nft.Jump, Chain: nft.ChainEgressReply}},
			{Verdict: nft.Verdict{Kind: nft.Jump, Chain: nft.ChainIngressReply}},
			{Verdict: nft.Verdict{Kind: nft.Goto, Chain: nft.ChainStamp}},
		}},
		nft.Chain{Name: nft.ChainEgressReply, Rules: []nft.Rule{
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPDaddr}, Map: nft.MapEgressV4}},
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIP6Daddr}, Map: nft.MapEgressV6}},
		}},
		nft.Chain{Name: nft.ChainIngressReply, Rules: []nft.Rule{
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIPSaddr}, Map: nft.MapIngressV4}},
			{VMap: &nft.VMap{Keys: []nft.Key{nft.KeyIP6Saddr}, Map: nft.MapIngressV6}},
		}},
		nft.Chain{Name: nft.ChainStamp, Rules: []nft.Rule{
			{Statements: []nft.Statement{nft.CtMarkSet{Mask: s.mask, Value: mark}}, Verdict: nft.Verdict{Kind: nft.Accept}},
		}},
	)
}
