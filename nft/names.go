package nft

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
)

// The naming contract. `nft list ruleset` is the debugging interface of nftpolicy, so
// every name is chosen for the person reading it, and stays stable across restarts
// (names derive only from API object identities, never from time or order).
//
// Fixed objects are short kebab-case nouns. Per-policy objects carry a short hash of
// what they stand for (unique, stable) followed by the readable namespace/name of the
// policy behind them, as in `ing-3fa9c2d1-x/allow-a`, or `ing-3fa9c2d1-x/allow-a_and_2`
// when three policies share the object (nft takes only [a-zA-Z0-9/_.-] unquoted;
// a long label is cut before `_and_2`, alike for all a group's objects: ObjectNames).
const (
	DefaultTable = "nftpolicy"

	ChainForward = "forward"     // base chain: filter hook forward
	ChainIngress = "pod-ingress" // dispatch on the destination pod's address
	ChainEgress  = "pod-egress"  // dispatch on the source pod's address

	// Strict mode (--established=recheck): see nft/doc.go, "Established connections".
	ChainStamp        = "ct-stamp"          // stamp the connection with the current epoch, accept
	ChainReplyRecheck = "reply-recheck"     // a reply of a connection of an older epoch
	ChainEgressReply  = "pod-egress-reply"  // dispatch on the reply's destination (the original source)
	ChainIngressReply = "pod-ingress-reply" // dispatch on the reply's source (the original destination)
	SuffixReply       = "reply"             // a group chain's twin for replies: <chain>-reply

	// Unknown local pods (--unknown-pod-cidrs): every known local pod's address.
	SetLocalPodsV4 = "local-pods-v4"
	SetLocalPodsV6 = "local-pods-v6"

	// SetSyncedBootPrefix starts the name of the empty set that says the table
	// is in force in this boot of the node: synced-boot-<boot id>, in every
	// table the agent writes (SyncedBootSet). The one name
	// that is not stable across a reboot: that is what it is for.
	SetSyncedBootPrefix = "synced-boot-"

	MapIngressV4 = "ingress-v4" // local pod IPv4 -> its ingress chain
	MapIngressV6 = "ingress-v6"
	MapEgressV4  = "egress-v4" // local pod IPv4 -> its egress chain
	MapEgressV6  = "egress-v6"

	// ObjDenyLog is the limit object that gates every group chain's deny log
	// rule: one bucket for the node (see "Deny log" in doc.go).
	ObjDenyLog = "deny-log"
	// DenyLogPrefix starts the log prefix of every deny log rule.
	DenyLogPrefix = "nftpolicy-deny"
)

// SyncedBootSet is the name of the set that marks a table compiled and put in
// force in the node's boot bootID (/proc/sys/kernel/random/boot_id): the CNI
// gate (controllers/cnigate) admits new pods while it is in the table.
func SyncedBootSet(bootID string) string { return SetSyncedBootPrefix + bootID }

// HashLen is the number of hex digits of the hash in per-policy names.
const HashLen = 8

// ShortHash is the stable short hash used in per-policy names.
func ShortHash(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])[:HashLen]
}

// ObjectName builds `<prefix>-<ShortHash(key)>-<label>[-<suffix>]`, truncating the
// label (never the hash or suffix) so the result fits MaxNameLen. The head
// (ObjectHead: prefix and hash) makes the name unique, as the deny log's prefixes
// need: callers choose keys whose heads no other key of theirs has (the hash is 32
// bits: keys an author crafts, or one in 2^32 by chance, share one). The label is
// for people. Characters nft cannot take unquoted are replaced by '_'.
func ObjectName(prefix, key, label, suffix string) string {
	return ObjectNames(prefix, key, label, "", suffix)[0]
}

// ObjectNames names the objects of one key, one for each suffix, as ObjectName
// does, but the label is followed by more (`_and_2`: two more policies stand
// behind the objects), which is never cut, and it is cut once for all of them,
// to what the longest suffix leaves room for: every name is `<base>-<suffix>`
// (or `<base>` for the suffix ""), with one base, `<prefix>-<hash>-<label><more>`.
// One prefix finds all of a group's objects, a chain's reply twin is
// `<chain>-reply` when "reply" is one of the suffixes, and a cut label still says
// how many policies it stands for (a name that kept the first policy and lost
// `_and_1` told the reader of one policy where two ran).
func ObjectNames(prefix, key, label, more string, suffixes ...string) []string {
	head := ObjectHead(prefix, key)
	longest := 0
	for _, s := range suffixes {
		if s != "" {
			longest = max(longest, len(s)+1)
		}
	}
	label, more = sanitize(label), sanitize(more)
	if room := MaxNameLen - len(head) - 1 - len(more) - longest; len(label) > room {
		label = label[:max(room, 0)]
	}
	base := head
	if label+more != "" {
		base += "-" + label + more
	}
	out := make([]string, len(suffixes))
	for i, s := range suffixes {
		out[i] = base
		if s != "" {
			out[i] += "-" + s
		}
	}
	return out
}

// ObjectHead is the head of ObjectName(prefix, key, ...): `<prefix>-<ShortHash(key)>`.
func ObjectHead(prefix, key string) string { return prefix + "-" + ShortHash(key) }

// UniqueKey returns key, or when its head (ObjectHead(prefix, key)) is taken
// already, the first of key+"\ncollision 1", "\ncollision 2", ... whose head is not;
// it marks the head taken.
func UniqueKey(taken map[string]bool, prefix, key string) string {
	k := key
	for i := 1; taken[ObjectHead(prefix, k)]; i++ {
		k = key + "\ncollision " + strconv.Itoa(i)
	}
	taken[ObjectHead(prefix, k)] = true
	return k
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '/', r == '-', r == '_', r == '.':
			return r
		}
		return '_'
	}, s)
}

// The ClusterNetworkPolicy tiers' fixed objects (present only while some
// ClusterNetworkPolicy exists; see the package documentation). Per-group chains are
// `adm-eg-…`, `adm-in-…`, `bl-eg-…`, `bl-in-…`, one per family (`…-v4`, `…-v6`,
// and their `…-v4-reply` twins), and per-rule sets `cnp-…`, all labelled
// `cnp/<name>`.
const (
	ChainInput           = "input"            // base chain: filter hook input (a pod to its own node)
	ChainAdminEgress     = "admin-egress"     // Admin tier: dispatch on the source pod's address
	ChainBaselineEgress  = "baseline-egress"  // Baseline tier, pods no NetworkPolicy isolates for egress
	ChainAdminIngress    = "admin-ingress"    // Admin tier: dispatch on the destination pod's address
	ChainBaselineIngress = "baseline-ingress" // Baseline tier, pods no NetworkPolicy isolates for ingress
	ChainIngressTiers    = "ingress-tiers"    // the destination's ingress, all tiers; always decides

	// Strict mode: a reply of an older epoch walks the tiers as its connection.
	ChainAdminEgressReply     = "admin-egress-reply"     // dispatch on the reply's destination
	ChainBaselineEgressReply  = "baseline-egress-reply"  // likewise
	ChainAdminIngressReply    = "admin-ingress-reply"    // dispatch on the reply's source
	ChainBaselineIngressReply = "baseline-ingress-reply" // likewise
	ChainIngressTiersReply    = "ingress-tiers-reply"    // the connection's ingress, all tiers

	MapAdminEgressV4     = "admin-egress-v4" // local subject IPv4 -> its Admin egress chain
	MapAdminEgressV6     = "admin-egress-v6"
	MapAdminIngressV4    = "admin-ingress-v4"
	MapAdminIngressV6    = "admin-ingress-v6"
	MapBaselineEgressV4  = "baseline-egress-v4"
	MapBaselineEgressV6  = "baseline-egress-v6"
	MapBaselineIngressV4 = "baseline-ingress-v4"
	MapBaselineIngressV6 = "baseline-ingress-v6"
)
