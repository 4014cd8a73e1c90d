package datapath

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// plotSeries is one line of a plot.
type plotSeries struct {
	name string
	x, y []float64
}

var plotColors = []color.RGBA{
	{0x55, 0x55, 0x55, 0xff}, // no policy: grey
	{0x1f, 0x77, 0xb4, 0xff}, // nftpolicy: blue
	{0xd6, 0x27, 0x28, 0xff}, // peer: red
}

// writePlot draws series as lines with markers, x on a log10 axis and y linear
// from zero, into a PNG at path.
func writePlot(path, title, xLabel, yLabel string, series []plotSeries) error {
	const w, h = 900, 520
	const left, right, top, bottom = 90, 20, 56, 110
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	fill(img, img.Bounds(), color.RGBA{0xff, 0xff, 0xff, 0xff})

	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range series {
		for i := range s.x {
			xmin, xmax = math.Min(xmin, s.x[i]), math.Max(xmax, s.x[i])
			if !math.IsNaN(s.y[i]) {
				ymax = math.Max(ymax, s.y[i])
			}
		}
	}
	if ymax <= 0 || xmin <= 0 || xmin >= xmax {
		return fmt.Errorf("nothing to plot")
	}
	ystep := niceStep(ymax / 5)
	ymax = math.Ceil(ymax*1.05/ystep) * ystep
	lx0, lx1 := math.Floor(math.Log10(xmin)), math.Ceil(math.Log10(xmax))
	px := func(x float64) int {
		return left + int((math.Log10(x)-lx0)/(lx1-lx0)*float64(w-left-right))
	}
	py := func(y float64) int { return h - bottom - int(y/ymax*float64(h-top-bottom)) }

	grid, axis, ink := color.RGBA{0xe0, 0xe0, 0xe0, 0xff}, color.RGBA{0x33, 0x33, 0x33, 0xff}, color.RGBA{0, 0, 0, 0xff}
	for y := 0.0; y <= ymax+ystep/2; y += ystep {
		line(img, left, py(y), w-right, py(y), grid, 1)
		label := fmt.Sprintf("%.0f", y)
		text(img, left-8-7*len(label), py(y)+4, label, ink)
	}
	for e := lx0; e <= lx1; e++ {
		x := math.Pow(10, e)
		line(img, px(x), top, px(x), h-bottom, grid, 1)
		label := fmt.Sprintf("%.0f", x)
		text(img, px(x)-7*len(label)/2, h-bottom+18, label, ink)
	}
	line(img, left, h-bottom, w-right, h-bottom, axis, 1)
	line(img, left, top, left, h-bottom, axis, 1)
	text(img, 8, 20, title, ink)
	text(img, left+(w-left-right)/2-7*len(xLabel)/2, h-bottom+40, xLabel, ink)
	text(img, 8, top-14, yLabel, ink)

	for i, s := range series {
		c := plotColors[i%len(plotColors)]
		for j := range s.x {
			if math.IsNaN(s.y[j]) {
				continue
			}
			x, y := px(s.x[j]), py(s.y[j])
			fill(img, image.Rect(x-4, y-4, x+5, y+5), c)
			if j > 0 && !math.IsNaN(s.y[j-1]) {
				line(img, px(s.x[j-1]), py(s.y[j-1]), x, y, c, 2)
			}
		}
		ly := h - bottom + 62 + 16*i
		fill(img, image.Rect(left, ly-8, left+24, ly-4), c)
		text(img, left+32, ly, s.name, ink)
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten.
func niceStep(v float64) float64 {
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func fill(img *image.RGBA, r image.Rectangle, c color.RGBA) {
	r = r.Intersect(img.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

// line draws from (x0,y0) to (x1,y1), width pixels thick.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA, width int) {
	steps := max(abs(x1-x0), abs(y1-y0), 1)
	for i := 0; i <= steps; i++ {
		x := x0 + (x1-x0)*i/steps
		y := y0 + (y1-y0)*i/steps
		fill(img, image.Rect(x-width/2, y-width/2, x-width/2+width, y-width/2+width), c)
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

// text draws s with its baseline at y, in the 7x13 basic font.
func text(img *image.RGBA, x, y int, s string, c color.RGBA) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}
