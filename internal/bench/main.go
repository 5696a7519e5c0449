// Command bench measures the adapter against a real Consul agent, side by
// side with its baselines (the upstream example's sequential loop and
// Prometheus's own Consul SD), and prints its tables (also written to
// docs/benchmarks.md). `make bench` runs it.
//
// Everything runs on loopback: Consul agents it starts, the adapter binary
// built from this checkout, counting proxies (internal/faultproxy) and
// Prometheus's own Consul SD in-process. Every child process is stopped
// when the harness ends, and killed by the kernel if the harness dies.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"maps"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/repo"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var (
		services      = fs.Int("services", 2000, "services in the catalog of the cold refresh and the large quiet cluster")
		instances     = fs.Int("instances", 5, "instances of each service")
		runs          = fs.Int("runs", 3, "runs of each cold refresh case; the table shows the median")
		propServices  = fs.Int("prop-services", 200, "services in the catalog of the propagation test and the small quiet cluster")
		changes       = fs.Int("changes", 20, "changes of each kind (registration, health flip, deregistration) in the propagation test")
		pace          = fs.Duration("pace", 3*time.Second, "longest wait for every observer to see a change before the next one")
		quiet         = fs.Duration("quiet", time.Minute, "how long the adapter is measured on the quiet cluster")
		large         = fs.Bool("large", false, "also measure the adapter's peak RSS at -large-services x -instances targets")
		largeServices = fs.Int("large-services", 20000, "services for -large")
		churnServices = fs.Int("churn-services", 2000, "services in the catalog of the churn test")
		churnLarge    = fs.Int("churn-large", 10000, "services in the larger catalog of the churn test (adapter only); 0 for none")
		churnChanges  = fs.Int("churn-changes", 66, "changes in each churn window, one a second, cycling through every kind")
		churnQuiet    = fs.Duration("churn-quiet", 30*time.Second, "quiet window before each churn window")
		churnAgent    = fs.String("churn-agent", "server", "the agent of the churn test: server (a single server as deployed) or dev (consul agent -dev, which indents every answer)")
		churnOnly     = fs.String("churn-observers", "", "run only the churn observers whose name contains this (\"tables\", \"per-service\", \"built-in\"); default all")
		only          = fs.String("only", "", "comma-separated subset to run: render, cold, quiet, prop, churn, large (default all; large needs -large)")
		out           = fs.String("out", "docs/benchmarks.md", "file to write the report to, relative to the module root; empty for none")
		timeout       = fs.Duration("timeout", 75*time.Minute, "limit for the whole run")
	)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	want := func(name string) bool {
		if ctx.Err() != nil || (name == "large" && !*large) {
			return false
		}
		return *only == "" || slices.Contains(strings.Split(*only, ","), name)
	}

	root, err := repo.Root()
	if err != nil {
		log.Print(err)
		return 1
	}
	top, err := newScope()
	if err != nil {
		log.Print(err)
		return 1
	}
	defer top.close()

	rep := &report{
		flags:      strings.Join(args, " "),
		cat:        catalog{services: *services, instances: *instances},
		largeCat:   catalog{services: *largeServices, instances: *instances},
		largeRun:   want("large"),
		churnAgent: *churnAgent,
	}
	consulBin, err := consultest.BinaryPath()
	if err != nil {
		log.Print(err)
		return 1
	}
	rep.machine = machineInfo(root, consulBin)
	log.Print("building the adapter")
	if rep.bin, err = buildAdapter(ctx, root, top.dir); err != nil {
		log.Print(err)
		return 1
	}
	if !rep.bin.hasWatch {
		log.Print("the adapter has no --consul.watch flag: watch mode is n/a in this run")
	}

	// The micro-benchmark first, while nothing else runs.
	if want("render") {
		log.Print("render + write benchmark (go test -bench)")
		rep.render, rep.renderErr = measureRender(ctx, root)
		logErr("render", rep.renderErr)
	}

	// Quiet-cluster results by catalog size.
	quietRes := map[int]*quietResult{}
	quietErr := map[int]error{}

	// The large catalog: cold refresh, quiet cluster, and -large.
	if want("cold") || (want("quiet") && *services != *propServices) || want("large") {
		_, err := within(func(sc *scope) (struct{}, error) {
			a, err := agentWith(ctx, sc, consulBin, "bench-large", rep.cat)
			if err != nil {
				return struct{}{}, err
			}
			if want("cold") {
				log.Printf("cold refresh, %d x %d", rep.cat.services, rep.cat.instances)
				rep.cold, rep.coldErr = within(func(sc *scope) ([]coldStats, error) {
					return measureCold(ctx, sc, rep.bin, a, *runs, rep.cat.services*rep.cat.instances)
				})
				logErr("cold", rep.coldErr)
			}
			if want("quiet") && *services != *propServices {
				quietRes[*services], quietErr[*services] = within(func(sc *scope) (*quietResult, error) {
					return measureQuiet(ctx, sc, rep.bin, a, rep.cat, *quiet)
				})
				logErr("quiet", quietErr[*services])
			}
			if want("large") {
				log.Printf("growing the catalog to %d x %d", rep.largeCat.services, rep.largeCat.instances)
				rep.large, rep.largeErr = within(func(sc *scope) (*largeResult, error) {
					if err := rep.largeCat.register(ctx, a.Client, rep.cat.services); err != nil {
						return nil, err
					}
					return measureLarge(ctx, sc, rep.bin, a, rep.largeCat, *runs)
				})
				logErr("large", rep.largeErr)
			}
			return struct{}{}, nil
		})
		if err != nil {
			log.Printf("large catalog: %v", err)
			rep.coldErr = setupErr(rep.coldErr, err, want("cold"))
			rep.largeErr = setupErr(rep.largeErr, err, want("large"))
			if want("quiet") && *services != *propServices {
				quietErr[*services] = setupErr(quietErr[*services], err, true)
			}
		}
	}

	// The small catalog: propagation and the small quiet cluster.
	small := catalog{services: *propServices, instances: *instances}
	if want("prop") || want("quiet") {
		_, err := within(func(sc *scope) (struct{}, error) {
			a, err := agentWith(ctx, sc, consulBin, "bench-small", small)
			if err != nil {
				return struct{}{}, err
			}
			if want("prop") {
				log.Printf("propagation, %d services", small.services)
				rep.prop, rep.propErr = within(func(sc *scope) (*propResult, error) {
					return measurePropagation(ctx, sc, rep.bin, a, small, *changes, *pace)
				})
				logErr("propagation", rep.propErr)
			}
			if want("quiet") {
				quietRes[small.services], quietErr[small.services] = within(func(sc *scope) (*quietResult, error) {
					return measureQuiet(ctx, sc, rep.bin, a, small, *quiet)
				})
				logErr("quiet", quietErr[small.services])
			}
			return struct{}{}, nil
		})
		if err != nil {
			log.Printf("small catalog: %v", err)
			rep.propErr = setupErr(rep.propErr, err, want("prop"))
			if want("quiet") {
				quietErr[small.services] = setupErr(quietErr[small.services], err, true)
			}
		}
	}
	if want("churn") {
		rep.churn, rep.churnErr = within(func(sc *scope) ([]*churnResult, error) {
			return runChurn(ctx, sc, consulBin, rep.bin, *churnAgent, *churnServices, *churnLarge, *instances, *churnChanges, *churnQuiet, *churnOnly)
		})
		logErr("churn", rep.churnErr)
	}

	sizes := slices.Sorted(maps.Keys(quietErr))
	for _, n := range sizes {
		rep.quiet = append(rep.quiet, quietRes[n])
		rep.quietErrs = append(rep.quietErrs, quietErr[n])
	}

	rep.machine = append(rep.machine, [2]string{"Load average (1, 5, 15 min) at end", loadAverage()})
	table := rep.table()
	fmt.Println()
	for _, kv := range rep.machine {
		fmt.Printf("%s: %s\n", kv[0], kv[1])
	}
	fmt.Println()
	fmt.Print(table)
	fmt.Print(rep.churnTables())
	if ctx.Err() != nil {
		log.Printf("stopped early (%v): %s left as it was", context.Cause(ctx), *out)
		return 1
	}
	if *out != "" {
		path := *out
		if !filepath.IsAbs(path) {
			path = filepath.Join(root, path)
		}
		err := os.MkdirAll(filepath.Dir(path), 0o755)
		if err == nil {
			err = os.WriteFile(path, []byte(rep.markdown()), 0o644)
		}
		if err != nil {
			log.Printf("writing the report: %v", err)
			return 1
		}
		log.Printf("wrote %s", path)
	}
	return 0
}

// maxConnsPerClient raises Consul's limit of 200 connections per client
// IP, as an operator running Prometheus against a large catalog has to: the
// built-in SD holds one blocking query (one connection) per service, and
// would get 429s at 2,000 services.
const maxConnsPerClient = 8192

// agentWith starts a dev agent in sc and registers cat in it.
func agentWith(ctx context.Context, sc *scope, bin, name string, cat catalog) (*consultest.Agent, error) {
	log.Printf("starting consul agent %s", name)
	a, err := consultest.Launch(bin, sc.dir,
		consultest.WithHCL(fmt.Sprintf("limits { http_max_conns_per_client = %d }", maxConnsPerClient)),
		// Dev mode logs every request at debug level; production agents
		// log at info, and the log would otherwise cost the agent CPU that
		// the adapter is charged for in wall time.
		consultest.WithHCL(`log_level = "info"`),
	)
	if a != nil {
		sc.cleanup(a.Stop)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	log.Printf("registering %d services x %d instances", cat.services, cat.instances)
	return a, cat.register(ctx, a.Client, 0)
}

// runChurn starts an agent that serves HTTP and HTTPS, measures every
// observer under churn at services, then grows the catalog to large and
// measures the adapter again.
func runChurn(ctx context.Context, sc *scope, consulBin string, bin *adapterBin, agent string, services, large, instances, changes int, quiet time.Duration, only string) ([]*churnResult, error) {
	chosen := func(os ...churnObserver) []churnObserver {
		return slices.DeleteFunc(os, func(o churnObserver) bool { return !strings.Contains(o.name, only) })
	}
	ca, cert, key, err := consultest.WriteCerts(sc.dir)
	if err != nil {
		return nil, err
	}
	opts := []consultest.Option{
		consultest.WithHTTPS(ca, cert, key),
		consultest.WithHCL(fmt.Sprintf("limits { http_max_conns_per_client = %d }", maxConnsPerClient)),
		consultest.WithHCL(`log_level = "info"`),
	}
	switch agent {
	case "server":
		opts = append(opts, consultest.AsServer())
	case "dev":
	default:
		return nil, fmt.Errorf("-churn-agent %q: want server or dev", agent)
	}
	log.Printf("starting consul agent bench-churn (%s, HTTP and HTTPS)", agent)
	a, err := consultest.Launch(consulBin, sc.dir, opts...)
	if a != nil {
		sc.cleanup(a.Stop)
	}
	if err != nil {
		return nil, err
	}
	adapterHTTP := churnObserver{name: "adapter, HTTP (tables watch)"}
	adapterHTTPS := churnObserver{name: "adapter, HTTPS/HTTP2 (per-service watch)", https: true}
	// The same from a configuration file whose entries split the catalog:
	// the figures should hold with several blocks, which share connections
	// and one bound on requests in flight.
	configName := fmt.Sprintf("adapter, config file, %d entries, ", churnEntries)
	configHTTP := churnObserver{name: configName + "HTTP (tables watch)", entries: churnEntries}
	configHTTPS := churnObserver{name: configName + "HTTPS/HTTP2 (per-service watch)", https: true, entries: churnEntries}
	observers := []churnObserver{
		adapterHTTP, configHTTP, adapterHTTPS, configHTTPS,
		{name: "built-in SD, HTTP", builtin: true},
		{name: "built-in SD, HTTPS/HTTP2", builtin: true, https: true},
	}
	cat := catalog{services: services, instances: instances}
	log.Printf("registering %d services x %d instances", cat.services, cat.instances)
	if err := cat.register(ctx, a.Client, 0); err != nil {
		return nil, err
	}
	var results []*churnResult
	r, err := measureChurn(ctx, sc, bin, a, cat, 0, chosen(observers...), quiet, changes)
	if err != nil {
		return nil, err
	}
	results = append(results, r)
	if large > services {
		big := catalog{services: large, instances: instances}
		log.Printf("growing the churn catalog to %d x %d", big.services, big.instances)
		if err := big.register(ctx, a.Client, services); err != nil {
			return results, err
		}
		r, err := measureChurn(ctx, sc, bin, a, big, services, chosen(adapterHTTPS, configHTTPS, adapterHTTP, configHTTP), quiet, changes)
		if err != nil {
			return results, err
		}
		results = append(results, r)
	}
	return results, nil
}

func logErr(what string, err error) {
	if err != nil {
		log.Printf("%s failed: %v", what, err)
	}
}

// setupErr keeps a measurement's own error, else blames the setup it
// depended on, if the measurement was wanted.
func setupErr(own, setup error, wanted bool) error {
	if own != nil || !wanted {
		return own
	}
	return setup
}
