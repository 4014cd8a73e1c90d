// Package cluster builds a Kubernetes-shaped network on one machine out of
// network namespaces, for end-to-end tests, the demo and benchmarks: nodes
// joined by an underlay, pods wired to their node the way a routed CNI (kindnet,
// Calico) wires them, an external host outside the pod CIDRs, and a probe
// engine that measures a whole reachability matrix in about a second. There is
// no Kubernetes and no policy agent here; callers run those against the node
// namespaces (Node.NetNSPath).
//
// # Topology and address plan
//
// Every namespace is named <id>-<role>, where the cluster id is
// <prefix>-<pid>-<4 hex> (Cluster.ID), so parallel runs never collide and
// leftovers of dead runs can be recognised (RemoveStale). Interface names are
// short and only unique within their namespace.
//
//	<id>-sw     switch: bridge br0 with ports u0, u1, ... ; no addresses, IPv6 off
//	<id>-n<i>   node i ("node-<i>"):
//	              eth0 (to br0)  172.31.255.<i+1>/24  fd00:ffff::<i+1>/64
//	              pod CIDRs      10.244.<i>.0/24      fd00:10:244:<i>::/64
//	              routes: other nodes' pod CIDRs via their eth0 address;
//	                      on nodes other than 0, 192.0.2.0/24 and 2001:db8::/64 via node 0
//	              ip_forward and IPv6 forwarding on, rp_filter off, DAD off
//	              per pod: veth<hash> (MAC ee:ee:ee:ee:ee:ee, fe80::1/64) with host
//	              routes <pod>/32 and <pod>/128 whose preferred source is the
//	              node's eth0 address
//	            node 0 only: ext0  192.0.2.1/24  2001:db8::1/64
//	<id>-ext    external host ("external"), outside every pod CIDR:
//	              eth0 (to node 0's ext0)  192.0.2.10/24  2001:db8::10/64
//	              default routes via 192.0.2.1 and 2001:db8::1
//	<id>-p<k>   a pod: eth0 10.244.<node>.<h>/32 and fd00:10:244:<node>::<h>/128
//	              (h from 2 up, handed out in order; node and h are written in
//	              hex in IPv6), default routes via 169.254.1.1 (on-link) and
//	              fe80::1, both with permanent neighbour entries for
//	              ee:ee:ee:ee:ee:ee, so a pod never resolves its gateway
//
// Pod-to-pod traffic on one node is routed by that node from one veth to the
// other; across nodes it crosses both nodes and the switch; external traffic
// enters and leaves through node 0, also for pods on other nodes. Traffic from
// a pod to its own address never leaves the pod (loopback), which no node-level
// enforcer can see; see Reachability.AllowLoopback.
//
// # Probing
//
// Each pod, each node and the external host runs one podagent
// (test/e2e/podagent): it serves TCP and UDP on ports 80 and 81 (plus a pod's
// extra ports) on both families, echoing, and it runs the probes that start in
// its namespace, many at once. Probe measures one connection; Matrix measures
// every pair for every protocol, family and port in parallel and returns one
// Reachability table per case, which Diff compares with an expectation built
// the way the upstream NetworkPolicy e2e tests build theirs.
//
// # Cleaning up
//
// Close kills every agent (by process group) and deletes every namespace the
// cluster made; it is idempotent. New also installs a handler so that SIGINT,
// SIGTERM or SIGHUP close every open cluster before the process dies (see
// Config.NoSignalHandler), agents exit when their parent goes away, and New
// removes namespaces left by dead processes that used the same prefix.
package cluster
