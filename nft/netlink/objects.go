package netlink

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
)

// kernelObject is a named object as the kernel holds it: its definition in the
// model's terms (ok false when the model has no such object: a quota, a limit on
// bytes), and a counter's values.
type kernelObject struct {
	def              nft.Object
	ok               bool
	packets, byteCnt uint64
}

// readObjects reads the named objects of table t.
func (a *Applier) readObjects(t *nftables.Table) (map[string]kernelObject, error) {
	objs, err := a.reader.GetNamedObjects(t)
	if err != nil {
		return nil, fmt.Errorf("listing objects of table %s: %w", t.Name, err)
	}
	out := make(map[string]kernelObject, len(objs))
	for _, o := range objs {
		no, isNamed := o.(*nftables.NamedObj)
		if !isNamed || no.Table == nil || no.Table.Name != t.Name {
			continue
		}
		ko := kernelObject{def: nft.Object{Name: no.Name}}
		switch x := no.Obj.(type) {
		case *expr.Counter:
			if no.Type == nftables.ObjTypeCounter {
				ko.def.Kind, ko.ok = nft.CounterObject, true
				ko.packets, ko.byteCnt = x.Packets, x.Bytes
			}
		case *expr.Limit:
			per, known := map[expr.LimitTime]nft.LimitUnit{
				expr.LimitTimeSecond: nft.PerSecond, expr.LimitTimeMinute: nft.PerMinute,
				expr.LimitTimeHour: nft.PerHour, expr.LimitTimeDay: nft.PerDay,
			}[x.Unit]
			if no.Type == nftables.ObjTypeLimit && known && x.Type == expr.LimitTypePkts && !x.Over && x.Rate <= 1<<32-1 {
				ko.def.Kind, ko.ok = nft.LimitObject, true
				ko.def.Limit = nft.Limit{Rate: uint32(x.Rate), Per: per, Burst: x.Burst}
			}
		}
		out[no.Name] = ko
	}
	return out, nil
}

// objectDrift describes how the kernel's objects differ from last's.
func objectDrift(last *nft.Ruleset, objs map[string]kernelObject) []string {
	var drift []string
	for _, o := range nft.SortedObjects(last) {
		ko, found := objs[o.Name]
		switch {
		case !found:
			drift = append(drift, fmt.Sprintf("%s %s missing", o.Kind, o.Name))
		case !ko.ok || ko.def != o:
			drift = append(drift, fmt.Sprintf("%s %s differs", o.Kind, o.Name))
		}
	}
	for _, name := range sortedKeys(objs) {
		if last.FindObject(name) == nil {
			drift = append(drift, fmt.Sprintf("object %s unexpected", name))
		}
	}
	return drift
}

// adoptObjects describes the kernel's objects as a "last applied" state, so
// that the plan keeps those that are exactly desired's (a counter keeps its
// count across a restart of the agent), and deletes or re-creates the others.
// ok is false when the table holds an object the model cannot describe; kept
// counts the objects equal to desired's.
func adoptObjects(desired *nft.Ruleset, objs map[string]kernelObject) (out []nft.Object, kept int, ok bool) {
	for _, name := range sortedKeys(objs) {
		ko := objs[name]
		if !ko.ok {
			return nil, 0, false
		}
		if d := desired.FindObject(name); d != nil && *d == ko.def {
			kept++
		}
		out = append(out, ko.def)
	}
	return out, kept, true
}

// CounterValue is what a named counter has counted.
type CounterValue struct {
	Packets, Bytes uint64
	// Created tells one life of the counter from the next: it changes when
	// this Applier creates the counter again (a new group of the same name,
	// a table replaced whole), which counts from zero. 0: not created by this
	// Applier (found in the table at start, adopted).
	Created uint64
}

// Counters reads every named counter of the Applier's table from the kernel, by
// name: what Prometheus scrapes. Reading does not reset them. A table that does
// not exist has no counters (an empty map, no error). It holds the reader, not
// the Applier: a scrape waits for a read ahead (they share the socket), but
// never holds up a transaction.
func (a *Applier) Counters(ctx context.Context) (map[string]CounterValue, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var objs map[string]kernelObject
	var created map[string]uint64
	err := a.reading(func() error {
		// A transaction committed during the dump could make it skip
		// counters (gen.go): the read must see one ruleset.
		return a.consistent(func() (err error) {
			if err := ctx.Err(); err != nil { // the scrape's timeout, after a wait for the reader
				return err
			}
			// What was created when, as of the dump: a transaction that
			// creates objects while the dump runs makes it read again, so
			// that no counter is paired with another life's creation.
			for range 4 {
				before := a.createdNow()
				if objs, err = a.readObjects(&nftables.Table{Name: a.opts.Table, Family: nftables.TableFamilyINet}); err != nil {
					return err
				}
				if created = a.createdNow(); maps.Equal(before, created) {
					break
				}
			}
			return nil
		})
	})
	if err != nil {
		if isNoSuchTable(err) {
			return map[string]CounterValue{}, nil
		}
		return nil, err
	}
	out := make(map[string]CounterValue, len(objs))
	for name, o := range objs {
		if o.ok && o.def.Kind == nft.CounterObject {
			out[name] = CounterValue{Packets: o.packets, Bytes: o.byteCnt, Created: created[name]}
		}
	}
	return out, nil
}

// createdNow is a copy of created.
func (a *Applier) createdNow() map[string]uint64 {
	a.createdMu.Lock()
	defer a.createdMu.Unlock()
	return maps.Clone(a.created)
}

func isNoSuchTable(err error) bool { return errors.Is(err, unix.ENOENT) }
