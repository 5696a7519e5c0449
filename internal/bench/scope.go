package main

import (
	"fmt"
	"log"
	"os"
	"sync"
	"testing"
)

// scope is the testing.TB that internal/faultproxy wants, for a program: it
// collects cleanups and runs them when the measurement that opened it ends.
// The embedded TB is nil: faultproxy.Start calls only the methods defined
// here; any other would panic, which the harness reports and cleans up
// after like any failure.
type scope struct {
	testing.TB

	name string
	mu   sync.Mutex
	fns  []func()
	fail bool
}

// fatal is the panic value of Fatalf; main recovers it.
type fatal struct{ msg string }

func newScope(name string) *scope { return &scope{name: name} }

func (s *scope) Helper()      {}
func (s *scope) Name() string { return s.name }
func (s *scope) Failed() bool { s.mu.Lock(); defer s.mu.Unlock(); return s.fail }

func (s *scope) Logf(format string, args ...any) { log.Printf(s.name+": "+format, args...) }

func (s *scope) Fatalf(format string, args ...any) {
	s.mu.Lock()
	s.fail = true
	s.mu.Unlock()
	panic(fatal{s.name + ": " + fmt.Sprintf(format, args...)})
}

func (s *scope) Cleanup(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fns = append(s.fns, f)
}

func (s *scope) TempDir() string {
	dir, err := os.MkdirTemp("", "consul-sd-bench-")
	if err != nil {
		s.Fatalf("%v", err)
	}
	s.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// close runs the cleanups, last registered first.
func (s *scope) close() {
	s.mu.Lock()
	fns := s.fns
	s.fns = nil
	s.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}
