package netlink

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// What strict mode (--established=recheck) needs of the kernel besides the table:
// the epoch in force when an agent starts, and retiring an epoch before it is used
// again. See nft/doc.go, "Established connections".

// TableCtMark returns the value that the first rule of chain comparing the bits
// mask of the connection mark compares them with (in strict mode, the epoch the
// table in force accepts on its fast path); found is false when there is no table,
// chain or such rule. It fails when the kernel cannot be read.
func (a *Applier) TableCtMark(chain string, mask uint32) (value uint32, found bool, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.readMu.Lock()
	defer a.readMu.Unlock()
	if a.reader == nil {
		return 0, false, errClosed
	}
	t := &nftables.Table{Name: a.opts.Table, Family: nftables.TableFamilyINet}
	rules, err := a.reader.GetRules(t, &nftables.Chain{Name: chain, Table: t})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("nft/netlink: reading chain %s: %w", chain, err)
	}
	want := hostU32(mask)
	for _, r := range rules {
		// [ct load mark => reg 1] [bitwise reg 1 = (reg 1 & mask) ^ 0] [cmp eq reg 1 value]
		for i := 0; i+2 < len(r.Exprs); i++ {
			ct, ok1 := r.Exprs[i].(*expr.Ct)
			bw, ok2 := r.Exprs[i+1].(*expr.Bitwise)
			cmp, ok3 := r.Exprs[i+2].(*expr.Cmp)
			if ok1 && ok2 && ok3 && ct.Key == expr.CtKeyMARK && !ct.SourceRegister &&
				bytes.Equal(bw.Mask, want) && cmp.Op == expr.CmpOpEq && len(cmp.Data) == 4 {
				return binary.NativeEndian.Uint32(cmp.Data), true, nil
			}
		}
	}
	return 0, false, nil
}

// ctnetlink message types and attributes (linux/netfilter/nfnetlink_conntrack.h).
const (
	ipctnlMsgCtNew = 0
	ipctnlMsgCtGet = 1
	ctaTupleOrig   = 1
	ctaMark        = 8
	ctaZone        = 18
	ctaMarkMask    = 21
)

// ClearCtMark clears the bits mask of the mark of every connection (both
// families, every zone) whose bits mask are neither zero nor keep, and returns how
// many it changed. The cost is one dump of the namespace's conntrack table plus
// one message per connection changed. A connection that ends meanwhile is skipped.
// Strict mode calls it before an epoch is used again (after a wrap, and once at
// start-up), so that a connection idle since an epoch's last use is judged again
// instead of passing as current.
func (a *Applier) ClearCtMark(mask, keep uint32) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.tr == nil {
		return 0, errClosed // and a.netns is gone: never the agent's own namespace instead
	}
	c, err := a.dial()
	if err != nil {
		return 0, fmt.Errorf("nft/netlink: ctnetlink: %w", err)
	}
	defer c.Close()

	// The kernel filters dumps by mark equality only: "neither zero nor keep"
	// is decided here.
	dump, err := c.Execute(mnl.Message{
		Header: mnl.Header{Type: mnl.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtGet), Flags: mnl.Request | mnl.Dump},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("nft/netlink: dumping connections: %w", err)
	}
	n := 0
	for _, m := range dump {
		if len(m.Data) < 4 {
			continue
		}
		family := m.Data[0]
		ad, err := mnl.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return n, err
		}
		ad.ByteOrder = binary.BigEndian
		var tuple, zone []byte
		var mark uint32
		for ad.Next() {
			switch ad.Type() {
			case ctaTupleOrig:
				tuple = ad.Bytes()
			case ctaZone:
				zone = ad.Bytes()
			case ctaMark:
				mark = ad.Uint32()
			}
		}
		if tuple == nil || mark&mask == 0 || mark&mask == keep {
			continue
		}
		// Update, not create: no NLM_F_CREATE. Mark (0) with a mask: the kernel
		// computes (mark & ~mask) ^ 0, leaving the other bits alone.
		ue := mnl.NewAttributeEncoder()
		ue.ByteOrder = binary.BigEndian
		ue.Bytes(ctaTupleOrig|unix.NLA_F_NESTED, tuple)
		if zone != nil {
			ue.Bytes(ctaZone, zone)
		}
		ue.Uint32(ctaMark, 0)
		ue.Uint32(ctaMarkMask, mask)
		attrs, err := ue.Encode()
		if err != nil {
			return n, err
		}
		_, err = c.Execute(mnl.Message{
			Header: mnl.Header{Type: mnl.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtNew), Flags: mnl.Request | mnl.Acknowledge},
			Data:   append([]byte{family, unix.NFNETLINK_V0, 0, 0}, attrs...),
		})
		switch {
		case err == nil:
			n++
		case errors.Is(err, unix.ENOENT): // gone meanwhile
		default:
			return n, fmt.Errorf("nft/netlink: clearing the mark of a connection: %w", err)
		}
	}
	return n, nil
}
