package consultest

import (
	"io"
	"os"
	"strings"
)

// maxTailBytes bounds how much of the log is read for a tail: dev agents
// log at debug level and long tests produce megabytes.
const maxTailBytes = 64 << 10

// logTail returns the last n lines of the agent log.
func (a *Agent) logTail(n int) string { return a.logTailSince(0, n) }

// logTailSince returns the last n lines logged from offset on.
func (a *Agent) logTailSince(offset int64, n int) string {
	s := a.logSince(offset)
	if len(s) > maxTailBytes {
		s = s[len(s)-maxTailBytes:]
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logSince returns the log from offset on, or a note why it cannot.
func (a *Agent) logSince(offset int64) string {
	f, err := os.Open(a.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size()-offset > 4*maxTailBytes {
		// Only the end matters to callers; skip the bulk.
		offset = fi.Size() - 4*maxTailBytes
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return "(log unreadable: " + err.Error() + ")"
	}
	return string(b)
}
