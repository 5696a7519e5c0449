package adapter

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/go-kit/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// randomGroup makes a group with up to three targets, some of them without
// an address (left out of the file) and some labels empty (left out too).
func randomGroup(rng *rand.Rand, source string) *targetgroup.Group {
	g := &targetgroup.Group{Source: source, Labels: model.LabelSet{"__meta_consul_dc": model.LabelValue(fmt.Sprint("dc", rng.IntN(2)))}}
	for i := range rng.IntN(4) {
		t := model.LabelSet{
			"__meta_consul_service_id": model.LabelValue(fmt.Sprint(source, "-", i)),
			"__meta_consul_health":     model.LabelValue([]string{"passing", "critical", ""}[rng.IntN(3)]),
		}
		if rng.IntN(8) > 0 {
			t[model.AddressLabel] = model.LabelValue(fmt.Sprintf("10.0.0.%d:%d", rng.IntN(4), 8000+i))
		}
		g.Targets = append(g.Targets, t)
	}
	return g
}

// TestUpdatesThatCopyEqualAFreshRendering drives an output through random
// snapshots that share most of their groups with the one before, as a
// Discoverer's do, and checks after each that the file is byte for byte
// what rendering the snapshot from scratch gives. The snapshots add,
// change and remove groups, repeat a snapshot, and hold groups of the same
// source (one per datacenter), even equal ones, and groups with nothing
// to scrape.
func TestUpdatesThatCopyEqualAFreshRendering(t *testing.T) {
	for _, file := range []string{"custom_sd.json", "custom_sd.yml"} {
		t.Run(file, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(len(file))))
			path := filepath.Join(t.TempDir(), file)
			a, err := New(Config{OutputFile: path, FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			var groups []*targetgroup.Group
			for i := range 30 {
				groups = append(groups, randomGroup(rng, fmt.Sprintf("svc-%02d", i)))
			}
			copied := 0
			for step := range 200 {
				groups = slices.Clone(groups)
				for range rng.IntN(4) {
					switch i := rng.IntN(len(groups)); rng.IntN(5) {
					case 0: // changed
						groups[i] = randomGroup(rng, groups[i].Source)
					case 1: // removed
						groups = slices.Delete(groups, i, i+1)
					case 2: // new, maybe a second one of a source
						groups = append(groups, randomGroup(rng, fmt.Sprintf("svc-%02d", rng.IntN(40))))
					case 3: // nothing to scrape
						groups[i] = &targetgroup.Group{Source: groups[i].Source}
					case 4: // the same targets again: their order in the file is
						// not fixed, their bytes are
						twin := *groups[i]
						groups = append(groups, &twin)
					}
				}
				rng.Shuffle(len(groups), func(i, j int) { groups[i], groups[j] = groups[j], groups[i] })
				if a.previous.file != nil {
					copied++
				}
				if err := a.Update(groups); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				want, err := Render(groups, a.format)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("step %d: the file differs from a fresh rendering:\n%s\nwant:\n%s", step, got, want)
				}
			}
			if copied < 150 {
				t.Errorf("%d of 200 updates had a file to copy from, want nearly all", copied)
			}
		})
	}
}

// TestUpdateCopiesFromTheFileItWrote shows that unchanged groups are copied
// from the previous file, not encoded again, and that a file changed in
// place since is not copied from.
func TestUpdateCopiesFromTheFileItWrote(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custom_sd.json")
	a, err := New(Config{OutputFile: path, FileMode: 0o644}, log.NewNopLogger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	groups := sampleGroups()
	if err := a.Update(groups); err != nil {
		t.Fatal(err)
	}
	// Change one address in the file in place, keeping its size, and put
	// its time back: only copying shows the change in the next file.
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Replace(written, []byte("10.0.0.1"), []byte("10.9.9.1"), 1)
	if bytes.Equal(edited, written) {
		t.Fatal("sampleGroups has no 10.0.0.1 to edit")
	}
	editInPlace(t, path, edited)
	if err := os.Chtimes(path, st.ModTime(), st.ModTime()); err != nil {
		t.Fatal(err)
	}
	changed := slices.Clone(groups)
	changed[len(changed)-1] = &targetgroup.Group{Source: "zz-new", Targets: []model.LabelSet{{model.AddressLabel: "10.1.1.1:80"}}}
	if err := a.Update(changed); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(got, []byte("10.9.9.1")) {
		t.Fatalf("the unchanged groups were encoded again, not copied:\n%s", got)
	}

	// Edited in place with a new time, the file is not copied from.
	editInPlace(t, path, bytes.Replace(got, []byte("10.9.9.1"), []byte("10.8.8.1"), 1))
	if err := os.Chtimes(path, time.Now().Add(time.Hour), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := a.Update(groups); err != nil {
		t.Fatal(err)
	}
	got, err = os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Render(groups, JSON)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("copied from a file changed in place:\n%s\nwant:\n%s", got, want)
	}
}

// editInPlace overwrites path's content without replacing the file, as
// only a tool writing into the file itself would.
func editInPlace(t *testing.T, path string, content []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
}
