package adapter

import (
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
