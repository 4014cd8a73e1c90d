// Package cnp runs the upstream ClusterNetworkPolicy conformance suite (the
// conformance package of sigs.k8s.io/network-policy-api, at the version go.mod
// requires) against the real two-node cluster of test/conformance/cluster.sh,
// with nftpolicy deployed on it. Its only content is a test:
// TestClusterNetworkPolicyConformance, which skips unless
// NFTPOLICY_CONFORMANCE_KUBECONFIG names the cluster's kubeconfig (so `go test
// ./...` never runs it). `make conformance-cnp` brings the cluster up, applies
// the module's experimental CRD and runs it; see the README's "The
// ClusterNetworkPolicy suite" for the result and for what differs from the
// upstream invocation:
//
//   - Every feature of the ClusterNetworkPolicy profile is claimed: the
//     standard one and the experimental named ports and node peers.
//   - The machine's kernel has no SCTP sockets, so every SCTP probe of the
//     suite (`agnhost connect --protocol=sctp`, in the SCTP tests and inside
//     others) is rewritten in the exec transport to run /sctp-connect
//     (test/conformance/sctpconnect): a raw-socket SCTP INIT whose delivery the
//     destination kernel confirms. NFTPOLICY_CNP_SCTP=skip skips the four
//     SCTP-only tests instead.
//   - The base manifests are the suite's own, applied by this test instead of
//     the suite's Setup so that the SCTP servers (agnhost porter with
//     SERVE_SCTP_PORT_*) can be left out: on a kernel without SCTP they exit,
//     and their pods would never be Ready.
package cnp
