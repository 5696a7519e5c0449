package main

import (
	"os"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/adapterproc"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// scope holds what one part of the run starts (agents, proxies, adapters)
// and a temporary directory for their files; close stops them all and
// removes the directory. A scope is used by one goroutine.
type scope struct {
	dir string
	fns []func()
}

func newScope() (*scope, error) {
	dir, err := os.MkdirTemp("", "consul-sd-bench-")
	if err != nil {
		return nil, err
	}
	s := &scope{dir: dir}
	s.cleanup(func() { os.RemoveAll(dir) })
	return s, nil
}

// within runs fn in a scope of its own, closed when fn returns.
func within[T any](fn func(*scope) (T, error)) (T, error) {
	sc, err := newScope()
	if err != nil {
		var zero T
		return zero, err
	}
	defer sc.close()
	return fn(sc)
}

// cleanup adds f to what close runs.
func (s *scope) cleanup(f func()) { s.fns = append(s.fns, f) }

// proxy starts a counting proxy to target, closed with the scope.
func (s *scope) proxy(target string) (*faultproxy.Proxy, error) {
	p, err := faultproxy.New(target)
	if err != nil {
		return nil, err
	}
	s.cleanup(p.Close)
	return p, nil
}

// daemon has the scope stop an adapter that started.
func (s *scope) daemon(d *adapterproc.Adapter, err error) (*adapterproc.Adapter, error) {
	if err != nil {
		return nil, err
	}
	s.cleanup(func() { d.Stop() })
	return d, nil
}

// close runs the cleanups, last added first.
func (s *scope) close() {
	for i := len(s.fns) - 1; i >= 0; i-- {
		s.fns[i]()
	}
	s.fns = nil
}
