package netlink

import (
	"encoding/binary"
	"errors"
	"fmt"

	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The ruleset's generation. The kernel adds one to it at every transaction
// committed in the network namespace, whoever commits it. A dump (a set's
// elements, the objects) is sent in several rounds, each resumed by position:
// a transaction committed between two rounds that deletes something before
// that position makes the dump skip what follows it, with no error (the
// kernel flags the dump interrupted, which the libraries do not check). So a
// read whose dumps begin and end on the same generation saw one ruleset; one
// that does not is read again.

// readTries is how many times a read is tried before it is given up.
const readTries = 10

var errGenerationMoved = errors.New("the ruleset changed during each read")

// generation asks the kernel for the ruleset's generation (NFT_MSG_GETGEN),
// through the Applier's socket for that; the caller holds readMu.
func (a *Applier) generation() (uint32, error) {
	if a.gen == nil {
		return 0, errClosed
	}
	msgs, err := a.gen.Execute(mnl.Message{
		Header: mnl.Header{Type: mnl.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN), Flags: mnl.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("reading the ruleset's generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := mnl.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("reading the ruleset's generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("reading the ruleset's generation: no generation in the kernel's answer")
}

// consistent runs read, which reads through the reader, until it begins and
// ends on the same generation, at most readTries times; the caller holds
// readMu. A read that fails is not tried again.
func (a *Applier) consistent(read func() error) error {
	for range readTries {
		before, err := a.generation()
		if err != nil {
			return err
		}
		if err := read(); err != nil {
			return err
		}
		after, err := a.generation()
		if err != nil {
			return err
		}
		if before == after {
			return nil
		}
	}
	return fmt.Errorf("%w (%d reads)", errGenerationMoved, readTries)
}
