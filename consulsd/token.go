package consulsd

import (
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
)

// tokenFile holds the ACL token of a token file, read again whenever the
// file changes, so that a token rotated by Vault or an operator (a new one
// written, the old one then deleted in Consul) is used without a restart.
type tokenFile struct {
	path string

	mu    sync.Mutex
	info  os.FileInfo // of the version read
	token string
}

// readTokenFile reads the token from path; a missing or empty file is an
// error, which New returns at start.
func readTokenFile(path string) (*tokenFile, error) {
	f := &tokenFile{path: path}
	if err := f.reload(); err != nil {
		return nil, err
	}
	return f, nil
}

// reload reads the file if it changed since the last read. Called with mu
// held, or before f is shared.
func (f *tokenFile) reload() error {
	info, err := os.Stat(f.path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTokenFile, err)
	}
	if f.info != nil && os.SameFile(info, f.info) && info.ModTime().Equal(f.info.ModTime()) && info.Size() == f.info.Size() {
		return nil
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTokenFile, err)
	}
	token := strings.TrimSpace(string(data))
	if token == "" {
		return fmt.Errorf("%w %s is empty", ErrTokenFile, f.path)
	}
	f.info, f.token = info, token
	return nil
}

// get returns the token, from the file's newest version that holds one: a
// file being replaced, or missing for a moment, leaves the last token in use.
func (f *tokenFile) get() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	_ = f.reload()
	return f.token
}

// tokenTransport sets each request's ACL token from the token file.
type tokenTransport struct {
	next   http.RoundTripper
	tokens *tokenFile
}

func (t *tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	req.Header.Set("X-Consul-Token", t.tokens.get())
	return t.next.RoundTrip(req)
}
