package deploy

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// TestAlerts runs promtool on config/prometheus's PrometheusRule, as rendered:
// `promtool check rules` on its groups, then `promtool test rules` with
// testdata/alerts-test.yaml (each alert fires on the series of its trouble, with
// its labels and annotations, and none on a healthy node's). promtool is built
// from the Prometheus module by `make test` (NFTPOLICY_PROMTOOL); that every
// metric and label the rules read is one a real agent serves is
// TestLeastPrivilege's (checkAlertMetrics).
func TestAlerts(t *testing.T) {
	promtool := os.Getenv("NFTPOLICY_PROMTOOL")
	if promtool == "" {
		t.Skip("NFTPOLICY_PROMTOOL is unset; run 'make test', which builds promtool, or set it to a promtool binary")
	}
	dir := t.TempDir()
	rules := alertRules(t)
	groups := parseRules(t, rules)
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	tests, err := os.ReadFile(filepath.Join("testdata", "alerts-test.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts-test.yaml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "rules", filepath.Join(dir, "rules.yaml")}, {"test", "rules", filepath.Join(dir, "alerts-test.yaml")}} {
		out, err := run(context.Background(), nil, promtool, args...)
		if err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
	}
	// Every alert has its test.
	for _, name := range groups.alertNames() {
		if !strings.Contains(string(tests), "alertname: "+name) {
			t.Errorf("alert %s has no test in testdata/alerts-test.yaml", name)
		}
	}
}

// ruleGroups is the part of a PrometheusRule that is a Prometheus rule file.
type ruleGroups struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert string `json:"alert"`
			Expr  string `json:"expr"`
		} `json:"rules"`
	} `json:"groups"`
}

// alertRules returns the PrometheusRule of config/prometheus as a rule file.
func alertRules(t *testing.T) []byte {
	t.Helper()
	pr := find(t, decode(t, render(t, "prometheus")), "PrometheusRule", agentName)
	spec, ok := pr.Object["spec"].(map[string]any)
	if !ok {
		t.Fatal("PrometheusRule without spec")
	}
	b, err := yaml.Marshal(map[string]any{"groups": spec["groups"]})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseRules(t *testing.T, rules []byte) ruleGroups {
	t.Helper()
	var g ruleGroups
	if err := yaml.Unmarshal(rules, &g); err != nil {
		t.Fatal(err)
	}
	return g
}

func (rg ruleGroups) alertNames() []string {
	var names []string
	for _, g := range rg.Groups {
		for _, r := range g.Rules {
			names = append(names, r.Alert)
		}
	}
	return names
}

var (
	// A selector in a PromQL expression: a metric name, and its matchers.
	selectorRE = regexp.MustCompile(`\b([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?`)
	matcherRE  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)`)
)

// alertSelectors returns, for each metric the alerts read (the agent's own:
// nftpolicy_*, process_*), the label names they match on.
func alertSelectors(t *testing.T) map[string][]string {
	t.Helper()
	sel := map[string][]string{}
	for _, g := range parseRules(t, alertRules(t)).Groups {
		for _, r := range g.Rules {
			for _, m := range selectorRE.FindAllStringSubmatch(r.Expr, -1) {
				name := m[1]
				if !strings.HasPrefix(name, "nftpolicy_") && !strings.HasPrefix(name, "process_") {
					continue
				}
				labels := sel[name]
				for _, lm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
					if !slices.Contains(labels, lm[1]) {
						labels = append(labels, lm[1])
					}
				}
				sel[name] = labels
			}
		}
	}
	return sel
}

// checkAlertMetrics checks that every metric the alerts read is in a real
// agent's /metrics text, with every label they match on.
func checkAlertMetrics(t *testing.T, metricsText string) {
	t.Helper()
	series := map[string][]string{} // name -> its series' label names
	for _, line := range strings.Split(metricsText, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name = strings.Fields(name)[0]
		if labels, _, ok := strings.Cut(rest, "}"); ok {
			for _, kv := range strings.Split(labels, ",") {
				if k, _, ok := strings.Cut(kv, "="); ok && !slices.Contains(series[name], k) {
					series[name] = append(series[name], k)
				}
			}
		}
		if _, ok := series[name]; !ok {
			series[name] = nil
		}
	}
	sel := alertSelectors(t)
	if len(sel) < 10 {
		t.Fatalf("only %d metrics found in the alerts: %v", len(sel), sel)
	}
	for name, labels := range sel {
		got, ok := series[name]
		if !ok {
			t.Errorf("the alerts read %s, which the agent does not serve", name)
			continue
		}
		for _, l := range labels {
			if !slices.Contains(got, l) {
				t.Errorf("the alerts match %s on label %q, which the agent's series of it lack (they have %v)", name, l, got)
			}
		}
	}
	t.Logf("the alerts read %d of the agent's metrics, all served", len(sel))
}
