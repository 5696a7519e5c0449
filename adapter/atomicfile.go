package adapter

import (
	"bufio"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"path/filepath"
)

// AtomicFile is the next content of a file, written to a temporary file in
// the same directory that replaces the file on Commit, so that a reader sees
// either the old file or the new one, whole, also across a crash or power
// loss. The temporary name starts with a dot and ends in ".tmp", so no
// file_sd glob such as *.json or *.yml picks it up half-written.
//
// Writes are buffered and digested on the way, so the caller can compare
// the new content with the old before deciding to Commit or Abort.
type AtomicFile struct {
	path string
	mode os.FileMode
	tmp  *os.File
	buf  *bufio.Writer
	sum  digester
}

// CreateAtomic starts the next content of path, to have mode once committed.
func CreateAtomic(path string, mode os.FileMode) (*AtomicFile, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, tempPattern(base))
	if err != nil {
		return nil, err
	}
	f := &AtomicFile{path: path, mode: mode, tmp: tmp}
	f.buf = bufio.NewWriterSize(tmp, 256<<10)
	f.sum.init()
	return f, nil
}

// Write adds p to the content.
func (f *AtomicFile) Write(p []byte) (int, error) {
	f.sum.Write(p)
	return f.buf.Write(p)
}

// Digest identifies the content written so far.
func (f *AtomicFile) Digest() Digest { return f.sum.digest() }

// Open opens the content for reading. Once committed, the handle reads the
// file as committed, even after a later Commit replaced it.
func (f *AtomicFile) Open() (*os.File, error) {
	if err := f.buf.Flush(); err != nil {
		return nil, err
	}
	return os.Open(f.tmp.Name())
}

// Abort removes the temporary file and leaves path as it was.
func (f *AtomicFile) Abort() {
	f.tmp.Close()
	os.Remove(f.tmp.Name())
}

// ErrDirNotSynced is in Commit's error when the file was replaced but its
// directory could not be synced: readers already see the new content, and
// only a crash before the file system writes the directory could bring the
// old file back. Writing the same content again would change nothing.
var ErrDirNotSynced = errors.New("output file replaced, but its directory not synced")

// Commit makes the content durable and puts it in place of path: flush,
// fsync, rename, fsync of the directory. If it fails before the rename,
// path is left as it was; after, the error wraps ErrDirNotSynced.
func (f *AtomicFile) Commit() error {
	if err := f.replace(); err != nil {
		f.Abort()
		return err
	}
	if err := syncDir(filepath.Dir(f.path)); err != nil {
		return fmt.Errorf("%w: %w", ErrDirNotSynced, err)
	}
	return nil
}

// replace is Commit up to the rename.
func (f *AtomicFile) replace() error {
	if err := f.buf.Flush(); err != nil {
		return err
	}
	// CreateTemp makes 0600 files; the umask must not decide who can read.
	if err := f.tmp.Chmod(f.mode); err != nil {
		return err
	}
	if err := f.tmp.Sync(); err != nil {
		return err
	}
	if err := f.tmp.Close(); err != nil {
		return err
	}
	return os.Rename(f.tmp.Name(), f.path)
}

// Digest identifies a file's content: its size and a 64-bit hash with a
// per-process seed, enough to tell whether a rendering equals what the file
// holds without keeping the file in memory.
type Digest struct {
	Size int64
	Hash uint64
}

// hashSeed is fixed per process: digests compare contents in memory, they
// are never stored.
var hashSeed = maphash.MakeSeed()

type digester struct {
	h    maphash.Hash
	size int64
}

func (d *digester) init() { d.h.SetSeed(hashSeed) }

func (d *digester) Write(p []byte) (int, error) {
	d.h.Write(p)
	d.size += int64(len(p))
	return len(p), nil
}

func (d *digester) digest() Digest { return Digest{Size: d.size, Hash: d.h.Sum64()} }

// FileDigest returns the digest of the file at path.
func FileDigest(path string) (Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return Digest{}, err
	}
	defer f.Close()
	var d digester
	d.init()
	if _, err := io.Copy(&d, f); err != nil {
		return Digest{}, err
	}
	return d.digest(), nil
}

// syncDir makes a rename in dir durable. A variable, so that tests can make
// it fail as only an I/O error makes it fail on a real file system.
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// CheckWritable reports, before any discovery runs, whether the output file
// can be written: its directory must exist and accept a new file, and the
// file itself, if present, must be a regular file.
func CheckWritable(path string) error {
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("output directory %s is not a directory", dir)
	}
	if st, err := os.Stat(path); err == nil && !st.Mode().IsRegular() {
		return fmt.Errorf("output file %s exists and is not a regular file", path)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("output file: %w", err)
	}
	f, err := os.CreateTemp(dir, tempPattern(filepath.Base(path)))
	if err != nil {
		return fmt.Errorf("output directory %s is not writable: %w", dir, err)
	}
	f.Close()
	return os.Remove(f.Name())
}

// tempPattern names the temporary files for the output file base: hidden,
// and ending in .tmp so that no file_sd glob (*.json, *.yml) matches.
func tempPattern(base string) string { return "." + base + ".*.tmp" }

// RemoveStaleTemps deletes temporary files that a killed process left next
// to path. Only names of our own pattern are touched.
func RemoveStaleTemps(path string) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	stale, err := filepath.Glob(filepath.Join(dir, tempPattern(base)))
	if err != nil {
		return err
	}
	for _, f := range stale {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
