package adapter

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func TestWriteFileAtomic(t *testing.T) {
	old := syscall.Umask(0o077) // the mode must not depend on the umask
	defer syscall.Umask(old)

	dir := t.TempDir()
	path := filepath.Join(dir, "custom_sd.json")
	for _, content := range []string{"[]\n", "[{\"targets\":[\"a:1\"]}]\n"} {
		if err := WriteFileAtomic(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != content {
			t.Fatalf("read back %q, %v; want %q", got, err, content)
		}
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	names, _ := os.ReadDir(dir)
	if len(names) != 1 {
		t.Errorf("directory holds %d entries, want only the output file (no temp files left)", len(names))
	}
}

func TestTempNamesEscapeFileSDGlobs(t *testing.T) {
	dir := t.TempDir()
	for _, out := range []string{"custom_sd.json", "targets.yml", "t.yaml"} {
		f, err := os.CreateTemp(dir, tempPattern(out))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		for _, glob := range []string{"*.json", "*.yml", "*.yaml", "*.JSON"} {
			if ok, _ := filepath.Match(glob, filepath.Base(f.Name())); ok {
				t.Errorf("temp file %s matches file_sd glob %s", f.Name(), glob)
			}
		}
	}
}

func TestWriteFileAtomicFailureKeepsOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "custom_sd.json")
	if err := WriteFileAtomic(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Renaming a file over a non-empty directory fails for every user,
	// root included, after the temp file was written.
	blocker := filepath.Join(dir, "blocked.json")
	if err := os.MkdirAll(filepath.Join(blocker, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(blocker, []byte("new"), 0o644); err == nil {
		t.Fatal("write over a directory succeeded, want an error")
	}
	got, _ := os.ReadFile(path)
	if string(got) != "old" {
		t.Errorf("old file now %q", got)
	}
	names, _ := os.ReadDir(dir)
	if len(names) != 2 {
		t.Errorf("directory holds %d entries, want 2 (temp file not cleaned up?)", len(names))
	}
}

func TestCheckWritable(t *testing.T) {
	dir := t.TempDir()
	if err := CheckWritable(filepath.Join(dir, "out.json")); err != nil {
		t.Errorf("writable dir: %v", err)
	}
	if err := CheckWritable(filepath.Join(dir, "missing", "out.json")); err == nil {
		t.Error("missing dir: no error")
	}
	if err := CheckWritable(dir); err == nil {
		t.Error("output path is a directory: no error")
	}
	names, _ := os.ReadDir(dir)
	if len(names) != 0 {
		t.Errorf("CheckWritable left %d files behind", len(names))
	}
}

func TestRemoveStaleTemps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "custom_sd.json")
	keep := []string{"custom_sd.json", "other.json", ".other.json.123.tmp"}
	for _, name := range append(keep, ".custom_sd.json.123.tmp", ".custom_sd.json.456.tmp") {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveStaleTemps(path); err != nil {
		t.Fatal(err)
	}
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	slices.Sort(left)
	slices.Sort(keep)
	if !slices.Equal(left, keep) {
		t.Errorf("left %v, want %v", left, keep)
	}
}

// WriteFileAtomic replaces path with data through an AtomicFile.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := CreateAtomic(path, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Abort()
		return err
	}
	return f.Commit()
}
