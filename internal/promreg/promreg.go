// Package promreg registers metrics that may outlive the object that
// created them.
package promreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register registers *c with reg. If an equal collector is already
// registered, *c is replaced by it, so that its series carry on: a reload
// recreates the discoverer of a changed block, or the output of an entry,
// under the same labels, while the one it replaces is still stopping.
func Register[T prometheus.Collector](reg prometheus.Registerer, c *T) error {
	err := reg.Register(*c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(T); ok {
			*c = existing
			return nil
		}
	}
	return err
}
