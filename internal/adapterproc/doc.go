// Package adapterproc runs the real adapter binary as a child process: it
// builds the binary from the module root, starts it with its web server on
// a free loopback port and its log in a file, waits until it is ready, reads
// its /metrics and stops it as a service manager would. The benchmark and
// the soak use it whole; tests that run the binary use its TestMain
// (RunTests) and its web config helper.
package adapterproc
