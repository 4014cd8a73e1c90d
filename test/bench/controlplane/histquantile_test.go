package controlplane

import (
	"math"
	"testing"
)

func TestHistQuantile(t *testing.T) {
	m := map[string]float64{
		`x_bucket{kind="incremental",le="0.001"}`: 10,
		`x_bucket{kind="incremental",le="0.002"}`: 50,
		`x_bucket{kind="incremental",le="0.005"}`: 90,
		`x_bucket{kind="incremental",le="0.01"}`:  100,
		`x_bucket{kind="incremental",le="+Inf"}`:  100,
		`x_bucket{kind="full",le="0.001"}`:        0,
		`x_bucket{kind="full",le="+Inf"}`:         3,
	}
	for _, c := range []struct {
		label string
		q     float64
		want  float64
	}{
		{`kind="incremental"`, 0.05, 0.0005}, // rank 5 of 10 in [0, 1 ms]
		{`kind="incremental"`, 0.5, 0.002},   // rank 50: the top of (1, 2 ms]
		{`kind="incremental"`, 0.7, 0.0035},  // rank 70: halfway through (2, 5 ms]
		{`kind="incremental"`, 0.99, 0.0095}, // rank 99 in (5, 10 ms]
		{`kind="full"`, 0.5, 0.001},          // above every bound: the last finite one
	} {
		if got := histQuantile(m, "x", c.label, c.q); math.Abs(got-c.want) > 1e-12 {
			t.Errorf("%s q=%v: %v, want %v", c.label, c.q, got, c.want)
		}
	}
	if got := histQuantile(m, "x", `kind="none"`, 0.5); !math.IsNaN(got) {
		t.Errorf("no observations: %v, want NaN", got)
	}
}
