package adapter

import (
	"bufio"
	"io"
	"os"
	"time"

	"github.com/prometheus/prometheus/discovery/targetgroup"
)

// span is where a group's entries are in a file: n bytes from off.
type span struct{ off, n int64 }

// previousFile is the output file as the adapter last wrote it, open for
// reading, and where each group's entries are in it. After one change in
// Consul every other group is the same *targetgroup.Group as before (a
// Discoverer never changes a group it has sent), so the next file copies
// their bytes from here instead of converting and encoding them again:
// encoding was most of the time a write took at 100,000 targets.
//
// The handle reads the file as written even after the next write replaced
// it. A file changed in place since (same inode, new size or time) is not
// copied from: its bytes may no longer be the groups'.
type previousFile struct {
	file  *os.File
	size  int64
	mtime time.Time
	spans map[*targetgroup.Group]span

	r   *bufio.Reader
	pos int64 // where r is in file
}

// begin readies p for copying from the start of the file, and returns nil
// when there is nothing to copy from.
func (p *previousFile) begin() *previousFile {
	if p.file == nil {
		return nil
	}
	st, err := p.file.Stat()
	if err != nil || st.Size() != p.size || !st.ModTime().Equal(p.mtime) {
		p.forget()
		return nil
	}
	if _, err := p.file.Seek(0, io.SeekStart); err != nil {
		p.forget()
		return nil
	}
	if p.r == nil {
		p.r = bufio.NewReaderSize(p.file, 256<<10)
	}
	p.r.Reset(p.file)
	p.pos = 0
	return p
}

// span returns where g's entries are, if it can still copy them: it reads
// forward only, which is the order both files keep their groups in.
func (p *previousFile) span(g *targetgroup.Group) (span, bool) {
	if p == nil {
		return span{}, false
	}
	s, ok := p.spans[g]
	return s, ok && s.off >= p.pos
}

// copy writes the bytes of s to w.
func (p *previousFile) copy(w io.Writer, s span) (int64, error) {
	skipped, err := p.r.Discard(int(s.off - p.pos))
	p.pos += int64(skipped)
	if err != nil {
		return 0, unexpected(err)
	}
	var n int64
	for n < s.n {
		b, err := p.r.Peek(int(min(s.n-n, int64(p.r.Size()))))
		if len(b) > 0 {
			m, werr := w.Write(b)
			p.r.Discard(m)
			p.pos += int64(m)
			n += int64(m)
			if werr != nil {
				return n, werr
			}
		}
		if err != nil {
			return n, unexpected(err)
		}
	}
	return n, nil
}

// unexpected turns the end of the file into an error: a span said there
// were more bytes.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// replace makes file, just committed with spans, the one to copy from.
func (p *previousFile) replace(file *os.File, spans map[*targetgroup.Group]span) {
	p.forget()
	st, err := file.Stat()
	if err != nil {
		file.Close()
		return
	}
	p.file, p.size, p.mtime, p.spans = file, st.Size(), st.ModTime(), spans
}

// forget closes the file: the next write encodes every group.
func (p *previousFile) forget() {
	if p.file != nil {
		p.file.Close()
	}
	p.file, p.spans = nil, nil
}
