package netlink

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	mnl "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// transport carries the batches that the writing nftables.Conn flushes. The Conn is
// created with the library's dial hook pointing at transport.exchange, so Flush hands
// over the whole batch, already serialised and numbered; transport sends it on its own
// netlink socket and reads the kernel's answer itself. That is what lets the applier
// count the bytes of every batch and map an error back to the message, hence the
// operation, the kernel refused: the library's own Flush only returns the errors, and
// requests an echo of every rule it adds.
type transport struct {
	conn   *mnl.Conn
	raw    syscall.RawConn
	sndbuf int // current SO_SNDBUF request
	buf    []byte

	// Set before a Flush, read after it.
	ctx     context.Context
	discard bool // drop the batch: the caller abandons what it buffered
	// patches edit messages (by index between batch begin and end) in place before
	// they are sent, for what the library cannot express.
	patches map[int]func(*mnl.Message)
	res     *exchange
}

// exchange is the outcome of sending one batch.
type exchange struct {
	delivered bool
	messages  int // messages between batch begin and end
	bytes     int // every byte written, batch begin and end included
	errs      []kernelError
	err       error         // the transport failed: the kernel's state is unknown
	sent      []mnl.Message // the messages between batch begin and end, as sent
}

// kernelError is one error reply. index is the message (0-based, between batch
// begin and end) it answers, or -1 for the batch as a whole.
type kernelError struct {
	index  int
	errno  syscall.Errno
	msg    string // extended ack message, if the kernel gave one
	offset int    // extended ack: offset of the bad attribute in the message, or -1
}

const (
	nlmsgHdrLen    = 16
	nlmErrCapped   = 0x100 // NLM_F_CAPPED
	nlmErrAckTLVs  = 0x200 // NLM_F_ACK_TLVS
	nlmsgerrMsg    = 1     // NLMSGERR_ATTR_MSG
	nlmsgerrOffset = 2     // NLMSGERR_ATTR_OFFS
	defaultTimeout = time.Minute
)

func newTransport(netnsFD, bufBytes int) (*transport, error) {
	conn, err := mnl.Dial(unix.NETLINK_NETFILTER, &mnl.Config{NetNS: netnsFD})
	if err != nil {
		return nil, fmt.Errorf("opening netfilter netlink socket: %w", err)
	}
	t := &transport{conn: conn, buf: make([]byte, 64<<10)}
	if t.raw, err = conn.SyscallConn(); err != nil {
		conn.Close()
		return nil, err
	}
	// Error replies carry only the header of the message they answer (we keep the
	// messages), and the extended ack says which attribute the kernel refused.
	_ = conn.SetOption(mnl.CapAcknowledge, true)
	_ = conn.SetOption(mnl.ExtendedAcknowledge, true)
	if err := setBuffers(conn, bufBytes); err != nil {
		conn.Close()
		return nil, err
	}
	t.sndbuf = bufBytes
	return t, nil
}

// setBuffers raises both socket buffers to n bytes, past the system maximum when the
// process may (CAP_NET_ADMIN, which programming nftables needs anyway).
func setBuffers(c *mnl.Conn, n int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		for _, o := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[0], n); e != nil {
				if e = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o[1], n); e != nil {
					serr = fmt.Errorf("setting socket buffer to %d bytes: %w", n, e)
				}
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func (t *transport) close() error { return t.conn.Close() }

// dial is the nltest.Func given to the library. It is called with the batch when the
// Conn flushes, and with nil each time the Conn then waits for an answer; it always
// answers io.EOF, which the library takes as "no more replies", so Flush returns
// without error and the real outcome is in t.res.
func (t *transport) dial(req []mnl.Message) ([]mnl.Message, error) {
	if req == nil || t.discard {
		return nil, io.EOF
	}
	res := &exchange{}
	t.res = res
	res.err = t.send(req, res)
	return nil, io.EOF
}

func (t *transport) send(msgs []mnl.Message, res *exchange) error {
	if len(msgs) < 3 {
		return fmt.Errorf("batch of %d messages has no operations", len(msgs))
	}
	ops := msgs[1 : len(msgs)-1]
	res.messages = len(ops)
	res.sent = ops
	seqIndex := make(map[uint32]int, len(ops))
	for i := range msgs {
		m := &msgs[i]
		res.bytes += int(m.Header.Length)
		m.Header.PID = 0
		if i > 0 && i < len(msgs)-1 {
			seqIndex[m.Header.Sequence] = i - 1
			if p := t.patches[i-1]; p != nil {
				p(m)
			}
			// No echo of what we add, and an ack for the last message only: errors
			// are always reported, and every reply is queued before sendmsg returns.
			m.Header.Flags &^= mnl.Acknowledge | mnl.Echo
		}
	}
	last := &msgs[len(msgs)-2]
	last.Header.Flags |= mnl.Acknowledge
	if need := res.bytes + 64<<10; need > t.sndbuf {
		if err := setBuffers(t.conn, need); err != nil {
			return err
		}
		t.sndbuf = need
	}

	deadline := time.Now().Add(defaultTimeout)
	if t.ctx != nil {
		if d, ok := t.ctx.Deadline(); ok {
			deadline = d
		}
	}
	if err := t.conn.SetDeadline(deadline); err != nil {
		return err
	}
	if _, err := t.conn.SendMessages(msgs); err != nil {
		return fmt.Errorf("sending batch of %d bytes: %w", res.bytes, err)
	}
	res.delivered = true
	beginSeq, lastSeq := msgs[0].Header.Sequence, last.Header.Sequence

	// The answer is complete once the last message is acked (or refused), or the
	// batch as a whole is refused; then drain whatever else is queued.
	for done, block := false, true; ; {
		replies, err := t.recv(block)
		if err != nil {
			return fmt.Errorf("reading the kernel's answer: %w", err)
		}
		if replies == nil {
			if done {
				return nil
			}
			continue
		}
		for _, r := range replies {
			if r.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			ke, seq, ok := parseError(r)
			if !ok {
				return errors.New("malformed error reply from the kernel")
			}
			if seq == lastSeq || seq == beginSeq {
				done = true
			}
			if ke.errno == 0 {
				continue
			}
			if i, ok := seqIndex[seq]; ok {
				ke.index = i
			} else {
				ke.index = -1
			}
			res.errs = append(res.errs, ke)
		}
		block = !done
	}
}

// recv reads one datagram; without block it returns nil, nil when none is queued.
func (t *transport) recv(block bool) ([]syscall.NetlinkMessage, error) {
	var n int
	var rerr error
	err := t.raw.Read(func(fd uintptr) bool {
		// Learn the size first, so that no datagram is ever truncated.
		n, _, rerr = unix.Recvfrom(int(fd), t.buf[:1], unix.MSG_PEEK|unix.MSG_TRUNC|unix.MSG_DONTWAIT)
		if rerr == unix.EAGAIN || rerr == unix.EWOULDBLOCK {
			return !block
		}
		if rerr != nil {
			return true
		}
		if n > len(t.buf) {
			t.buf = make([]byte, n)
		}
		n, _, rerr = unix.Recvfrom(int(fd), t.buf, unix.MSG_DONTWAIT)
		return true
	})
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("no answer before the deadline: %w", err)
		}
		return nil, err
	}
	if rerr == unix.EAGAIN || rerr == unix.EWOULDBLOCK {
		return nil, nil
	}
	if rerr != nil {
		return nil, os.NewSyscallError("recvfrom", rerr)
	}
	return syscall.ParseNetlinkMessage(t.buf[:n])
}

// parseError decodes an NLMSG_ERROR reply: errno, the sequence number of the message
// it answers, and the extended ack if any.
func parseError(m syscall.NetlinkMessage) (kernelError, uint32, bool) {
	ke := kernelError{offset: -1}
	d := m.Data
	if len(d) < 4+nlmsgHdrLen {
		return ke, 0, false
	}
	ke.errno = syscall.Errno(-int32(binary.NativeEndian.Uint32(d[:4])))
	origLen := binary.NativeEndian.Uint32(d[4:8])
	seq := binary.NativeEndian.Uint32(d[4+8 : 4+12])
	if m.Header.Flags&nlmErrAckTLVs == 0 {
		return ke, seq, true
	}
	off := 4 + nlmsgHdrLen
	if m.Header.Flags&nlmErrCapped == 0 && ke.errno != 0 {
		off = 4 + int(align4(origLen))
	}
	for off+4 <= len(d) {
		l := int(binary.NativeEndian.Uint16(d[off:]))
		typ := binary.NativeEndian.Uint16(d[off+2:]) & 0x3fff
		if l < 4 || off+l > len(d) {
			break
		}
		v := d[off+4 : off+l]
		switch typ {
		case nlmsgerrMsg:
			if len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			ke.msg = string(v)
		case nlmsgerrOffset:
			if len(v) >= 4 {
				ke.offset = int(binary.NativeEndian.Uint32(v))
			}
		}
		off += int(align4(uint32(l)))
	}
	return ke, seq, true
}

func align4(n uint32) uint32 { return (n + 3) &^ 3 }

// badElement returns the index of the set element that starts at offset (an extended
// ack's offset, from the start of the message's netlink header) in a NEWSETELEM or
// DELSETELEM message, or -1.
func badElement(m mnl.Message, offset int) int {
	if offset < 0 {
		return -1
	}
	d := m.Data
	pos := 4 // the nfgenmsg header
	for pos+4 <= len(d) {
		l := int(binary.NativeEndian.Uint16(d[pos:]))
		typ := binary.NativeEndian.Uint16(d[pos+2:]) & 0x3fff
		if l < 4 || pos+l > len(d) {
			return -1
		}
		if typ == unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			q, end := pos+4, pos+l
			for i := 0; q+4 <= end; i++ {
				el := int(binary.NativeEndian.Uint16(d[q:]))
				if el < 4 {
					return -1
				}
				if at := nlmsgHdrLen + q; offset >= at && offset < at+el {
					return i
				}
				q += int(align4(uint32(el)))
			}
		}
		pos += int(align4(uint32(l)))
	}
	return -1
}

// setKeyByteOrderHost rewrites, in place, the key byte order that a NEWSET message
// records in its user data to host order. The library always records big endian for
// anonymous sets; nft records host order for strings (interface names), and `nft
// list` prints such a set's elements as empty strings otherwise.
func setKeyByteOrderHost(m *mnl.Message) {
	d := m.Data
	for pos := 4; pos+4 <= len(d); {
		l := int(binary.NativeEndian.Uint16(d[pos:]))
		typ := binary.NativeEndian.Uint16(d[pos+2:]) & 0x3fff
		if l < 4 || pos+l > len(d) {
			return
		}
		if typ == unix.NFTA_SET_USERDATA {
			u := d[pos+4 : pos+l]
			for q := 0; q+2 <= len(u); {
				tlvType, tlvLen := u[q], int(u[q+1])
				if q+2+tlvLen > len(u) {
					return
				}
				if tlvType == 0 && tlvLen == 4 { // NFTNL_UDATA_SET_KEYBYTEORDER
					binary.NativeEndian.PutUint32(u[q+2:], 1) // BYTEORDER_HOST_ENDIAN
					return
				}
				q += 2 + tlvLen
			}
			return
		}
		pos += int(align4(uint32(l)))
	}
}

// portID is the socket's netlink port: what the kernel's notifications of the
// transactions sent on it carry as their sender.
func (t *transport) portID() (uint32, error) {
	var pid uint32
	var serr error
	err := t.raw.Control(func(fd uintptr) {
		sa, err := unix.Getsockname(int(fd))
		if err != nil {
			serr = err
			return
		}
		nl, ok := sa.(*unix.SockaddrNetlink)
		if !ok {
			serr = fmt.Errorf("socket address %T, not netlink", sa)
			return
		}
		pid = nl.Pid
	})
	return pid, errors.Join(err, serr)
}
