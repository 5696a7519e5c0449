package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

const renderBenchTimeout = 5 * time.Minute

// renderCount is how many times each benchmark runs; the table shows the
// median and the range, since one fsync can take twice another.
const renderCount = 5

// benchLine is one result line of a Go benchmark.
type benchLine struct {
	Iterations int
	Metrics    map[string]float64 // by unit: ns/op, B/op, allocs/op, ...
}

// renderResult holds the runs of BenchmarkRenderWrite100k (to disk) and
// BenchmarkRender100k (the same without the file), and of their YAML
// variants.
type renderResult struct {
	Write, CPU         []benchLine
	WriteYAML, CPUYAML []benchLine
}

// measureRender runs the adapter package's render benchmarks.
func measureRender(ctx context.Context, root string) (*renderResult, error) {
	ctx, cancel := context.WithTimeout(ctx, renderBenchTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-run=^$", "-bench=^BenchmarkRender(Write)?100k(YAML)?$", "-benchmem",
		"-count="+strconv.Itoa(renderCount), "./adapter")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench: %v\n%s", err, out)
	}
	r := &renderResult{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkRender") {
			continue
		}
		l := benchLine{Metrics: map[string]float64{}}
		if l.Iterations, err = strconv.Atoi(f[1]); err != nil {
			return nil, fmt.Errorf("benchmark line %q: %w", sc.Text(), err)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark line %q: %w", sc.Text(), err)
			}
			l.Metrics[f[i+1]] = v
		}
		// Names end in -GOMAXPROCS: BenchmarkRenderWrite100kYAML-2.
		name, _, _ := strings.Cut(f[0], "-")
		switch name {
		case "BenchmarkRenderWrite100k":
			r.Write = append(r.Write, l)
		case "BenchmarkRender100k":
			r.CPU = append(r.CPU, l)
		case "BenchmarkRenderWrite100kYAML":
			r.WriteYAML = append(r.WriteYAML, l)
		case "BenchmarkRender100kYAML":
			r.CPUYAML = append(r.CPUYAML, l)
		}
	}
	if len(r.Write) == 0 || len(r.CPU) == 0 || len(r.WriteYAML) == 0 || len(r.CPUYAML) == 0 {
		return nil, fmt.Errorf("missing benchmark results in:\n%s", out)
	}
	return r, nil
}

// nsPerOp returns the median, least and greatest ns/op of lines.
func nsPerOp(lines []benchLine) (med, lo, hi time.Duration) {
	ds := make([]time.Duration, len(lines))
	for i, l := range lines {
		ds[i] = time.Duration(l.Metrics["ns/op"])
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[0], ds[len(ds)-1]
}
