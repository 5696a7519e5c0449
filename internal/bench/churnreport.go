package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Targets of the churn section (issue 9).
const (
	targetPerChangeHTTP  = 10.0
	targetPerChangeHTTPS = 1.5 // "about one"
	targetChurnCPU       = 3.0 // Consul's CPU under churn, relative to quiet
	targetChurnP99       = 500 * time.Millisecond
	targetQuietRequests  = 10.0 // per minute, at any size
)

// perServiceMeanWait is the mean wait of the per-service watch's queries
// with its default --consul.service-wait (spread over 7.5-10 minutes).
const perServiceMeanWait = 8*time.Minute + 45*time.Second

// churnTables renders the churn section: one table of costs and one of
// propagation per catalog size.
func (r *report) churnTables() string {
	var b strings.Builder
	b.WriteString("\n## Churn: what a change costs\n\n")
	switch {
	case r.churnErr != nil && len(r.churn) == 0:
		fmt.Fprintf(&b, "Failed: %s\n", oneLine(r.churnErr))
		return b.String()
	case len(r.churn) == 0:
		b.WriteString("Not run.\n")
		return b.String()
	}
	for _, c := range r.churn {
		fmt.Fprintf(&b, "### %s services × %d instances: %d changes, one a second, after %s quiet\n\n",
			thousands(c.Services), c.Instances, c.Rows[0].Changes, c.Quiet)
		b.WriteString("| Observer | Requests/min quiet | Requests/min churn | Requests per change | Consul CPU quiet (s/min) | Consul CPU churn (s/min) | Churn ÷ quiet | Adapter CPU churn (s/min) | Adapter peak RSS | Start to first file | Peak connections | Propagation p50 / p99, all kinds | Missed |\n")
		b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, row := range c.Rows {
			all := slices.Concat(slices.Collect(maps.Values(row.Latency))...)
			acpu := "in-process"
			if row.AdapterCPU >= 0 {
				acpu = fmt.Sprintf("%.2f", row.AdapterCPU)
			}
			rss, ready := "in-process", "–"
			if row.PeakRSS > 0 {
				rss, ready = mb(row.PeakRSS), secs(row.Ready)
			}
			quiet := fmt.Sprintf("%.1f", row.QuietRequests)
			if strings.Contains(row.Observer, "per-service") {
				// Every query was issued at the start and waits 7.5-10
				// minutes: a short window sees none of them time out.
				quiet += fmt.Sprintf(" (steady state ≈ %.0f: %s services ÷ 8.75 min mean wait)",
					float64(c.Services)/perServiceMeanWait.Minutes(), thousands(c.Services))
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %.1f | %.2f | %.2f | %s | %s | %s | %s | %d | %s / %s | %d |\n",
				row.Observer, quiet, thousands(int(row.ChurnRequests+0.5)), row.PerChange,
				row.QuietAgentCPU, row.ChurnAgentCPU, ratioOf(row.ChurnAgentCPU, row.QuietAgentCPU), acpu,
				rss, ready, row.PeakConns, millis(rank(all, 50)), millis(rank(all, 99)), row.Missed)
		}
		b.WriteString("\nBy kind: propagation p50 / max over the changes of that kind, from the Consul API call returning to the change in the adapter's file or on the built-in SD's `SyncCh`; then the mean number of requests to Consul from one change of the kind to the next change:\n\n")
		b.WriteString("| Kind |")
		for _, row := range c.Rows {
			b.WriteString(" " + row.Observer + " |")
		}
		b.WriteString("\n|---|" + strings.Repeat("---|", len(c.Rows)) + "\n")
		for _, kind := range churnKinds {
			b.WriteString("| " + kind + " |")
			for _, row := range c.Rows {
				l := row.Latency[kind]
				if len(l) == 0 {
					b.WriteString(" – |")
					continue
				}
				fmt.Fprintf(&b, " %s / %s, %.1f req |", millis(rank(l, 50)), millis(rank(l, 100)), mean(row.KindRequests[kind]))
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
		b.WriteString(r.churnTargets(c))
		switch {
		case c.ReadsErr != nil:
			fmt.Fprintf(&b, "What one read costs the agent: failed: %s\n\n", oneLine(c.ReadsErr))
		case len(c.Reads) > 0:
			quiet := make([]float64, 0, len(c.Rows))
			for _, row := range c.Rows {
				quiet = append(quiet, row.QuietAgentCPU)
			}
			slices.Sort(quiet)
			median := 0.0
			if len(quiet) > 0 {
				median = quiet[len(quiet)/2]
			}
			b.WriteString(readsTable(c.Reads, median) + "\n")
		}
	}
	if r.churnErr != nil {
		fmt.Fprintf(&b, "\nThe churn run stopped early: %s\n", oneLine(r.churnErr))
	}
	return b.String()
}

// churnTargets says, for one catalog size, which targets were reached.
func (r *report) churnTargets(c *churnResult) string {
	var lines []string
	for _, row := range c.Rows {
		if strings.HasPrefix(row.Observer, "built-in") {
			continue
		}
		all := slices.Concat(slices.Collect(maps.Values(row.Latency))...)
		p99 := rank(all, 99)
		target := targetPerChangeHTTP
		if strings.Contains(row.Observer, "HTTPS") {
			target = targetPerChangeHTTPS
		}
		cpu := row.ChurnAgentCPU / row.QuietAgentCPU
		quiet := row.QuietRequests
		if strings.Contains(row.Observer, "per-service") {
			quiet = float64(c.Services) / perServiceMeanWait.Minutes()
		}
		lines = append(lines, fmt.Sprintf("- %s: requests per change %.1f (target ≤ %g): %s; Consul CPU under churn %.1f× quiet (target ≤ %g×): %s; propagation p99 %s (target ≤ %s): %s; quiet requests/min %.1f (target ≤ %g): %s; missed %d.",
			row.Observer, row.PerChange, target, yesNo(row.PerChange <= target), cpu, targetChurnCPU, yesNo(cpu <= targetChurnCPU),
			millis(p99), millis(targetChurnP99), yesNo(p99 <= targetChurnP99 && row.Missed == 0),
			quiet, targetQuietRequests, yesNo(quiet <= targetQuietRequests), row.Missed))
	}
	return strings.Join(lines, "\n") + "\n\n"
}

// rank is percentile with 0 for no samples.
func rank(ds []time.Duration, pct float64) time.Duration {
	d, _ := percentile(ds, pct)
	return d
}

func mean(ns []int) float64 {
	if len(ns) == 0 {
		return 0
	}
	sum := 0
	for _, n := range ns {
		sum += n
	}
	return float64(sum) / float64(len(ns))
}
