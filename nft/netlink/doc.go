// Package netlink programs nftpolicy's table into the kernel: it is the nft.Applier
// that speaks netlink, and the only package that imports github.com/google/nftables.
//
// # One transaction per call
//
// Apply turns (last applied, desired) into nft.Plan's operations and sends them as one
// nfnetlink batch, with one Flush of one lasting nftables.Conn: the kernel applies the
// whole batch or none of it. The first Apply, and the first after any failure, replaces
// the table whole (add table, delete table, add table and everything in it, in the same
// batch), which also adopts or replaces a table a previous agent left. Later calls send
// only the difference; a call with nothing to change sends nothing. Pod churn is
// element adds and deletes in the verdict maps and sets: no chain is touched.
//
// The order of the operations inside a batch is nft.Plan's contract: new sets and
// chains first, then flushes, element deletes, set deletes, re-created chains and
// sets, rules, element adds, and obsolete chains last, so that every message names
// only objects that exist at that point of the batch and deletes only objects that
// nothing refers to any more. A TransactionError names the operation, and for element
// lists the element, that the kernel refused.
//
// FullSync first reads the table back (tables, chains and their hooks, rules by
// bytecode and comment as Read compares them, sets and their elements by key and,
// in maps, verdict) and reports how it differs from what was last applied in
// Stats.Drift. Without drift it sends only what changed since (nothing, when
// nothing did); when only some chains' rules differ it rewrites those and keeps
// everything else (nft.PlanRepair). With nothing applied yet (a restarted agent), or
// with drift in more than rules (elements, sets, chains or objects someone added or
// deleted), it adopts the table it finds (adopt.go): sets whose type, flags and
// elements are exactly right are kept, those of the right type and flags patched in
// place (elements deleted and added), the rest re-created, every chain rewritten,
// named objects kept (a counter keeps its count). When adopting is not possible (no
// table, a base chain's hook changed) or the kernel refuses it, it replaces the
// table whole. Keeping sets matters: when a set is
// replaced, its lookups miss for a moment around the commit, so packets it allows
// are dropped once and retransmitted (test/bench/datapath's
// TestReplaceUnderTraffic: a few connections per twenty replacements; none for
// adoptions and rewrites). Patching matters after a restart: a policy changed
// while no agent ran, and in strict mode every open connection is judged again at
// the first sync, in those very sets. test/e2e's strict restart spec failed once
// in 40 runs so, before adoption patched sets: the deny log named an allowed
// connection's packet denied by the one policy whose set had been re-created,
// at the commit of the adoption. Creating an interval set is affected the same
// way, in every transaction: a rule that starts to look in an interval set created
// in its own batch misses, for a moment, what the set holds (hash sets do not), so
// a pod's new group (new chain and sets, its map element moved there) dropped some
// of the packets it allows at the commit. TestReplaceUnderTraffic's regroup phase,
// with new TCP connections, did not see it; TestNewIntervalSetsGoAhead, a flood of
// datagrams through a set swapped for a new one 400 times, counts 100-300 misses
// with one batch. So the Applier creates new interval sets, and their elements, in
// a batch of its own just before the change (sendAhead): nothing refers to them
// yet, so it enforces nothing, and the change itself is still one batch; if that
// batch is refused, the sets are deleted again. None missed since. Delete removes
// the table (add then delete, so that a missing table is not an error).
//
// ReadAhead (nft.ReadsAhead, ahead.go) does FullSync's read before it, while Apply
// goes on, so that a periodic full sync holds up no change for it: each chain and
// set is compared with what was applied when it was read, and an Apply that changes
// the one being read waits for that read. FullSync then reads nothing.
//
// # The same bytecode as nft
//
// The translation reproduces what nft 1.0.6 sends for the text nft.Render prints, so
// that `nft list table` shows the same table whichever loaded it; the kernel tests
// compare both `nft list` and `nft --debug=netlink list` (registers, byte order
// conversions, set flags, element keys) of a table loaded with `nft -f` and one
// applied by this package. What nft does implicitly, and this package does too:
//
//   - protocol dependencies: `meta nfproto ipv4` before `ip saddr`, `meta nfproto
//     ipv6; meta l4proto ipv6-icmp` before `icmpv6 type`, unless an earlier match of
//     the rule already implies them; `th` needs none;
//   - concatenations loaded into consecutive 32-bit registers (named as nft names
//     them: reg 1, 9, 10 for address . protocol . port), every field padded to 4
//     bytes in set keys; for lookups in concatenated interval sets, a (no-op) hton
//     byte order conversion of host-order fields, and ct state keys in network order;
//   - prefixes compared on the prefix's bytes only when they end on a byte boundary,
//     masked otherwise; ranges as two comparisons, or one range expression when
//     negated; ct state as a bit test, but `ct state != x` as an inequality;
//   - several literal values as a constant anonymous set created just before its
//     rule, an interval set when a value is a range, with adjacent ranges merged;
//   - plain interval sets as start elements and interval-end elements at end+1 (none
//     for a range that reaches the top: an open interval), with a leading interval
//     end at zero when no range starts at zero; concatenated interval sets as one
//     element with a key end; this leading end is kept as nft would create it from
//     scratch across incremental changes too;
//   - set key types as nft's datatype numbers (concatenations 6 bits per field), the
//     key byte order in the set's user data, comments as rule and element user data.
//
// # Library limits, and how they are handled
//
// google/nftables v0.3.0 serialises messages well but its Flush asks for an ack and
// an echo of every message, returns errors without saying which message failed, and
// does not tell how many bytes it sent. The writing Conn is therefore created with
// the library's dial hook (WithTestDial) pointing at this package's transport, which
// receives the finished batch, sends it on its own netlink socket (in the target
// network namespace), asks for an ack of the last message only, counts the bytes, and
// maps each error reply back to its message by sequence number and, with the extended
// ack's offset, to the element. Reads (FullSync) use a second, ordinary lasting Conn.
//
// The library puts a set's whole element list in one netlink attribute, whose length
// has 16 bits: element lists are split into messages of at most 60,000 bytes (about
// 2,000 IPv4 elements). A batch of several megabytes exceeds the default socket send
// buffer ("message too long"): the buffers start at Options.SocketBufferBytes and the
// send buffer grows to the batch size (SO_SNDBUFFORCE). FlushSet is never used (it is
// reported to leave elements behind): elements are deleted explicitly. The library
// records big-endian key byte order for every anonymous set, which makes `nft list`
// print anonymous interface-name sets as empty strings: the transport rewrites that
// one user-data value in place. It cannot write element user data other than a
// comment, so the open-interval flag nft adds to a range reaching the top of the
// address space is missing (nft lists the element the same). A serialisation error
// stays in a Conn for good: the writing Conn is then replaced.
package netlink
