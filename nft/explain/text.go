package explain

import (
	"fmt"
	"strings"
)

// summary is the one line that comes first: the verdict and who decided it.
func (x *explainer) summary(r *result, port string) string {
	head := fmt.Sprintf("%s: %s -> %s %s (IPv%d)", strings.ToUpper(r.verdict), x.from.Ref, x.to.Ref, port, familyOf(x.from))
	switch {
	case r.verdict == Allow && len(x.crossed) == 0:
		return head + ": " + r.egress.Note
	case r.verdict == Allow:
		return head + ": " + directionWhy("egress", r.egress) + "; " + directionWhy("ingress", r.ingress)
	case r.egress.Verdict == Deny && r.ingress.Verdict == Deny:
		return head + ": denied twice: " + directionWhy("egress", r.egress) + "; and " + directionWhy("ingress", r.ingress)
	case r.egress.Verdict == Deny:
		return head + ": " + directionWhy("egress", r.egress)
	case r.ingress.Verdict == Deny:
		return head + ": " + directionWhy("ingress", r.ingress)
	}
	return head + fmt.Sprintf(": dropped on node %s outside the policy chains (see the walk)", r.dropNode)
}

func familyOf(e End) int {
	if e.addr.Is4() {
		return 4
	}
	return 6
}

// directionWhy is one direction's verdict in a few words.
func directionWhy(name string, d Direction) string {
	if d.JudgedBy != "" && (d.DecidedBy == "Admin" || d.DecidedBy == "Baseline") {
		for _, st := range d.Tiers {
			if st.Tier == d.DecidedBy {
				verb := map[string]string{"Accept": "allowed", "Deny": "denied"}[st.Action]
				if st.FailClosed {
					verb = "denied (the rule fails closed)"
				}
				return fmt.Sprintf("%s on %s %s by %s %s", name, d.JudgedBy, verb, st.Tier, st.ruleText())
			}
		}
	}
	passed := ""
	for _, st := range d.Tiers {
		if st.Action == "Pass" {
			passed += st.Tier + " " + st.ruleText() + " passes; "
		}
	}
	return passed + npWhy(name, d)
}

// ruleText names the rule that decided: "cnp/x (priority 10) rule 1 (name)".
func (st TierStep) ruleText() string {
	if st.Policy == "" {
		return "no rule matched"
	}
	s := fmt.Sprintf("%s (priority %d) rule %d", st.Policy, *st.Priority, st.Rule)
	if st.RuleName != "" {
		s += " (" + st.RuleName + ")"
	}
	return s
}

// npWhy is the NetworkPolicy tier's verdict (and the default's) in a few words.
func npWhy(name string, d Direction) string {
	switch {
	case d.JudgedBy == "":
		return name + " not judged"
	case d.exempt != "" && d.Verdict == Allow:
		return name + " " + d.exempt
	case d.Verdict == Allow && len(d.IsolatedBy) > 0 && len(d.AllowedBy) == 0:
		return fmt.Sprintf("%s on %s passed by its table although %s isolates it and no rule allows it: the table is not what the policies compile to", name, d.JudgedBy, strings.Join(d.IsolatedBy, ", "))
	case d.Verdict == Deny && len(d.AllowedBy) > 0:
		return fmt.Sprintf("%s on %s dropped by its table although %s rule %d allows it: the table is not what the policies compile to", name, d.JudgedBy, d.AllowedBy[0].Policy, d.AllowedBy[0].Rule)
	case d.Verdict == Deny && len(d.IsolatedBy) == 0:
		return fmt.Sprintf("%s dropped on %s by a rule outside the policy groups", name, d.JudgedBy)
	case d.Verdict == Deny:
		return fmt.Sprintf("%s on %s isolated by %s, and none of %s rules allows it", name, d.JudgedBy, strings.Join(d.IsolatedBy, ", "), their(d.IsolatedBy))
	case len(d.IsolatedBy) == 0:
		return name + " not isolated"
	}
	refs := make([]string, len(d.AllowedBy))
	for i, r := range d.AllowedBy {
		refs[i] = fmt.Sprintf("%s rule %d", r.Policy, r.Rule)
	}
	return fmt.Sprintf("%s allowed by %s", name, strings.Join(refs, ", "))
}

func their(s []string) string {
	if len(s) == 1 {
		return "its"
	}
	return "their"
}

// portsSummary is the first line when every port was asked: the allowed ports.
func (x *explainer) portsSummary(a *Answer) string {
	head := fmt.Sprintf("%s: %s -> %s (IPv%d)", strings.ToUpper(a.Verdict), x.from.Ref, x.to.Ref, a.Family)
	switch a.Verdict {
	case Allow:
		return head + ": every port allowed"
	case Deny:
		return head + ": no port allowed"
	}
	return head + ": allowed " + allowedPorts(a.Ports)
}

// allowedPorts lists the allowed ranges: "tcp/80-81, udp/53".
func allowedPorts(ps []PortRange) string {
	var out []string
	for _, p := range ps {
		if p.Verdict != Allow {
			continue
		}
		switch {
		case p.First == 1 && p.Last == 65535:
			out = append(out, p.Protocol+" (every port)")
		case p.First == p.Last:
			out = append(out, fmt.Sprintf("%s/%d", p.Protocol, p.First))
		default:
			out = append(out, fmt.Sprintf("%s/%d-%d", p.Protocol, p.First, p.Last))
		}
	}
	return strings.Join(out, ", ")
}

// Text is the answer for a person: the summary, each direction, the ports, the
// problems, the live differences, then the walks.
func (a *Answer) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n\n", a.Summary)
	fmt.Fprintf(&b, "from: %s\nto:   %s\n", a.From, a.To)
	if a.Ports != nil {
		fmt.Fprintf(&b, "\nports:\n")
		for _, p := range a.Ports {
			rng := fmt.Sprintf("%s/%d-%d", p.Protocol, p.First, p.Last)
			if p.First == p.Last {
				rng = fmt.Sprintf("%s/%d", p.Protocol, p.First)
			}
			fmt.Fprintf(&b, "  %-16s %-5s %s\n", rng, p.Verdict, strings.Join(p.Why, "; "))
		}
		fmt.Fprintf(&b, "\ndetails for %s:\n", a.DetailPort)
	}
	b.WriteByte('\n')
	writeDirection(&b, "egress", a.From, a.Egress)
	writeDirection(&b, "ingress", a.To, a.Ingress)
	for _, n := range a.Notes {
		fmt.Fprintf(&b, "note: %s\n\n", n)
	}
	if len(a.Problems) > 0 {
		fmt.Fprintf(&b, "problems (the compiler could not enforce these as written; they fail closed):\n")
		for _, p := range a.Problems {
			fmt.Fprintf(&b, "  %s\n", p)
		}
		b.WriteByte('\n')
	}
	if a.Live != nil {
		if len(a.Live.Differences) == 0 {
			fmt.Fprintf(&b, "live: the kernel's table on %s is exactly the fresh compile\n\n", a.Live.Node)
		} else {
			plural := "s"
			if len(a.Live.Differences) == 1 {
				plural = ""
			}
			fmt.Fprintf(&b, "live: the kernel's table on %s differs from the fresh compile (%d difference%s):\n", a.Live.Node, len(a.Live.Differences), plural)
			for _, d := range a.Live.Differences {
				fmt.Fprintf(&b, "  %s\n", d)
			}
			b.WriteByte('\n')
		}
		if a.Live.Error != "" {
			fmt.Fprintf(&b, "live: the walk stopped: %s\n\n", a.Live.Error)
		}
		for _, d := range a.Live.Disagreements {
			fmt.Fprintf(&b, "live: %s\n", d)
		}
		if len(a.Live.Disagreements) > 0 {
			b.WriteByte('\n')
		}
	}
	for _, m := range a.Mismatch {
		fmt.Fprintf(&b, "BUG: attribution and walk disagree: %s\n", m)
	}
	var shown []*Walk
	for _, d := range []Direction{a.Egress, a.Ingress} {
		w := d.Trace
		if w == nil {
			continue
		}
		dup := false
		for _, s := range shown {
			dup = dup || s == w
		}
		if dup {
			continue
		}
		shown = append(shown, w)
		reached := ""
		if !w.Reached {
			reached = ", not reached: shows what it would decide"
		}
		fmt.Fprintf(&b, "walk on node %s (%s table, from %s%s): %s\n", w.Node, w.Table, w.From, reached, w.Packet)
		for _, s := range w.Steps {
			if s.Rule < 0 {
				fmt.Fprintf(&b, "  %s: %s\n", s.Chain, s.Text)
				continue
			}
			fmt.Fprintf(&b, "  %s[%d]: %s", s.Chain, s.Rule, s.Text)
			if !strings.HasSuffix(s.Text, s.Verdict) {
				fmt.Fprintf(&b, "  => %s", s.Verdict)
			}
			b.WriteByte('\n')
			for _, m := range s.Matched {
				fmt.Fprintf(&b, "      matched %s\n", m)
			}
		}
		fmt.Fprintf(&b, "  verdict: %s\n\n", w.Verdict)
	}
	return strings.TrimRight(b.String(), "\n") + "\n"
}

func writeDirection(b *strings.Builder, name string, end End, d Direction) {
	who := end.Pod
	if who == "" {
		who = end.Address
	}
	if d.JudgedBy == "" {
		fmt.Fprintf(b, "%s of %s: %s\n", name, who, d.Verdict)
		if d.Note != "" {
			fmt.Fprintf(b, "  %s\n", d.Note)
		}
		b.WriteByte('\n')
		return
	}
	fmt.Fprintf(b, "%s of %s, judged on node %s: %s\n", name, who, d.JudgedBy, d.Verdict)
	for _, st := range d.Tiers {
		if st.Policy != "" {
			fmt.Fprintf(b, "  %s tier: %s by %s", st.Tier, st.Action, st.ruleText())
		} else {
			fmt.Fprintf(b, "  %s tier: no rule matches", st.Tier)
		}
		if st.FailClosed {
			fmt.Fprintf(b, ", failing closed (deny all)")
		}
		fmt.Fprintf(b, "; policies selecting the pod: %s\n", strings.Join(st.Selecting, ", "))
	}
	if len(d.Tiers) > 0 {
		switch d.DecidedBy {
		case "Admin", "Baseline":
			fmt.Fprintf(b, "  decided by the %s tier", d.DecidedBy)
			if len(d.IsolatedBy) > 0 && d.DecidedBy == "Admin" {
				fmt.Fprintf(b, " (NetworkPolicy not consulted: %s)", strings.Join(d.IsolatedBy, ", "))
			}
			fmt.Fprintf(b, "\n")
			if d.Note != "" {
				fmt.Fprintf(b, "  note: %s\n", d.Note)
			}
			b.WriteByte('\n')
			return
		case "":
			if len(d.IsolatedBy) == 0 {
				fmt.Fprintf(b, "  no tier decided: allowed (the Kubernetes default)\n")
			}
		}
	}
	switch {
	case d.exempt != "":
		fmt.Fprintf(b, "  not judged by NetworkPolicy: this connection is %s\n", d.exempt)
	case len(d.IsolatedBy) == 0:
		fmt.Fprintf(b, "  not isolated: no NetworkPolicy of namespace %s selects it for %s\n", strings.SplitN(end.Pod, "/", 2)[0], name)
	default:
		fmt.Fprintf(b, "  isolated by %s\n", strings.Join(d.IsolatedBy, ", "))
		if len(d.AllowedBy) == 0 {
			fmt.Fprintf(b, "  none of %s rules allows this connection\n", their(d.IsolatedBy))
		}
		for _, r := range d.AllowedBy {
			fmt.Fprintf(b, "  allowed by %s\n", r)
		}
		switch {
		case d.Verdict == Allow && len(d.AllowedBy) == 0:
			fmt.Fprintf(b, "  yet the table lets it through: it is not what these policies compile to\n")
		case d.Verdict == Deny && len(d.AllowedBy) > 0:
			fmt.Fprintf(b, "  yet the table drops it: it is not what these policies compile to\n")
		}
	}
	if d.Note != "" {
		fmt.Fprintf(b, "  note: %s\n", d.Note)
	}
	b.WriteByte('\n')
}
