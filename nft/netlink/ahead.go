package netlink

import (
	"context"
	"errors"
	"fmt"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Reading ahead (nft.ReadsAhead). A full sync's read of the kernel's table costs
// what its elements cost the kernel to dump: at 60,000 elements (a node of a
// 100k-pod cluster) ~100-250 ms, most of it in the kernel, which walks a set from
// its start again for every message of the dump. Done by FullSync, under the
// Applier's lock and inside the caller's sync, every change waits for it.
// ReadAhead does the same read without the lock, while Apply goes on:
//
//   - The table's shape (which chains, sets and objects there are, base chain
//     hooks, object definitions) is read once and compared with what was applied
//     when the read began. A transaction that changes the shape before the read
//     ends makes ReadAhead fail (FullSync then reads itself).
//   - Each chain's rules and each set's elements are read one at a time, each
//     compared with what was applied when that read began. The kernel's dump of
//     a set that a transaction changes meanwhile is no snapshot (it walks the
//     set again from its start for each message): Apply waits for the read of
//     the chain or set it changes, the longest wait being the dump of the
//     largest set (~20-30 ms at 5,000 elements, TestReadAheadUnderChurn). A
//     part changed during its read all the same (by a FullSync, which does not
//     wait) is read again, a few times at most.
//
// Every part is thus compared with what the Applier had committed when the part
// was read; the Applier's later transactions take each part exactly from that to
// what they apply. So the differences found are the kernel's differences from
// what was applied as of each part's read: FullSync reports them and repairs
// them as if it had read them itself. A change someone else makes to a part
// after its read is seen by the next full sync, as one made just after
// FullSync's own read would be.

// aheadTries is how many times a part changed during each read is read.
const aheadTries = 5

var (
	errNothingApplied = errors.New("nothing applied to compare the kernel's table with")
	errShapeChanged   = errors.New("the table's shape changed while it was read")
	errForeignChange  = errors.New("another process changed the table while it was read")
)

// touchLog records, while ReadAhead reads, which parts of the table the
// Applier's transactions changed (under the Applier's lock).
type touchLog struct {
	shape bool              // a transaction changed the shape, or replaced or deleted the table
	parts map[string]uint64 // "chain NAME", "set NAME": the last commit that changed it
	part  string            // the part being read, "" between reads
}

// partOf is the part an operation changes the content of ("" for the shape).
func partOf(op nft.Op) string {
	switch op.Kind {
	case nft.OpFlushChain, nft.OpAddRule:
		return "chain " + op.Name
	case nft.OpAddElements, nft.OpDelElements:
		return "set " + op.Name
	}
	return ""
}

// reading reports whether tx changes the content of the part being read (false
// for nil: no ReadAhead under way).
func (l *touchLog) reading(tx nft.Transaction) bool {
	if l == nil || l.part == "" || tx.Full {
		return false
	}
	for _, op := range tx.Ops {
		if partOf(op) == l.part {
			return true
		}
	}
	return false
}

// record notes what transaction tx, commit number n, changed (a replacement
// adds and deletes the table: its shape).
func (l *touchLog) record(tx nft.Transaction, n uint64) {
	for _, op := range tx.Ops {
		if part := partOf(op); part != "" {
			l.parts[part] = n
		} else { // tables, chains, sets and objects added or deleted
			l.shape = true
		}
	}
}

// ReadAhead implements nft.ReadsAhead (see above).
func (a *Applier) ReadAhead(ctx context.Context) error {
	a.mu.Lock()
	if a.tr == nil {
		a.mu.Unlock()
		return errClosed
	}
	last, log := a.last, &touchLog{parts: map[string]uint64{}}
	a.ahead, a.watch = nil, log
	a.mu.Unlock()
	// Another process's change to the table (WatchTable) from here on may be
	// missing from what is read: it makes the read unusable.
	foreign := a.foreign.Load()
	defer func() {
		a.mu.Lock()
		if a.watch == log {
			a.watch = nil
		}
		a.mu.Unlock()
	}()
	if last == nil {
		return fmt.Errorf("nft/netlink: reading ahead: %w", errNothingApplied)
	}

	var kt *kernelTable
	err := a.reading(func() (err error) {
		kt, err = a.readTable()
		return err
	})
	if err != nil {
		return fmt.Errorf("nft/netlink: reading ahead: %w", err)
	}
	drift, err := a.compare(last, kt, func(key string, read func(*nft.Ruleset) error) error {
		for range aheadTries {
			if err := ctx.Err(); err != nil {
				return err
			}
			a.mu.Lock()
			should, from, shape := a.last, a.commits, log.shape
			a.mu.Unlock()
			switch {
			case shape:
				return errShapeChanged
			case should == nil:
				return errNothingApplied // a transaction failed: FullSync replaces the table
			}
			if a.aheadHook != nil {
				a.aheadHook(key)
			}
			a.mu.Lock()
			log.part = key // Apply waits for the read of what it changes
			a.mu.Unlock()
			err := a.reading(func() error { return read(should) })
			a.mu.Lock()
			log.part = ""
			a.readDone.Broadcast()
			touched, shape := log.parts[key] > from, log.shape
			a.mu.Unlock()
			switch {
			case shape:
				return errShapeChanged
			case !touched:
				return err
			}
		}
		return fmt.Errorf("%s changed during each of %d reads", key, aheadTries)
	})
	if err != nil {
		return fmt.Errorf("nft/netlink: reading ahead: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case log.shape:
		return fmt.Errorf("nft/netlink: reading ahead: %w", errShapeChanged)
	case a.foreign.Load() != foreign:
		return fmt.Errorf("nft/netlink: reading ahead: %w", errForeignChange)
	case a.watch != log:
		return errors.New("nft/netlink: reading ahead: another read ahead began meanwhile")
	case a.last == nil:
		return fmt.Errorf("nft/netlink: reading ahead: %w", errNothingApplied)
	}
	a.ahead, a.aheadForeign = &drift, foreign
	return nil
}

// reading runs fn, which reads through a.reader: ReadAhead reads without the
// Applier's lock, so every use of the reader holds readMu (after mu, if both).
func (a *Applier) reading(fn func() error) error {
	a.readMu.Lock()
	defer a.readMu.Unlock()
	if a.reader == nil {
		return errClosed
	}
	return fn()
}
