package netlink

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/google/nftables"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Options configures an Applier.
type Options struct {
	// Table is the name of the inet table the Applier owns; nft.DefaultTable if empty.
	Table string
	// NetNSPath, if set, is a network namespace file (/var/run/netns/NAME,
	// /proc/PID/ns/net): the Applier programs the table inside that namespace while
	// its own process stays where it is. Empty means the namespace of the caller.
	NetNSPath string
	// SocketBufferBytes is the initial send and receive buffer of the netlink sockets
	// (default 8 MiB). The send buffer grows on demand to hold the largest batch.
	SocketBufferBytes int
	// ShareDesired promises that the caller never modifies a Ruleset, nor anything
	// it refers to, after passing it to Apply or FullSync (compile.Compiler's results
	// are such). The Applier then keeps the ruleset itself as what the kernel holds,
	// instead of a copy: half the memory for the table model, no copy per apply, and
	// Plan skips in O(1) the sets the caller passes again unchanged.
	ShareDesired bool
}

const defaultSocketBuffer = 8 << 20

// Applier is the nft.Applier that programs the kernel over netlink, one transaction
// per call. It is safe for concurrent use; calls are serialised.
type Applier struct {
	mu    sync.Mutex
	opts  Options
	netns *os.File

	tr     *transport
	writer *nftables.Conn // batches go through tr
	reader *nftables.Conn // FullSync reads what the kernel holds
	gen    *mnl.Conn      // asks for the ruleset's generation (gen.go)
	readMu sync.Mutex     // every use of reader and gen (ReadAhead's without mu)

	// last is what the kernel is known to hold; nil forces a full sync.
	last    *nft.Ruleset
	commits uint64    // transactions committed
	watch   *touchLog // while ReadAhead reads: what transactions change
	// readDone is signalled when ReadAhead ends the read of a chain or set,
	// which Apply may be waiting for.
	readDone *sync.Cond
	ahead    *drift // ReadAhead's result for the next FullSync
	// aheadForeign is foreign when the read ahead began: another process's
	// change since makes it unusable.
	aheadForeign uint64
	// foreign counts the transactions of other processes on the table that
	// WatchTable has seen (atomic: the watch never waits for a sync).
	foreign atomic.Uint64
	// aheadHook, in tests, runs before ReadAhead reads a chain or set (key
	// "chain NAME", "set NAME"), without the lock.
	aheadHook func(key string)

	// created is, by object name, the transaction (commits) that last
	// created the object: Counters reports it, so that a reader can tell a
	// counter created again (counting from zero) from one that went on.
	createdMu sync.Mutex
	created   map[string]uint64
}

var _ nft.Applier = (*Applier)(nil)

// New opens the netlink sockets (in Options.NetNSPath if set). It does not touch the
// kernel's tables: the first Apply replaces the table whole.
func New(opts Options) (*Applier, error) {
	if opts.Table == "" {
		opts.Table = nft.DefaultTable
	}
	if !nft.ValidName(opts.Table) {
		return nil, fmt.Errorf("nft/netlink: invalid table name %q", opts.Table)
	}
	if opts.SocketBufferBytes <= 0 {
		opts.SocketBufferBytes = defaultSocketBuffer
	}
	a := &Applier{opts: opts}
	a.readDone = sync.NewCond(&a.mu)
	fd := 0
	if opts.NetNSPath != "" {
		f, err := os.Open(opts.NetNSPath)
		if err != nil {
			return nil, fmt.Errorf("nft/netlink: opening network namespace: %w", err)
		}
		a.netns = f
		fd = int(f.Fd())
	}
	var err error
	if a.tr, err = newTransport(fd, opts.SocketBufferBytes); err != nil {
		a.Close()
		return nil, fmt.Errorf("nft/netlink: %w", err)
	}
	if err := a.newWriter(); err != nil {
		a.Close()
		return nil, err
	}
	a.reader, err = nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(fd),
		nftables.WithSockOptions(func(c *mnl.Conn) error { return setBuffers(c, opts.SocketBufferBytes) }))
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("nft/netlink: opening netlink socket: %w", err)
	}
	if a.gen, err = a.dial(); err != nil {
		a.Close()
		return nil, fmt.Errorf("nft/netlink: opening netlink socket: %w", err)
	}
	return a, nil
}

// dial opens a netfilter netlink socket in the Applier's network namespace;
// the caller holds mu, or is New.
func (a *Applier) dial() (*mnl.Conn, error) {
	cfg := &mnl.Config{}
	if a.netns != nil {
		cfg.NetNS = int(a.netns.Fd())
	}
	return mnl.Dial(unix.NETLINK_NETFILTER, cfg)
}

// newWriter (re)creates the Conn that serialises batches; its socket is tr's.
func (a *Applier) newWriter() error {
	w, err := nftables.New(nftables.AsLasting(), nftables.WithTestDial(a.tr.dial))
	if err != nil {
		return fmt.Errorf("nft/netlink: %w", err)
	}
	a.writer = w
	return nil
}

// Close releases the sockets. The table stays in the kernel.
func (a *Applier) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	if a.writer != nil {
		errs = append(errs, a.writer.CloseLasting())
	}
	a.readMu.Lock()
	if a.reader != nil {
		errs = append(errs, a.reader.CloseLasting())
	}
	if a.gen != nil {
		errs = append(errs, a.gen.Close())
	}
	a.readMu.Unlock()
	if a.tr != nil {
		errs = append(errs, a.tr.close())
	}
	if a.netns != nil {
		errs = append(errs, a.netns.Close())
	}
	a.readMu.Lock()
	a.writer, a.reader, a.gen, a.tr, a.netns = nil, nil, nil, nil, nil
	a.readMu.Unlock()
	return errors.Join(errs...)
}

// Table is the name of the table the Applier owns.
func (a *Applier) Table() string { return a.opts.Table }

// Apply makes the table equal to desired in one netlink transaction (one batch, one
// Flush). The first call, and the first after a failure, replaces the whole table;
// later calls send only what Plan finds changed, and nothing at all (not even an empty
// batch) when nothing changed. desired.Table must be the Applier's table. Apply does
// not Validate desired: an inconsistent ruleset fails in the kernel, atomically.
//
// On error the kernel still holds what it held before the call, and the error
// (a *TransactionError when the kernel refused the batch) names the refused object.
func (a *Applier) Apply(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	return a.applyChange(ctx, desired, nil)
}

// PlanFrom returns what Apply(desired) would send now, when the table last
// applied is from (nft.PlansAhead: with ShareDesired, the caller's own).
func (a *Applier) PlanFrom(from, desired *nft.Ruleset) (nft.Planned, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if from == nil || from != a.last {
		return nft.Planned{}, false
	}
	return nft.Planned{From: from, Desired: desired, Tx: nft.Plan(from, desired)}, true
}

// ApplyPlanned is Apply(p.Desired) sending p.Tx, unless a transaction since
// PlanFrom changed what it starts from (nft.PlansAhead).
func (a *Applier) ApplyPlanned(ctx context.Context, p nft.Planned) (nft.Stats, error) {
	return a.applyChange(ctx, p.Desired, &p)
}

// applyChange is Apply, with p (when not nil) the plan of desired made earlier.
func (a *Applier) applyChange(ctx context.Context, desired *nft.Ruleset, p *nft.Planned) (nft.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		if err := a.check(desired); err != nil {
			return nft.Stats{}, err
		}
		var tx nft.Transaction
		if p != nil && p.From == a.last {
			tx = p.Tx
		} else {
			tx = nft.Plan(a.last, desired)
		}
		if !a.watch.reading(tx) {
			return a.commit(ctx, a.last, desired, tx)
		}
		// ReadAhead is reading a chain or set this changes: its dump would
		// be no snapshot of it. Wait for that one read (ahead.go).
		a.readDone.Wait()
	}
}

// FullSync reads the table the kernel holds, reports in Stats.Drift how it differs
// from what was last applied (or that the table existed before the first sync), and
// makes it desired in one transaction: without drift by sending only what changed
// since (rules are compared by bytecode and comment, so nothing is rewritten that
// the kernel holds right); when only some chains' rules differ, by rewriting those
// and keeping the rest; with no table applied yet, or other drift, by adopting
// the one found (adopt.go: what is right kept, sets patched in place); otherwise,
// or when adopting fails, by replacing it whole. Failing to
// read the table does not stop the replace; Drift says so. After a ReadAhead it
// reads nothing and reports what ReadAhead found (ahead.go), unless that is drift
// in more than rules, which needs the kernel's table: then it reads it.
func (a *Applier) FullSync(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tr == nil {
		return nft.Stats{}, errClosed
	}
	ahead := a.ahead
	a.ahead = nil
	if ahead != nil && a.last != nil && a.aheadForeign == a.foreign.Load() && ahead.repairable() {
		// Read ahead (ahead.go), and no transaction failed or replaced the
		// table since: what it found is what this read would find. (Other
		// drift needs the kernel's table itself, read below.)
		st, err := a.repair(ctx, *ahead, desired)
		st.ReadAhead = true
		return st, err
	}
	var kt *kernelTable
	var d drift
	err := a.reading(func() (err error) {
		if kt, err = a.readTable(); err == nil {
			d, err = a.drift(a.last, kt)
		}
		return err
	})
	if err != nil {
		// The replace matters more than the report.
		d = drift{lines: []string{fmt.Sprintf("could not read table inet %s: %v", a.opts.Table, err)}}
		kt = nil
	}
	if a.last != nil && d.repairable() {
		return a.repair(ctx, d, desired)
	}
	// A table this Applier did not write (a previous agent's), or one that
	// drifted in more than rules (someone deleted or added elements, sets or
	// chains): keep what of it is exactly right, patch the sets that only hold
	// other elements (re-created sets drop packets: see doc.go). If the kernel
	// refuses that plan, nothing changed, and the table is replaced.
	drift := d.lines
	repairing := a.last != nil // else adopting: the lines below say what was kept
	var last *nft.Ruleset
	var kept, patched, keptObjs int
	var ok bool
	_ = a.reading(func() error {
		last, kept, patched, keptObjs, ok = a.adoptable(desired, kt)
		return nil
	})
	if ok && kept+patched+keptObjs > 0 {
		st, err := a.apply(ctx, last, desired, nft.PlanRewrite)
		if err == nil && repairing {
			st.Drift = drift
			return st, nil
		}
		if err == nil {
			st.Drift = append(drift, fmt.Sprintf("adopted: %d of %d sets kept", kept, len(desired.Sets)))
			if patched > 0 {
				st.Drift = append(st.Drift, fmt.Sprintf("adopted: %d of %d sets patched (elements deleted and added in place)", patched, len(desired.Sets)))
			}
			if len(desired.Objects) > 0 {
				st.Drift = append(st.Drift, fmt.Sprintf("adopted: %d of %d objects kept", keptObjs, len(desired.Objects)))
			}
			return st, nil
		}
		drift = append(drift, fmt.Sprintf("adopting failed (%v): replaced", err))
	}
	st, err := a.apply(ctx, nil, desired, nft.Plan)
	st.Drift = drift
	return st, err
}

// repair makes the table desired, from the last applied one that the kernel
// holds but for d, which is repairable: with no difference it sends only what
// changed since (often nothing); when only some chains' rules differ it
// rewrites those, keeping the sets.
func (a *Applier) repair(ctx context.Context, d drift, desired *nft.Ruleset) (nft.Stats, error) {
	var st nft.Stats
	var err error
	if len(d.lines) == 0 {
		st, err = a.apply(ctx, a.last, desired, nft.Plan)
	} else {
		st, err = a.apply(ctx, a.last, desired, func(last, desired *nft.Ruleset) nft.Transaction {
			return nft.PlanRepair(last, desired, d.rules)
		})
	}
	st.Drift = d.lines
	return st, err
}

// Delete removes the table in one transaction. A missing table is not an error.
func (a *Applier) Delete(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last = nil
	a.forgetAhead()
	tx := nft.Transaction{Full: true, Ops: []nft.Op{
		{Kind: nft.OpAddTable, Name: a.opts.Table},
		{Kind: nft.OpDelTable, Name: a.opts.Table},
	}}
	_, err := a.send(ctx, tx, nil, &nft.Ruleset{Table: a.opts.Table})
	return err
}

var errClosed = errors.New("nft/netlink: applier is closed")

func (a *Applier) apply(ctx context.Context, last, desired *nft.Ruleset, plan func(last, desired *nft.Ruleset) nft.Transaction) (nft.Stats, error) {
	if err := a.check(desired); err != nil {
		return nft.Stats{}, err
	}
	return a.commit(ctx, last, desired, plan(last, desired))
}

// forgetAhead drops what ReadAhead found or is finding: the table it compares
// with the kernel's was (or may have been) replaced.
func (a *Applier) forgetAhead() {
	a.ahead = nil
	if a.watch != nil {
		a.watch.shape = true
	}
}

// check says whether desired can be applied.
func (a *Applier) check(desired *nft.Ruleset) error {
	if a.tr == nil {
		return errClosed
	}
	if desired == nil || desired.Table != a.opts.Table {
		return fmt.Errorf("nft/netlink: ruleset is for table %q, applier owns %q", tableOf(desired), a.opts.Table)
	}
	return nil
}

// commit sends tx, which takes the table from last to desired.
func (a *Applier) commit(ctx context.Context, last, desired *nft.Ruleset, tx nft.Transaction) (nft.Stats, error) {
	if len(tx.Ops) == 0 {
		if a.opts.ShareDesired && last != nil {
			a.last = desired // the same table: the newer one is what the caller holds
		}
		return nft.Stats{}, nil
	}
	// Forget what the kernel holds until the transaction is known to have succeeded.
	a.last = nil
	st, err := a.sendAhead(ctx, tx, last, desired)
	if err != nil || tx.Full {
		// The kernel's state is unknown after some failures.
		a.forgetAhead()
	}
	if err != nil {
		return st, err
	}
	a.commits++
	if a.watch != nil {
		a.watch.record(tx, a.commits)
	}
	a.recordCreated(tx)
	if a.opts.ShareDesired {
		a.last = desired
	} else {
		a.last = keepApplied(desired, last, tx)
	}
	return st, nil
}

// sendAhead sends tx, with the interval sets it creates under new names (and
// their elements) in a batch of their own first. The kernel makes an interval
// set's elements visible to lookups only after the commit that created the set
// has switched the rules to it: a rule that starts to look in such a set in the
// same batch misses, for a moment, what it holds (measured: 18-94 packets per
// 150 such commits, at ~250,000 packets a second; none when the set was
// created a batch before; hash sets miss nothing either way). Created ahead,
// the sets are complete before any rule refers to them, and the change of
// policy is still one batch. If the kernel refuses the change, the sets are
// deleted again, so that the table is as it was (should that fail too, the
// full sync that follows a failure deletes them).
func (a *Applier) sendAhead(ctx context.Context, tx nft.Transaction, last, desired *nft.Ruleset) (nft.Stats, error) {
	ahead, rest := setsAhead(tx, last)
	if len(ahead.Ops) == 0 {
		return a.send(ctx, tx, last, desired)
	}
	st, err := a.send(ctx, ahead, last, desired)
	if err != nil {
		return st, err
	}
	rst, err := a.send(ctx, rest, last, desired)
	rst.Operations += st.Operations
	rst.Bytes += st.Bytes
	rst.Elements += st.Elements
	if err != nil {
		// The change was refused: take the sets away again, so that the table
		// is the one before (if this fails too, the full sync that follows a
		// failure deletes them).
		var undo nft.Transaction
		for _, op := range ahead.Ops {
			if op.Kind == nft.OpAddSet {
				undo.Ops = append(undo.Ops, nft.Op{Kind: nft.OpDelSet, Name: op.Name})
			}
		}
		if _, uerr := a.send(context.WithoutCancel(ctx), undo, last, desired); uerr != nil {
			err = fmt.Errorf("%w; and deleting the sets created ahead of it failed: %v", err, uerr)
		}
	}
	return rst, err
}

// setsAhead splits off tx's creation of interval sets that last, the table the
// kernel holds, lacks (new ones, not re-created ones) and that get elements,
// with those elements: see sendAhead. Without last (the kernel's table unknown)
// or for a replacement (it deletes the table) nothing is split.
func setsAhead(tx nft.Transaction, last *nft.Ruleset) (ahead, rest nft.Transaction) {
	if tx.Full || last == nil {
		return nft.Transaction{}, tx
	}
	deleted, filled := map[string]bool{}, map[string]bool{}
	for _, op := range tx.Ops {
		switch op.Kind {
		case nft.OpDelSet:
			deleted[op.Name] = true
		case nft.OpAddElements:
			filled[op.Name] = true
		}
	}
	early := map[string]bool{}
	for _, op := range tx.Ops {
		if op.Kind == nft.OpAddSet && op.Set != nil && op.Set.Interval && filled[op.Name] && !deleted[op.Name] && last.FindSet(op.Name) == nil {
			early[op.Name] = true
		}
	}
	if len(early) == 0 {
		return nft.Transaction{}, tx
	}
	rest.ChainsRewritten = tx.ChainsRewritten
	for _, op := range tx.Ops {
		if (op.Kind == nft.OpAddSet || op.Kind == nft.OpAddElements) && early[op.Name] {
			ahead.Ops = append(ahead.Ops, op)
		} else {
			rest.Ops = append(rest.Ops, op)
		}
	}
	if len(rest.Ops) == 0 {
		return nft.Transaction{}, tx // nothing refers to them: one batch
	}
	return ahead, rest
}

// recordCreated notes the objects tx created (all of them when it replaced the
// table), by the transaction's number, and forgets those it deleted: created
// holds the table's objects only.
func (a *Applier) recordCreated(tx nft.Transaction) {
	a.createdMu.Lock()
	defer a.createdMu.Unlock()
	if a.created == nil || tx.Full {
		a.created = map[string]uint64{}
	}
	for _, op := range tx.Ops {
		switch op.Kind {
		case nft.OpAddObject:
			a.created[op.Name] = a.commits
		case nft.OpDelObject:
			delete(a.created, op.Name)
		}
	}
}

// keepApplied returns what the kernel holds after tx took the table from last to
// desired, as a copy the caller cannot change (see nft.Transaction.Applied).
func keepApplied(desired, last *nft.Ruleset, tx nft.Transaction) *nft.Ruleset {
	return tx.Applied(last, desired)
}

func tableOf(r *nft.Ruleset) string {
	if r == nil {
		return ""
	}
	return r.Table
}

// send encodes tx and sends it as one batch.
func (a *Applier) send(ctx context.Context, tx nft.Transaction, last, desired *nft.Ruleset) (nft.Stats, error) {
	if err := ctx.Err(); err != nil {
		return nft.Stats{}, err
	}
	st := nft.Stats{Full: tx.Full, ChainsRewritten: tx.ChainsRewritten}
	enc := newEncoder(a.writer, a.opts.Table, tx, last, desired)
	err := enc.encode()
	a.tr.ctx, a.tr.res, a.tr.discard, a.tr.patches = ctx, nil, err != nil, enc.patches
	ferr := a.writer.Flush()
	res := a.tr.res
	a.tr.ctx, a.tr.res, a.tr.discard, a.tr.patches = nil, nil, false, nil
	if err != nil {
		a.resetWriter(ferr)
		return st, fmt.Errorf("nft/netlink: %w", err)
	}
	if res == nil {
		// The library refused to flush (it keeps a serialisation error forever).
		a.resetWriter(ferr)
		return st, fmt.Errorf("nft/netlink: building the batch: %w", ferr)
	}
	st.Operations, st.Bytes, st.Elements = res.messages, res.bytes, enc.elements
	if res.err != nil {
		return st, fmt.Errorf("nft/netlink: transaction of %d messages: %w", res.messages, res.err)
	}
	if len(res.errs) > 0 {
		return st, a.transactionError(tx, enc, res)
	}
	return st, nil
}

func (a *Applier) resetWriter(cause error) {
	if cause == nil {
		return
	}
	_ = a.writer.CloseLasting()
	_ = a.newWriter()
}

// TransactionError is the kernel's refusal of a transaction. The kernel applied none
// of it. Op describes the first message it refused; Unwrap gives the errno.
type TransactionError struct {
	Op       string        // the operation, and the element when the kernel said which
	Index    int           // message index in the batch (0-based), -1 for the batch
	Messages int           // messages in the batch
	Errno    syscall.Errno // what the kernel answered
	Message  string        // the kernel's extended ack message, if any
	More     int           // further messages refused (often consequences of the first)
}

func (e *TransactionError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "nft/netlink: kernel refused the transaction (%d messages, none applied) at message %d, %s: %v", e.Messages, e.Index, e.Op, e.Errno)
	if e.Message != "" {
		fmt.Fprintf(&b, " (%s)", e.Message)
	}
	if e.More > 0 {
		fmt.Fprintf(&b, "; %d more messages refused", e.More)
	}
	return b.String()
}

func (e *TransactionError) Unwrap() error { return e.Errno }

func (a *Applier) transactionError(tx nft.Transaction, enc *encoder, res *exchange) error {
	first := res.errs[0]
	for _, ke := range res.errs[1:] {
		if first.index < 0 || (ke.index >= 0 && ke.index < first.index) {
			first = ke
		}
	}
	te := &TransactionError{Index: first.index, Messages: res.messages, Errno: first.errno, Message: first.msg, More: len(res.errs) - 1}
	if first.index < 0 || first.index >= len(enc.descs) {
		te.Op = "the batch as a whole"
		return te
	}
	d := enc.descs[first.index]
	te.Op = tx.Ops[d.op].String()
	if d.detail != "" {
		te.Op = d.detail + " (" + te.Op + ")"
	}
	if d.set != nil && len(res.sent) > first.index {
		if i := badElement(res.sent[first.index], first.offset); i >= 0 && i < len(d.src) {
			verb := "add"
			if d.delete {
				verb = "delete"
			}
			if j := d.src[i]; j >= 0 && int(j) < len(d.elems) {
				te.Op = fmt.Sprintf("%s element %s in set %s", verb, nft.RenderElement(d.set.Type, d.elems[j], d.set.Verdicts && !d.delete), d.set.Name)
			} else {
				te.Op = fmt.Sprintf("%s interval end at zero in set %s", verb, d.set.Name)
			}
		}
	}
	return te
}
