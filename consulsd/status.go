package consulsd

import (
	"strings"
	"sync"
	"time"
)

// Status describes the latest refresh rounds, for the status page.
type Status struct {
	// LastAttempt is when the last round ended, successful or not.
	LastAttempt time.Time
	// LastSuccess is when the last successful round ended.
	LastSuccess time.Time
	// LastError is the error of the last round; empty when it succeeded.
	LastError string
	// Services and Targets are the counts of the last successful round.
	Services, Targets int
}

// statusRecorder is written by the round and read by web handlers.
type statusRecorder struct {
	mu     sync.Mutex
	status Status
}

func (r *statusRecorder) record(err error, services, targets int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.LastAttempt = time.Now()
	if err != nil {
		r.status.LastError = err.Error()
		return
	}
	r.status.LastError = ""
	r.status.LastSuccess = r.status.LastAttempt
	r.status.Services, r.status.Targets = services, targets
}

func (r *statusRecorder) get() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status
}

// Merge returns the status of several discoverers that write one output:
// as fresh as the stalest, with every error, and the sums of what they found.
func Merge(statuses ...Status) Status {
	var m Status
	var errs []string
	for i, s := range statuses {
		if s.LastAttempt.After(m.LastAttempt) {
			m.LastAttempt = s.LastAttempt
		}
		if i == 0 || s.LastSuccess.Before(m.LastSuccess) {
			m.LastSuccess = s.LastSuccess
		}
		if s.LastError != "" {
			errs = append(errs, s.LastError)
		}
		m.Services += s.Services
		m.Targets += s.Targets
	}
	m.LastError = strings.Join(errs, "; ")
	return m
}
