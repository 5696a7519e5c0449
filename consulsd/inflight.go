package consulsd

import (
	"io"
	"net/http"
	"sync"
)

// InFlight bounds the requests answered at once. One shared by every
// block of a configuration file makes --consul.max-concurrency a bound for
// the whole process, not for each block.
type InFlight chan struct{}

// NewInFlight returns an InFlight of n slots.
func NewInFlight(n int) InFlight { return make(InFlight, n) }

// limitTransport takes a slot of an InFlight for each request until its
// body is closed. Blocking queries, parked for minutes, take none: they
// would starve the rounds.
type limitTransport struct {
	next  http.RoundTripper
	slots InFlight
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Query().Has("index") {
		return t.next.RoundTrip(req)
	}
	select {
	case t.slots <- struct{}{}:
	case <-req.Context().Done():
		return nil, req.Context().Err()
	}
	resp, err := t.next.RoundTrip(req)
	if err != nil {
		<-t.slots
		return nil, err
	}
	resp.Body = &releasingBody{ReadCloser: resp.Body, release: sync.OnceFunc(func() { <-t.slots })}
	return resp, nil
}

// releasingBody gives the slot back once the answer has been read.
type releasingBody struct {
	io.ReadCloser
	release func()
}

func (b *releasingBody) Close() error {
	defer b.release()
	return b.ReadCloser.Close()
}
