// Package controllers is nftpolicy's only controller-runtime code: the node
// agent. RunAgent builds a manager that caches Pods, Namespaces,
// networking/v1 NetworkPolicies, ClusterNetworkPolicies while their CRD is
// installed (it watches that one CustomResourceDefinition, crdwatch.go), and its own
// Node (trimmed to what the compiler reads, nothing else cached; pods as compact
// records with interned labels, podcache.go; every Node only while a
// ClusterNetworkPolicy has a nodes peer, nodewatch.go),
// serves metrics and the /healthz and /readyz probes, and turns every relevant
// event into one sync of this node's nftables table.
//
// Syncs are incremental: the reconciler keeps a compile.Compiler between syncs,
// each event names the object that changed, and a sync reads only those objects
// from the cache and recompiles only the groups they can affect; the applier
// (nft/netlink with ShareDesired) keeps the compiler's ruleset rather than a copy
// and sends the difference. When the changes read could not change the table
// (compile.Compiler.Unchanged: another node's pod that no set holds and no peer
// selects, before or after; most of a large cluster's pod churn, seen from one
// node), the sync ends there, kind "unchanged": nothing compiled, planned or sent.
// A full sync (start, failure, --full-sync-period) reads
// the cache into a new Compiler (pods in place, from the informer's store; the
// periodic one off the sync path, rebuild.go), has the applier compare the
// kernel's table with it and repair what differs (nft/netlink FullSync: at
// start it adopts the table it finds, sets kept or patched in place; without
// drift it sends only what changed) and then returns free memory to the OS.
// BenchmarkIncrementalSync and BenchmarkFullSync measure both, and
// BenchmarkPodMemory what a cluster pod costs, at test/bench/controlplane's two
// scales.
//
// Seeing verdicts (observe.go): with a deny log rate, the agent reads the NFLOG
// group its table logs drops to (NetworkPolicy group chains' isolation drops,
// ClusterNetworkPolicy Deny rules' drop chains, the drops of unknown local pods)
// and logs each packet ("packet denied", logger "deny") with both ends named by
// the pod address index of the cache and the policies or rule that dropped it,
// from the Attribution the reconciler publishes after each applied table; with policy counters, a Prometheus collector
// reads the kernel's per-policy counters at scrape time. Neither can hold up a
// sync or a packet: the reader retries forever and loses lines, never verdicts.
//
// Readiness: /readyz answers 200 only once the informer caches have synced
// and the first full sync of the node's table has succeeded, so a node's
// agent is not reported ready before it enforces policy; and not while the
// apiserver has left a watch unanswered for more than apiGrace (apiwatch.go),
// so that an agent that cannot learn of changes says so. Liveness (/healthz)
// is a ping: without its apiserver the agent keeps its last table in force,
// and a restart would only lose its cache.
//
// Problems: every agent logs and counts the policies it cannot fully enforce;
// one agent per policy records the Warning Event (problems.go).
//
// Errors go up: this package logs once, with logr key/values ("node",
// "policy"), and returns what it cannot handle to cmd/nftpolicy, which
// turns it into an exit code. The agent reads the API, and writes only Events
// and the removal of the startup taint from its own Node (startuptaint.go); the
// +kubebuilder:rbac markers (agent.go, cnp.go, crdwatch.go, startuptaint.go)
// are its whole RBAC.
package controllers
