// Command consul-sd-adapter discovers services in Consul and writes them to a
// file that Prometheus reads through file_sd_configs.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/go-kit/log"
	"github.com/go-kit/log/level"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"
	sloggokit "github.com/tjhop/slog-gokit"

	"github.com/consul-sd-adapter/consul-sd-adapter/adapter"
	"github.com/consul-sd-adapter/consul-sd-adapter/consulsd"
	"github.com/consul-sd-adapter/consul-sd-adapter/sdconfig"
)

const (
	programName = "consul-sd-adapter"
	// defaultWebAddress serves /metrics, /-/healthy and /-/ready.
	defaultWebAddress = ":9841"
	// shutdownGrace bounds how long in-flight web requests may take at exit.
	shutdownGrace = 500 * time.Millisecond
)

// Exit codes: 2 for a bad command line or configuration, 1 for a failure at run time.
const (
	exitRuntime = 1
	exitUsage   = 2
)

// defaultGOGC is the garbage collector's target when $GOGC is unset: the
// heap may grow by 50% over live data between collections instead of Go's
// 100% (Prometheus itself uses 75%). The live data is the targets, which
// stay, while a full round makes a lot of short-lived garbage decoding
// Consul's answers. At 100,000 targets, through full rounds, 50 instead of
// 75 took the daemon's peak RSS from about 160 MB to 136 MB for 14% more
// CPU in those rounds; quiet rounds allocate little and hardly notice.
const defaultGOGC = 50

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	stampVersion()
	app := kingpin.New(programName, "Discovers services in Consul and writes them to a Prometheus file_sd file.")
	app.Version(version.Print(programName))
	app.HelpFlag.Short('h')
	app.UsageWriter(os.Stdout)

	cfg := consulsd.DefaultConfig
	var (
		outputFile = app.Flag("output.file", "File to write the targets to. Its extension picks the format: .json, or YAML for .yml/.yaml.").
				Default("custom_sd.json").String()
		fileMode = app.Flag("output.file-mode", "Permission bits of the output file, in octal. Never world-writable.").
				Default("0644").String()
		once = app.Flag("once", "Run one refresh, write the file and exit: 0 on success, 1 if the refresh failed (nothing is written then).").
			Bool()
		logLevel  = new(string)
		logFormat = new(string)
	)
	app.Flag("log.level", "Only log messages with the given severity or above: debug, info, warn, error.").
		Default("info").SetValue(enumValue("log.level", logLevel, "debug", "info", "warn", "error"))
	app.Flag("log.format", "Output format of log messages: logfmt, json.").
		Default("logfmt").SetValue(enumValue("log.format", logFormat, "logfmt", "json"))
	app.Flag("listen.address", "Address of the Consul HTTP API, host:port or a URL (default: $CONSUL_HTTP_ADDR, else localhost:8500). The name is kept from the upstream custom-sd example.").
		StringVar(&cfg.Address)
	app.Flag("listen-address", "Alias of --listen.address.").Hidden().StringVar(&cfg.Address)
	app.Flag("refresh.interval", "Period of the refresh round: it reads the catalog's indexes, and queries the services that changed.").
		Default(cfg.RefreshInterval.String()).SetValue(durationValue("refresh.interval", &cfg.RefreshInterval))
	app.Flag("consul.token-file", "File holding the Consul ACL token (default: $CONSUL_HTTP_TOKEN_FILE or $CONSUL_HTTP_TOKEN). The token is never accepted as a flag.").
		StringVar(&cfg.TokenFile)
	app.Flag("consul.datacenter", "Consul datacenter to query (default: the agent's own).").StringVar(&cfg.Datacenter)
	app.Flag("consul.scheme", "Scheme of the Consul HTTP API: http or https (default: http, or https if $CONSUL_HTTP_SSL is true).").
		SetValue(enumValue("consul.scheme", &cfg.Scheme, "http", "https"))
	app.Flag("consul.ca-file", "CA certificate to verify Consul's TLS certificate with (default: $CONSUL_CACERT).").StringVar(&cfg.CAFile)
	app.Flag("consul.cert-file", "Client certificate for TLS to Consul (default: $CONSUL_CLIENT_CERT).").StringVar(&cfg.CertFile)
	app.Flag("consul.key-file", "Client key for TLS to Consul (default: $CONSUL_CLIENT_KEY).").StringVar(&cfg.KeyFile)
	app.Flag("consul.server-name", "Server name to verify Consul's TLS certificate against (default: $CONSUL_TLS_SERVER_NAME).").StringVar(&cfg.ServerName)
	app.Flag("consul.insecure-skip-verify", "Do not verify Consul's TLS certificate. For testing only.").BoolVar(&cfg.InsecureSkipVerify)
	app.Flag("consul.allow-stale", "Allow any Consul server to answer, not just the leader: much cheaper, at most a little behind.").
		Default(strconv.FormatBool(cfg.AllowStale)).BoolVar(&cfg.AllowStale)
	app.Flag("consul.service", "Only discover this service; repeat for more (default: every service but Consul's own \"consul\").").
		StringsVar(&cfg.Services)
	app.Flag("consul.tag", "Only discover instances that have this tag; repeat to require several.").StringsVar(&cfg.Tags)
	app.Flag("consul.filter", "Consul filter expression for each service's instances, e.g. 'Service.Meta.env == \"prod\"'.").
		StringVar(&cfg.Filter)
	app.Flag("consul.tag-separator", "Separator that joins (and wraps) the tags in __meta_consul_tags.").
		Default(cfg.TagSeparator).StringVar(&cfg.TagSeparator)
	app.Flag("consul.request-timeout", "Timeout of each single request to Consul.").
		Default(cfg.RequestTimeout.String()).SetValue(durationValue("consul.request-timeout", &cfg.RequestTimeout))
	app.Flag("consul.max-concurrency", "Most requests in flight to Consul at once (1 queries services one after another).").
		Default(strconv.Itoa(cfg.MaxConcurrency)).IntVar(&cfg.MaxConcurrency)
	app.Flag("consul.watch", "Keep blocking queries open on the catalog so that a change is written at once, not at the next refresh.").
		Default(strconv.FormatBool(cfg.Watch)).BoolVar(&cfg.Watch)
	app.Flag("consul.watch-mode", "What the watch holds blocking queries on: services (one per service, multiplexed over HTTP/2: a change costs one request; needs HTTPS), tables (three, on the catalog's tables: a change wakes a round), or auto (services over HTTPS, else tables).").
		Default(cfg.WatchMode).SetValue(enumValue("consul.watch-mode", &cfg.WatchMode, consulsd.WatchAuto, consulsd.WatchServices, consulsd.WatchTables))
	app.Flag("consul.service-wait", "Longest wait of each per-service blocking query. Consul caps it at its max_query_time (10m by default); a quiet catalog costs one request per service per wait, so raise both to lower that.").
		Default(cfg.ServiceWait.String()).SetValue(durationValue("consul.service-wait", &cfg.ServiceWait))
	app.Flag("consul.min-round-interval", "Least time between two refreshes woken by the watch, so a churning cluster cannot make the adapter spin.").
		Default(cfg.MinRoundInterval.String()).SetValue(durationValue("consul.min-round-interval", &cfg.MinRoundInterval))
	configFile := app.Flag("config.file", "Configuration file: discovery_configs entries, each an output file and Prometheus consul_sd_configs blocks. Replaces the discovery flags (--listen.address, --output.file, --consul.service, ...).").
		String()
	checkConfig := app.Flag("config.check", "Check --config.file and exit: 0 if it is valid, 2 with the error if not. Consul is not queried and no output file is written (their directories must exist and be writable).").
		Bool()
	lifecycle := app.Flag("web.enable-lifecycle", "Enable reloading the configuration file via HTTP POST to /-/reload (SIGHUP always reloads).").
		Bool()
	webFlags := kingpinflag.AddFlags(app, defaultWebAddress)

	if _, err := app.Parse(args); err != nil {
		return usageError(err)
	}
	if *configFile == "" && (*checkConfig || *lifecycle) {
		return usageError(errors.New("--config.check and --web.enable-lifecycle need --config.file"))
	}
	if given := givenFlags(app, args); *configFile != "" && len(given) > 0 {
		return usageError(fmt.Errorf("--config.file and %s: the configuration file says what to discover and where to write; give one or the other", strings.Join(given, ", ")))
	}
	mode, err := strconv.ParseUint(*fileMode, 8, 32)
	if err != nil {
		return usageError(fmt.Errorf("--output.file-mode %q is not an octal permission", *fileMode))
	}
	// Setuid, setgid and sticky bits mean nothing on a data file, and
	// os.FileMode does not even place them where chmod(2) does.
	if mode > 0o777 {
		return usageError(fmt.Errorf("--output.file-mode %q: only permission bits, 0 to 0777", *fileMode))
	}

	logger, slogger := newLoggers(*logLevel, *logFormat)
	if cfg.MaxConcurrency < 1 {
		return usageError(fmt.Errorf("--consul.max-concurrency must be at least 1, got %d", cfg.MaxConcurrency))
	}
	if file := *webFlags.WebConfigFile; file != "" {
		if err := web.Validate(file); err != nil {
			return usageError(fmt.Errorf("--web.config.file: %w", err))
		}
	}

	if *once {
		// One round: no watch to start, and no earlier answers for a
		// round to compare with (so nothing to read for a next one).
		cfg.Watch = false
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		versioncollector.NewCollector("consul_sd_adapter"),
	)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *configFile != "" {
		env := sdconfig.NewEnv(cfg, log.With(logger, "component", "consulsd"), reg)
		c := newConfigDaemon(*configFile, os.FileMode(mode), env, logger, reg)
		run, err := c.load()
		switch {
		case err != nil:
			return usageError(fmt.Errorf("--config.file: %w", err))
		case *checkConfig:
			fmt.Printf("%s: SUCCESS: %d entries, %d consul_sd_configs blocks\n", *configFile, len(run.cfg.Entries), run.cfg.Blocks())
			return 0
		case *once:
			c.current.Store(run)
			return runConfigOnce(ctx, c, run)
		}
		level.Info(logger).Log("msg", "Starting "+programName, "version", version.Info(), "config_file", *configFile,
			"entries", len(run.cfg.Entries), "blocks", run.cfg.Blocks())
		runner, err := c.start(ctx, run, slogger.With("component", "discovery manager"))
		if err != nil {
			return usageError(err)
		}
		return serveUntilDone(ctx, stop, newWebHandler(reg, c.ready, c.handler(*lifecycle)), webFlags, logger, slogger, runner.Run)
	}

	if err := adapter.CheckWritable(*outputFile); err != nil {
		return usageError(fmt.Errorf("--output.file: %w", err))
	}
	discoverer, err := consulsd.New(cfg, log.With(logger, "component", "consulsd"), reg)
	if err != nil {
		return usageError(flagOf(err, cfg))
	}
	writer, err := adapter.New(adapter.Config{
		OutputFile:    *outputFile,
		FileMode:      os.FileMode(mode),
		ManagerLogger: slogger.With("component", "discovery manager"),
	}, log.With(logger, "component", "adapter"), reg)
	if err != nil {
		return usageError(err)
	}

	if *once {
		return runOnce(ctx, discoverer, writer, logger)
	}

	level.Info(logger).Log("msg", "Starting "+programName, "version", version.Info(), "output_file", *outputFile)
	handler := newWebHandler(reg, writer.Ready, flagModeHandler(discoverer, writer, *outputFile))
	return serveUntilDone(ctx, stop, handler, webFlags, logger, slogger, func(ctx context.Context) error {
		return writer.Run(ctx, discoverer)
	})
}

// serveUntilDone serves the web endpoints and runs work until ctx ends or
// either fails, then shuts both down.
func serveUntilDone(ctx context.Context, stop func(), handler http.Handler, webFlags *web.FlagConfig, logger log.Logger, slogger *slog.Logger, work func(context.Context) error) int {
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	webErr := make(chan error, 1)
	go func() { webErr <- serveWeb(server, webFlags, slogger.With("component", "web")) }()

	done := make(chan error, 1)
	go func() { done <- work(ctx) }()

	code := 0
	select {
	case <-ctx.Done():
		level.Info(logger).Log("msg", "Shutting down")
	case err := <-webErr:
		level.Error(logger).Log("msg", "Web server failed", "err", err)
		code = exitRuntime
	}
	stop()
	if err := <-done; err != nil {
		level.Error(logger).Log("msg", "Adapter failed", "err", err)
		code = exitRuntime
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	server.Shutdown(shutdownCtx) //nolint:errcheck // exiting anyway
	return code
}

// runOnce does a single round for --once.
func runOnce(ctx context.Context, d *consulsd.Discovery, a *adapter.Adapter, logger log.Logger) int {
	groups, err := d.Refresh(ctx)
	if err == nil {
		err = a.Update(groups)
	}
	if err != nil {
		level.Error(logger).Log("msg", "Refresh failed, output file left as it was", "err", err)
		return exitRuntime
	}
	return 0
}

// durationValue is a duration flag whose error names the flag: kingpin's
// own says only `time: invalid duration "soon"`.
func durationValue(name string, d *time.Duration) kingpin.Value {
	return &namedDuration{name: name, d: d}
}

type namedDuration struct {
	name string
	d    *time.Duration
}

func (n *namedDuration) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("--%s: %q is not a duration (try 30s, 5m or 1h)", n.name, s)
	}
	if d <= 0 {
		return fmt.Errorf("--%s: %q must be positive", n.name, s)
	}
	*n.d = d
	return nil
}

func (n *namedDuration) String() string { return n.d.String() }

// enumValue is a flag of a few allowed values whose error names the flag:
// kingpin's own says only "enum value must be one of ...".
func enumValue(name string, dst *string, options ...string) kingpin.Value {
	return &namedEnum{name: name, dst: dst, options: options}
}

type namedEnum struct {
	name    string
	dst     *string
	options []string
}

func (e *namedEnum) Set(s string) error {
	if !slices.Contains(e.options, s) {
		return fmt.Errorf("--%s: %q is not one of %s", e.name, s, strings.Join(e.options, ", "))
	}
	*e.dst = s
	return nil
}

func (e *namedEnum) String() string { return *e.dst }

// flagOf names the flag behind an error of consulsd.New where a flag set
// the value; from the environment the message stands as it is.
func flagOf(err error, cfg consulsd.Config) error {
	switch {
	case errors.Is(err, consulsd.ErrAddress) && cfg.Address != "":
		return fmt.Errorf("--listen.address: %w", err)
	case errors.Is(err, consulsd.ErrTokenFile) && cfg.TokenFile != "":
		return fmt.Errorf("--consul.token-file: %w", err)
	case errors.Is(err, consulsd.ErrNeedsHTTPS):
		return fmt.Errorf("--consul.watch-mode=services: %w", err)
	}
	return err
}

// usageError prints one line, as kingpin does for a bad flag, and returns the usage exit code.
func usageError(err error) int {
	fmt.Fprintf(os.Stderr, "%s: error: %s\n", programName, err)
	return exitUsage
}

// newLoggers returns the go-kit logger and, writing through it, the
// *slog.Logger that Prometheus's libraries take. The slog handler adds its
// own time and caller, so it gets the logger before those are added.
func newLoggers(lvl, format string) (log.Logger, *slog.Logger) {
	w := log.NewSyncWriter(os.Stderr)
	base := log.NewLogfmtLogger(w)
	if format == "json" {
		base = log.NewJSONLogger(w)
	}
	base = level.NewFilter(base, level.Allow(level.ParseDefault(lvl, level.InfoValue())))
	var slogLevel slog.Level
	slogLevel.UnmarshalText([]byte(lvl)) //nolint:errcheck // kingpin allows only valid names
	slogger := slog.New(sloggokit.NewGoKitHandler(slogAsGoKit{base}, slogLevel))
	return log.With(base, "ts", log.DefaultTimestampUTC, "caller", log.DefaultCaller), slogger
}

// slogAsGoKit makes the lines of the slog handler look like ours: it
// starts them with level, caller, time (local) before the message; ours
// start with level, ts (UTC), caller.
type slogAsGoKit struct{ next log.Logger }

func (l slogAsGoKit) Log(keyvals ...any) error {
	var head, ts, caller []any
	i := 0
	for ; i+1 < len(keyvals) && keyvals[i] != slog.MessageKey; i += 2 {
		switch k, v := keyvals[i], keyvals[i+1]; k {
		case slog.TimeKey:
			if t, ok := v.(time.Time); ok {
				v = t.UTC().Format(time.RFC3339Nano)
			}
			ts = []any{"ts", v}
		case "caller":
			caller = []any{k, v}
		default:
			head = append(head, k, v)
		}
	}
	out := make([]any, 0, len(keyvals))
	out = append(append(append(append(out, head...), ts...), caller...), keyvals[i:]...)
	return l.next.Log(out...)
}
