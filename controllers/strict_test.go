package controllers

import (
	"testing"

	"github.com/nftpolicy/nftpolicy/nft/compile"
)

// TestEpochAdvance: no epoch comes round again without a sweep in between that
// left only the epoch then current, over several wraps, from a fresh start and
// from a restart that found an epoch in force.
func TestEpochAdvance(t *testing.T) {
	const mask = 0x00000700 // epochs 1-7: wraps come quickly
	for _, start := range []uint32{0, 1, 5, 7} {
		e := epochState{epoch: start}
		// onConns: the epochs connections may carry (idle ones keep theirs).
		onConns := map[uint32]bool{}
		for v := uint32(1); v <= compile.MaxEpoch(mask); v++ {
			onConns[v] = true // a previous agent's connections: anything
		}
		sweeps := 0
		for i := range 100 {
			cur := e.epoch
			next, sweep := e.advance(mask)
			if sweep {
				sweeps++
				for v := range onConns {
					if v != cur {
						delete(onConns, v)
					}
				}
			}
			if onConns[next] {
				t.Fatalf("start %d, change %d: epoch %d comes round while connections may carry it", start, i, next)
			}
			onConns[next] = true
		}
		// One sweep at the start, then one per cycle of 7 epochs (6 changes after it).
		if sweeps < 100/7 || sweeps > 100/6+1 {
			t.Errorf("start %d: %d sweeps in 100 changes", start, sweeps)
		}
	}
}
