// Package compile turns a snapshot of the cluster, as one node sees it, into the
// nftables table that enforces the NetworkPolicies of that node's pods: Compile is a
// pure function (no I/O, no clock, no randomness) whose result depends only on the
// snapshot's content, never on its order. The table layout is nft/doc.go's.
//
// The Kubernetes NetworkPolicy v1 API reference is the specification. This comment
// records how Compile reads it, and the decisions the reference leaves open.
//
// # Who is judged
//
// A pod takes part in policy when it is not hostNetwork, has not finished (phase
// Succeeded or Failed) and has an address (status.podIPs, else status.podIP). Such a
// pod on this node (spec.nodeName) is a target; on any node it is a peer that
// selectors can pick. Each node enforces its own pods' side only: the egress of local
// sources and the ingress of local destinations. A packet between pods of two nodes
// crosses both nodes' forward hooks and must pass both. Traffic between a node and its
// own pods never crosses the forward hook, so it always passes.
//
// A target is isolated for ingress (egress) when some policy of its namespace selects
// it with that policy type; it is then allowed what the union of the rules of all
// those policies allows. policyTypes is defaulted here, as the API server would (and
// as unit tests and trimmed objects need): when empty, Ingress always, and Egress
// when spec.egress is non-empty. An unknown policy type is ignored and reported. An
// isolated direction with no rules denies everything; a rule `{}` allows everything.
// Replies (ct established, related) always pass with Established keep; with
// recheck they pass while the policies that allowed their connection are in force
// (strict.go); ct invalid packets of isolated pods are dropped; neighbour discovery
// passes.
//
// # Peers and ports
//
// A peer with podSelector alone picks pods of the policy's namespace; with
// namespaceSelector alone, every pod of the matching namespaces; with both, pods
// matching both. Peers of a rule add up (OR). Selectors are metav1 LabelSelectors:
// `{}` matches everything. Namespaces always carry the label kubernetes.io/metadata.name
// (the API server sets it; Compile adds it when an object lacks it), and a namespace
// known only from its pods has that label alone.
//
// An ipBlock is its cidr minus its excepts, computed on interval sets (netipx); the
// peers of a rule are unioned after each block's own except, so one peer can allow
// again what another block excepts. ipBlocks match pod addresses too. Rules without
// peers allow every address of both families; an IPv4 block never opens IPv6 nor the
// reverse. A cidr with host bits set is read as its network. A cidr or except written
// IPv4-mapped (::ffff:10.0.0.0/104, which validation accepts where
// StrictIPCIDRValidation is off) is the IPv4 prefix it maps, as the API server's
// net.ParseCIDR reads it; read as IPv6 it would match nothing, and such an except
// would leave its addresses in the block.
//
// A port is TCP unless it says UDP or SCTP; a port without a number is every port of
// its protocol; endPort makes a range. A rule without ports allows every protocol and
// port, ICMP included. A named port is resolved on the destination: for ingress, on
// the target's own container ports, matching name and protocol; for egress, on each
// destination pod's container ports. A pod's container ports are those of its
// containers and of its sidecars (init containers with restartPolicy Always, which
// serve beside them; a Service's named port resolves on them too), not those of
// plain init containers, which have ended before the pod serves. An ipBlock or a rule without peers combined with
// a named port allows exactly the pods inside it (any node) that have the port, on
// their own number; an address that is no pod's (or a hostNetwork pod's) never matches
// a named port. A pod without a matching named port is not allowed by that port. A port
// given as a string of digits is read as that number.
//
// # Problems fail closed
//
// What cannot be enforced as written is reported as a Problem and never widens what is
// allowed. A rule with any invalid part (an unparsable cidr or except, an unknown
// protocol, a port outside 1-65535 or neither a number nor a valid port name, an
// endPort with a named port, without a port or below the port, an invalid selector, a
// peer that is empty or mixes ipBlock with selectors) allows nothing: its policy still
// selects and isolates its pods, and the policy's other rules still apply. Enforcing
// the valid part of a broken rule would also be safe (it allows less than the rule
// meant) but would make a rule half-enforced; whole rules are easier to reason about,
// and the Problem says which one to fix. An invalid podSelector of a policy selects no
// pod (there is nothing to isolate by it). Local pods that claim one address (an
// old pod whose sandbox is gone while its status still says Running, and the new
// pod that got its address) are reported, and the kernel cannot tell their packets
// apart: a direction that isolates one of them judges the address by its policies
// (narrower than none for the other, unless a Baseline ClusterNetworkPolicy judges
// the other: then it drops); one that isolates several by different policies drops
// the address's traffic, as does an Admin tier in which different
// ClusterNetworkPolicies (or some and none) select them. Neither's policies judge
// the other's traffic where that would allow what the other's deny.
//
// # Groups
//
// Local targets isolated for a direction are grouped by the sorted list of policies
// that select them for that direction and, for ingress, by what the named ports those
// policies use resolve to on the pod (so that every pod of a group is allowed the same
// thing). Each group has one chain and six sets (any-v4, ports-v4, ranges-v4, any-v6,
// ports-v6, ranges-v6) named by nft.ObjectName from a stable key (direction, policies, named port
// resolution); the verdict maps send each member's addresses to it. Rules are static:
// when pods come and go, or a policy's peers change, only set and map elements change;
// chains appear and disappear only when the grouping of policies does.
//
// # Set contents: disjoint elements
//
// The kernel refuses overlapping interval elements, and each group's sets hold the
// union of all its rules. Addresses are kept in two parts: ranges from ipBlocks (and
// "every address"), normalized by netipx (overlapping and adjacent ranges merged), and
// single pod addresses. A pod address inside one of the ranges is absorbed by it;
// every other pod address stays a single element, even next to another pod's or a
// range: a pod's churn is always one element (per protocol and port segment), never a
// reshaped range.
//
// The any sets are that union of the rules without ports. The ports sets are built per
// protocol: the port axis is cut at every rule's bounds into segments; each segment
// gets the union of the addresses of the rules covering it, as disjoint elements as
// above; an address element present unchanged in consecutive segments becomes one
// element over the merged port range. Two elements sharing a port come from the same
// segment and so are disjoint. Elements of a ports set whose address is wholly within
// the any set (one range of it, or one of its pod addresses) are left out: the any rule
// already lets them through on every port.
//
// Each family's port elements are then split between two sets that allow the same
// thing and are looked up one after the other (splitPortElems): ports, a hash of
// exact address . protocol . port, gets every element of one address and at most 16
// ports, spelled out port by port; ranges, an interval set, gets the rest (ipBlock
// ranges with ports, wider port ranges, a whole protocol). An interval set of
// concatenated fields is the kernel's pipapo, whose lookup cost grows with its
// elements; a hash lookup's does not (nft/doc.go, "What a packet costs"). Both rules
// are always there, so which set an element lands in never changes a rule.
//
// # Cost
//
// Pods are indexed by namespace, by label and (on first use) by address; pod
// selections, namespace selections, rule address sets and named port resolutions are
// computed once per compilation and shared by every group. A full compilation is then
// roughly linear in the size of the result (the number of set elements), which is the
// number of groups times the peers each is allowed: see BenchmarkCompile.
//
// A Compiler keeps the index, the parsed policies, the peer selections and each
// group's sets and names between compilations, and a change drops only the
// groups it can affect; a pod's change, or a namespace's, is patched in
// instead (patch.go: the elements of the pod's addresses, or of the
// namespace's pods', made anew), so
// recompiling after one change costs the node's grouping (its own pods) plus
// the groups that change refills or patches, not the whole table. Compile is a
// fresh Compiler, and TestCompilerMatchesCompile checks the two agree over
// random change sequences.
//
// # ClusterNetworkPolicy: the Admin and Baseline tiers
//
// ClusterNetworkPolicy (policy.networking.k8s.io v1beta1; v1alpha2 has the same
// schema and the controllers convert it) is read from the doc comments of its types
// in sigs.k8s.io/network-policy-api, the specification. How Compile reads them:
//
// Tiers. A connection's first packet is judged for the source pod's egress and the
// destination pod's ingress, each on its own: Admin tier, then NetworkPolicy, then
// Baseline, then the default (allow). The two directions are independent, as for
// NetworkPolicy: a packet passes when both allow it.
//
// Order. Within a tier, policies run by ascending spec.priority; equal priorities are
// all applied, in the order of their names (a deterministic tie-break the API leaves
// to the implementation). Within a policy, rules run in written order. The first rule
// that matches decides for its direction:
//   - Accept: allowed. In egress, no further egress rule of any tier (NetworkPolicy
//     included) is consulted, but the destination's ingress is still judged, all
//     tiers. In ingress, the packet is allowed.
//   - Deny: dropped (silently: the suite expects a timeout, not a refusal).
//   - Pass: the rest of the tier is skipped. From Admin, NetworkPolicy judges next;
//     when no NetworkPolicy isolates the pod for that direction, Baseline does. From
//     Baseline, the default: allowed.
//
// A rule without a match leaves the packet to the next rule, policy and tier.
// NetworkPolicy always decides for the pods it isolates (Baseline is never consulted
// for them in that direction). A policy without ingress (egress) rules does not take
// part in ingress (egress).
//
// Subjects: spec.subject.namespaces (every pod of the matching namespaces) or
// spec.subject.pods (namespaceSelector AND podSelector). Only pods that take part in
// policy (see "Who is judged") are subjects or pod peers: hostNetwork pods never are.
//
// Peers. Ingress: namespaces, pods. Egress: namespaces, pods, networks, nodes and
// domainNames. A rule's peers add up (OR). networks are CIDRs that match any address,
// pod addresses included, with every protocol (ICMP too) when the rule lists no
// protocols. nodes selects nodes by label and stands for every IP address in their
// status.addresses (of both families; hostnames are skipped). A CIDR with host bits
// set is read as its network.
//
// Protocols. A rule without protocols matches every protocol and port. Each entry is
// tcp, udp or sctp with a destinationPort (a number, or a range start-end inclusive),
// or a destinationNamedPort, resolved on the destination as for NetworkPolicy: for
// ingress on the subject pod itself, for egress on each destination pod; an address
// that is no pod's never matches a named port. A tcp/udp/sctp entry without a
// destinationPort (the CRD forbids it) is read as every port of that protocol.
//
// Traffic a pod sends to its own node (or to a hostNetwork pod, or a Service endpoint
// on it) reaches the node's input hook, not forward: NetworkPolicy allows it always,
// but Admin and Baseline egress rules judge it (nodes and networks peers can match
// it; Deny-all fallbacks too). Traffic a node sends to its own pods leaves through
// output and is not judged, as for NetworkPolicy.
//
// Fail closed, as the API prescribes for peers it cannot understand: a peer with no
// field set (an unknown field from a newer CRD) makes an Accept rule match no
// traffic and a Deny or Pass rule "deny all" (drop whatever reaches it, every peer,
// protocol and port). A domainNames peer (not implemented: it needs DNS snooping) is
// unsupported: an Accept rule matches through its other peers only, and nothing when
// all its peers are domainNames; a Deny or Pass rule with one denies all. Any other
// invalid part of a rule (an invalid selector, a CIDR that is not one or is
// IPv4-mapped, which the CRD's isCIDR() refuses, an unknown protocol, a port outside
// 1-65535 or a range whose start exceeds its end, an invalid port name, an unknown
// action) makes an Accept rule match nothing and a Deny or Pass rule deny all. An invalid subject selector
// selects no pod; an unknown tier leaves the policy out. Each is a Problem naming the
// ClusterNetworkPolicy (Problem.Cluster), reported like NetworkPolicy's: an Event on
// the object and one log line, and it never changes what other policies enforce.
//
// Cost. Local subjects are grouped per tier and direction by the list of policies
// that select them (in evaluation order); each group has one chain per family
// holding those policies' rules for that family, reached by goto from the
// family's verdict map on the subject's address. A packet walks only the rules of
// the policies that select its pods, and of its own family. Each rule is one nft
// rule per family and kind of port match (the port lookup before the peers';
// none of the peers when its networks cover the family), with named sets of the rule's own shared
// by every group that runs the policy, so pod churn is element changes: the peers'
// addresses (-v4, -v6, hashes; -net-v4, -net-v6, interval sets, when the rule has
// networks peers); the protocols and ports, split as a group's ports and
// ranges are (splitPorts): single ports, and ranges of at most 16 ports spelled
// out, in a hash of protocol . port (-ports), wider ranges in an interval set
// (-ranges), each set and the rule that looks it up only when the rule's ports
// have such elements; and the named port destinations, a hash of address .
// protocol . port (-named-v4, -named-v6: a named port resolves to one number per
// pod). So a rule on single ports, nearly every rule, costs no pipapo lookup; one
// with both kinds is two nft rules with the same verdict and named counter, one
// looking up each set. Which sets a rule has depends on its ports alone, never on
// pods. With no ClusterNetworkPolicy at all the table is exactly the NetworkPolicy
// table; nft/doc.go shows both layouts.
//
// # Seeing verdicts
//
// Two options add to each group chain what lets a person see its verdicts, without
// changing any verdict (the golden case `observe` is crosschecked like the others):
// the deny log (a rule before the isolation drop that logs to NFLOG through one
// node-wide limit) and the policy counters (two named counters per group chain,
// allowed and denied, credited to the group's policies by the agent); in strict
// mode the groups' reply chains log and count alike. In the tiers, each
// ClusterNetworkPolicy rule counts into a named counter of its own, and a rule
// that drops goes to a drop chain of its own that logs (cnp_observe.go).
// Compiler.Attribution maps the log prefixes and counter names of the table back
// to policies and rules, and each tier chain's rules to the ClusterNetworkPolicy
// rules they are (Attribution.Tiers, for explain). nft/doc.go describes both and
// how packets are attributed.
//
// # Where things are
//
// One file per piece, each piece's methods with it:
//
//	compile.go    the front door: Snapshot, Options, Problem, Compile
//	compiler.go   Compiler: the objects across syncs, and what each change invalidates
//	pass.go       pass: one compilation (group the local targets, fill groups, assemble)
//	group.go      group and cachedGroup: one chain and its sets; its key, names, chain
//	elements.go   set elements: disjoint port elements (portElems) and shared keys (keyTable)
//	patch.go      a pod's change patched into a group's sets: its addresses' elements only
//	addrset.go    addrSet: address unions on interval sets
//	table.go      the fixed chains, the verdict maps, comments
//	observe.go    options: the deny log rule and the policy counters; Attribution
//	strict.go     options: --established (epochs in the conntrack mark, reply chains,
//	              StampEpoch, Narrows: which changes recheck open connections)
//	unknown.go    options: --unknown-pod-cidrs (drop unknown local sources)
//	policy.go     NetworkPolicy parsed once into policy, rule, peer, port
//	index.go      index: pods and namespaces arranged for selection, and podInfo
//	pod.go        Pod: what the compiler reads of a pod (PodOf), the agent's cache record
//
// The ClusterNetworkPolicy tiers, apart from the NetworkPolicy path:
//
//	cnp_parse.go     ClusterNetworkPolicy parsed once into clusterPolicy, cnpRule, cnpPeer
//	cnp_compiler.go  the Compiler's Set/Delete for them and for nodes, and invalidation
//	cnp_tier.go      tierPass: subject groups per tier and direction, their chains, the maps
//	cnp_sets.go      each rule's sets: peers, exact ports and port ranges, named port destinations
//	cnp_table.go     the tiers' fixed chains (forward's tier walk, ingress-tiers, input), nodeInfo
//	cnp_observe.go   options in the tiers: per-rule counters, drop chains that log, Attribution
package compile
