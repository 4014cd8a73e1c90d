// Package framework runs nftpolicy end to end on one machine: a real
// kube-apiserver and etcd (envtest), the network of test/e2e/cluster (nodes,
// pods and an external host as network namespaces), one `nftpolicy agent`
// process per node programming that node's namespace, and the Kubernetes
// objects that describe the pods. The end-to-end suite (test/e2e) and the demo
// (test/e2e/demo) are built on it.
//
// # What Start builds
//
//	control plane   envtest kube-apiserver + etcd from KUBEBUILDER_ASSETS; a
//	                kubeconfig file for the agents (and kubectl), user
//	                nftpolicy-e2e in group system:masters
//	nodes           Node objects node-0, node-1 (InternalIP, podCIDRs) for the
//	                cluster's node namespaces
//	namespaces      x, y, z labelled ns=<name> and kubernetes.io/metadata.name=<name>
//	pods            a, b, c in each, labelled pod=<name>, spread over the nodes so
//	                that same-node and cross-node pairs occur in every namespace;
//	                containers declare the upstream e2e port names serve-80-tcp,
//	                serve-81-udp, ... (SCTP ones too); status.podIPs (both families)
//	                and phase Running are written through the status subresource,
//	                as a kubelet would
//	agents          bin/nftpolicy agent --netns <node namespace> per node, started
//	                once every object exists and waited for on /readyz
//
// # Waiting for enforcement
//
// Policy is eventually consistent: a test writes to the API and then waits for
// the network to show the expected reachability. WaitForMatrix does that in two
// phases. It first polls, every ~10 ms, only the cells whose expectation differs
// from the last state the Env confirmed (the cells the write should flip, and
// every cell of a pod created since), with short probe timeouts, abandoning a
// round at its first wrong cell. Once every such cell looks right it confirms
// the whole matrix with the normal probe timeouts; a failed confirmation goes
// back to polling until the deadline. The apply→enforced latency it records is
// the time from the last API write to the start of the first poll round that
// matched (and was then confirmed). Its resolution is the gap to the round
// before: about the polling period when the change denies (an allowed probe
// fails fast), the allowed-probe poll timeout (50 ms and up) when it allows
// (only a timeout tells a dropped probe). On failure the error carries the diff
// of the last full matrix, each node's `nft list ruleset` and the tail of each
// agent's log.
//
// # One control plane, one way
//
// StartControlPlane is how every test tier that needs an apiserver starts one:
// this suite, test/deploy (extra apiserver flags through
// ControlPlaneOptions.Configure) and test/bench/controlplane. envtest starts
// etcd and kube-apiserver in their own process group without a parent-death
// signal, so a watchdog process kills them if the test process dies before
// Stop. ControlPlane.Down kills both (an outage) and Up starts them again with
// the same flags, certificates and data; the restarted processes, like every
// other long-lived child of the tiers (agents, benchmark baselines), are
// started by StartChild with a parent-death signal.
//
// # Cleaning up
//
// Close stops the agents (SIGTERM), removes every namespace of the network and
// stops the control plane. Agents are started with a parent-death signal from a
// thread that lives as long as the process, so they die with it even when the
// process is killed before Close.
package framework
