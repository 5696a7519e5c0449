package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/alecthomas/kingpin/v2"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/discovery/targetgroup"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
	"github.com/consul-sd-adapter/consul-sd-adapter/sdconfig"
)

// discoveryFlags say what to discover and where to write it; with
// --config.file the file says that, and there must be one source of truth.
var discoveryFlags = []string{
	"output.file", "listen.address", "listen-address", "refresh.interval",
	"consul.token-file", "consul.datacenter", "consul.scheme", "consul.ca-file", "consul.cert-file", "consul.key-file",
	"consul.server-name", "consul.insecure-skip-verify", "consul.allow-stale",
	"consul.service", "consul.tag", "consul.filter", "consul.tag-separator",
}

// givenFlags returns the discovery flags given on the command line.
func givenFlags(app *kingpin.Application, args []string) []string {
	pc, err := app.ParseContext(args)
	if err != nil {
		return nil
	}
	var given []string
	for _, el := range pc.Elements {
		if f, ok := el.Clause.(*kingpin.FlagClause); ok && slices.Contains(discoveryFlags, f.Model().Name) && !slices.Contains(given, "--"+f.Model().Name) {
			given = append(given, "--"+f.Model().Name)
		}
	}
	return given
}

// statusPath is where an entry's status page is served, under its name.
const statusPath = "/status/"

// configRun is what --config.file runs on: the entries of the file and
// their outputs. A reload swaps in a new one whole.
type configRun struct {
	cfg     *sdconfig.Config
	outputs map[string]*adapter.Adapter
	// pages are the entries' status pages, made once with their output:
	// each keeps an index of the services it shows, which a page made per
	// request would rebuild from every group each time.
	pages map[string]http.Handler
}

// configDaemon runs the entries of a configuration file, and reloads it.
type configDaemon struct {
	path     string
	fileMode os.FileMode
	env      *sdconfig.Env
	logger   log.Logger
	reg      prometheus.Registerer
	runner   *adapter.Runner
	current  atomic.Pointer[configRun]
	// reloadMu makes reloads (SIGHUP, /-/reload) one at a time.
	reloadMu sync.Mutex

	reloadOK, reloadTime prometheus.Gauge
}

func newConfigDaemon(path string, fileMode os.FileMode, env *sdconfig.Env, logger log.Logger, reg prometheus.Registerer) *configDaemon {
	c := &configDaemon{path: path, fileMode: fileMode, env: env, logger: logger, reg: reg,
		// Prometheus's own names, so dashboards and alerts carry over.
		reloadOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "consul_sd_adapter_config_last_reload_successful",
			Help: "Whether the last configuration reload attempt was successful.",
		}),
		reloadTime: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "consul_sd_adapter_config_last_reload_success_timestamp_seconds",
			Help: "Timestamp of the last successful configuration reload.",
		}),
	}
	reg.MustRegister(c.reloadOK, c.reloadTime)
	return c
}

// load reads and checks the configuration file, and makes the outputs of
// its entries; an entry whose file did not change keeps its output.
func (c *configDaemon) load() (*configRun, error) {
	cfg, err := sdconfig.Load(c.path)
	if err != nil {
		return nil, err
	}
	if err := c.env.Check(cfg); err != nil {
		return nil, err
	}
	old := &configRun{}
	if cur := c.current.Load(); cur != nil {
		old = cur
	}
	run := &configRun{cfg: cfg, outputs: map[string]*adapter.Adapter{}, pages: map[string]http.Handler{}}
	for _, e := range cfg.Entries {
		if a := old.outputs[e.Name]; a != nil && a.Path() == e.File {
			run.outputs[e.Name], run.pages[e.Name] = a, old.pages[e.Name]
			continue
		}
		if err := adapter.CheckWritable(e.File); err != nil {
			return nil, fmt.Errorf("discovery_configs %q: file: %w", e.Name, err)
		}
		a, err := adapter.New(adapter.Config{OutputFile: e.File, FileMode: c.fileMode},
			log.With(c.logger, "component", "adapter", "entry", e.Name),
			prometheus.WrapRegistererWith(prometheus.Labels{"entry": e.Name}, c.reg))
		if err != nil {
			return nil, fmt.Errorf("discovery_configs %q: %w", e.Name, err)
		}
		run.outputs[e.Name] = a
		status := func() consulsd.Status { return c.status(e.Name) }
		run.pages[e.Name] = entryStatusHandler(statusPath+e.Name, status, a, e.File, httpSDPath+"/"+e.Name)
	}
	return run, nil
}

// apply makes run the running configuration.
func (c *configDaemon) apply(run *configRun) {
	if old := c.current.Swap(run); old != nil {
		for name, a := range old.outputs {
			if _, ok := run.outputs[name]; !ok {
				a.Unregister()
				level.Warn(c.logger).Log("msg", "Entry removed: its file is left as it was, no longer updated", "entry", name, "file", a.Path())
			}
		}
	}
	c.runner.Apply(run.outputs, c.env.Sets(run.cfg))
	c.reloadOK.Set(1)
	c.reloadTime.SetToCurrentTime()
}

// reload loads the file again and applies it; a configuration that does
// not load is logged and counted, and the running one goes on.
func (c *configDaemon) reload() error {
	c.reloadMu.Lock()
	defer c.reloadMu.Unlock()
	run, err := c.load()
	if err != nil {
		c.reloadOK.Set(0)
		level.Error(c.logger).Log("msg", "Reloading the configuration failed, keeping the running one", "file", c.path, "err", err)
		return err
	}
	c.apply(run)
	level.Info(c.logger).Log("msg", "Configuration reloaded", "file", c.path, "entries", len(run.cfg.Entries), "blocks", run.cfg.Blocks())
	return nil
}

// ready reports whether every entry's file reflects a successful round.
func (c *configDaemon) ready() bool {
	for _, a := range c.current.Load().outputs {
		if !a.Ready() {
			return false
		}
	}
	return true
}

// status merges the status of an entry's discoverers.
func (c *configDaemon) status(entry string) consulsd.Status {
	return consulsd.Merge(c.env.Statuses(entry)...)
}

// runConfigOnce runs one round of every block and writes each entry whose
// blocks all succeeded; it returns 1 if any failed.
func runConfigOnce(ctx context.Context, c *configDaemon, run *configRun) int {
	code := 0
	for _, e := range run.cfg.Entries {
		var groups []*targetgroup.Group
		var err error
		for i, b := range e.Blocks {
			var g []*targetgroup.Group
			if g, err = c.env.Once(ctx, sdconfig.BlockKey{Entry: e.Name, Index: i}, b); err != nil {
				break
			}
			groups = append(groups, g...)
		}
		if err == nil {
			err = run.outputs[e.Name].Update(groups)
		}
		if err != nil {
			level.Error(c.logger).Log("msg", "Refresh failed, output file left as it was", "entry", e.Name, "file", e.File, "err", err)
			code = exitRuntime
		}
	}
	return code
}

// reloadOnSIGHUP reloads whenever the process gets SIGHUP, until ctx ends.
func (c *configDaemon) reloadOnSIGHUP(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			c.reload() //nolint:errcheck // logged and counted
		}
	}
}

// handler serves /targets/<name>, /status/<name> and, with lifecycle on,
// POST /-/reload; the entries are looked up per request, as reloads
// change them.
func (c *configDaemon) handler(lifecycle bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(httpSDPath+"/{name}", func(w http.ResponseWriter, r *http.Request) {
		a := c.current.Load().outputs[r.PathValue("name")]
		if a == nil {
			c.notFound(w)
			return
		}
		a.HTTPSDHandler().ServeHTTP(w, r)
	})
	mux.HandleFunc(statusPath+"{name}", func(w http.ResponseWriter, r *http.Request) {
		page := c.current.Load().pages[r.PathValue("name")]
		if page == nil {
			c.notFound(w)
			return
		}
		page.ServeHTTP(w, r)
	})
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<!DOCTYPE html><title>%s</title><h1>%s</h1><ul>", programName, programName)
		for _, name := range c.names() {
			fmt.Fprintf(w, `<li>%[1]s: <a href="%[3]s%[1]s">status</a>, <a href="%[2]s/%[1]s">targets</a></li>`, name, httpSDPath, statusPath)
		}
		fmt.Fprint(w, "</ul>")
	})
	mux.HandleFunc("/-/reload", func(w http.ResponseWriter, r *http.Request) {
		switch {
		case !lifecycle:
			http.Error(w, "Lifecycle API is not enabled (--web.enable-lifecycle).", http.StatusForbidden)
		case r.Method != http.MethodPost && r.Method != http.MethodPut:
			http.Error(w, "Only POST or PUT requests allowed.", http.StatusMethodNotAllowed)
		default:
			if err := c.reload(); err != nil {
				http.Error(w, "failed to reload config: "+err.Error(), http.StatusInternalServerError)
			}
		}
	})
	return mux
}

// names returns the entries' names, sorted.
func (c *configDaemon) names() []string {
	return slices.Sorted(maps.Keys(c.current.Load().outputs))
}

func (c *configDaemon) notFound(w http.ResponseWriter) {
	http.Error(w, "No such entry; the configuration has: "+strings.Join(c.names(), ", "), http.StatusNotFound)
}

// start starts the Runner with the configuration loaded, and reloads on
// SIGHUP until ctx ends.
func (c *configDaemon) start(ctx context.Context, run *configRun, mlogger *slog.Logger) (*adapter.Runner, error) {
	runner, err := adapter.NewRunner(ctx, mlogger, c.logger, c.reg)
	if err != nil {
		return nil, err
	}
	c.runner = runner
	c.apply(run)
	go c.reloadOnSIGHUP(ctx)
	return runner, nil
}
