package netlink

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
)

// TableExists says whether the inet table named table is in the kernel, in the
// network namespace at netnsPath (the caller's own when empty). It asks for that
// one table, over a socket of its own, and changes nothing: the CNI gate asks it
// on every pod's network set-up (controllers/cnigate).
func TableExists(netnsPath, table string) (bool, error) {
	if !nft.ValidName(table) {
		return false, fmt.Errorf("nft/netlink: invalid table name %q", table)
	}
	var opts []nftables.ConnOption
	if netnsPath != "" {
		f, err := os.Open(netnsPath)
		if err != nil {
			return false, fmt.Errorf("nft/netlink: opening network namespace: %w", err)
		}
		defer f.Close()
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return false, fmt.Errorf("nft/netlink: %w", err)
	}
	switch _, err := c.ListTableOfFamily(table, nftables.TableFamilyINet); {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	default:
		return false, fmt.Errorf("nft/netlink: reading table inet %s: %w", table, err)
	}
}
