package faultproxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Proxy forwards HTTP requests to one Consul agent, applying the fault set
// for each request's path. It is safe for concurrent use.
type Proxy struct {
	// Addr is the host:port the proxy listens on (on 127.0.0.1).
	Addr string
	// URL is the proxy's base URL, "http://" + Addr ("https://" with
	// StartTLS).
	URL string

	srv       *httptest.Server
	rp        *httputil.ReverseProxy
	transport *http.Transport
	// ctx is cancelled by Close. It ends held and in-flight requests, which
	// could otherwise keep Close waiting for minutes (blocking queries).
	ctx    context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	faults map[string]Fault
	counts map[string]int
	total  int
	gzip   int // requests that accepted a gzipped answer
	conns  int // client connections open now
	peak   int // most client connections open at once
	// kept holds the answers Lagging and NewLeader serve, by path.
	kept map[string]*httptest.ResponseRecorder
	// seen holds the last MaxSeen requests, a ring from next on once full.
	seen []Request
	next int
}

// MaxSeen is how many requests Seen keeps: a proxy that serves a long
// benchmark must not grow without end.
const MaxSeen = 1000

// Request is what a request carried when it reached the proxy, before any
// fault: what the client sent.
type Request struct {
	Method string
	// URI is the request target as sent: a path and query, or an absolute
	// URL from a client that took the proxy for a forward proxy.
	URI   string
	Host  string
	Proto string // HTTP/1.1, HTTP/2.0
	Path  string
	Query url.Values
	// Header is the request's headers; Host is apart, as in http.Request.
	Header http.Header
}

// Start starts a proxy to target, as New does, and closes it when the test
// ends. It fails the test if the proxy cannot start.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// New starts a proxy to target, an agent's "host:port" or base URL
// ("http://host:port"; for "https://" the agent's certificate is not
// verified, the proxy itself always serves plain HTTP). The caller closes
// it. Tests use Start.
func New(target string) (*Proxy, error) { return newProxy(target, false) }

// StartTLS is Start for a proxy that serves HTTPS with HTTP/2, as Consul's
// HTTPS API does, with httptest's self-signed certificate: clients skip
// verification. It talks HTTP/2 to an https target too, so that a client's
// multiplexed queries stay multiplexed on the way to the agent.
func StartTLS(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := NewTLS(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// NewTLS is New for StartTLS.
func NewTLS(target string) (*Proxy, error) { return newProxy(target, true) }

func newProxy(target string, serveTLS bool) (*Proxy, error) {
	if !strings.Contains(target, "://") {
		target = "http://" + target
	}
	u, err := url.Parse(target)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("faultproxy: bad target %q: %v", target, err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: %w", err)
	}

	p := &Proxy{faults: map[string]Fault{}, counts: map[string]int{}, kept: map[string]*httptest.ResponseRecorder{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.transport = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// No ResponseHeaderTimeout: blocking queries wait up to
		// minutes for their headers.
	}
	if u.Scheme == "https" {
		p.transport.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} // loopback test agent
		p.transport.ForceAttemptHTTP2 = true
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u) // keeps path and query; headers (X-Consul-Token) pass as they are
		},
		Transport: p.transport,
		// Stream every write at once: a blocking query's answer must not
		// wait in a buffer.
		FlushInterval:  -1,
		ModifyResponse: modifyResponse,
		ErrorHandler:   errorHandler,
		// Requests cut short by clients and by Close are expected here.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	// httptest.Server rather than http.Server: its Close waits for every
	// handler to return. Its own listener would panic on failure.
	p.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: http.HandlerFunc(p.serve), ConnState: p.connState}}
	if serveTLS {
		p.srv.EnableHTTP2 = true
		p.srv.StartTLS()
	} else {
		p.srv.Start()
	}
	p.URL = p.srv.URL
	_, p.Addr, _ = strings.Cut(p.srv.URL, "://")
	return p, nil
}

// connState counts the client connections open at once.
func (p *Proxy) connState(_ net.Conn, state http.ConnState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch state {
	case http.StateNew:
		p.conns++
		p.peak = max(p.peak, p.conns)
	case http.StateClosed, http.StateHijacked:
		p.conns--
	}
}

// PeakConns returns the most client connections that were open at once.
func (p *Proxy) PeakConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.peak
}

// Close stops the proxy: it drops held and in-flight requests, closes all
// connections, and returns once every handler has returned. Clients see
// their connections closed and, afterwards, connections refused. Closing
// twice is fine.
func (p *Proxy) Close() {
	p.cancel()
	p.srv.Close()
	p.transport.CloseIdleConnections()
}

// Set makes requests for path fail with f from now on. path matches the
// request's URL path exactly, or, if it ends with "*", as a prefix; an
// exact match wins over prefixes, and the longest prefix over shorter ones.
// Setting the zero Fault{} exempts a path from a prefix's fault.
func (p *Proxy) Set(path string, f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.faults[path] = f
}

// Clear removes the fault set for path (as given to Set).
func (p *Proxy) Clear(path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.faults, path)
	clear(p.kept)
}

// ClearAll removes all faults: every request is forwarded unchanged.
func (p *Proxy) ClearAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	clear(p.faults)
	clear(p.kept)
}

// Requests returns how many requests for exactly path have arrived,
// whatever their fault.
func (p *Proxy) Requests(path string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[path]
}

// TotalRequests returns how many requests have arrived in all.
func (p *Proxy) TotalRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// GzipRequests returns how many requests accepted a gzipped answer.
func (p *Proxy) GzipRequests() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.gzip
}

// Seen returns the requests that arrived, oldest first: all of them, or
// the last MaxSeen.
func (p *Proxy) Seen() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append(slices.Clone(p.seen[p.next:]), p.seen[:p.next]...)
}

// record counts and keeps a request, and returns its fault.
func (p *Proxy) record(r *http.Request) Fault {
	path := r.URL.Path
	req := Request{Method: r.Method, URI: r.RequestURI, Host: r.Host, Proto: r.Proto, Path: path, Query: r.URL.Query(), Header: r.Header.Clone()}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counts[path]++
	p.total++
	if len(p.seen) < MaxSeen {
		p.seen = append(p.seen, req)
	} else {
		p.seen[p.next] = req
		p.next = (p.next + 1) % MaxSeen
	}
	if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
		p.gzip++
	}
	if f, ok := p.faults[path]; ok {
		return f
	}
	var found Fault
	longest := -1
	for pattern, f := range p.faults {
		prefix, ok := strings.CutSuffix(pattern, "*")
		if ok && len(prefix) > longest && strings.HasPrefix(path, prefix) {
			found, longest = f, len(prefix)
		}
	}
	return found
}

// faultKey carries a request's Fault to modifyResponse, which sees only
// the outgoing request.
type faultKey struct{}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	f := p.record(r)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	defer context.AfterFunc(p.ctx, cancel)()
	r = r.WithContext(context.WithValue(ctx, faultKey{}, f))

	switch f.kind {
	case kindStatus:
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(f.status)
		io.WriteString(w, f.body)
	case kindHang:
		<-ctx.Done()
		// Drop the connection without an answer, as a dead agent would.
		panic(http.ErrAbortHandler)
	case kindReset:
		reset(w)
	case kindDelay:
		timer := time.NewTimer(f.delay)
		defer timer.Stop()
		select {
		case <-ctx.Done():
			panic(http.ErrAbortHandler)
		case <-timer.C:
		}
		p.rp.ServeHTTP(w, r)
	case kindLagging:
		p.lag(w, r)
	case kindNewLeader:
		if r.URL.Query().Has("consistent") {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, "Not ready to serve consistent reads")
			return
		}
		p.serveKept(w, r)
	case kindDropQuery:
		u := *r.URL
		q := u.Query()
		for _, name := range f.params {
			q.Del(name)
		}
		u.RawQuery = q.Encode()
		r.URL = &u
		p.rp.ServeHTTP(w, r)
	case kindTruncate:
		p.rp.ServeHTTP(w, r)
		// The body is short of its Content-Length; closing the connection
		// now makes the client see it at once.
		panic(http.ErrAbortHandler)
	default: // kindNone, kindBadJSON, kindIndexBackwards: see modifyResponse
		p.rp.ServeHTTP(w, r)
	}
}

// lag serves a Lagging request: see Lagging.
func (p *Proxy) lag(w http.ResponseWriter, r *http.Request) {
	if !r.URL.Query().Has("stale") {
		p.rp.ServeHTTP(w, r)
		return
	}
	p.serveKept(w, r)
}

// Keep reads path from the agent now and keeps the answer, for Lagging and
// NewLeader to serve once set: the state of a server left behind from
// here on.
func (p *Proxy) Keep(path string) {
	rec := httptest.NewRecorder()
	p.rp.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kept[path] = rec
}

// serveKept answers with the answer kept for the request's path, keeping
// this request's if there is none yet.
func (p *Proxy) serveKept(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	kept := p.kept[r.URL.Path]
	p.mu.Unlock()
	if kept == nil {
		// Kept uncompressed: later clients may not accept gzip.
		r.Header.Del("Accept-Encoding")
		rec := httptest.NewRecorder()
		p.rp.ServeHTTP(rec, r)
		p.mu.Lock()
		if p.kept[r.URL.Path] == nil {
			p.kept[r.URL.Path] = rec
		}
		kept = p.kept[r.URL.Path]
		p.mu.Unlock()
	}
	for k, v := range kept.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(kept.Code)
	w.Write(kept.Body.Bytes())
}

// reset closes the client's connection with an RST instead of a FIN:
// SO_LINGER 0 discards unsent data and resets, so the client reads
// "connection reset by peer" rather than a clean EOF.
func reset(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	conn.Close()
}

// modifyResponse applies the faults that alter the agent's real answer.
func modifyResponse(resp *http.Response) error {
	f, _ := resp.Request.Context().Value(faultKey{}).(Fault)
	switch f.kind {
	case kindIndexBackwards:
		// Only where the agent sent an index: elsewhere there is nothing
		// to go backwards.
		if resp.Header.Get("X-Consul-Index") != "" {
			resp.Header.Set("X-Consul-Index", "1")
		}
	case kindBadJSON:
		// The agent's headers are kept (index, last contact) so that the
		// body is the only thing wrong.
		resp.Body.Close()
		resp.StatusCode = http.StatusOK
		resp.Header.Del("Content-Encoding")
		setBody(resp, []byte("{not json"))
	case kindTruncate:
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		setBody(resp, body)
		resp.Body = io.NopCloser(bytes.NewReader(body[:len(body)/2]))
	}
	return nil
}

// setBody replaces resp's body and declares its length.
func setBody(resp *http.Response, body []byte) {
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.TransferEncoding = nil
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
}

// errorHandler answers when the agent could not be reached or answered
// badly.
func errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// The client left or the proxy is closing: nobody to answer, and
		// a closing proxy should look like a vanished agent.
		panic(http.ErrAbortHandler)
	}
	http.Error(w, fmt.Sprintf("faultproxy: %v", err), http.StatusBadGateway)
}
