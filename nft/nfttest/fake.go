package nfttest

import (
	"context"
	"fmt"
	"sync"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Fake is an nft.Applier that keeps the table in memory instead of the kernel. It
// records a deep copy of the last applied ruleset, so a controller test can assert the
// whole table (Dump) rather than fragments, and it reports nft.Plan's view of every
// transaction in Stats, so a test can assert that pod churn changed elements only
// (Operations counts Plan's ops, not netlink messages). It validates what it is given
// and fails like the real applier: an Apply after a failure is a full sync.
//
// Fake is safe for concurrent use. The zero value is ready to use.
type Fake struct {
	mu       sync.Mutex
	last     *nft.Ruleset // nil: no table, or unknown after a failure
	failNext error
	calls    FakeCalls
	history  []nft.Stats
}

// FakeCalls counts what a Fake was asked to do.
type FakeCalls struct {
	Apply, FullSync, Delete int
	// Full counts the transactions that replaced the whole table: every FullSync, and
	// the Applies that came first or after a failure.
	Full int
	// Failed counts the calls that returned an error.
	Failed int
}

var _ nft.Applier = (*Fake)(nil)

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{} }

// Apply records desired as the table. It fails with the error given to FailNext, if
// any, with ctx's error, or when desired does not Validate; after a failure the Fake
// forgets the table, as the real applier does, and the next Apply is a full sync.
func (f *Fake) Apply(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls.Apply++
	return f.apply(ctx, f.last, desired)
}

// FullSync records desired as the table, replacing it whole. Stats.Drift is always
// empty: nothing else edits a Fake's table.
func (f *Fake) FullSync(ctx context.Context, desired *nft.Ruleset) (nft.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls.FullSync++
	return f.apply(ctx, nil, desired)
}

func (f *Fake) apply(ctx context.Context, last, desired *nft.Ruleset) (nft.Stats, error) {
	if err := f.failure(ctx); err != nil {
		return nft.Stats{}, err
	}
	if err := desired.Validate(); err != nil {
		f.last = nil
		f.calls.Failed++
		return nft.Stats{}, fmt.Errorf("nfttest: invalid ruleset: %w", err)
	}
	tx := nft.Plan(last, desired)
	st := tx.Stats()
	if st.Full {
		f.calls.Full++
	}
	f.last = desired.Clone()
	f.history = append(f.history, st)
	return st, nil
}

// failure returns the injected or context error, and forgets the table if there is one.
func (f *Fake) failure(ctx context.Context) error {
	err := ctx.Err()
	if err == nil && f.failNext != nil {
		err, f.failNext = f.failNext, nil
	}
	if err != nil {
		f.last = nil
		f.calls.Failed++
	}
	return err
}

// Delete removes the table; Last returns nil afterwards.
func (f *Fake) Delete(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls.Delete++
	if err := f.failure(ctx); err != nil {
		return err
	}
	f.last = nil
	return nil
}

// FailNext makes the next Apply, FullSync or Delete return err (as is) without
// changing the table, which the Fake then forgets, as the real applier does.
func (f *Fake) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// Last returns a copy of the last successfully applied ruleset, or nil when there is
// no table (nothing applied yet, deleted, or the last call failed).
func (f *Fake) Last() *nft.Ruleset {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last.Clone()
}

// Dump is nft.Render of Last, or "" when there is no table.
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.last == nil {
		return ""
	}
	return nft.Render(f.last)
}

// Calls returns the call counters.
func (f *Fake) Calls() FakeCalls {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// LastStats returns the Stats of the last successful Apply or FullSync (zero if none).
func (f *Fake) LastStats() nft.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.history) == 0 {
		return nft.Stats{}
	}
	return f.history[len(f.history)-1]
}

// History returns the Stats of every successful Apply and FullSync, oldest first.
func (f *Fake) History() []nft.Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]nft.Stats(nil), f.history...)
}
