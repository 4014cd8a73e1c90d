// Package trace walks a packet through an nft.Ruleset the way the kernel's nf_tables
// evaluates it, and records each step so that a person can follow it: the chain, the
// rule as `nft list ruleset` prints it (comment included), the element of a verdict
// map or named set that matched, and the verdict. `nftpolicy explain` uses it to show
// why a packet is allowed or dropped, and the compiler's crosscheck tests use it to
// hold compiled rulesets against the NetworkPolicy reference evaluator.
//
// The walk is general: it knows every Key, statement and verdict of the nft model,
// not only the shapes nft/compile emits today, and it walks any hook. Two tables
// keep it that way as the model grows:
//
//   - Packet.field maps each nft.Key to the packet field it reads (and says when the
//     packet has no such field). A new match key is one case there and, when it
//     reads something new, one Packet field.
//   - statements applies a rule's non-terminal statements (counters, logs, limits,
//     and later `ct mark set`) to the packet being walked and names them in the
//     step. A statement that changes the packet (a mark) changes what later rules
//     see. A limit is taken as within its rate (the walk has no clock); limits never
//     share a rule with a verdict, so that decides no verdict.
//
// Pure: no I/O, no clock; a Ruleset may be walked by many goroutines at once.
package trace
