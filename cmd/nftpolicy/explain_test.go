package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const explainData = "testdata/explain"

// runBin runs the binary with a clean environment: exit code, stdout, stderr.
func runBin(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = cleanEnv()
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := exitCode(t, cmd.Run())
	return code, stdout.String(), stderr.String()
}

// TestExplainContract: usage errors exit 2 and failures exit 1, each with one line
// on stderr that names what is wrong; answers exit 0.
func TestExplainContract(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "kubeconfig")
	bad := filepath.Join(dir, "bad.yaml")
	unreadable := filepath.Join(dir, "unreadable.yaml")
	for p, s := range map[string]string{good: validKubeconfig, bad: "kind: [unterminated", unreadable: "kind: Pod"} {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(unreadable, 0); err != nil {
		t.Fatal(err)
	}
	files := []string{"-f", explainData + "/cluster.yaml", "-f", explainData + "/policies.yaml"}
	with := func(args ...string) []string { return append(append([]string{"explain"}, files...), args...) }
	tests := []struct {
		name    string
		args    []string
		stdin   string
		code    int
		wantOut []string // in stdout (exit 0) or the one stderr line
	}{
		{"help", []string{"explain", "-h"}, "", 0, []string{"-from", "-to", "-port", "-family", "-live", "-netns", "-kubeconfig", "-f value", "-o string"}},
		{"top help lists explain", []string{"help"}, "", 0, []string{"explain"}},
		{"allowed", with("--from", "shop/web", "--to", "shop/db", "--port", "tcp/5432"), "", 0,
			[]string{"ALLOW: shop/web -> shop/db tcp/5432 (IPv4)", "allowed by shop/db-from-web rule 0", "walk on node node-2"}},
		{"denied", with("--from", "monitoring/prometheus", "--to", "shop/db", "--port", "9187"), "", 0,
			[]string{"DENY: monitoring/prometheus -> shop/db tcp/9187", "isolated by shop/db-from-web", `counter drop comment "isolated by shop/db-from-web"`}},
		{"every port", with("--from", "shop/web", "--to", "shop/db"), "", 0, []string{"PARTIAL", "allowed tcp/5432", "details for tcp/1"}},
		{"IPv6", with("--from", "shop/web", "--to", "shop/db", "--port", "5432", "--family", "6"), "", 0, []string{"(IPv6)", "fd00:10:244:2::7"}},
		{"by address and node", with("--from", "172.18.0.11", "--to", "shop/db", "--port", "udp/53"), "", 0, []string{"DENY", "the source is node node-1, not a pod: no egress policy judges it"}},
		{"between nodes", with("--from", "node/node-1", "--to", "node/node-2"), "", 0, []string{"ALLOW", "neither end is a pod"}},
		{"node to its own pod", with("--from", "node/node-2", "--to", "shop/db", "--port", "80"), "", 0, []string{"ALLOW", "never crosses the forward hook"}},
		{"stdin and directory", []string{"explain", "-f", "-", "-f", explainData, "--from", "monitoring/prometheus", "--to", "shop/db", "--port", "9187"},
			"", 0, []string{"ALLOW", "shop/db-metrics rule 0"}},
		{"a problem is named", with("-f", "testdata/explain-broken.yaml", "--from", "monitoring/prometheus", "--to", "shop/db", "--port", "5432"), "", 0,
			[]string{"shop/broken: ingress rule 0: peer 0: invalid ipBlock cidr"}},
		{"admin tier over NetworkPolicy", with("-f", "testdata/explain-cnp.yaml", "--from", "monitoring/prometheus", "--to", "shop/db", "--port", "9187"), "", 0,
			[]string{"ALLOW", "ingress on node-2 allowed by Admin cnp/scrape (priority 5) rule 0 (from-monitoring)", "NetworkPolicy not consulted: shop/db-from-web"}},
		{"pod to its own node, v1alpha2", with("-f", "testdata/explain-cnp.yaml", "--from", "shop/db", "--to", "node/node-2", "--port", "22"), "", 0,
			[]string{"DENY", "egress on node-2 denied by Admin cnp/node-guard (priority 10) rule 0 (no-ssh-to-nodes)", "from hook input"}},
		// Usage: exit 2.
		{"no from", with("--to", "shop/db"), "", 2, []string{"--from and --to are required"}},
		{"bad ref", with("--from", "a/b/c", "--to", "shop/db"), "", 2, []string{"--from", `"a/b/c"`}},
		{"bad port", with("--from", "shop/web", "--to", "shop/db", "--port", "icmp/1"), "", 2, []string{"--port", `"icmp/1"`}},
		{"port out of range", with("--from", "shop/web", "--to", "shop/db", "--port", "70000"), "", 2, []string{"1-65535"}},
		{"bad family", with("--from", "shop/web", "--to", "shop/db", "--family", "5"), "", 2, []string{"--family"}},
		{"bad output", with("--from", "shop/web", "--to", "shop/db", "-o", "yaml"), "", 2, []string{"-o", `"yaml"`}},
		{"netns without live", with("--from", "shop/web", "--to", "shop/db", "--netns", "x"), "", 2, []string{"--netns is for --live"}},
		{"node name without live", with("--from", "shop/web", "--to", "shop/db", "--node-name", "x"), "", 2, []string{"--node-name is for --live"}},
		{"stray argument", with("--from", "shop/web", "--to", "shop/db", "extra"), "", 2, []string{`"extra"`}},
		// Failures: exit 1.
		{"unknown pod", with("--from", "shop/nope", "--to", "shop/db"), "", 1, []string{"pod shop/nope not found"}},
		{"pod without address", with("--from", "shop/pending", "--to", "shop/db"), "", 1, []string{"pod shop/pending has no address"}},
		{"unknown node", with("--from", "node/node-9", "--to", "shop/db"), "", 1, []string{"node node-9 not found"}},
		{"missing file", []string{"explain", "-f", "/nonexistent/x.yaml", "--from", "a/b", "--to", "c/d"}, "", 1, []string{"/nonexistent/x.yaml"}},
		{"unreadable file", []string{"explain", "-f", unreadable, "--from", "a/b", "--to", "c/d"}, "", 1, []string{unreadable}},
		{"bad yaml", []string{"explain", "-f", bad, "--from", "a/b", "--to", "c/d"}, "", 1, []string{bad, "document 1"}},
		{"list of no objects", []string{"explain", "-f", "-", "--from", "a/b", "--to", "c/d"}, "kind: List\napiVersion: v1\nitems: 5\n", 1, []string{"document 1", "List: items is not a list"}},
		{"unreachable apiserver", []string{"explain", "--kubeconfig", good, "--from", "a/b", "--to", "c/d"}, "", 1, []string{"API server https://127.0.0.1:1"}},
		{"no cluster at all", []string{"explain", "--from", "a/b", "--to", "c/d"}, "", 1, []string{"not in a cluster"}},
	}
	if os.Geteuid() == 0 {
		// root reads any file: no unreadable-file case.
		for i := range tests {
			if tests[i].name == "unreadable file" {
				tests = append(tests[:i], tests[i+1:]...)
				break
			}
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, stdout, stderr := runBin(t, tt.stdin, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, stdout, stderr)
			}
			out := stdout
			if code != 0 {
				out = stderr
				if stdout != "" {
					t.Errorf("stdout not empty on error: %q", stdout)
				}
				if strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "nftpolicy explain: ") {
					t.Errorf("stderr is not one line naming the command: %q", out)
				}
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output does not mention %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestExplainJSON: the documented schema (docs/explain.md), field by field.
func TestExplainJSON(t *testing.T) {
	code, stdout, stderr := runBin(t, "", "explain", "-f", explainData+"/cluster.yaml", "-f", explainData+"/policies.yaml",
		"--from", "monitoring/prometheus", "--to", "shop/db", "--port", "tcp/5432", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var a struct {
		Verdict  *string `json:"verdict"`
		Summary  *string `json:"summary"`
		Family   int     `json:"family"`
		Protocol string  `json:"protocol"`
		Port     int     `json:"port"`
		From, To struct {
			Ref, Kind, Pod, Node, Address string
		}
		Egress, Ingress *struct {
			Verdict    *string   `json:"verdict"`
			JudgedBy   string    `json:"judgedBy"`
			IsolatedBy *[]string `json:"isolatedBy"`
			AllowedBy  *[]struct {
				Policy string `json:"policy"`
				Rule   *int   `json:"rule"`
				Peer   string `json:"peer"`
				Port   string `json:"port"`
			} `json:"allowedBy"`
			Trace *struct {
				Node    string `json:"node"`
				Table   string `json:"table"`
				Reached bool   `json:"reached"`
				Steps   []struct {
					Chain   string   `json:"chain"`
					Rule    *int     `json:"rule"`
					Text    string   `json:"text"`
					Verdict string   `json:"verdict"`
					Matched []string `json:"matched"`
				} `json:"steps"`
				Verdict string `json:"verdict"`
			} `json:"trace"`
		}
	}
	dec := json.NewDecoder(strings.NewReader(stdout))
	if err := dec.Decode(&a); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	switch {
	case a.Verdict == nil || *a.Verdict != "deny", a.Summary == nil, a.Family != 4, a.Protocol != "tcp", a.Port != 5432:
		t.Fatalf("top level: %s", stdout)
	case a.From.Pod != "monitoring/prometheus" || a.From.Kind != "pod" || a.To.Address != "10.244.2.7" || a.To.Node != "node-2":
		t.Fatalf("ends: %s", stdout)
	case a.Egress == nil || a.Ingress == nil:
		t.Fatalf("directions: %s", stdout)
	case *a.Egress.Verdict != "allow" || a.Egress.IsolatedBy == nil || len(*a.Egress.IsolatedBy) != 0 || a.Egress.AllowedBy == nil:
		t.Fatalf("egress: %s", stdout)
	case *a.Ingress.Verdict != "deny" || (*a.Ingress.IsolatedBy)[0] != "shop/db-from-web" || len(*a.Ingress.AllowedBy) != 0:
		t.Fatalf("ingress: %s", stdout)
	}
	tr := a.Ingress.Trace
	if tr == nil || tr.Node != "node-2" || tr.Table != "compiled" || !tr.Reached || tr.Verdict != "drop" || len(tr.Steps) == 0 {
		t.Fatalf("ingress trace: %s", stdout)
	}
	last := tr.Steps[len(tr.Steps)-1]
	if last.Verdict != "drop" || *last.Rule < 0 || !strings.Contains(last.Text, `comment "isolated by shop/db-from-web"`) {
		t.Errorf("last step %+v", last)
	}

	// Allowed: allowedBy names the policy, the rule, the peer and the port.
	_, stdout, _ = runBin(t, "", "explain", "-f", explainData, "--from", "shop/web", "--to", "shop/db", "--port", "5432", "-o", "json")
	var b map[string]any
	if err := json.Unmarshal([]byte(stdout), &b); err != nil {
		t.Fatal(err)
	}
	ing := b["ingress"].(map[string]any)
	ab := ing["allowedBy"].([]any)[0].(map[string]any)
	if b["verdict"] != "allow" || ab["policy"] != "shop/db-from-web" || ab["rule"] != 0.0 || ab["port"] != "port 0: TCP/pg" || ab["peer"] != "peer 0: pods app=web of the policy's namespace" {
		t.Errorf("allowedBy %v\n%s", ab, stdout)
	}
}

// TestDocumentedAnswers: every offline `nftpolicy explain` the README and
// docs/explain.md show answers exactly as shown, with the example files of
// testdata (the samples had drifted from the binary: a rule index, the ports
// table's reasons).
func TestDocumentedAnswers(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{explainData + "/cluster.yaml", explainData + "/policies.yaml", explainData + "/proposed.yaml", "testdata/explain-cnp.yaml"} {
		abs, err := filepath.Abs(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(abs, filepath.Join(dir, filepath.Base(f))); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	for _, doc := range []string{"../../README.md", "../../docs/explain.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(string(b), "\n")
		for i, l := range lines {
			cmdline, ok := strings.CutPrefix(l, "$ nftpolicy explain ")
			if !ok || strings.Contains(cmdline, "--live") {
				continue
			}
			end := i + 1
			for end < len(lines) && !strings.HasPrefix(lines[end], "```") {
				end++
			}
			want := strings.Join(lines[i+1:end], "\n")
			cmd := exec.Command(bin, append([]string{"explain"}, strings.Fields(cmdline)...)...)
			cmd.Dir, cmd.Env = dir, cleanEnv()
			out, err := cmd.Output()
			if code := exitCode(t, err); code != 0 {
				t.Errorf("%s:%d: exit %d", doc, i+1, code)
			}
			if got := strings.TrimRight(string(out), "\n"); got != want {
				t.Errorf("%s:%d: `nftpolicy explain %s` answers otherwise than shown; it answers:\n%s", doc, i+1, cmdline, got)
			}
			n++
		}
	}
	if n < 3 {
		t.Fatalf("%d documented answers found, want at least 3", n)
	}
}
