package nft

import (
	"fmt"
	"slices"
	"strings"
)

// Object is a named stateful object of the table: a counter (`counter NAME {}`)
// or a limit (`limit NAME { rate R/PER burst B packets }`), that rules use by
// name (CounterRef, LimitRef). Its state lives in the kernel with the object,
// not with the rules that use it: chains may be flushed and refilled around it
// (Plan, PlanRewrite) and a counter keeps counting, a limit keeps its bucket.
// Only a change of the object's definition, or a full replacement of the table,
// creates it afresh.
//
// Several rules may share one object: one limit object is then one bucket for
// all of them, and one counter object sums what each of them counts.
type Object struct {
	Name  string
	Kind  ObjectKind
	Limit Limit // the limit of a LimitObject; zero for a counter
}

// ObjectKind is the type of a named object.
type ObjectKind uint8

const (
	CounterObject ObjectKind = iota + 1
	LimitObject
)

// String is the kind as nft writes it.
func (k ObjectKind) String() string {
	switch k {
	case CounterObject:
		return "counter"
	case LimitObject:
		return "limit"
	}
	return fmt.Sprintf("object%d", uint8(k))
}

// CounterRef is `counter name "NAME"`: the packet is counted by the counter
// object NAME.
type CounterRef struct{ Name string }

// LimitRef is `limit name "NAME"`: the limit object NAME's bucket decides, as an
// anonymous Limit does (and with the same rule: never in a rule with a verdict).
type LimitRef struct{ Name string }

func (CounterRef) isStatement() {}
func (LimitRef) isStatement()   {}

// FindObject returns the object with the given name, or nil.
func (r *Ruleset) FindObject(name string) *Object {
	for i := range r.Objects {
		if r.Objects[i].Name == name {
			return &r.Objects[i]
		}
	}
	return nil
}

// SortedObjects returns r's objects in render order (by name).
func SortedObjects(r *Ruleset) []Object {
	out := slices.Clone(r.Objects)
	slices.SortFunc(out, func(a, b Object) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func renderObject(b *strings.Builder, o Object) {
	fmt.Fprintf(b, "\t%s %s {\n", o.Kind, o.Name)
	if o.Kind == LimitObject {
		fmt.Fprintf(b, "\t\trate %d/%s burst %d packets\n", o.Limit.Rate, o.Limit.Per, o.Limit.Burst)
	}
	b.WriteString("\t}\n")
}

// refersToObjects reports whether some rule uses one of the named objects.
func refersToObjects(rules []Rule, names map[string]bool) bool {
	if len(names) == 0 {
		return false
	}
	for _, r := range rules {
		for _, st := range r.Statements {
			switch st := st.(type) {
			case CounterRef:
				if names[st.Name] {
					return true
				}
			case LimitRef:
				if names[st.Name] {
					return true
				}
			}
		}
	}
	return false
}

func checkLimit(l Limit) error {
	if l.Rate == 0 || l.Burst == 0 {
		return fmt.Errorf("limit rate and burst must be at least 1")
	}
	if l.Per < PerSecond || l.Per > PerDay {
		return fmt.Errorf("limit per %v", l.Per)
	}
	return nil
}
