package nfttest

import (
	"slices"
	"strings"
)

// SortBlocks sorts the top-level blocks (sets, maps, chains) of one `nft list table`
// listing by their text. The kernel lists objects in creation order, which differs
// between a table built in one go and one reached by a series of transactions;
// nothing else about the listing depends on history.
func SortBlocks(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) < 2 {
		return s
	}
	head, tail := lines[0], lines[len(lines)-1]
	var blocks []string
	var cur []string
	for _, l := range lines[1 : len(lines)-1] {
		if l == "" {
			continue
		}
		cur = append(cur, l)
		if l == "\t}" {
			blocks = append(blocks, strings.Join(cur, "\n"))
			cur = nil
		}
	}
	slices.Sort(blocks)
	return head + "\n" + strings.Join(blocks, "\n\n") + "\n" + tail + "\n"
}
