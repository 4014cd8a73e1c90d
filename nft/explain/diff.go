package explain

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Diff lists every difference between want (the fresh compile) and got (what a
// kernel holds), one line each, in a stable order: chains missing or unexpected, a
// base chain's hook or policy, each rule that differs (as nft prints it), named
// objects missing, unexpected or of another kind or limit, sets missing
// or unexpected, their type and flags, and each element missing or unexpected (with
// its verdict in maps; comments are not compared, the kernel's readback may lack
// them). Empty when they mean the same.
func Diff(want, got *nft.Ruleset) []string {
	var out []string
	wc, gc := chainsByName(want), chainsByName(got)
	for _, name := range sortedNames(wc, gc) {
		w, g := wc[name], gc[name]
		switch {
		case g == nil:
			out = append(out, fmt.Sprintf("chain %s: missing from the kernel", name))
			continue
		case w == nil:
			out = append(out, fmt.Sprintf("chain %s: in the kernel, not in the compile (%d rules)", name, len(g.Rules)))
			continue
		}
		if hw, hg := hookText(w.Hook), hookText(g.Hook); hw != hg {
			out = append(out, fmt.Sprintf("chain %s: kernel has %q, compile has %q", name, hg, hw))
		}
		for i := 0; i < max(len(w.Rules), len(g.Rules)); i++ {
			switch {
			case i >= len(g.Rules):
				out = append(out, fmt.Sprintf("chain %s rule %d: missing from the kernel: %s", name, i, nft.RenderRule(w.Rules[i])))
			case i >= len(w.Rules):
				out = append(out, fmt.Sprintf("chain %s rule %d: in the kernel, not in the compile: %s", name, i, nft.RenderRule(g.Rules[i])))
			default:
				if rw, rg := nft.RenderRule(w.Rules[i]), nft.RenderRule(g.Rules[i]); rw != rg {
					out = append(out, fmt.Sprintf("chain %s rule %d: kernel has %s; compile has %s", name, i, rg, rw))
				}
			}
		}
	}
	wo, gob := objectsByName(want), objectsByName(got)
	for _, name := range sortedNames(wo, gob) {
		w, g := wo[name], gob[name]
		switch {
		case g == nil:
			out = append(out, fmt.Sprintf("%s %s: missing from the kernel", w.Kind, name))
		case w == nil:
			out = append(out, fmt.Sprintf("%s %s: in the kernel, not in the compile", g.Kind, name))
		case *w != *g:
			out = append(out, fmt.Sprintf("%s %s: kernel has %s, compile has %s", w.Kind, name, objectText(*g), objectText(*w)))
		}
	}
	ws, gs := setsByName(want), setsByName(got)
	for _, name := range sortedNames(ws, gs) {
		w, g := ws[name], gs[name]
		switch {
		case g == nil:
			out = append(out, fmt.Sprintf("set %s: missing from the kernel (%d elements)", name, len(w.Elements)))
			continue
		case w == nil:
			out = append(out, fmt.Sprintf("set %s: in the kernel, not in the compile (%d elements)", name, len(g.Elements)))
			continue
		}
		if tw, tg := setShape(w), setShape(g); tw != tg {
			out = append(out, fmt.Sprintf("set %s: kernel has %s, compile has %s", name, tg, tw))
			continue
		}
		we, ge := elementTexts(w), elementTexts(g)
		for _, e := range sortedKeys(we) {
			if !ge[e] {
				out = append(out, fmt.Sprintf("set %s: element %s missing from the kernel", name, e))
			}
		}
		for _, e := range sortedKeys(ge) {
			if !we[e] {
				out = append(out, fmt.Sprintf("set %s: element %s in the kernel, not in the compile", name, e))
			}
		}
	}
	return out
}

func chainsByName(r *nft.Ruleset) map[string]*nft.Chain {
	m := map[string]*nft.Chain{}
	for i := range r.Chains {
		m[r.Chains[i].Name] = &r.Chains[i]
	}
	return m
}

func objectsByName(r *nft.Ruleset) map[string]*nft.Object {
	m := map[string]*nft.Object{}
	for i := range r.Objects {
		m[r.Objects[i].Name] = &r.Objects[i]
	}
	return m
}

func objectText(o nft.Object) string {
	if o.Kind == nft.LimitObject {
		return fmt.Sprintf("%s rate %d/%s burst %d packets", o.Kind, o.Limit.Rate, o.Limit.Per, o.Limit.Burst)
	}
	return o.Kind.String()
}

func setsByName(r *nft.Ruleset) map[string]*nft.Set {
	m := map[string]*nft.Set{}
	for i := range r.Sets {
		m[r.Sets[i].Name] = &r.Sets[i]
	}
	return m
}

func sortedNames[V any](a, b map[string]V) []string {
	var out []string
	for k := range a {
		out = append(out, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func hookText(h *nft.Hook) string {
	if h == nil {
		return "regular chain"
	}
	return fmt.Sprintf("type %s hook %s priority %d; policy %s", h.Type, h.Hook, h.Priority, h.Policy)
}

func setShape(s *nft.Set) string {
	types := make([]string, len(s.Type))
	for i, t := range s.Type {
		types[i] = t.String()
	}
	out := "type " + strings.Join(types, " . ")
	if s.Verdicts {
		out += " : verdict"
	}
	if s.Interval {
		out += " flags interval"
	}
	return out
}

func elementTexts(s *nft.Set) map[string]bool {
	out := make(map[string]bool, len(s.Elements))
	for _, e := range s.Elements {
		e.Comment = ""
		out[nft.RenderElement(s.Type, e, s.Verdicts)] = true
	}
	return out
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
