package nft

import "context"

// Applier makes the kernel's table equal to a desired Ruleset. It is the narrow seam
// between policy semantics and the kernel: nft/netlink implements it with one netlink
// transaction per call, nfttest.Fake records what it was given.
type Applier interface {
	// Apply makes the table equal to desired in one atomic transaction. The first call,
	// and the first call after a failed one, replaces the whole table (a full sync);
	// later calls send only the difference from the last applied ruleset. On error the
	// kernel keeps the table it had before the call, and the error says which object
	// the kernel refused when it says so.
	Apply(ctx context.Context, desired *Ruleset) (Stats, error)

	// FullSync makes the table exactly desired atomically, whatever was applied
	// before, and reports in Stats.Drift how the kernel's table differed from the
	// last applied ruleset (someone else edited it, or a previous agent left
	// another one). When the kernel holds the last applied ruleset (no drift), it
	// sends only what changed since, as Apply; when only some chains' rules
	// differ, it rewrites those chains (PlanRepair), keeping the sets (see
	// PlanRewrite: replacing a set makes its lookups miss for a moment); an
	// implementation may likewise keep the exactly-right sets, and patch the
	// others, of a table it did not write or that drifted in more than rules;
	// otherwise it replaces the whole table.
	FullSync(ctx context.Context, desired *Ruleset) (Stats, error)

	// Delete removes the table. A missing table is not an error.
	Delete(ctx context.Context) error
}

// Stats describes one transaction, for metrics, logs and benchmarks.
type Stats struct {
	Full            bool     // the whole table was replaced
	Operations      int      // netlink messages in the batch (0: nothing to do)
	Elements        int      // set and map elements added or deleted
	ChainsRewritten int      // chains flushed and refilled, or added
	Bytes           int      // bytes of netlink messages sent
	Drift           []string // FullSync only: differences found before replacing
	ReadAhead       bool     // FullSync only: Drift comes from ReadAhead's read, not one of its own
}

// ReadsAhead is an Applier that can read the kernel's table for the next
// FullSync ahead of it while Apply goes on, so that FullSync itself reads
// nothing. nft/netlink's Applier implements it.
type ReadsAhead interface {
	// ReadAhead reads the table the kernel holds and compares it with what was
	// last applied, each part (a chain's rules, a set's elements) as of its
	// read: the next FullSync reports those differences (Stats.ReadAhead)
	// instead of reading. An Apply that changes the part being read waits for
	// that read. Changes made by someone else after a part was read are seen by
	// the FullSync after. It fails, and FullSync reads as before, when there is
	// nothing applied to compare with, or when a transaction changed the
	// table's shape meanwhile (which chains, sets and objects there are).
	ReadAhead(ctx context.Context) error
}

// WatchesTable is an Applier that can tell, as they happen, the changes other
// processes make to its table (an `nft delete element`, a `flush ruleset` by a
// firewall service's start), so that its owner repairs them at once rather
// than at the next periodic full sync. nft/netlink's Applier implements it.
type WatchesTable interface {
	// WatchTable calls changed for each transaction of another process that
	// changed the table, or when notifications were lost (Lost), until ctx is
	// done (nil) or the watch fails. It also makes a read ahead that such a
	// change may have made stale unusable.
	WatchTable(ctx context.Context, changed func(ForeignChange)) error
}

// ForeignChange is one transaction of another process on the table.
type ForeignChange struct {
	Changes []string // what it did, in nft's words ("delete element from set ingress-v4"), at most a few
	Count   int      // how many changes to the table it made
	Process string   // the committing process's name and pid, as the kernel reports them ("" if unknown)
	Lost    bool     // notifications were lost: the table may have changed
}

// ConnMarks is what strict mode (--established=recheck) needs of the kernel besides
// the table. nft/netlink's Applier implements it; an Applier without it (a fake)
// gets no epoch read at start-up and no clearing before an epoch is reused.
type ConnMarks interface {
	// TableCtMark returns the value the table in force compares the bits mask of
	// the connection mark with, in the first rule of chain that does (the epoch of
	// strict mode's fast path); found is false without such a table or rule. It
	// fails when the kernel cannot be read.
	TableCtMark(chain string, mask uint32) (value uint32, found bool, err error)

	// ClearCtMark clears the bits mask of the mark of every connection whose
	// bits mask are neither zero nor keep, and returns how many it changed. It
	// fails when the kernel refuses the dump or an update; connections changed
	// before the failure stay changed.
	ClearCtMark(mask, keep uint32) (int, error)
}

// PlansAhead is an Applier that can say what Apply would send before sending
// it, so that a caller that must weigh a change first (strict mode: may it deny
// an open connection?) plans it once. nft/netlink's Applier implements it.
type PlansAhead interface {
	// PlanFrom returns the transaction Apply(desired) would send now, when
	// the table last applied is from (the very Ruleset: an Applier that keeps
	// what it was given); false, having planned nothing, when it is not.
	PlanFrom(from, desired *Ruleset) (Planned, bool)

	// ApplyPlanned is Apply(p.Desired), sending p.Tx when the table last
	// applied is still p.From, and planning again when it is not.
	ApplyPlanned(ctx context.Context, p Planned) (Stats, error)
}

// Planned is a transaction PlansAhead planned: from From to Desired.
type Planned struct {
	From, Desired *Ruleset
	Tx            Transaction
}
