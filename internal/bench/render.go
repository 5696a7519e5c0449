package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

const renderBenchTimeout = 5 * time.Minute

// renderResult is BenchmarkRenderWrite100k's line.
type renderResult struct {
	Iterations int
	Metrics    map[string]float64 // by unit: ns/op, B/op, allocs/op, ...
}

// measureRender runs the adapter package's render+write benchmark.
func measureRender(ctx context.Context, root string) (*renderResult, error) {
	ctx, cancel := context.WithTimeout(ctx, renderBenchTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-run=^$", "-bench=RenderWrite100k", "-benchmem", "-count=1", "./adapter")
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("go test -bench: %v\n%s", err, out)
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "BenchmarkRenderWrite100k") {
			continue
		}
		r := &renderResult{Metrics: map[string]float64{}}
		if r.Iterations, err = strconv.Atoi(f[1]); err != nil {
			return nil, fmt.Errorf("benchmark line %q: %w", sc.Text(), err)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("benchmark line %q: %w", sc.Text(), err)
			}
			r.Metrics[f[i+1]] = v
		}
		return r, nil
	}
	return nil, fmt.Errorf("no BenchmarkRenderWrite100k result in:\n%s", out)
}
