package framework

import (
	"bufio"
	"bytes"
	"context"
	"strconv"
	"strings"

	"k8s.io/client-go/kubernetes"
)

// Metrics scrapes the apiserver's /metrics as the admin: name{labels} -> value.
func (cp *ControlPlane) Metrics(ctx context.Context) (map[string]float64, error) {
	cs, err := kubernetes.NewForConfig(cp.Config)
	if err != nil {
		return nil, err
	}
	b, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	return ParseMetrics(b)
}

// ParseMetrics reads the Prometheus text format into name{labels} -> value
// (labels as the exporter wrote them, so in its order).
func ParseMetrics(text []byte) (map[string]float64, error) {
	m := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// SumMetrics adds up the values of every series of name whose labels contain
// each of the given label="value" pairs.
func SumMetrics(m map[string]float64, name string, labels ...string) float64 {
	var sum float64
	for k, v := range m {
		rest, ok := strings.CutPrefix(k, name)
		if !ok || (rest != "" && rest[0] != '{') {
			continue
		}
		match := true
		for _, l := range labels {
			if !strings.Contains(rest, "{"+l) && !strings.Contains(rest, ","+l) {
				match = false
				break
			}
		}
		if match {
			sum += v
		}
	}
	return sum
}
