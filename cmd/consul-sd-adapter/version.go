package main

import (
	"runtime/debug"

	"github.com/prometheus/common/version"
)

// stampVersion fills in the version data that -ldflags did not set (make
// build, make demo and make docker set it: see LDFLAGS in the Makefile)
// from what the Go toolchain records in every binary, so that a plain
// `go build` or `go install` reports a version too.
func stampVersion() {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{}
	}
	v, rev := versionFromBuildInfo(bi)
	if version.Version == "" {
		version.Version = v
	}
	if version.Revision == "" {
		version.Revision = rev
	}
}

// versionFromBuildInfo returns the module's version and the VCS revision it
// was built from. Built in a checkout, the version is a pseudo-version
// naming the commit (v0.0.0-20250102150405-abcdef123456, +dirty with local
// changes); without VCS data (-buildvcs=false, a Docker build without .git)
// it is "dev", as the Makefile says when git is missing, and the revision
// is empty.
func versionFromBuildInfo(bi *debug.BuildInfo) (ver, revision string) {
	ver = bi.Main.Version
	if ver == "" || ver == "(devel)" {
		ver = "dev"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			revision = s.Value
		}
	}
	return ver, revision
}
