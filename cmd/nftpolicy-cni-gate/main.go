// Command nftpolicy-cni-gate is the CNI gate's plugin (controllers/cnigate):
// the agent installs it as `nftpolicy` in the node's CNI bin directory, and the
// container runtime runs it, chained after the node's own CNI plugins, at every
// pod's network set-up. Its ADD fails with "try again later" until the agent has
// put its table in force in this boot of the node, and while the table is not
// in the node's network namespace, so that no pod's network comes up before the
// node's policies are in force (after a reboot, above all).
//
// A binary of its own, apart from nftpolicy's: the runtime starts it for every
// new pod, and it needs none of the agent's packages, whose initialisation
// alone (the Kubernetes API schemes, controller-runtime) takes ~14 ms; this one
// answers in ~1.6 ms, and is 3 MB rather than 51 to copy to every node.
package main

import (
	"os"

	"github.com/nftpolicy/nftpolicy/controllers/cnigate"
	"github.com/nftpolicy/nftpolicy/nft/netlink"
)

func main() {
	os.Exit(cnigate.Run(os.Getenv, os.Stdin, os.Stdout, cnigate.Node{
		TableExists: func(table string) (bool, error) { return netlink.TableExists("", table) },
		BootID:      cnigate.BootID,
	}))
}
