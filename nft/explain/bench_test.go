package explain

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpolicy/nftpolicy/test/bench/benchcluster"
)

// BenchmarkExplainLarge: one question on the control-plane benchmarks' cluster
// (10,000 pods, 1,000 policies, 100 nodes), on one port and on every port, the
// way the command asks it: compile the two nodes' tables, walk, attribute.
func BenchmarkExplainLarge(b *testing.B) {
	nss, pods, pols := benchcluster.Objects()
	c := Cluster{Pods: pods, Namespaces: nss, Policies: pols}
	// Two pods of one namespace on two nodes, the destination isolated for ingress.
	from, to := Ref{Namespace: "ns-3", Pod: "pod-301"}, Ref{}
	for i := 302; i < 400 && to.Pod == ""; i++ {
		r := Ref{Namespace: "ns-3", Pod: fmt.Sprintf("pod-%d", i)}
		a, err := Explain(c, Question{From: from, To: r, Port: 80}, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if len(a.Ingress.IsolatedBy) > 0 {
			to = r
		}
	}
	if to.Pod == "" {
		b.Fatal("no isolated pod in ns-3")
	}
	for _, q := range []struct {
		name string
		q    Question
	}{
		{"tcp-80", Question{From: from, To: to, Protocol: corev1.ProtocolTCP, Port: 80}},
		{"every-port", Question{From: from, To: to}},
	} {
		b.Run(q.name, func(b *testing.B) {
			var a *Answer
			start := time.Now()
			for b.Loop() {
				var err error
				if a, err = Explain(c, q.q, Options{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Milliseconds())/float64(b.N), "ms/answer")
			b.Logf("%s: %s (%d port ranges)", q.name, a.Summary, len(a.Ports))
		})
	}
}
