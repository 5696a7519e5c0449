// Package promreg registers metrics that may outlive the object that
// created them.
package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Set is the metrics of one object, registered together and taken out
// together when a reload removes the object.
type Set struct {
	reg prometheus.Registerer
	all []prometheus.Collector
	err error
}

// NewSet returns a Set registering with reg.
func NewSet(reg prometheus.Registerer) *Set { return &Set{reg: reg} }

// Register registers *c with s's registry. If an equal collector is
// already registered, *c is replaced by it, so that its series carry on: a
// reload recreates the discoverer of a changed block, or the output of an
// entry, under the same labels, while the one it replaces is still
// stopping. Errors are kept for Err.
func Register[T prometheus.Collector](s *Set, c *T) {
	err := s.reg.Register(*c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			*c, err = existing, nil
		}
	}
	if err != nil {
		s.err = errors.Join(s.err, err)
		return
	}
	s.all = append(s.all, *c)
}

// Err returns the errors of every Register.
func (s *Set) Err() error { return s.err }

// Unregister takes every collector of the set out of the registry.
func (s *Set) Unregister() {
	for _, c := range s.all {
		s.reg.Unregister(c)
	}
}
