// Package nft is nftpolicy's desired-state model of the one nftables table it owns:
// Ruleset, Chain, Rule, Set (and verdict maps), Element. Values only, standard library
// only: building a Ruleset touches nothing. Render turns it into deterministic `nft -f`
// text; Plan (the applier's half that needs no kernel) turns (last applied, desired)
// into the operations of one transaction; nft/netlink sends them.
//
// # Table layout
//
// One table, `table inet nftpolicy`, serves IPv4 and IPv6:
//
//	chain forward          type filter hook forward priority filter (0); policy accept
//	    ct state established,related accept       replies and related ICMP always pass
//	    icmpv6 type { nd-* } accept                 neighbour discovery always passes
//	    jump pod-egress                             the source pod's egress, if local and isolated
//	    jump pod-ingress                            the destination pod's ingress, likewise
//	chain pod-egress       ip saddr vmap @egress-v4;  ip6 saddr vmap @egress-v6
//	chain pod-ingress      ip daddr vmap @ingress-v4; ip6 daddr vmap @ingress-v6
//	map egress-v4 ...      local isolated pod address -> jump eg-<hash>-<policies>
//	map ingress-v4 ...     local isolated pod address -> goto ing-<hash>-<policies>
//	chain ing-<hash>-<ns>/<policy>[_and_N]   one per group of local pods selected by the
//	    same policies (and resolving named ports alike):
//	    ct state invalid drop
//	    ip saddr @<set>-any-v4 accept                               peers allowed on every port
//	    ip saddr . meta l4proto . th dport @<set>-ports-v4 accept   peers by protocol and port
//	    (the same two for ip6)
//	    counter drop                                                default deny
//	chain eg-...           the same shape on daddr, with `return` instead of accept, so
//	                       that ingress is still judged after egress allowed the packet.
//
// Only pods that some policy isolates appear in the maps: a packet between two
// unisolated pods costs the forward chain's four rules and two failed map lookups.
// The per-packet cost does not grow with the number of policies or pods: dispatch is
// one hash lookup, and each group chain does a fixed number of set lookups whatever
// the number of policies it merges (the union of their rules is the union of the
// group's set elements). Pod churn is element adds and deletes; rules change only when
// the grouping of policies changes.
//
// # Where in the stack, and why there
//
// Policy is judged after DNAT and before SNAT, so a connection to a Service ClusterIP
// is judged on the endpoint pod's address and port and on the original client address.
// kube-proxy (iptables and nftables modes) DNATs at prerouting/output priority dstnat
// (-100) and masquerades at postrouting priority srcnat (100); the forward hook lies
// between the two for every routed packet. Traffic that a node itself sends to a pod
// (kubelet probes) leaves through the output hook, and traffic a pod sends to its own
// node arrives through input: neither crosses forward, so both always pass, as the
// NetworkPolicy API requires. Connection tracking marks replies established before
// forward, so only the first packet of a connection walks past the first rule.
//
// kube-proxy's nftables mode also has a chain at forward priority filter (its
// filter-forward: rejects for Services without endpoints). The kernel does not
// define the order of two base chains at one hook and priority, and none is
// needed: each chain can only accept (for itself) or drop/reject (for good), so
// a packet passes only when both pass it. The one visible difference: a
// connection that we deny to a Service without endpoints may get kube-proxy's
// reject instead of our silent drop. The upstream conformance run
// (test/conformance) exercises this pairing.
//
// IPVS mode is not covered: IPVS rewrites the destination in the input hook and sends
// the packet on through output, so pod-to-ClusterIP traffic under IPVS never crosses
// our forward chain: run kube-proxy in iptables or nftables mode with nftpolicy.
//
// # Deny log
//
// With the agent's --deny-log-rate above zero, every group chain gets one more rule,
// just before its isolation drop, and the table one named limit:
//
//	limit deny-log { rate 100/second burst 100 packets }
//	chain ing-3fa9c2d1-x/allow-a {
//	    ...
//	    limit name "deny-log" log prefix "nftpolicy-deny ing-3fa9c2d1" group 100
//	    counter drop comment "isolated by x/allow-a"
//	}
//
// The log rule has no verdict, so the limit gates the log statement and nothing
// else: a packet over the rate skips the log and meets the drop all the same (Validate
// refuses a limit in a rule with a verdict). The limit is one bucket for the node,
// shared by every group chain, so the agent never receives more than the rate
// whatever the number of pods, policies or attackers. The kernel copies the packet's
// first 128 bytes (network and transport headers) to NFLOG group 100 and never
// waits: if the agent reads slowly or not at all, the socket buffer fills and the
// kernel drops log messages, never packet verdicts (nft/nflog counts what was lost).
// The prefix names the chain by its direction and hash (the head of the chain's
// name), which the compiler's Attribution maps to the policies that isolate the
// chain's pods: the agent logs their namespace/name, not the hash. The `ct state
// invalid` drop is not logged.
//
// # Policy counters
//
// With policy counters on, the table has four named counters per policy that
// isolates a local pod, two per direction it isolates:
//
//	counter pol-e7c86401-x/allow-from-y-ing-allow    packets a group chain of the policy allowed
//	counter pol-e7c86401-x/allow-from-y-ing-deny     packets it dropped for isolation
//
// A group chain's allow rules update the allow counter of every policy of the group,
// and its drop rule the deny counter of every policy of the group. Attribution is
// therefore exact for drops: a dropped packet was isolated by each of the group's
// policies and allowed by none, so each of them denied it. For allowed packets it is
// exact when the group has one policy; when the pod is isolated by several (the
// chain `ing-...-x/allow-from-y_and_1`), the group's sets hold the union of their
// rules and the kernel cannot tell which policy's rule matched, so the packet counts
// as allowed for every policy of the group: read `verdict="allow"` as "allowed while
// this policy isolated the pod", and the sum over policies may exceed the packets.
// `nftpolicy explain` names the exact rule for one connection. Replies (ct
// established) never reach a group chain and are not counted; neither is `ct state
// invalid`.
//
// The counters are objects, not rule statements, so rewriting a chain (a regrouping,
// the periodic full sync, a restarted agent adopting the table) keeps their counts;
// they start at zero when a policy starts isolating a local pod, and when the table
// is replaced whole (first start without a table to adopt, or drift repair). The
// agent reads them over netlink at scrape time (nftpolicy_policy_packets_total).
// The cost is one named counter update per policy of the group, for each packet
// that reaches a group chain: the first packet of a connection (replies and later
// packets pass on conntrack state before), every packet of a one-way UDP flow.
// nft/netlink's TestCounterCost measured 36-45 ns per named counter update on the
// 2-core test machine (an anonymous counter, on every group chain rule already, was
// within noise of none); a new connection to a pod that four policies isolate pays
// ~0.2 µs more, against some µs for the connection's first packet. --policy-counters
// =false removes them.
//
// # Names
//
// names.go holds the naming contract; see ObjectName.
package nft
