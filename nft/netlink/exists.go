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
// one table, over a socket of its own, and changes nothing.
func TableExists(netnsPath, table string) (bool, error) {
	if !nft.ValidName(table) {
		return false, fmt.Errorf("nft/netlink: invalid table name %q", table)
	}
	found := false
	err := ask(netnsPath, func(c *nftables.Conn) error {
		_, err := c.ListTableOfFamily(table, nftables.TableFamilyINet)
		found = err == nil
		return err
	})
	if err != nil {
		return false, fmt.Errorf("nft/netlink: reading table inet %s: %w", table, err)
	}
	return found, nil
}

// SetExists says whether the inet table named table holds a set named set, in
// the network namespace at netnsPath (the caller's own when empty); a missing
// table is false, not an error. One netlink request for that one set (its
// elements are not read), over a socket of its own: the CNI gate asks it on
// every pod's network set-up (controllers/cnigate), and again while it waits.
func SetExists(netnsPath, table, set string) (bool, error) {
	if !nft.ValidName(table) || !nft.ValidName(set) {
		return false, fmt.Errorf("nft/netlink: invalid table or set name %q, %q", table, set)
	}
	found := false
	err := ask(netnsPath, func(c *nftables.Conn) error {
		_, err := c.GetSetByName(&nftables.Table{Name: table, Family: nftables.TableFamilyINet}, set)
		found = err == nil
		return err
	})
	if err != nil {
		return false, fmt.Errorf("nft/netlink: reading set %s of table inet %s: %w", set, table, err)
	}
	return found, nil
}

// ask runs one request on a connection in the network namespace at netnsPath;
// ENOENT (no such table or set) is not an error.
func ask(netnsPath string, request func(*nftables.Conn) error) error {
	var opts []nftables.ConnOption
	if netnsPath != "" {
		f, err := os.Open(netnsPath)
		if err != nil {
			return fmt.Errorf("opening network namespace: %w", err)
		}
		defer f.Close()
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return err
	}
	if err := request(c); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}
