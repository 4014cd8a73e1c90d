package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The nfnetlink_log protocol, from linux/netfilter/nfnetlink_log.h (x/sys/unix
// does not carry these constants).
const (
	msgPacket = unix.NFNL_SUBSYS_ULOG << 8   // | NFULNL_MSG_PACKET (0)
	msgConfig = unix.NFNL_SUBSYS_ULOG<<8 | 1 // NFULNL_MSG_CONFIG

	// Packet attributes (NFULA_*).
	attrPacketHdr  = 1
	attrMark       = 2
	attrTimestamp  = 3
	attrIfIndexIn  = 4
	attrIfIndexOut = 5
	attrHWAddr     = 8
	attrPayload    = 9
	attrPrefix     = 10
	attrSeq        = 12
	attrHWType     = 15

	// Configuration attributes (NFULA_CFG_*).
	cfgCmd     = 1
	cfgMode    = 2
	cfgTimeout = 4
	cfgQThresh = 5
	cfgFlags   = 6

	cmdBind     = 1 // NFULNL_CFG_CMD_BIND
	copyPacket  = 2 // NFULNL_COPY_PACKET
	flagSeq     = 1 // NFULNL_CFG_F_SEQ: a per-group sequence number in every message
	nfgenmsgLen = 4
)

// DefaultCopyRange is the number of bytes of each packet the kernel copies when
// Config.CopyRange is zero: an IPv6 header with a few extension headers and a TCP
// header with options fit; the payload of the packet is none of the log's business.
const DefaultCopyRange = 128

// Config says which group to read and how the kernel should batch it.
type Config struct {
	// Group is the NFLOG group, as in `log group N`.
	Group uint16
	// CopyRange is how many bytes of each packet the kernel copies (from the
	// network header on); 0 means DefaultCopyRange.
	CopyRange uint16
	// QueueThreshold is how many packets the kernel gathers into one netlink
	// message before sending it, and FlushTimeout how long it waits for them; a
	// bigger batch costs fewer wake-ups under a flood. 0 means 1 packet (send at
	// once) and 100 ms.
	QueueThreshold uint32
	FlushTimeout   time.Duration
	// ReadBuffer is the socket's receive buffer in bytes (SO_RCVBUF, capped by
	// net.core.rmem_max); 0 keeps the system default. What does not fit is lost.
	ReadBuffer int
	// NetNS is a file descriptor of the network namespace to read in; 0 means
	// the calling thread's.
	NetNS int
}

// Reader reads one NFLOG group. Read must be called from one goroutine at a
// time; Close and the counters may be called from any.
type Reader struct {
	conn   *netlink.Conn
	group  uint16
	closed atomic.Bool

	// Sequence tracking, owned by the reading goroutine.
	next    uint32
	started bool
	pending []netlink.Message // received while binding

	lost      atomic.Uint64
	overruns  atomic.Uint64
	malformed atomic.Uint64
}

// Open binds cfg.Group in the network namespace and starts receiving. It fails
// when the group is bound by another socket (EPERM), without CAP_NET_ADMIN, or
// when the kernel lacks nfnetlink_log.
func Open(cfg Config) (*Reader, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: cfg.NetNS})
	if err != nil {
		return nil, fmt.Errorf("nflog: opening netfilter netlink socket: %w", err)
	}
	r := &Reader{conn: conn, group: cfg.Group}
	if cfg.ReadBuffer > 0 {
		if err := conn.SetReadBuffer(cfg.ReadBuffer); err != nil {
			conn.Close()
			return nil, fmt.Errorf("nflog: setting receive buffer of group %d: %w", cfg.Group, err)
		}
	}
	copyRange := uint32(cfg.CopyRange)
	if copyRange == 0 {
		copyRange = DefaultCopyRange
	}
	qthresh := cfg.QueueThreshold
	if qthresh == 0 {
		qthresh = 1
	}
	timeout := cfg.FlushTimeout
	if timeout <= 0 {
		timeout = 100 * time.Millisecond
	}
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Bytes(cfgCmd, []byte{cmdBind})
	// struct nfulnl_msg_config_mode { __be32 copy_range; __u8 copy_mode; __u8 _pad; } (packed)
	mode := binary.BigEndian.AppendUint32(nil, copyRange)
	ae.Bytes(cfgMode, append(mode, copyPacket, 0))
	ae.Uint32(cfgQThresh, qthresh)
	ae.Uint32(cfgTimeout, uint32(max(timeout/(10*time.Millisecond), 1))) // in 1/100 s
	ae.Uint16(cfgFlags, flagSeq)
	attrs, err := ae.Encode()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("nflog: encoding configuration: %w", err)
	}
	if err := r.configure(netlink.Message{
		Header: netlink.Header{Type: msgConfig, Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(nfgenmsg(cfg.Group), attrs...),
	}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("nflog: binding group %d: %w", cfg.Group, err)
	}
	return r, nil
}

// configure sends a configuration request and waits for its acknowledgement.
// Packets may arrive before it once the group is bound: they are kept for Read.
func (r *Reader) configure(m netlink.Message) error {
	req, err := r.conn.Send(m)
	if err != nil {
		return err
	}
	if err := r.conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	defer func() { _ = r.conn.SetReadDeadline(time.Time{}) }() // if this fails, Read times out and says so
	for {
		msgs, err := r.conn.Receive() // a refusal is an error here
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				r.overruns.Add(1)
				continue
			}
			return err
		}
		acked := false
		for _, m := range msgs {
			switch {
			case m.Header.Type == netlink.Error && m.Header.Sequence == req.Header.Sequence:
				acked = true
			case m.Header.Type == msgPacket:
				r.pending = append(r.pending, m)
			}
		}
		if acked {
			return nil
		}
	}
}

// nfgenmsg is the netfilter message header: family (any), version 0, and the
// group number in network byte order.
func nfgenmsg(group uint16) []byte {
	return binary.BigEndian.AppendUint16([]byte{unix.AF_UNSPEC, unix.NFNETLINK_V0}, group)
}

// Read blocks until the kernel sends packets and returns them, in the order the
// kernel logged them. A receive buffer overrun (ENOBUFS) and malformed messages
// are counted (Overruns, Malformed, Lost) and reading goes on. After Close, Read
// returns an error that matches net.ErrClosed.
func (r *Reader) Read() ([]Packet, error) {
	for {
		msgs, err := r.pending, error(nil)
		r.pending = nil
		if len(msgs) == 0 {
			msgs, err = r.conn.Receive()
		}
		if err != nil {
			if r.closed.Load() {
				return nil, fmt.Errorf("nflog group %d: %w", r.group, net.ErrClosed)
			}
			if errors.Is(err, unix.ENOBUFS) {
				// The kernel dropped messages for want of room; the sequence
				// numbers of the next message tell how many.
				r.overruns.Add(1)
				continue
			}
			return nil, fmt.Errorf("nflog group %d: %w", r.group, err)
		}
		out := make([]Packet, 0, len(msgs))
		for _, m := range msgs {
			if m.Header.Type != msgPacket {
				continue // acknowledgements
			}
			p, err := parsePacket(m.Data)
			if err != nil {
				r.malformed.Add(1)
				continue
			}
			r.account(p.Seq)
			out = append(out, p)
		}
		if len(out) > 0 {
			return out, nil
		}
	}
}

// account counts the messages missing before sequence number seq.
func (r *Reader) account(seq uint32) {
	if r.started {
		// A gap is a positive difference modulo 2^32; an old or repeated number
		// (which the kernel does not send) counts nothing.
		if gap := seq - r.next; gap != 0 && gap < 1<<31 {
			r.lost.Add(uint64(gap))
		}
	}
	r.started = true
	r.next = seq + 1
}

// Lost is the number of packets the kernel logged to this group that never
// reached the Reader (dropped on a full receive buffer), as counted from gaps in
// the sequence numbers of the packets that did.
func (r *Reader) Lost() uint64 { return r.lost.Load() }

// Overruns is the number of times the socket reported a full receive buffer.
func (r *Reader) Overruns() uint64 { return r.overruns.Load() }

// Malformed is the number of messages that could not be parsed and were skipped.
func (r *Reader) Malformed() uint64 { return r.malformed.Load() }

// Close unbinds the group (the kernel destroys the group's instance with the
// socket) and unblocks a pending Read.
func (r *Reader) Close() error {
	r.closed.Store(true)
	return r.conn.Close()
}
