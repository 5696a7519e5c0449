package consulsd

import (
	"runtime"
	"testing"
)

// TestDumpsForgetWhatNoBlockReads checks that a reload which gives blocks
// other settings does not leave the old dump behind: Dumps drops an entry
// once no Discovery holds its dump, and keeps sharing the ones held.
func TestDumpsForgetWhatNoBlockReads(t *testing.T) {
	dumps := NewDumps()
	held := dumps.get(Config{Address: "a:8500"})
	func() { dumps.get(Config{Address: "b:8500"}) }() // its block is gone
	kept := func() bool {
		dumps.mu.Lock()
		defer dumps.mu.Unlock()
		_, ok := dumps.shared[dumpKey{address: "b:8500"}]
		return ok
	}
	// A collection, then new settings: the unread dump goes.
	for i := 0; i < 10 && kept(); i++ {
		runtime.GC()
		dumps.get(Config{Address: "c:8500"})
	}
	if kept() {
		t.Error("the dump no Discovery holds is still kept after 10 collections")
	}
	if got := dumps.get(Config{Address: "a:8500"}); got != held {
		t.Error("a dump a Discovery holds was not shared with the next one")
	}
	runtime.KeepAlive(held)
}
