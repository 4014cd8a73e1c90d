// Package cnigate holds a node's new pods until its nftpolicy table is in force.
//
// A node that reboots loses its table, and the kubelet starts the node's pods
// again at the same time as the agent: their networks come up, and they talk
// without their policies until the agent's first full sync. The startup taint
// cannot help there (the pods are already bound to the node). The gate can: a
// chained CNI plugin (cmd/nftpolicy-cni-gate), installed by the agent as
// `nftpolicy` in the node's CNI bin directory and appended to the plugins of
// the network configuration the container runtime uses, whose ADD waits until
// the pod's policies are in force, up to DefaultWait, and then passes the
// previous plugin's result on; past DefaultWait it fails with "try again later"
// (CNI error code 11), and the kubelet tears the half-made sandbox down and
// tries again later. The pod's first packet meets its policies (or, with
// --unknown-pod-cidrs, is dropped until the agent knows the pod).
//
// In force means: the table holds an empty set named synced-boot-<boot id>
// (nft.SyncedBootSet), the kernel's boot_id of the node's current boot. Every
// table the agent writes has it, with the gate on or off (it writes only from
// complete caches), so it is there from the agent's first full sync in this
// boot on; a table restored at boot from a ruleset saved in an earlier one
// (`nft list ruleset` loaded by the node's firewall service, with the last
// boot's pod addresses in its sets) has an earlier boot's, and holds pods as no
// table does.
// The plugin asks for that one set by name, in the runtime's network namespace
// (the node's), every DefaultPoll: one netlink request, which also fails when
// the table is gone. Nothing is written on the node's disk to mark a boot or a
// sync: the entry in the network configuration is written only where it is
// missing (a CNI that writes its configuration anew at its start drops it).
//
// What holds and what does not:
//   - Nothing is read from the apiserver or asked of the agent.
//   - DEL, CHECK, GC and STATUS always succeed: the gate admits new pods; it
//     never tears a pod down, and never reports the node's network not ready
//     (that would make the node NotReady, and its pods evicted).
//   - A rolling update or a crash of the agent leaves the table in force, its
//     set with it, so pods start meanwhile (judged by the last table, and
//     dropped as unknown until the new agent knows them, with
//     --unknown-pod-cidrs).
//   - The entry and the binary stay on the node's disk when the agent stops:
//     that is what makes the gate hold at the next boot. `nftpolicy cleanup`
//     (config/cleanup) removes them before it removes the table (the binary
//     only once no pod's network configuration in libcni's cache names the
//     gate: Installer.Remove); an agent
//     uninstalled without it leaves a node where no pod starts after the next
//     reboot, and the sandbox's error says what to run.
//
// Installer keeps the binary and the entry in place; Run is the plugin (what the
// runtime executes, with CNI_COMMAND in its environment).
package cnigate
