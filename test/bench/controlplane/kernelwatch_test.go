package controlplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// kernelWatch learns when set elements reach the kernel of a network namespace
// from nftables' own notifications (the multicast group `nft monitor` reads):
// the kernel sends each committed element to the group as its transaction
// commits. The latency samples wait on it instead of listing the set every few
// milliseconds: at 100,000 pods one `nft list set` of the namespace's table took
// ~0.5 s of CPU (the CLI fetches every set), a poller that competed with the
// agent and the apiserver for the machine's two cores and delayed what it timed.
type kernelWatch struct {
	conn *netlink.Conn
	mu   sync.Mutex
	// added holds, per set and address, when an element with that address
	// first in its key was last committed.
	added   map[string]map[netip.Addr]time.Time
	changed chan struct{} // closed and replaced at each notification
	lost    int           // receive errors (ENOBUFS: notifications dropped)
}

// watchKernel subscribes to the nftables notifications of the namespace at nsPath.
func watchKernel(nsPath string) (*kernelWatch, error) {
	f, err := os.Open(nsPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(f.Fd()), Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)})
	if err != nil {
		return nil, fmt.Errorf("nftables notifications: %w", err)
	}
	// A full sync commits tens of thousands of elements at once.
	_ = conn.SetReadBuffer(64 << 20)
	w := &kernelWatch{conn: conn, added: map[string]map[netip.Addr]time.Time{}, changed: make(chan struct{})}
	go w.run()
	return w, nil
}

func (w *kernelWatch) close() { w.conn.Close() }

func (w *kernelWatch) run() {
	for {
		msgs, err := w.conn.Receive()
		now := time.Now()
		if err != nil {
			if errorsIsClosed(err) {
				return
			}
			w.mu.Lock()
			w.lost++
			w.mu.Unlock()
			continue
		}
		w.mu.Lock()
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSETELEM) || len(m.Data) < 4 {
				continue
			}
			set, addrs := parseElements(m.Data[4:]) // after the nfgenmsg header
			if set == "" {
				continue
			}
			if w.added[set] == nil {
				w.added[set] = map[netip.Addr]time.Time{}
			}
			for _, a := range addrs {
				w.added[set][a] = now
			}
		}
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}
}

func errorsIsClosed(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "use of closed")
}

// parseElements returns the set a NEWSETELEM message adds to and the address
// each element's key starts with (keys here are an address, or a concatenation
// that starts with one).
func parseElements(b []byte) (set string, addrs []netip.Addr) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return "", nil
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					list.Nested(func(elem *netlink.AttributeDecoder) error {
						for elem.Next() {
							if elem.Type() != unix.NFTA_SET_ELEM_KEY {
								continue
							}
							elem.Nested(func(key *netlink.AttributeDecoder) error {
								for key.Next() {
									if key.Type() == unix.NFTA_DATA_VALUE {
										if a, ok := keyAddr(key.Bytes()); ok {
											addrs = append(addrs, a)
										}
									}
								}
								return nil
							})
						}
						return nil
					})
				}
				return nil
			})
		}
	}
	return set, addrs
}

// keyAddr reads the address a key starts with: 4 bytes for an IPv4 set, 16 for
// IPv6 (a concatenation's fields are padded to 4 bytes, so the lengths of the
// address keys here tell the families apart: 4, or 12 for addr . proto . port;
// 16, or 24). Other keys (proto . port, 8 bytes) are not addresses.
func keyAddr(k []byte) (netip.Addr, bool) {
	switch len(k) {
	case 4, 12:
		return netip.AddrFrom4([4]byte(k[:4])), true
	case 16, 24:
		return netip.AddrFrom16([16]byte(k[:16])), true
	}
	return netip.Addr{}, false
}

// wait returns when an element of set with address ip was committed after
// since, or an error after timeout.
func (w *kernelWatch) wait(set string, ip netip.Addr, since time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		w.mu.Lock()
		at, ok := w.added[set][ip]
		ch := w.changed
		lost := w.lost
		w.mu.Unlock()
		if ok && !at.Before(since) {
			return at, nil
		}
		select {
		case <-ch:
		case <-deadline:
			return time.Time{}, fmt.Errorf("no element %s in set %s committed within %v (%d notification reads lost)", ip, set, timeout, lost)
		}
	}
}
