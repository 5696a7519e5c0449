package adapter

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestUpdateWritesOnlyChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custom_sd.json")
	a, err := New(Config{OutputFile: path, FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if a.Ready() {
		t.Fatal("ready before any update")
	}
	for range 3 {
		if err := a.Update(sampleGroups()); err != nil {
			t.Fatal(err)
		}
	}
	if got := testutil.ToFloat64(a.metrics.writes); got != 1 {
		t.Errorf("%v writes for three equal snapshots, want 1", got)
	}
	if !a.Ready() {
		t.Error("not ready after a successful update")
	}
	if err := a.Update(nil); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if string(got) != "[]\n" {
		t.Errorf("empty snapshot wrote %q, want []", got)
	}

	// A restarted adapter reads the file and leaves identical content alone.
	b, err := New(Config{OutputFile: path, FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Update(nil); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(b.metrics.writes); got != 0 {
		t.Errorf("restart rewrote an up-to-date file (%v writes)", got)
	}
}

func TestNewRejectsWorldWritable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custom_sd.json")
	if _, err := New(Config{OutputFile: path, FileMode: 0o666}, log.NewNopLogger(), prometheus.NewRegistry()); err == nil {
		t.Error("mode 0666 accepted")
	}
}

// A directory fsync that fails after the rename: the file already holds the
// new content, so the write is no failure to retry, but counted apart.
func TestUpdateDirSyncFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custom_sd.json")
	a, err := New(Config{OutputFile: path, FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	realSyncDir := syncDir
	defer func() { syncDir = realSyncDir }()
	syncs := 0
	syncDir = func(string) error { syncs++; return errors.New("input/output error") }

	for range 2 {
		if err := a.Update(sampleGroups()); err != nil {
			t.Fatalf("Update: %v, want no error: the file was replaced", err)
		}
	}
	want, _ := Render(sampleGroups(), JSON)
	if got, _ := os.ReadFile(path); string(got) != string(want) {
		t.Errorf("file holds %q, want %q", got, want)
	}
	if syncs != 1 {
		t.Errorf("%d directory syncs for the same content twice, want 1: the second must find it written", syncs)
	}
	for name, m := range map[string]struct {
		c    prometheus.Counter
		want float64
	}{
		"writes": {a.metrics.writes, 1}, "write failures": {a.metrics.writeFailures, 0}, "directory sync failures": {a.metrics.dirSyncFailures, 1},
	} {
		if got := testutil.ToFloat64(m.c); got != m.want {
			t.Errorf("%s: %v, want %v", name, got, m.want)
		}
	}
	if !a.Ready() {
		t.Error("not ready although the file holds the snapshot")
	}
}
