// Package cnigate holds a node's new pods until its nftpolicy table is in force.
//
// A node that reboots loses its table, and the kubelet starts the node's pods
// again at the same time as the agent: their networks come up, and they talk
// without their policies until the agent's first full sync. The startup taint
// cannot help there (the pods are already bound to the node). The gate can: a
// chained CNI plugin (cmd/nftpolicy-cni-gate), installed by the agent as
// `nftpolicy` in the node's CNI bin directory and appended to the plugins of
// the network configuration the container runtime uses, whose ADD fails with
// "try again later" (CNI error code 11) until the pod's policies are in force.
// The kubelet tears the half-made sandbox down and tries again later; once
// they are, the pod starts, and its first packet meets its policies (or, with
// --unknown-pod-cidrs, is dropped until the agent knows the pod).
//
// In force means two things, both checked at every ADD:
//   - the entry names the node's current boot (its "boot" is the kernel's
//     boot_id): the agent writes it there right after its first full sync,
//     so the gate stays shut after a reboot until this boot's agent has
//     synced, even if something restored a table at boot (a ruleset saved with
//     `nft list ruleset` and loaded by the node's firewall service, with the
//     last boot's pod addresses in its sets);
//   - the table exists, in the runtime's network namespace (the node's): one
//     netlink request for one table, so a table deleted since holds pods too.
//
// What holds and what does not:
//   - Nothing is read from the apiserver or asked of the agent.
//   - DEL, CHECK, GC and STATUS always succeed: the gate admits new pods; it
//     never tears a pod down, and never reports the node's network not ready
//     (that would make the node NotReady, and its pods evicted).
//   - A rolling update or a crash of the agent leaves the table in force and
//     the entry as it was, so pods start meanwhile (judged by the last table,
//     and dropped as unknown until the new agent knows them, with
//     --unknown-pod-cidrs): an agent not yet synced never takes the boot id
//     out of the entry.
//   - The entry and the binary stay on the node's disk when the agent stops:
//     that is what makes the gate hold at the next boot. `nftpolicy cleanup`
//     (config/cleanup) removes them before it removes the table; an agent
//     uninstalled without it leaves a node where no pod starts after the next
//     reboot, and the sandbox's error says what to run.
//
// Installer keeps the binary and the entry in place; Run is the plugin (what the
// runtime executes, with CNI_COMMAND in its environment).
package cnigate
