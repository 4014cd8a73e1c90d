// Package explain answers "would a connection from X to Y be allowed, and why?" for
// a cluster's NetworkPolicies, exactly as nftpolicy enforces them: it compiles the
// table of each node the packet crosses with the agent's own compiler (nft/compile)
// and walks the connection's first packet through it with nft/trace. The verdicts
// come from those walks, never from a second reading of the spec.
//
// Beside the walk it attributes the verdict to policies: for each direction (the
// egress of the source pod, judged on its node; the ingress of the destination pod,
// judged on its node), which policies isolate the pod and which rules of theirs (with
// the peer and port that matched) allow the connection. With ClusterNetworkPolicies
// it also names, per direction, what the Admin and Baseline tiers decided: the
// policy, its priority and the rule, and after an Admin Pass what NetworkPolicy or
// Baseline decided; the walk must have taken that very rule (the compiler's
// Attribution.Tiers maps a tier chain's rules to policy rules). A pod's traffic
// to its own node is walked through the input hook, where the tiers judge it. The
// attribution reads the policies on its own, through nft/internal/netpolref; the
// answer carries both, and Answer.Mismatch says when they disagree (the tests
// prove they never do over random clusters).
//
// No I/O: the caller lists the cluster or reads manifests and hands the objects in;
// for `--live`, the caller reads the node's table from the kernel and passes it as
// Options.Live, and the answer walks it and lists its differences from the compile.
package explain
