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
//	                                                (--established=keep; recheck: see below)
//	    icmpv6 type { nd-* } accept                 neighbour discovery always passes
//	    jump pod-egress                             the source pod's egress, if local and isolated
//	    jump pod-ingress                            the destination pod's ingress, likewise
//	chain pod-egress       ip saddr vmap @egress-v4;  ip6 saddr vmap @egress-v6
//	chain pod-ingress      ip daddr vmap @ingress-v4; ip6 daddr vmap @ingress-v6
//	map egress-v4 ...      local isolated pod address -> jump eg-<hash>-<policies>
//	map ingress-v4 ...     local isolated pod address -> goto ing-<hash>-<policies>
//	chain ing-<hash>-<ns>/<policy>[_and_N]   one per group of local pods selected by the
//	    same policies (and resolving named ports alike):
//	    ct state invalid counter drop
//	    ip saddr @<set>-any-v4 accept                                peers allowed on every port
//	    ip saddr . meta l4proto . th dport @<set>-ports-v4 accept    peer . protocol . port (hash)
//	    ip saddr . meta l4proto . th dport @<set>-ranges-v4 accept   the same with ranges (interval)
//	    (the same three for ip6)
//	    counter drop                                                 default deny
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
// # What a packet costs
//
// Measured on the 2-core test VM (test/bench, B10 and perf; ../test/bench/README.md
// has the runs and their spreads). An established packet takes forward's first rule:
// three expressions, the same as a table that only turns conntrack on. A new flow to
// an isolated pod walks about ten rules (forward, the two dispatch chains, the group
// chain) with four set lookups.
//
// Why ports and ranges are two sets: the kernel keeps an interval set of
// concatenated fields in its pipapo backend, whose lookup ANDs bitmaps as long as the
// set has elements, so with one such set per group a new flow's cost grew with the
// peers allowed (perf: pipapo 0.44 of nf_tables' 1.57 µs per new flow at the
// benchmark's typical ~100 elements, 1.57 of 2.43 µs at its adversarial 20,000). Pod
// peers on single ports, nearly every element, now sit in a hash of address .
// protocol . port (a short port range spelled out), whose lookup does not grow; only
// ipBlock ranges with ports and wide port ranges stay in the pipapo set, which is
// usually empty. nf_tables' share of a new flow went from 1.57 to 0.76 µs (typical)
// and from 2.43 to 0.70 µs (adversarial), against 0.12-0.16 µs for a one-rule table
// that only turns conntrack on; what is left is the rule walk itself (nft_do_chain)
// and three hash lookups.
//
// What remains between a node without any table and this one is mostly conntrack,
// which the table needs to let replies through and which every node running
// kube-proxy or a NATing CNI already has on: 0.6-0.9 µs per packet of a new flow;
// of a whole TCP connection's CPU, conntrack 3.7-5.0%, the hook dispatch 0.5% and
// nf_tables 0.9-1.9% (1.2-1.3% for the conntrack-only table's one rule on every
// packet; 2.7-3.1% before the split). Shapes tried and not adopted, for no
// difference the benchmark could resolve: the dispatch inlined into forward with
// IPv4 first (no jumps, the ICMPv6 rule after), and the ports lookup before the any
// lookup. Putting the dispatch before `ct state established` would judge every
// reply as a first packet: not a shape of the same policy.
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
// # The ClusterNetworkPolicy tiers
//
// While at least one ClusterNetworkPolicy exists, the same table gains the Admin and
// Baseline tiers (nft/compile's doc says how their API is read). The NetworkPolicy
// chains above stay as they are; forward's two jumps become the tier walk, and an
// input chain is added:
//
//	chain forward          ... (the same admission rules)
//	    jump admin-egress         Admin tier of the source pod's egress
//	    jump pod-egress           NetworkPolicy, as above
//	    jump baseline-egress      Baseline, for sources no NetworkPolicy isolates for egress
//	    goto ingress-tiers        the destination's ingress: always decides
//	chain ingress-tiers
//	    jump admin-ingress
//	    jump pod-ingress          NetworkPolicy, as above (accepts or drops when isolated)
//	    jump baseline-ingress     for destinations no NetworkPolicy isolates for ingress
//	    accept                    no tier decided: the Kubernetes default
//	chain input            type filter hook input priority filter (0); policy accept
//	    (forward's admission rules)
//	    jump admin-egress         a pod's traffic to its own node: NetworkPolicy always
//	    jump baseline-egress      allows it, so only the tiers judge it
//	chain admin-egress     ip saddr vmap @admin-egress-v4;  ip6 saddr vmap @admin-egress-v6
//	chain admin-ingress    ip daddr vmap @admin-ingress-v4; ...   (baseline-* alike)
//	map admin-egress-v4    local subject IPv4 address -> goto adm-eg-<hash>-cnp/<name>[_and_N]-v4
//	map admin-egress-v6    local subject IPv6 address -> goto adm-eg-<hash>-cnp/<name>[_and_N]-v6
//	chain adm-eg-<hash>-cnp/<name>[_and_N]-v4    one per group of local subjects that
//	    the same policies select (in evaluation order: priority, then name) and
//	    family; the rules of those policies for IPv4 addresses, in order, one nft
//	    rule per protocol kind:
//	    ip daddr @cnp-<hash>-cnp/<name>-eg-<h0>-v4 <verdict>                          every port
//	        (peers with networks: an interval set, -eg-<h0>-net-v4; without, a hash)
//	    meta l4proto . th dport @...-eg-<h1>-ports ip daddr @...-eg-<h1>-v4 <verdict>     exact ports (hash)
//	    meta l4proto . th dport @...-eg-<h1>-ranges ip daddr @...-eg-<h1>-v4 <verdict>    wide ranges (interval)
//	    ip daddr . meta l4proto . th dport @...-eg-<h2>-named-v4 <verdict>            named ports (hash)
//	    meta l4proto . th dport @...-eg-<h3>-ports <verdict>         peers 0.0.0.0/0: no lookup
//	    counter drop                                  a Deny or Pass that fails closed
//	chain adm-eg-<hash>-cnp/<name>[_and_N]-v6    the same rules for IPv6 (ip6 daddr, -v6 sets)
//	chain adm-in-..., bl-eg-..., bl-in-...    the same for the other tiers and directions
//	set cnp-<hash>-cnp/<name>-<eg|in>-<h>-<v4|v6|net-v4|net-v6|ports|ranges|named-v4|named-v6>
//	                       a rule's peers (-v4, -v6: a hash when they are pods and
//	                       nodes only; -net-v4, -net-v6: an interval set with
//	                       networks); its single ports (and
//	                       ranges of at most 16 ports, spelled out); its wider port
//	                       ranges; its named port destinations. Shared by every group
//	                       that runs the policy. <h> hashes the rule's peers and
//	                       protocols (-2, -3 for a later rule with the same): a
//	                       rule's objects follow the rule, not its index, so a rule
//	                       inserted before others leaves their sets, counters and
//	                       drop chains alone (the rule comments that look them up
//	                       give the index)
//
// A rule's -ports and -ranges sets exist only when it has such ports (most rules
// name single ports and have no -ranges set, nor the rule that would look it
// up): for the same reason as the groups' ports and ranges, an interval set of
// concatenated fields is the kernel's pipapo, a dearer lookup than a hash's even
// with a handful of elements (perf, B10's tiered scenario: about 0.1 µs per
// pipapo lookup, 0.04 µs per hash lookup; its new flows' pipapo went from 0.58 to
// 0.15 µs). All nft rules of one policy rule, in both families' chains, have its
// verdict and count into its one named counter.
//
// Why a chain per family, ports before peers, and no lookup for every address:
// a flow walks the rules of its own family only. The tier map of the flow's
// family sends it to that family's chain, by goto, so the group chain's return
// goes back to the dispatch chain's caller without walking the dispatch chain's
// other-family lookup either; a mixed chain made every IPv4 flow test each IPv6
// rule (and the reverse), and every group chain's return walk the other family's
// map rule. Within a rule, the protocol and port lookup (a hash of a few
// elements, which most new flows miss) comes before the peers' (a set that may
// hold every pod of the cluster): a conjunction means the same in either order. A rule whose networks cover every address of a family (0.0.0.0/0, ::/0)
// needs no peer lookup in that family's chain, and its -v4 or -v6 set is left
// out. A rule whose peers are pods and nodes only (no networks) has hashes for
// peer sets: every element is one address, and an interval set's lookup is a
// binary search over its elements, which for a peer of every namespace is every
// pod of the cluster (about 0.6 µs per new flow at 10,000 pods, 0.04 µs as a
// hash; perf). Whether a rule's peer sets are hashes depends on its peers'
// kinds, never on pods. B10's tiered scenario (four tier chains on a new flow's
// way): 21 rules walked per new flow instead of 27, nf_tables 1.47 µs of it
// instead of 2.42 (perf), about 1 µs of CPU less per new flow
// (../test/bench/README.md has the runs).
//
// Verdicts by tier and direction. Every group chain is reached from its tier's
// dispatch chain, which forward (or ingress-tiers, or input) jumped to; the map's
// goto replaces the dispatch chain, so `return` hands the packet to the next tier:
//
//	                 Accept              Deny   Pass     no rule matched
//	Admin egress     goto ingress-tiers  drop   return   return (to NetworkPolicy)
//	Baseline egress  return              drop   return   return (egress done)
//	Admin ingress    accept              drop   return   return (to NetworkPolicy)
//	Baseline ingress accept              drop   return   return (to the default, accept)
//
// An Admin egress Accept must skip NetworkPolicy and Baseline egress yet leave the
// destination's ingress to be judged: it goes to ingress-tiers, which ends in a
// verdict of its own and so never returns into the egress walk it left. Pass from
// Admin returns to the caller of the dispatch chain, which goes on to pod-egress (or
// pod-ingress); NetworkPolicy decides for the pods it isolates, and the Baseline maps
// hold only the pods it does not isolate in that direction, so Baseline judges
// exactly those. In the input hook there is no pod-egress (NetworkPolicy allows a
// pod's traffic to its own node), and an Admin egress Accept reaches ingress-tiers,
// whose maps hold no node address: accepted.
//
// A packet walks only the rules of the policies that select its own pods (one map
// lookup per tier and direction otherwise): the cost does not grow with policies
// that select other pods. Pod churn is set and map elements; chains change when a
// policy or the grouping of subjects changes.
//
// In strict mode (--established=recheck, below) the tiers are in the re-judged
// path: forward's and reply-recheck's NetworkPolicy jumps are spliced alike
// (reply-recheck gains admin-egress-reply, baseline-egress-reply and goto
// ingress-tiers-reply, dispatch chains keyed on the reply's destination for egress
// and source for ingress), every allowed end (an ingress Accept, ingress-tiers'
// last rule) is `goto ct-stamp` instead of accept, and each tier group chain starts
// with `ct direction reply goto <chain>-reply` (adm-eg-…-v4-reply), its twin holding the same rules
// with source and destination swapped (th dport read as th sport): a reply of an
// older epoch is judged as its connection. The input chain is rechecked too:
//
//	chain input
//	    ct state established,related ct mark & 0x00ff0000 == 0x00050000 accept   epoch 5
//	    icmpv6 type { nd-* } accept
//	    ct direction reply accept      a reply to a connection the node opened
//	    jump admin-egress
//	    jump baseline-egress
//	    goto ct-stamp
//
// so a pod's open connection to its own node that a change now denies is cut at
// its next packet, like forward's (StampEpoch moves both fast paths). A reply
// arriving at input belongs to a connection the node itself opened (kubelet
// probes leave by output, which no policy judges): it passes unjudged. Every
// connection to the node, a pod's or not, is stamped at its first packet, so
// established traffic to the node keeps the one-comparison fast path.
//
// # Established connections: --established=recheck (strict mode)
//
// With keep, the first rule accepts every established and related packet: a
// connection allowed once lives on whatever the policies become. With recheck (the
// agent's default) a policy change that may deny an open connection cuts it, in the
// kernel, with nothing done per connection in user space and one comparison more
// per established packet while nothing changes. Every connection carries in bits of
// its conntrack mark the epoch in which it was last allowed, and only connections of
// the current epoch take the fast path:
//
//	chain forward
//	    ct state established,related ct mark & 0x00ff0000 == 0x00050000 accept   epoch 5
//	    icmpv6 type { nd-* } accept
//	    ct direction reply goto reply-recheck      a reply of an older epoch
//	    jump pod-egress
//	    jump pod-ingress
//	    goto ct-stamp                              allowed: not isolated, or egress allowed
//	chain ct-stamp         ct mark set ct mark & 0xff05ffff | 0x00050000 accept
//	                       (keep the bits outside the mask, set epoch 5: nft lists the
//	                       mask 0xff00ffff with the epoch's bits folded in, which the
//	                       | sets anyway)
//	chain reply-recheck    jump pod-egress-reply; jump pod-ingress-reply; goto ct-stamp
//	chain pod-egress-reply    ip daddr vmap @egress-v4;  ip6 daddr vmap @egress-v6
//	chain pod-ingress-reply   ip saddr vmap @ingress-v4; ip6 saddr vmap @ingress-v6
//	chain ing-<hash>-...   ct state invalid counter drop
//	                       ct direction reply goto ing-<hash>-...-reply
//	                       the allow rules, with `goto ct-stamp` instead of accept
//	                       counter drop
//	chain ing-<hash>-...-reply   the same sets, looked up by the reply's destination
//	                       (the connection's source) and source port (its destination
//	                       port): ip daddr @any-v4, ip daddr . meta l4proto . th sport
//	                       @ports-v4, ...; counter drop
//	chain eg-<hash>-...-reply    likewise on ip saddr . meta l4proto . th sport, return
//
// A first packet walks the policy chains as in keep mode and, when allowed, is
// stamped with the current epoch (ct-stamp). A change that may narrow what is
// allowed moves to the next epoch, in a transaction of its own right after the
// change's: the only rules that name the epoch are forward's first and ct-stamp's,
// so that transaction rewrites two fixed chains whatever the number of connections,
// and every open connection is then of an older epoch. (Not in the change's own
// transaction: the kernel makes a transaction's rules visible to packets before it
// has committed the new contents of its interval sets, so a packet in between
// walks the new rules with the old elements. One of a connection the change
// denies, say from an address it removes from an allow set, would be stamped with
// the new epoch and live on: nft(8) did so in 29 of 100 commits under a flood,
// test/e2e's strict restart spec in 2 runs of 111, controllers' TestEpochMovesAlone
// in 30 rounds of 40. Stamped with the epoch in force, as the change's transaction
// stamps, it is judged at the move, whose transaction changes no set. Should the
// move's transaction fail, the change stays in force and the full sync that
// follows any failure moves the epoch: what the change denies is cut then.) Its next
// packet, in either direction, walks the policy chains once, like a first packet:
// allowed, it is stamped again and its later packets take the fast path, with no
// packet lost; denied, it is dropped and the mark stays old, so every later packet
// is judged (and dropped) again, until a policy allows it again. A reply is judged as the connection it belongs to: the
// egress of its destination and the ingress of its source, on the connection's
// destination port (its source port), with the group's own sets; so a server
// pushing to a client that never sends again is cut too, and the reply of an
// allowed connection arriving before the client's next packet passes. A pod
// address reused by a new pod is a new map element, hence a new epoch: an old
// connection to the address is judged as a connection to the new pod.
//
// A table found drifted (a full sync's or a repair's read: someone else's change)
// may have let connections through that the agent's table denies, stamped with the
// epoch in force. The sync after such a repair moves to the next epoch, so each is
// judged again.
//
// Connections conntrack picks up midstream. Strict mode judges a connection in
// the direction conntrack recorded it. That direction is right when conntrack saw
// the connection's first packet. A connection whose entry is lost while it lives
// is picked up again from whichever packet comes next, in either direction: TCP
// when nf_conntrack_tcp_loose is 1 (the default), and UDP always. Entries are lost
// by `conntrack -F`, and by their own timeouts; a connection opened (or whose
// entry timed out) while nothing in the namespace used conntrack has none (this
// table deleted, and no other table, such as kube-proxy's, with a ct expression:
// the entries already there stay, untouched, and are found again when the table
// comes back, with their marks). If the server's packet comes first, the connection is judged as the
// server's to the client, which policy may allow where the real one is denied.
// test/e2e keeps a user of conntrack in place when it deletes the table ("cuts,
// once the table is back, the connections opened while it was gone"). Without one,
// the denied TCP flow of that spec survived the table's return in this reversed
// direction. Judging a midstream TCP pickup in both directions would close this
// for TCP, at the price of cutting allowed connections after a conntrack flush.
// Not done.
//
// Related packets carry their connection's mark (ICMP errors; expected
// connections inherit their master's mark). Of the current epoch they pass; of an
// older one they are judged as packets of their own, which passes an ICMP error
// only from a peer allowed on every port, until the connection's next packet
// stamps it again (a sender repeats a lost PMTU error).
//
// Which changes move the epoch (compile.Narrows): every change but elements added
// to allow sets. The sets of a ClusterNetworkPolicy rule that denies, or that
// passes from the Admin tier (skipping the tier's later Accept rules), are not
// allow sets: a peer, port or named port destination added to one may deny an
// open connection. A new peer pod of an allowing rule, the commonest pod event,
// adds elements and rechecks nothing; a pod deleted (elements removed), a new local isolated pod (a
// map element) and any policy change that reshapes chains recheck every open
// connection through the node once. What a recheck costs is one slow-path walk per
// open connection, spread over their next packets (test/bench: b7_*).
//
// The mark bits are the agent's --ct-mark-mask (default 0x00ff0000: epochs 1-255;
// epoch 0 is never stamped, it is the mark of connections no table of ours judged:
// those open before the agent started, or in keep mode, are judged once). Other
// bits are never written: `ct mark set ct mark and ~mask or epoch`. kube-proxy
// (iptables and nftables modes) marks packets, not connections (0x4000 masquerade,
// 0x8000 drop); the AWS VPC CNI uses connection mark bit 0x80 and Istio ambient
// 0x100-0x2ff by default: pick another mask where a node uses these bits.
//
// Wrap-around: the epoch after the last is 1 again, so a connection idle through a
// whole cycle of epoch changes would carry the current epoch without having been
// judged under it. The agent sweeps before that can happen: at its first epoch
// change, and then whenever the next epoch is the one that was current at the last
// sweep (once per cycle: every 255 changes with the default mask), it clears the
// epoch bits of every connection whose epoch is not the current one
// (nft/netlink ClearCtMark: one conntrack dump, one update per connection so
// cleared; those are judged again at their next packet, as they would have been).
// Measured with 10,000 connections open (test/bench, b7_sweep_*): ~75 ms when none
// needs clearing, ~0.5 s when all do; per-packet cost none.
//
// Restart: the agent reads the epoch in force from the kernel's table and moves to
// the next one at its first sync, whatever it was: policies may have changed while
// no agent ran, and the kernel's rules are not read back to prove otherwise. So
// every open connection through the node is judged once after a restart (no loss
// for allowed ones: test/e2e). With no table in force, the first change's own
// transaction stamps the last epoch of the cycle (the one before 1, which the move
// takes), and the sweep before that epoch comes round again clears it.
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
// first 128 bytes (network and transport headers) to the NFLOG group (100 in these
// examples; the agent's --deny-log-group, 7600 by default) and never waits: if the
// agent reads slowly or not at all, the socket buffer fills and the kernel drops
// log messages, never packet verdicts (nft/nflog counts what was lost).
// The prefix names the chain by its direction and hash (the head of the chain's
// name), which the compiler's Attribution maps to the policies that isolate the
// chain's pods: the agent logs their namespace/name, not the hash. The `ct state
// invalid` drop is not logged.
//
// In strict mode a group's reply chain (a reply of an older epoch judged as its
// connection) logs its drop the same way, with the prefix "nftpolicy-deny
// ing-3fa9c2d1 reply": the agent's line says `"reply": true`, and its source and
// destination are the reply's (the connection's server and client).
//
// In the tiers, a rule that drops (a Deny, or a Deny or Pass that fails closed
// and denies all) sends what it matches to a chain of its own, shared by every
// group that runs the policy, which logs and drops:
//
//	chain adm-in-a8a32e89-cnp/pass-x-ingress_and_2-v4 {
//	    ...
//	    ip saddr @cnp-675d881c-cnp/deny-y-to-x-in-9585471b-v4 counter name "..." counter goto cnp-675d881c-cnp/deny-y-to-x-in-9585471b-drop
//	}
//	chain cnp-675d881c-cnp/deny-y-to-x-in-9585471b-drop {
//	    limit name "deny-log" log prefix "nftpolicy-deny cnp-675d881c in-9585471b" group 100
//	    drop comment "cnp/deny-y-to-x ingress rule 0 (no-y): Deny: logs and drops"
//	}
//
// A chain rather than a log rule in the group chain: the log rule would need the
// Deny rule's matches again (evaluated for every packet that reaches the rule,
// matching or not), and the limit must never gate the drop. A packet that
// matches no Deny pays nothing; a denied one a goto. The prefix is the policy's
// hash and the rule's key (in-<h>, eg-<h>), which Attribution maps to the
// ClusterNetworkPolicy, its tier, priority and rule: the agent logs
// `"policies": ["cnp/deny-y-to-x"], "tier": "Admin", "priority": 10, "rule": 0,
// "ruleName": "no-y"` (and `"failClosed": true` for a rule that fails closed). In
// strict mode each such rule has a twin for replies (`...-in-<h>-drop-reply`, prefix
// "... in-<h> reply"), which the reply twins of the tier chains go to. A line
// logged just before an edit that inserts a rule still names the rule that
// dropped the packet: its key did not move to another rule.
//
// # Policy counters
//
// With policy counters on, every group chain counts into two named counters of its
// own, named like its sets:
//
//	counter ing-9d5f8a81-x/allow-from-y-allow     packets the chain allowed
//	counter ing-9d5f8a81-x/allow-from-y-deny      packets it dropped for isolation
//	chain ing-9d5f8a81-x/allow-from-y {
//	    ip saddr @...-any-v4 counter name "ing-9d5f8a81-x/allow-from-y-allow" counter accept comment "allowed by x/allow-from-y"
//	    ...
//	    counter name "ing-9d5f8a81-x/allow-from-y-deny" counter drop comment "isolated by x/allow-from-y"
//	}
//
// One counter per group, not per policy: a packet costs one counter update whatever
// the number of policies that select its pod (per-policy counters would cost one
// update per policy, 1,000 for the benchmark's adversarial pod). The agent reads
// the counters at scrape time and credits each of the group's policies with them
// (nftpolicy_policy_packets_total{namespace,policy,direction,verdict,tier}).
//
// Attribution is therefore exact for drops: a dropped packet was isolated by each
// of the group's policies and allowed by none, so each of them denied it. For
// allowed packets it is exact when the group has one policy; when the pod is
// isolated by several (the chain `ing-...-x/allow-from-y_and_1`), the group's sets
// hold the union of their rules and the kernel cannot tell which policy's rule
// matched, so the packet counts as allowed for every policy of the group: read
// `verdict="allow"` as "allowed while this policy isolated the pod", and the sum
// over policies may exceed the packets. `nftpolicy explain` names the exact rule
// for one connection. Replies (ct established) of the current epoch never reach
// a group chain and are not counted; neither is `ct state invalid`. In strict
// mode a packet of an older epoch is judged again, in either direction: its
// verdict counts like a first packet's (a reply in the group's reply chain, into
// the group's counters), so each recheck after an epoch change counts once.
//
// In the tiers every rule of a ClusterNetworkPolicy counts what it matched into a
// named counter of its own, shared by every group that runs the policy and named
// by the rule, its tier and what it does (`cnp-675d881c-cnp/deny-y-to-x-in-9585471b-admin-deny`;
// allow, deny or pass): a rule whose tier or action changes counts into a new
// counter; one that only moves (a rule inserted before it) keeps its counter. The agent
// serves them with tier="admin" or "baseline" and no namespace
// (nftpolicy_policy_packets_total{namespace="",policy="deny-y-to-x",tier="admin",
// direction="ingress",verdict="deny"}; NetworkPolicy's series have
// tier="networkpolicy"). Attribution is exact: a rule counts only the packets it
// decided. The cost is one named counter update per tier that decides a first
// packet (at most one rule per tier and direction matches; none when no rule
// does): TestCounterCost's figure per update, one to four times per connection.
//
// The counters are objects, not rule statements, so rewriting a chain (the periodic
// full sync, a restarted agent adopting the table, a repair of someone else's
// change) keeps their counts. A group's counters go with the group (when the
// policies selecting its pods change) and start at zero when the table is replaced
// whole (it was deleted, or could not be adopted); the agent carries each counter's
// last value read into its policies' totals, so a policy's total never decreases
// while the agent runs (what a vanished group counted since the last scrape is
// lost). A counter created again between two scrapes (its group gone and back)
// is told by the Applier, which numbers the creations of the objects it writes
// (netlink.CounterValue.Created), not by its value going down. What the agent
// carried lives in its memory: a restarted agent's totals are the kernel's
// counters alone, which Prometheus takes for a counter reset when they are lower.
//
// The cost is one named counter update for each packet that reaches a group chain:
// the first packet of a connection (replies and later packets pass on conntrack
// state before), every packet of a one-way UDP flow. nft/netlink's TestCounterCost
// measured 36-45 ns per named counter update on the 2-core test machine (an
// anonymous counter, on every group chain rule already, was within noise of none).
// --policy-counters=false removes them.
//
// # Unknown local pods: --unknown-pod-cidrs
//
// A new pod can send before its address reaches the API server and the agent, so a
// pod that a policy isolates may talk freely for its first moments (test/e2e shows
// it; test/conformance measures it on a real cluster). Given the node's pod CIDRs,
// the forward chain drops what comes from an address of them that no local pod the
// agent knows has, right after neighbour discovery:
//
//	ip saddr 10.244.1.0/24 ip saddr != @local-pods-v4 counter drop
//	ip6 saddr fd00:10:244:1::/64 ip6 saddr != @local-pods-v6 counter drop
//	set local-pods-v4      every eligible local pod's address, isolated or not
//
// With the deny log on, a rule of the same matches before each drop logs through
// the node's deny-log limit (prefix "nftpolicy-deny unknown-pod"; the agent logs
// the packet with unknownPod true and no policy): a new pod's first packets are
// not dropped without a word.
//
// Unknown means isolated. The CIDRs are given on the command line or, with
// --unknown-pod-cidrs=node, read from the Node object (spec.podCIDRs) and followed
// as it changes; a Node without them (a CNI with its own IPAM) gets no drops, and
// the agent says so (controllers/unknown.go). Established connections are not
// affected in keep mode (the first rule passes them); in recheck mode a connection
// of an older epoch from an address no known pod has any more is dropped, as it
// should be. Traffic towards an unknown local address is not covered (its sender's
// egress is judged; an unknown receiver has no ingress policy yet). Adding a pod
// adds an element (no epoch change); removing one removes it (an epoch change, as
// any removal).
//
// Drop, not hold, not reject. The cost falls on every new pod, selected or not:
// what it sends before the agent has it is dropped. test/e2e measures it (a pod that
// sends as its Pod object is written, 100 pods): its first UDP datagram to get
// through leaves 32 ms later at the median (p99 280 ms), and a TCP connection it
// opens at once completes in 1.025 s (p99 1.09 s) instead of 1 ms, because TCP sends
// a dropped SYN again only after its initial retransmission timeout, 1 s (RFC 6298);
// a lost UDP datagram waits for the application's own retry (a DNS query: the
// resolver's timeout, 5 s with glibc's default). Nothing better is possible in the
// kernel without leaving it: nftables has no verdict that holds a packet for a
// while (queue hands it to user space, NFQUEUE, which we never do: a packet must
// not wait for a process), and delaying in tc would delay every packet, known or
// not, since tc cannot see our sets. Rejecting (a TCP reset, an ICMP unreachable)
// would be faster but wrong: the application's connect fails at once with
// ECONNREFUSED or EHOSTUNREACH instead of succeeding a second later, and many do
// not retry. A dropped SYN is the one outcome every TCP stack already handles.
// The wait is the agent's latency after the kubelet writes the pod's address; on a
// real cluster it is usually over before the pod's first container starts (the
// README has the counts).
//
// # The CNI gate's mark: --cni-gate-conf-dir
//
// Every table the agent writes holds one empty set for the CNI gate
// (controllers/cnigate), with the gate on or off:
//
//	set synced-boot-8d2f6c1e-3b4a-4f0e-9c1d-2a7b5e6f8091 { type inet_proto; comment "in force since ..." }
//
// named for the node's boot (/proc/sys/kernel/random/boot_id). The agent compiles
// only from complete caches, so a table with it is this boot's agent's, in force;
// the gate's plugin asks for the set by name (one netlink GETSET) before it lets a
// new pod's network come up. A table loaded at boot from a ruleset saved in an
// earlier one carries that boot's name, so it does not count. No rule refers to
// the set: it costs no packet anything. Its name is the one that changes at a
// reboot, the first sync after which replaces it in the same batch as the rest.
// Marked with the gate off too, so that an entry left in a node's CNI
// configuration (the gate's component taken out of the overlay without
// config/cleanup) holds no pod while an agent runs.
//
// # Names
//
// names.go holds the naming contract; see ObjectName and ObjectNames. A name
// longer than 127 bytes has its label cut, never its head (prefix and hash), the
// `_and_N` that counts a group's other policies, or its suffix; all the objects of
// a group are cut alike, so the chain's name is the prefix of its sets' and
// counters' names and its reply twin is `<chain>-reply`. A comment longer than
// nft's 128 bytes is cut with "...": a group's comment still names its first
// policy ("isolated by <ns>/<na... +2 more"), and a ClusterNetworkPolicy rule's
// loses the policy's name first, then the rule's, never "egress rule 2" or its
// action.
package nft
