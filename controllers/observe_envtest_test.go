package controllers

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"time"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/nftpolicy/nftpolicy/nft"
	"github.com/nftpolicy/nftpolicy/nft/compile"
	"github.com/nftpolicy/nftpolicy/nft/nflog"
	"github.com/nftpolicy/nftpolicy/nft/nfttest"
)

var (
	denyPrefixRE  = regexp.MustCompile(`log prefix "(nftpolicy-deny ing-[0-9a-f]{8})" group 7\b`)
	counterDeclRE = regexp.MustCompile(`(?m)^\tcounter (\S+) \{`)
)

var _ = Describe("deny log and policy counters", func() {
	It("logs a denied packet with its pods and policies, and serves the policy counters (RunAgent wiring)", func(ctx SpecContext) {
		fake := nfttest.NewFake()
		src := newFakeSource()
		var lines lineLog
		f := newFixture()
		// The group chain's allow counter, whatever its name: every counter the
		// table has counts 5 here.
		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- RunAgent(runCtx, Options{
				Config: cfg, NodeName: "node-1", TableName: nft.DefaultTable,
				MetricsAddr: "0", HealthAddr: "0", FullSyncPeriod: time.Hour, Applier: fake,
				DenyLog:     compile.DenyLog{Group: 7, Rate: 10},
				OpenDenyLog: func() (DenyLogSource, error) { return src, nil },
				PolicyCounters: packetsOnly(func(context.Context) (map[string]uint64, error) {
					out := map[string]uint64{}
					for _, m := range counterDeclRE.FindAllStringSubmatch(fake.Dump(), -1) {
						out[m[1]] = 5
					}
					return out, nil
				}),
			}, lines.logger())
		}()
		DeferCleanup(func() {
			cancel()
			Eventually(done, time.Minute).Should(Receive(BeNil()))
		})

		f.namespace(ctx, "x", map[string]string{"team": "blue"})
		f.namespace(ctx, "y", map[string]string{"team": "red"})
		f.pod(ctx, "x", "a", podOpts{node: "node-1", ips: []string{"10.1.0.1"}})
		f.pod(ctx, "y", "b", podOpts{node: "node-2", ips: []string{"10.2.0.2"}})
		Expect(k8sClient.Create(ctx, f.ingressFromTeam("x", "allow-red", "red"))).To(Succeed())

		var prefix string
		Eventually(func() string {
			if m := denyPrefixRE.FindStringSubmatch(fake.Dump()); m != nil {
				prefix = m[1]
			}
			return prefix
		}, time.Minute).ShouldNot(BeEmpty(), "the group chain's deny log rule")
		Expect(fake.Dump()).To(ContainSubstring(`limit deny-log {`))
		Expect(fake.Dump()).To(MatchRegexp(`counter name "ing-[0-9a-f]{8}-[^"]*-allow" counter accept`))

		src.batches <- []nflog.Packet{{Prefix: prefix, Family: 4, Src: netip.MustParseAddr("10.2.0.2"),
			Dst: netip.MustParseAddr("10.1.0.1"), Protocol: nflog.ProtoTCP, SrcPort: 33333, DstPort: 8080, HasL4: true}}
		want := fmt.Sprintf(`"direction"="ingress" "src"="%s/b" "dst"="%s/a" "srcIP"="10.2.0.2" "dstIP"="10.1.0.1" "proto"="tcp" "srcPort"=33333 "dstPort"=8080 "policies"=["%s/allow-red"]`,
			f.ns("y"), f.ns("x"), f.ns("x"))
		Eventually(func() string { return strings.Join(lines.get(), "\n") }, time.Minute).Should(ContainSubstring(want))

		// The deny log names a table's packets from before its Apply returns;
		// the counters are the table's once it is in force.
		Eventually(func() error {
			return testutil.GatherAndCompare(metrics.Registry, strings.NewReader(fmt.Sprintf(`
# HELP nftpolicy_policy_packets_total Packets the group chains of a policy allowed or dropped for isolation, by direction, read from the kernel's counters (a packet allowed in a group of several policies counts for each: see nft/doc.go); for a ClusterNetworkPolicy (tier admin or baseline, no namespace), the packets its rules accepted, denied or passed.
# TYPE nftpolicy_policy_packets_total counter
nftpolicy_policy_packets_total{direction="ingress",namespace="%s",policy="allow-red",tier="networkpolicy",verdict="allow"} 5
nftpolicy_policy_packets_total{direction="ingress",namespace="%s",policy="allow-red",tier="networkpolicy",verdict="deny"} 5
`, f.ns("x"), f.ns("x"))), "nftpolicy_policy_packets_total")
		}, time.Minute).Should(Succeed())
	})
})
