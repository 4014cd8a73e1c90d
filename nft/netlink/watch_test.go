package netlink

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

// addManyToS4 is an nft file adding 20,000 elements to set s4 of table np.
var addManyToS4 = func() string {
	var b strings.Builder
	b.WriteString("add element inet np s4 { ")
	for i := range 20000 {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "10.20.%d.%d", i/250, i%250+1)
	}
	b.WriteString(" }\n")
	return b.String()
}()

// watchTable runs a.WatchTable until the test ends and returns what it reports.
func watchTable(t *testing.T, a *Applier) <-chan nft.ForeignChange {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan nft.ForeignChange, 100)
	done := make(chan error, 1)
	go func() { done <- a.WatchTable(ctx, func(fc nft.ForeignChange) { got <- fc }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("WatchTable: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("WatchTable did not return after its context was cancelled")
		}
	})
	time.Sleep(100 * time.Millisecond) // joined
	return got
}

// quiet fails if anything is reported within d.
func quiet(t *testing.T, got <-chan nft.ForeignChange, d time.Duration, after string) {
	t.Helper()
	select {
	case fc := <-got:
		t.Fatalf("after %s: reported %+v, want nothing", after, fc)
	case <-time.After(d):
	}
}

// reported waits for one report.
func reported(t *testing.T, got <-chan nft.ForeignChange, after string) nft.ForeignChange {
	t.Helper()
	select {
	case fc := <-got:
		return fc
	case <-time.After(5 * time.Second):
		t.Fatalf("after %s: nothing reported within 5 s", after)
	}
	return nft.ForeignChange{}
}

// TestWatchTable: another process's change to the table is reported at once,
// with what it did and who did it; the Applier's own transactions, other
// tables' (another name, or the same name in another family) are not. A read
// ahead that a foreign change may have made stale is not used.
func TestWatchTable(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-watch")
	a := newApplier(t, ns, "np")
	model := richModel("np")
	if _, err := a.FullSync(ctx, model); err != nil {
		t.Fatal(err)
	}
	got := watchTable(t, a)

	// Ours, whatever their size: nothing.
	if _, err := a.Apply(ctx, withS4(model, "10.1.1.1", "10.1.1.2")); err != nil {
		t.Fatal(err)
	}
	big := scaleModel("np", 4000, 20)
	if _, err := a.FullSync(ctx, big); err != nil {
		t.Fatal(err)
	}
	if _, err := a.FullSync(ctx, model); err != nil {
		t.Fatal(err)
	}
	// Other tables: nothing.
	nftRun(t, ns, "", "add", "table", "inet", "other")
	nftRun(t, ns, "", "add", "chain", "inet", "other", "c")
	nftRun(t, ns, "", "add", "table", "ip", "np")
	nftRun(t, ns, "", "add", "chain", "ip", "np", "c")
	nftRun(t, ns, "", "add", "table", "inet", "np2")
	nftRun(t, ns, "", "add", "table", "inet", "n")
	nftRun(t, ns, "", "add", "table", "inet", "nq")
	quiet(t, got, 500*time.Millisecond, "the Applier's own transactions and other tables'")

	// A name of three words: one that differs in its last word is another table.
	long := newApplier(t, ns, "nftpolicy")
	if _, err := long.FullSync(ctx, richModel("nftpolicy")); err != nil {
		t.Fatal(err)
	}
	gotLong := watchTable(t, long)
	nftRun(t, ns, "", "add", "table", "inet", "nftpolicz")
	nftRun(t, ns, "", "add", "table", "inet", "mftpolicy")
	quiet(t, gotLong, 300*time.Millisecond, "tables nftpolicz and mftpolicy")
	nftRun(t, ns, "", "add", "chain", "inet", "nftpolicy", "extra")
	if fc := reported(t, gotLong, "a chain added to nftpolicy"); !slices.Equal(fc.Changes, []string{"add chain extra"}) {
		t.Errorf("a chain added to nftpolicy: reported %+v", fc)
	}
	quiet(t, got, 100*time.Millisecond, "changes to table nftpolicy")

	// Someone's element.
	nftRun(t, ns, "", "add", "element", "inet", "np", "s4", "{ 10.9.9.9 }")
	fc := reported(t, got, "nft add element")
	if fc.Count != 1 || !slices.Equal(fc.Changes, []string{"add element to set s4"}) || !strings.HasPrefix(fc.Process, "nft (pid ") || fc.Lost {
		t.Errorf("nft add element: reported %+v", fc)
	}
	// One transaction, several changes.
	nftRun(t, ns, "add element inet np s4 { 10.9.9.8 }\ndelete element inet np s4 { 10.9.9.9 }\nadd chain inet np extra\n", "-f", "-")
	fc = reported(t, got, "a file of three changes")
	if fc.Count != 3 || !slices.Equal(fc.Changes, []string{"add element to set s4", "delete element from set s4", "add chain extra"}) {
		t.Errorf("three changes in one transaction: reported %+v", fc)
	}
	quiet(t, got, 200*time.Millisecond, "one transaction's report")

	// A transaction of 20,000 changes overflows the watch's buffer: reported
	// as lost (or counted whole), and the watch goes on.
	nftRun(t, ns, addManyToS4, "-f", "-")
	fc = reported(t, got, "20,000 elements added")
	t.Logf("20,000 elements added: lost %v, %d changes counted", fc.Lost, fc.Count)
	if !fc.Lost && fc.Count != 20000 {
		t.Errorf("20,000 elements added: reported %+v, want them counted or the loss", fc)
	}
	nftRun(t, ns, "", "delete", "chain", "inet", "np", "extra")
	// After the reports of what the buffer held past the loss, if any.
	for fc := reported(t, got, "a chain deleted after the loss"); !slices.Contains(fc.Changes, "delete chain extra"); {
		fc = reported(t, got, "a chain deleted after the loss")
	}

	// A read ahead before a foreign change is not used: FullSync reads itself
	// and finds the change.
	if _, err := a.FullSync(ctx, model); err != nil {
		t.Fatal(err)
	}
	if err := a.ReadAhead(ctx); err != nil {
		t.Fatal(err)
	}
	nftRun(t, ns, "", "delete", "element", "inet", "np", "s4", "{ 10.1.1.1 }")
	reported(t, got, "nft delete element")
	st, err := a.FullSync(ctx, model)
	if err != nil || st.ReadAhead || len(st.Drift) == 0 {
		t.Fatalf("full sync after a read ahead and a foreign change: %+v %v; want its own read, and drift", st, err)
	}

	// flush ruleset (a firewall service's start): the table is gone.
	nftRun(t, ns, "", "flush", "ruleset")
	fc = reported(t, got, "nft flush ruleset")
	if len(fc.Changes) == 0 || fc.Changes[0] != "delete table inet np" || fc.Count < 10 {
		t.Errorf("flush ruleset: reported %+v, want the table's deletion first", fc)
	}
	t.Logf("flush ruleset: %+v", fc)
	if st, err := a.FullSync(ctx, model); err != nil || len(st.Drift) == 0 {
		t.Fatalf("full sync after flush ruleset: %+v %v", st, err)
	}
	if d, err := a.Read(ctx, model); err != nil || d == nil {
		t.Fatalf("table after the repair: %v %v", d, err)
	}
	quiet(t, got, 300*time.Millisecond, "the repair (ours)")
}

// TestWatchTableBehindOtherTables: the kernel packs a transaction's changes
// several to a packet, and a filter judges a packet by what it can see. A
// change to our table behind another table's in one transaction, and a flush
// of a ruleset in which other tables came first, are reported all the same,
// counting ours only. (The filter judged a packet by its first message: both
// went unnoticed, the review found.)
func TestWatchTableBehindOtherTables(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	for _, rules := range []int{0, 1, 5, 20} {
		ns := nfttest.NewNetNS(t, fmt.Sprintf("np3-watch-b%d", rules))
		var b strings.Builder
		b.WriteString("table ip kube-proxy {\n set s { type ipv4_addr; }\n chain c {\n")
		for i := range rules {
			fmt.Fprintf(&b, "  ip daddr 10.96.0.%d counter\n", i+1)
		}
		b.WriteString(" }\n}\n")
		nftRun(t, ns, b.String(), "-f", "-")
		a := newApplier(t, ns, "np")
		if _, err := a.FullSync(ctx, richModel("np")); err != nil {
			t.Fatal(err)
		}
		got := watchTable(t, a)
		nftRun(t, ns, "add element ip kube-proxy s { 1.2.3.4 }\nadd element inet np s4 { 10.9.9.9 }\n", "-f", "-")
		if fc := reported(t, got, "kube-proxy's element, then ours, in one file"); fc.Count != 1 || !slices.Equal(fc.Changes, []string{"add element to set s4"}) {
			t.Errorf("%d rules ahead: theirs then ours: reported %+v, want our one change", rules, fc)
		}
		nftRun(t, ns, "", "add", "element", "ip", "kube-proxy", "s", "{ 1.2.3.5 }")
		quiet(t, got, 200*time.Millisecond, "kube-proxy's element alone")
		nftRun(t, ns, "", "flush", "ruleset")
		fc := reported(t, got, fmt.Sprintf("flush ruleset with %d rules of kube-proxy's ahead", rules))
		if len(fc.Changes) == 0 || fc.Changes[0] != "delete table inet np" {
			t.Errorf("%d rules ahead: flush ruleset: reported %+v, want the deletion of our table first", rules, fc)
		}
		t.Logf("%d rules ahead: flush ruleset: %d changes of ours", rules, fc.Count)
	}
}

// TestWatchTableDebianFirewallRestart: Debian's nftables.service starts (and
// restarts) by loading /etc/nftables.conf, which begins with flush ruleset.
// Its restart deletes our table; the watch says so.
func TestWatchTableDebianFirewallRestart(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	const conf = `flush ruleset

table inet filter {
	chain input { type filter hook input priority filter; }
	chain forward { type filter hook forward priority filter; }
	chain output { type filter hook output priority filter; }
}
`
	ns := nfttest.NewNetNS(t, "np3-watch-deb")
	nftRun(t, ns, conf, "-f", "-") // boot
	a := newApplier(t, ns, "np")
	if _, err := a.FullSync(ctx, richModel("np")); err != nil {
		t.Fatal(err)
	}
	got := watchTable(t, a)
	nftRun(t, ns, conf, "-f", "-") // systemctl restart nftables
	if fc := reported(t, got, "the firewall's restart"); len(fc.Changes) == 0 || fc.Changes[0] != "delete table inet np" || !strings.HasPrefix(fc.Process, "nft (pid ") {
		t.Errorf("the firewall's restart: reported %+v, want our table's deletion, by nft", fc)
	}
}

// TestWatchTableAfterOverflow (a 32 KiB buffer, for the overflow's sake):
// after an overflow the kernel drops what comes,
// without a second ENOBUFS, until the queue is empty. The loss is reported once
// the queue is drained, so a change made after that report is reported too,
// even while the reports' reader is slow. (Reported at once, the loss came
// while the queue was still full: a change made then was dropped unreported,
// the review found.)
func TestWatchTableAfterOverflow(t *testing.T) {
	requireKernel(t)
	ctx := context.Background()
	ns := nfttest.NewNetNS(t, "np3-watch-ovf")
	a := newApplier(t, ns, "np")
	if _, err := a.FullSync(ctx, richModel("np")); err != nil {
		t.Fatal(err)
	}
	nftRun(t, ns, "", "add", "chain", "inet", "np", "extra")
	defer func(n int) { watchReadBuffer = n }(watchReadBuffer)
	watchReadBuffer = 32 << 10 // 20,000 elements overflow it
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got, hold := make(chan nft.ForeignChange, 100), make(chan struct{})
	go func() { _ = a.WatchTable(wctx, func(fc nft.ForeignChange) { got <- fc; <-hold }) }() // a slow reader
	time.Sleep(100 * time.Millisecond)
	nftRun(t, ns, "", "add", "element", "inet", "np", "s4", "{ 10.9.9.9 }")
	reported(t, got, "an element")
	nftRun(t, ns, addManyToS4, "-f", "-") // overflows the buffer while the reader is held
	hold <- struct{}{}
	if fc := reported(t, got, "20,000 elements added"); !fc.Lost {
		close(hold)
		t.Fatalf("20,000 elements added: counted %d, no overflow of a 32 KiB buffer", fc.Count)
	}
	nftRun(t, ns, "", "delete", "chain", "inet", "np", "extra")
	close(hold)
	for {
		fc := reported(t, got, "a chain deleted after the loss was reported")
		if slices.Contains(fc.Changes, "delete chain extra") {
			return
		}
		t.Logf("reported first: %+v", fc)
	}
}
