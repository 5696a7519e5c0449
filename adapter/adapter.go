// Package adapter runs Prometheus's discovery.Manager around a Discoverer and
// keeps a file_sd file in step with what it finds. It knows nothing of where
// the targets come from.
package adapter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// providerName names our Discoverer inside the Manager and in its metrics.
const providerName = "consul"

// managerThrottle is how long the Manager may hold back an update to batch
// it with the next. Its default of 5s would add seconds to every change; our
// Discoverer sends at most one snapshot per round, so there is nothing to batch.
const managerThrottle = 100 * time.Millisecond

// writeRetryInterval is how soon a failed write is tried again without
// waiting for the next snapshot.
const writeRetryInterval = 5 * time.Second

// Config says where and how to write.
type Config struct {
	// OutputFile is the file_sd file; its extension picks JSON or YAML.
	OutputFile string
	// FileMode is the output file's permission bits.
	FileMode os.FileMode
	// ManagerLogger is what the discovery Manager logs to; nil discards.
	ManagerLogger *slog.Logger
}

// Adapter writes the targets of a Discoverer to a file_sd file.
type Adapter struct {
	path    string
	format  Format
	mode    os.FileMode
	logger  log.Logger
	reg     prometheus.Registerer
	metrics *metrics
	mlogger *slog.Logger

	// written identifies what the file holds now, so that an unchanged
	// snapshot is not written again.
	written   Digest
	writtenAt time.Time
	ready     atomic.Bool
	// current is the last snapshot written, for http_sd and the status page.
	current atomic.Pointer[Snapshot]
	// previous is the file as last written, to copy unchanged groups from.
	previous previousFile
}

// Snapshot is the state of the output as of the last successful update.
// It keeps the groups, not their rendering: at 100,000 targets a rendered
// copy would take as much memory again as the groups, which the discovery
// Manager holds anyway. http_sd and the status page render on request.
type Snapshot struct {
	// Groups are as the Manager sent them; Write and Entries order them.
	Groups []*targetgroup.Group
	// Updated is when the snapshot was taken; Written when the file last changed.
	Updated, Written time.Time
}

// New returns an Adapter. It reads the current output file, if any, so that a
// restart over an up-to-date file does not rewrite it.
func New(cfg Config, logger log.Logger, reg prometheus.Registerer) (*Adapter, error) {
	format, err := FormatOf(cfg.OutputFile)
	if err != nil {
		return nil, err
	}
	if cfg.FileMode&0o002 != 0 {
		return nil, fmt.Errorf("file mode %#o would make the output world-writable", cfg.FileMode)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if err := RemoveStaleTemps(cfg.OutputFile); err != nil {
		return nil, fmt.Errorf("removing temporary files of an earlier run: %w", err)
	}
	a := &Adapter{path: cfg.OutputFile, format: format, mode: cfg.FileMode, logger: logger, reg: reg, metrics: m, mlogger: cfg.ManagerLogger}
	if d, err := FileDigest(cfg.OutputFile); err == nil {
		a.written = d
		if st, err := os.Stat(cfg.OutputFile); err == nil {
			a.writtenAt = st.ModTime()
		}
	}
	return a, nil
}

// Unregister takes the output's metrics out of the registry it was given,
// when a reload removes its entry.
func (a *Adapter) Unregister() { a.metrics.registered.Unregister() }

// Path returns the output file.
func (a *Adapter) Path() string { return a.path }

// Ready reports whether the file reflects a successful discovery round.
func (a *Adapter) Ready() bool { return a.ready.Load() }

// Current returns the last successful snapshot, or nil before the first.
func (a *Adapter) Current() *Snapshot { return a.current.Load() }

// Run runs d as the only provider of a Runner writing to a, until ctx ends.
func (a *Adapter) Run(ctx context.Context, d discovery.Discoverer) error {
	r, err := NewRunner(ctx, a.mlogger, a.logger, a.reg)
	if err != nil {
		return err
	}
	r.Apply(map[string]*Adapter{providerName: a}, map[string]discovery.Configs{providerName: {Discoverer(d)}})
	return r.Run(ctx)
}

// Update writes groups to the output file if the content changed. It
// renders straight into the next file, copying the groups it wrote last
// time from the file it wrote them to: when that turns out to be what the
// file already holds, the temporary file is dropped unsynced.
func (a *Adapter) Update(groups []*targetgroup.Group) error {
	spans := make(map[*targetgroup.Group]span, len(groups))
	var copied *os.File // the new file, to copy from next time
	f, err := CreateAtomic(a.path, a.mode)
	if err == nil {
		err = writeFile(f, sortGroups(groups), a.format, a.previous.begin(), spans)
		if err == nil {
			copied, err = f.Open()
		}
		if err != nil {
			f.Abort()
		}
	}
	if err != nil {
		a.previous.forget() // in case reading it failed
		a.metrics.writeFailures.Inc()
		return err
	}
	now := time.Now()
	snap := &Snapshot{Groups: groups, Updated: now, Written: a.writtenAt}
	if d := f.Digest(); d == a.written {
		f.Abort()
		copied.Close()
		if a.previous.file != nil {
			a.previous.spans = spans // the same bytes, so the same places
		}
	} else {
		err := f.Commit()
		if err == nil || errors.Is(err, ErrDirNotSynced) {
			a.previous.replace(copied, spans)
		} else {
			copied.Close()
		}
		if errors.Is(err, ErrDirNotSynced) {
			// The file holds the new content: retrying would find it
			// there and write nothing.
			a.metrics.dirSyncFailures.Inc()
			level.Warn(a.logger).Log("msg", "Replaced the output file, but syncing its directory failed: a crash may bring back the previous one", "file", a.path, "err", err)
		} else if err != nil {
			a.metrics.writeFailures.Inc()
			return err
		}
		a.written, a.writtenAt = d, now
		snap.Written = now
		a.metrics.writes.Inc()
		a.metrics.lastWrite.SetToCurrentTime()
		level.Info(a.logger).Log("msg", "Wrote targets", "file", a.path, "bytes", d.Size)
	}
	a.current.Store(snap)
	a.ready.Store(true)
	return nil
}
