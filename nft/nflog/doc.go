// Package nflog reads packets that nftables rules hand to an NFLOG group
// (`log group N`), over a netfilter netlink socket (nfnetlink_log), and decodes
// the headers a person needs to say what was logged: addresses, protocol, ports,
// ICMP type, interfaces and the rule's log prefix.
//
// It is written on github.com/mdlayher/netlink because no NFLOG library is
// available here; it implements the part of the protocol nftpolicy needs: bind
// one group, copy the first bytes of each packet (enough for the network and
// transport headers), number the messages, and batch them in the kernel.
//
// # Never in the way of the datapath
//
// The kernel never waits for this reader. nfnetlink_log builds each message in
// the packet's path and queues it on the socket; when the socket's receive buffer
// is full the message is dropped and the socket is flagged (ENOBUFS). A slow,
// dead or absent reader therefore loses log messages and nothing else: the rule's
// verdict does not depend on the log statement. The Reader counts what it lost,
// exactly, from the gaps in the per-group sequence numbers it asks the kernel to
// attach (NFULNL_CFG_F_SEQ), and carries on.
//
// One socket may bind a group in a network namespace at a time: a second Open of
// the same group fails (EPERM: the group belongs to another socket) until the
// first Reader is closed or its process exits.
//
// Like every library under nft/, this package never logs; errors wrap with %w.
package nflog
