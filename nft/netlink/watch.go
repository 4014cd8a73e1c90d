package netlink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	mnl "github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/nftpolicy/nftpolicy/nft"
)

// Watching the table (nft.WatchesTable). The kernel tells every socket that
// joins the nftables multicast group about each change committed in the
// network namespace: a message per table, chain, rule, set, element or object
// added or deleted, packed several to a packet (up to a page), then one NEWGEN
// message, alone in its packet, naming the process that committed the
// transaction. Every message carries the netlink port of the socket that sent
// the transaction, so all the messages of one packet carry the same.
//
// A socket filter (classic BPF, run by the kernel on each packet before it is
// queued) drops:
//   - the packets of this Applier's own writing socket, however large its
//     transactions;
//   - a packet of one message, but NEWGEN, that is not about our table (not
//     inet, or another table's name: the first attribute of every message
//     type). kube-proxy's small transactions stop there.
//
// A packet of several messages passes whole: a filter judges a packet, not its
// messages, and one of them may be ours behind another table's. So the agent
// looks at each message again, and keeps those about our table. What is left
// is another process's change to our table, which a periodic full sync would
// find as drift minutes later.

// watchReadBuffer is the watching socket's receive buffer: other processes'
// transactions of several changes pass the filter (kube-proxy's large ones
// too). An overflow is reported as lost, and repaired as a change would be.
// (A variable: tests make it small.)
var watchReadBuffer = 4 << 20

// watchDrain is how long, after an overflow, the queue must stay empty
// before the loss is reported: until it is empty the kernel drops what comes
// without saying so again.
const watchDrain = 20 * time.Millisecond

// watchGenWait is how long a change waits for its transaction's NEWGEN message
// (which names the process) before it is reported without it.
const watchGenWait = 100 * time.Millisecond

// nftMsgNames are nf_tables message types as nft's monitor words them.
var nftMsgNames = map[uint16]string{
	unix.NFT_MSG_NEWTABLE: "add table", unix.NFT_MSG_DELTABLE: "delete table",
	unix.NFT_MSG_NEWCHAIN: "add chain", unix.NFT_MSG_DELCHAIN: "delete chain",
	unix.NFT_MSG_NEWRULE: "add rule to chain", unix.NFT_MSG_DELRULE: "delete rule from chain",
	unix.NFT_MSG_NEWSET: "add set", unix.NFT_MSG_DELSET: "delete set",
	unix.NFT_MSG_NEWSETELEM: "add element to set", unix.NFT_MSG_DELSETELEM: "delete element from set",
	unix.NFT_MSG_NEWOBJ: "add object", unix.NFT_MSG_DELOBJ: "delete object",
	unix.NFT_MSG_NEWFLOWTABLE: "add flowtable", unix.NFT_MSG_DELFLOWTABLE: "delete flowtable",
}

// nameAttr is, per message type, the attribute that names the chain, set or
// object it is about (after the table, always attribute 1).
var nameAttr = map[uint16]uint16{
	unix.NFT_MSG_NEWCHAIN: unix.NFTA_CHAIN_NAME, unix.NFT_MSG_DELCHAIN: unix.NFTA_CHAIN_NAME,
	unix.NFT_MSG_NEWRULE: unix.NFTA_RULE_CHAIN, unix.NFT_MSG_DELRULE: unix.NFTA_RULE_CHAIN,
	unix.NFT_MSG_NEWSET: unix.NFTA_SET_NAME, unix.NFT_MSG_DELSET: unix.NFTA_SET_NAME,
	unix.NFT_MSG_NEWSETELEM: unix.NFTA_SET_ELEM_LIST_SET, unix.NFT_MSG_DELSETELEM: unix.NFTA_SET_ELEM_LIST_SET,
	unix.NFT_MSG_NEWOBJ: unix.NFTA_OBJ_NAME, unix.NFT_MSG_DELOBJ: unix.NFTA_OBJ_NAME,
}

// WatchTable implements nft.WatchesTable (see above).
func (a *Applier) WatchTable(ctx context.Context, changed func(nft.ForeignChange)) error {
	conn, filter, err := a.watchSocket()
	if err != nil {
		return fmt.Errorf("nft/netlink: watching the table: %w", err)
	}
	defer conn.Close()
	// The filter first: nothing unfiltered is queued once the group is joined.
	if err := conn.SetBPF(filter); err != nil {
		return fmt.Errorf("nft/netlink: watching the table: attaching the filter: %w", err)
	}
	if err := setBuffers(conn, watchReadBuffer); err != nil {
		return fmt.Errorf("nft/netlink: watching the table: %w", err)
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		return fmt.Errorf("nft/netlink: watching the table: joining the nftables group: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	var pending tally
	report := func(fc nft.ForeignChange) {
		a.foreign.Add(1) // a read ahead under way or done is stale
		changed(fc)
	}
	for {
		deadline := time.Time{}
		if pending.count > 0 {
			deadline = time.Now().Add(watchGenWait)
		}
		if err := conn.SetReadDeadline(deadline); err != nil {
			return fmt.Errorf("nft/netlink: watching the table: %w", err)
		}
		msgs, err := conn.Receive()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			report(pending.take("")) // its NEWGEN did not come
			continue
		case errors.Is(err, unix.ENOBUFS):
			// More than the buffer holds arrived at once: what was lost may
			// have been a change to the table. The kernel drops what comes
			// until the queue is empty, without a second ENOBUFS: drain it,
			// then report the loss, so that the repair comes after.
			if err := drain(conn); err != nil && ctx.Err() == nil {
				return fmt.Errorf("nft/netlink: watching the table: %w", err)
			}
			fc := pending.take("")
			fc.Lost = true
			report(fc)
			continue
		case err != nil:
			return fmt.Errorf("nft/netlink: watching the table: %w", err)
		}
		for _, m := range msgs {
			typ := uint16(m.Header.Type) & 0xff
			if uint16(m.Header.Type)>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
				continue
			}
			if typ == unix.NFT_MSG_NEWGEN {
				if pending.count > 0 {
					report(pending.take(genProcess(m.Data[4:])))
				}
				continue
			}
			if aboutTable(m.Data, a.opts.Table) {
				pending.add(describeChange(typ, m.Data[4:], a.opts.Table), typ == unix.NFT_MSG_DELTABLE)
			}
		}
	}
}

// watchSocket opens the watching socket in the Applier's network namespace,
// and makes the filter for its writing socket's port.
func (a *Applier) watchSocket() (*mnl.Conn, []bpf.RawInstruction, error) {
	a.mu.Lock()
	defer a.mu.Unlock() // Close would take the namespace away meanwhile
	if a.tr == nil {
		return nil, nil, errClosed
	}
	own, err := a.tr.portID()
	if err != nil {
		return nil, nil, err
	}
	filter, err := watchFilter(own, a.opts.Table)
	if err != nil {
		return nil, nil, err
	}
	conn, err := a.dial()
	if err != nil {
		return nil, nil, fmt.Errorf("opening a netlink socket: %w", err)
	}
	return conn, filter, nil
}

// drain reads and drops what conn holds until it has been empty for
// watchDrain.
func drain(conn *mnl.Conn) error {
	for {
		if err := conn.SetReadDeadline(time.Now().Add(watchDrain)); err != nil {
			return err
		}
		_, err := conn.Receive()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil
		case err != nil && !errors.Is(err, unix.ENOBUFS):
			return err
		}
	}
}

// aboutTable reports whether a change message (its nfgenmsg and attributes) is
// about the inet table named table: the first attribute of every change
// message names the table.
func aboutTable(data []byte, table string) bool {
	if len(data) < 4 || data[0] != unix.NFPROTO_INET {
		return false
	}
	ad, err := mnl.NewAttributeDecoder(data[4:])
	if err != nil || !ad.Next() {
		return false
	}
	return ad.Type() == 1 && ad.String() == table
}

// tally gathers one transaction's changes: each distinct description with
// how many times it occurred, the table's deletion first.
type tally struct {
	count  int
	order  []string
	counts map[string]int
}

// maxChanges is how many distinct changes a report lists.
const maxChanges = 5

func (t *tally) add(what string, first bool) {
	t.count++
	if t.counts == nil {
		t.counts = map[string]int{}
	}
	if t.counts[what] == 0 {
		if first {
			t.order = append([]string{what}, t.order...)
		} else {
			t.order = append(t.order, what)
		}
	}
	t.counts[what]++
}

// take returns the report and empties the tally.
func (t *tally) take(process string) nft.ForeignChange {
	fc := nft.ForeignChange{Count: t.count, Process: process}
	for i, what := range t.order {
		if i == maxChanges {
			break
		}
		if n := t.counts[what]; n > 1 {
			what = fmt.Sprintf("%s (%d times)", what, n)
		}
		fc.Changes = append(fc.Changes, what)
	}
	*t = tally{}
	return fc
}

// describeChange words one change message, in nft's terms.
func describeChange(typ uint16, attrs []byte, table string) string {
	what, ok := nftMsgNames[typ]
	if !ok {
		what = fmt.Sprintf("nf_tables message %d on", typ)
	}
	if typ == unix.NFT_MSG_NEWTABLE || typ == unix.NFT_MSG_DELTABLE {
		return what + " inet " + table
	}
	if want, ok := nameAttr[typ]; ok {
		if ad, err := mnl.NewAttributeDecoder(attrs); err == nil {
			for ad.Next() {
				if ad.Type() == want {
					return what + " " + ad.String()
				}
			}
		}
	}
	return what
}

// genProcess is the committing process of a NEWGEN message: "name (pid N)".
func genProcess(attrs []byte) string {
	ad, err := mnl.NewAttributeDecoder(attrs)
	if err != nil {
		return ""
	}
	ad.ByteOrder = binary.BigEndian
	var name string
	var pid uint32
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_GEN_PROC_PID:
			pid = ad.Uint32()
		case unix.NFTA_GEN_PROC_NAME:
			name = ad.String()
		}
	}
	if name == "" && pid == 0 {
		return ""
	}
	return fmt.Sprintf("%s (pid %d)", name, pid)
}

// watchFilter is the socket filter (see above): it drops the packets sent on
// netlink port own, and the packets of one message, but NEWGEN, that are not
// about the inet table named table. The kernel lays a message out in host
// order; the filter loads words big-endian, so each constant is the host
// layout's bytes read big-endian, and the first message's length is put
// together from its bytes.
func watchFilter(own uint32, table string) ([]bpf.RawInstruction, error) {
	he := binary.NativeEndian
	word := func(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
	u32 := func(v uint32) uint32 {
		b := make([]byte, 4)
		he.PutUint32(b, v)
		return word(b)
	}
	u16 := func(v uint16) uint32 {
		b := make([]byte, 2)
		he.PutUint16(b, v)
		return uint32(binary.BigEndian.Uint16(b))
	}

	// The first attribute after the 4-byte nfgenmsg: the table's name
	// (NFTA_*_TABLE, NFTA_TABLE_NAME: 1), a NUL-terminated string padded
	// with zeros to 4 bytes.
	name := append([]byte(table), 0)
	for len(name)%4 != 0 {
		name = append(name, 0)
	}
	hdr := make([]byte, 4)
	he.PutUint16(hdr[0:], uint16(4+len(table)+1))
	he.PutUint16(hdr[2:], 1)

	const (
		offLen    = 0  // nlmsghdr.nlmsg_len
		offType   = 4  // nlmsghdr.nlmsg_type
		offPID    = 12 // nlmsghdr.nlmsg_pid
		offFamily = 16 // nfgenmsg.nfgen_family
		offAttr   = 20 // the first attribute's header
	)
	const newGen = unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN
	var prog []bpf.Instruction
	// Each jump to drop or accept is resolved at the end.
	type fix struct {
		at     int
		accept bool // else drop
		onTrue bool // the jump taken when the comparison is true
	}
	var fixes []fix
	jump := func(j bpf.Instruction, onTrue, accept bool) {
		fixes = append(fixes, fix{at: len(prog), accept: accept, onTrue: onTrue})
		prog = append(prog, j)
	}
	cmp := func(val uint32, onEqual bool, accept bool) {
		jump(bpf.JumpIf{Cond: bpf.JumpEqual, Val: val}, onEqual, accept)
	}
	prog = append(prog, bpf.LoadAbsolute{Off: offPID, Size: 4})
	cmp(u32(own), true, false) // ours: drop
	prog = append(prog, bpf.LoadAbsolute{Off: offType, Size: 2})
	cmp(u16(newGen), true, true) // a transaction's end: accept
	// The first message's length, in host order, from its four bytes.
	order := []uint32{3, 2, 1, 0} // little-endian: the last byte is the most significant
	if he.Uint16([]byte{0, 1}) == 1 {
		order = []uint32{0, 1, 2, 3}
	}
	prog = append(prog, bpf.LoadAbsolute{Off: offLen + order[0], Size: 1}, bpf.StoreScratch{Src: bpf.RegA, N: 0})
	for _, b := range order[1:] { // M[0] = M[0]<<8 | the next byte
		prog = append(prog,
			bpf.LoadScratch{Dst: bpf.RegA, N: 0},
			bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 8},
			bpf.StoreScratch{Src: bpf.RegA, N: 0},
			bpf.LoadAbsolute{Off: offLen + b, Size: 1},
			bpf.LoadScratch{Dst: bpf.RegX, N: 0},
			bpf.ALUOpX{Op: bpf.ALUOpOr},
			bpf.StoreScratch{Src: bpf.RegA, N: 0})
	}
	// X = the first message's length and its padding to 4 bytes: a second
	// message is longer than that.
	prog = append(prog, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 3}, bpf.TAX{})
	prog = append(prog, bpf.LoadExtension{Num: bpf.ExtLen})
	jump(bpf.JumpIfX{Cond: bpf.JumpGreaterThan}, true, true) // several messages: accept
	prog = append(prog, bpf.LoadAbsolute{Off: offFamily, Size: 1})
	cmp(unix.NFPROTO_INET, false, false) // another family: drop
	prog = append(prog, bpf.LoadAbsolute{Off: offAttr, Size: 4})
	cmp(word(hdr), false, false) // not a table name of our name's length: drop
	for i := 0; i < len(name); i += 4 {
		prog = append(prog, bpf.LoadAbsolute{Off: uint32(offAttr + 4 + i), Size: 4})
		cmp(word(name[i:i+4]), false, false) // another table: drop
	}
	accept := len(prog)
	prog = append(prog, bpf.RetConstant{Val: math.MaxUint32}) // the whole packet
	drop := len(prog)
	prog = append(prog, bpf.RetConstant{Val: 0})
	for _, f := range fixes {
		to := drop
		if f.accept {
			to = accept
		}
		skip := uint8(to - f.at - 1)
		switch j := prog[f.at].(type) {
		case bpf.JumpIf:
			if f.onTrue {
				j.SkipTrue = skip
			} else {
				j.SkipFalse = skip
			}
			prog[f.at] = j
		case bpf.JumpIfX:
			if f.onTrue {
				j.SkipTrue = skip
			} else {
				j.SkipFalse = skip
			}
			prog[f.at] = j
		}
	}
	return bpf.Assemble(prog)
}
