package devstack

// There is no Docker engine where these tests run, so instead of starting
// the compose stack they check its wiring: the things that would otherwise
// only show up as an empty Prometheus target page after `docker compose up`.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/repo"
)

const modulePath = "github.com/consul-sd-adapter/consul-sd-adapter"

// Service names in docker-compose.yml.
const (
	consulService  = "consul"
	adapterService = "consul-sd-adapter"
	promService    = "prometheus"
)

// ---------------------------------------------------------------------------
// docker-compose.yml

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

type composeService struct {
	Image       string         `yaml:"image"`
	Build       composeBuild   `yaml:"build"`
	Command     composeCommand `yaml:"command"`
	NetworkMode string         `yaml:"network_mode"`
	Volumes     []composeMount `yaml:"volumes"`
	Ports       []string       `yaml:"ports"`
}

// composeBuild accepts both `build: DIR` and `build: {context, dockerfile}`.
type composeBuild struct {
	Context    string
	Dockerfile string
}

func (b *composeBuild) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		b.Context = n.Value
		return nil
	}
	var long struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	}
	if err := n.Decode(&long); err != nil {
		return err
	}
	b.Context, b.Dockerfile = long.Context, long.Dockerfile
	return nil
}

// composeCommand accepts both a list and a single string.
type composeCommand []string

func (c *composeCommand) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*c = strings.Fields(n.Value)
		return nil
	}
	var list []string
	if err := n.Decode(&list); err != nil {
		return err
	}
	*c = list
	return nil
}

// composeMount accepts both the short "SOURCE:TARGET[:MODE]" and the long
// {type, source, target, read_only} volume syntax.
type composeMount struct {
	Type     string // "volume" or "bind"
	Source   string
	Target   string
	ReadOnly bool
}

func (m *composeMount) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		parts := strings.Split(n.Value, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return fmt.Errorf("volume %q: want SOURCE:TARGET[:MODE] (anonymous volumes are not used here)", n.Value)
		}
		m.Source, m.Target = parts[0], parts[1]
		if len(parts) == 3 {
			m.ReadOnly = slices.Contains(strings.Split(parts[2], ","), "ro")
		}
		// Compose's rule: a source that looks like a path is a bind mount,
		// anything else names a volume.
		m.Type = "volume"
		if strings.HasPrefix(m.Source, ".") || strings.HasPrefix(m.Source, "/") || strings.HasPrefix(m.Source, "~") {
			m.Type = "bind"
		}
		return nil
	}
	var long struct {
		Type     string `yaml:"type"`
		Source   string `yaml:"source"`
		Target   string `yaml:"target"`
		ReadOnly bool   `yaml:"read_only"`
	}
	if err := n.Decode(&long); err != nil {
		return err
	}
	*m = composeMount{Type: long.Type, Source: long.Source, Target: long.Target, ReadOnly: long.ReadOnly}
	return nil
}

// mountAt returns the service's mount whose target is dir.
func (s composeService) mountAt(dir string) (composeMount, bool) {
	for _, m := range s.Volumes {
		if path.Clean(m.Target) == path.Clean(dir) {
			return m, true
		}
	}
	return composeMount{}, false
}

// flag returns the value of a command-line flag given as -name=value,
// --name=value, -name value or --name value.
func (c composeCommand) flag(name string) (string, bool) {
	name = strings.TrimLeft(name, "-")
	for i, arg := range c {
		if !strings.HasPrefix(arg, "-") {
			continue
		}
		k, v, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if k != name {
			continue
		}
		if hasValue {
			return v, true
		}
		if i+1 < len(c) {
			return c[i+1], true
		}
	}
	return "", false
}

// repoRoot is the repository's top directory.
func repoRoot(t *testing.T) string {
	t.Helper()
	return repo.Path(t.Fatal)
}

func loadCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	for _, name := range []string{consulService, adapterService, promService} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("docker-compose.yml: no service %q", name)
		}
	}
	return c
}

// requireFlag returns the value of a flag of a compose service's command.
func requireFlag(t *testing.T, c composeFile, service, name string) string {
	t.Helper()
	v, ok := c.Services[service].Command.flag(name)
	if !ok {
		t.Fatalf("docker-compose.yml: service %s: command %q has no %s", service, c.Services[service].Command, name)
	}
	return v
}

// promConfigPath is where Prometheus reads its configuration in the stack.
func promConfigPath(c composeFile) string {
	if v, ok := c.Services[promService].Command.flag("config.file"); ok {
		return v
	}
	return "/etc/prometheus/prometheus.yml" // the prom/prometheus image's default
}

func TestComposeServices(t *testing.T) {
	c := loadCompose(t)
	for name, s := range c.Services {
		if s.Image == "" && s.Build.Context == "" {
			t.Errorf("service %s has neither image nor build", name)
		}
	}
}

// The adapter must write custom_sd.json into a named volume that Prometheus
// mounts exactly where prometheus.yml's file_sd path resolves. A bind mount
// of the single file would break the adapter's rename-into-place (a rename
// cannot replace a mount point), and a path mismatch leaves Prometheus with
// no targets and only a warning in its log.
func TestComposeSharedSDVolume(t *testing.T) {
	c := loadCompose(t)
	adapter, prom := c.Services[adapterService], c.Services[promService]

	out := requireFlag(t, c, adapterService, "output.file")
	if !path.IsAbs(out) {
		t.Fatalf("adapter --output.file=%s: want an absolute path inside the container", out)
	}
	outDir := path.Dir(out)
	adapterMount, ok := adapter.mountAt(outDir)
	if !ok {
		t.Fatalf("adapter writes %s but nothing is mounted at %s (volumes: %+v)", out, outDir, adapter.Volumes)
	}
	if adapterMount.Type != "volume" {
		t.Errorf("adapter's %s is a %s mount of %s, want a named volume shared with prometheus", outDir, adapterMount.Type, adapterMount.Source)
	}
	if adapterMount.ReadOnly {
		t.Errorf("adapter's %s is mounted read-only; the adapter writes there", outDir)
	}
	if _, ok := c.Volumes[adapterMount.Source]; !ok {
		t.Errorf("volume %q is not declared in the top-level volumes: %v", adapterMount.Source, c.Volumes)
	}

	for name, s := range c.Services {
		for _, m := range s.Volumes {
			if path.Base(m.Target) == path.Base(out) {
				t.Errorf("service %s mounts the file %s itself (%s:%s); mount its directory instead", name, m.Target, m.Source, m.Target)
			}
		}
	}

	cfgPath := promConfigPath(c)
	files := fileSDFiles(t, loadPromConfig(t))
	if len(files) == 0 {
		t.Fatal("prometheus.yml has no file_sd_configs files")
	}
	for _, f := range files {
		// Prometheus resolves relative file_sd paths against the directory
		// of its configuration file.
		resolved := f
		if !path.IsAbs(f) {
			resolved = path.Join(path.Dir(cfgPath), f)
		}
		if path.Base(resolved) != path.Base(out) {
			t.Errorf("prometheus.yml reads %s (%s in the container), the adapter writes %s", f, resolved, path.Base(out))
		}
		promMount, ok := prom.mountAt(path.Dir(resolved))
		if !ok {
			t.Errorf("prometheus.yml (at %s) reads %s, but prometheus has nothing mounted at %s", cfgPath, resolved, path.Dir(resolved))
			continue
		}
		if promMount.Type != "volume" || promMount.Source != adapterMount.Source {
			t.Errorf("prometheus's %s is %s %q, want the adapter's volume %q", path.Dir(resolved), promMount.Type, promMount.Source, adapterMount.Source)
		}
	}
}

// The configuration files the stack runs on are the repository's, mounted
// in, not copies baked into images.
func TestComposeMountsConfigFiles(t *testing.T) {
	root := repoRoot(t)
	c := loadCompose(t)

	requireBindOf := func(service, target, file string) {
		t.Helper()
		m, ok := c.Services[service].mountAt(target)
		if !ok {
			t.Errorf("service %s: nothing mounted at %s (want ./%s)", service, target, file)
			return
		}
		if m.Type != "bind" || filepath.Join(root, m.Source) != filepath.Join(root, file) {
			t.Errorf("service %s: %s is %s %q, want a bind of ./%s", service, target, m.Type, m.Source, file)
		}
	}

	requireBindOf(promService, promConfigPath(c), "prometheus.yml")

	consulCfg := requireFlag(t, c, consulService, "config-file")
	requireBindOf(consulService, consulCfg, "consul.json")
	// The hashicorp/consul entrypoint adds -config-dir=/consul/config: a
	// file there would be loaded a second time.
	if path.Dir(consulCfg) == "/consul/config" {
		t.Errorf("consul.json is mounted in /consul/config, which the image's entrypoint already loads; -config-file would load it twice")
	}
}

// consul.json registers everything under 127.0.0.1, which only works if the
// adapter and Prometheus share the consul container's network namespace.
func TestComposeNetworkNamespace(t *testing.T) {
	c := loadCompose(t)
	consul := c.Services[consulService]
	for _, name := range []string{adapterService, promService} {
		if got := c.Services[name].NetworkMode; got != "service:"+consulService {
			t.Errorf("service %s: network_mode %q, want %q", name, got, "service:"+consulService)
		}
		if len(c.Services[name].Ports) > 0 {
			t.Errorf("service %s publishes ports; in consul's network namespace they must be published on consul", name)
		}
	}

	published := map[string]bool{}
	for _, p := range consul.Ports {
		// "HOST:CONTAINER", "IP:HOST:CONTAINER" or "CONTAINER"; the container
		// port is what the processes listen on.
		parts := strings.Split(p, ":")
		published[strings.TrimSuffix(parts[len(parts)-1], "/tcp")] = true
	}
	listen := map[string]string{
		"consul HTTP API": consulHTTPPort(t, c),
		adapterService:    portOf(t, requireFlag(t, c, adapterService, "web.listen-address")),
		promService:       portOf(t, requireFlag(t, c, promService, "web.listen-address")),
	}
	for what, port := range listen {
		if !published[port] {
			t.Errorf("%s listens on port %s, which the consul service does not publish (ports: %v)", what, port, consul.Ports)
		}
	}

	// Consul's health checks in consul.json probe these ports.
	services := loadConsulConfig(t).Services
	for _, s := range services {
		if want, ok := listen[s.Name]; ok && strconv.Itoa(s.Port) != want {
			t.Errorf("consul.json registers %s on port %d, but in docker-compose.yml it listens on %s", s.Name, s.Port, want)
		}
	}
}

// Every Consul agent the stack and the demo start binds an explicit
// address: on a machine or in a container with several private addresses
// (Docker's bridges, several compose networks) an agent left to choose one
// refuses to start.
func TestConsulAgentsBind(t *testing.T) {
	c := loadCompose(t)
	if v, _ := c.Services[consulService].Command.flag("bind"); net.ParseIP(v) == nil {
		t.Errorf("docker-compose.yml: service %s: command %q binds no explicit address (-bind=IP)", consulService, c.Services[consulService].Command)
	}

	demo, err := os.ReadFile(filepath.Join(repoRoot(t), "scripts", "demo.sh"))
	if err != nil {
		t.Fatal(err)
	}
	agents := 0
	for _, line := range strings.Split(string(demo), "\n") {
		words := composeCommand(strings.Fields(line))
		if !slices.Contains(words, "agent") || !slices.Contains(words, "-dev") {
			continue
		}
		agents++
		if v, _ := words.flag("bind"); net.ParseIP(v) == nil {
			t.Errorf("scripts/demo.sh starts an agent without an explicit -bind: %s", strings.TrimSpace(line))
		}
	}
	if agents == 0 {
		t.Error("scripts/demo.sh: no line starting `consul agent -dev` found")
	}
}

// Consul names a node after the host by default, in a container its ID: the
// targets' __meta_consul_node would change with every `docker compose up`.
func TestComposeConsulNodeName(t *testing.T) {
	c := loadCompose(t)
	node, ok := c.Services[consulService].Command.flag("node")
	if !ok || node == "" || strings.Contains(node, "$") {
		t.Errorf("docker-compose.yml: service %s: command %q, want a fixed -node=NAME", consulService, c.Services[consulService].Command)
	}
}

func TestComposeAdapterReachesConsul(t *testing.T) {
	c := loadCompose(t)
	addr := requireFlag(t, c, adapterService, "listen.address")
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("adapter --listen.address=%s: %v", addr, err)
	}
	if host != "127.0.0.1" && host != "localhost" {
		t.Errorf("adapter --listen.address=%s: in consul's network namespace Consul is at 127.0.0.1", addr)
	}
	if want := consulHTTPPort(t, c); port != want {
		t.Errorf("adapter --listen.address=%s, but Consul's HTTP API is on port %s", addr, want)
	}
}

// consulHTTPPort is the port of the Consul agent's HTTP API in the stack.
func consulHTTPPort(t *testing.T, c composeFile) string {
	t.Helper()
	if v, ok := c.Services[consulService].Command.flag("http-port"); ok {
		return v
	}
	if p := loadConsulConfig(t).Ports.HTTP; p != 0 {
		return strconv.Itoa(p)
	}
	return "8500"
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return port
}

// The compose stack and the demo should run the same Consul as the tests:
// the one tools/consul pins.
func TestComposeConsulVersion(t *testing.T) {
	c := loadCompose(t)
	image := c.Services[consulService].Image
	_, tag, _ := strings.Cut(image, ":")
	mod, err := os.ReadFile(filepath.Join(repoRoot(t), "tools", "consul", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var pinned string
	for _, line := range strings.Split(string(mod), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "require" && f[1] == "github.com/hashicorp/consul" {
			pinned = strings.TrimPrefix(f[2], "v")
		}
	}
	if pinned == "" {
		t.Fatal("tools/consul/go.mod does not require github.com/hashicorp/consul on a require line")
	}
	if tag != pinned {
		t.Errorf("docker-compose.yml runs %s, tools/consul pins Consul %s", image, pinned)
	}
}

// ---------------------------------------------------------------------------
// Dockerfile

type dockerStage struct {
	from  string
	instr [][]string // instruction keyword (upper case) followed by its words
}

func loadDockerfile(t *testing.T, file string) []dockerStage {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var (
		stages []dockerStage
		line   string
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		text := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(text, "#") || (text == "" && line == "") {
			continue
		}
		if cont, ok := strings.CutSuffix(text, "\\"); ok {
			line += cont + " "
			continue
		}
		line += text
		words := strings.Fields(line)
		line = ""
		if len(words) == 0 {
			continue
		}
		words[0] = strings.ToUpper(words[0])
		if words[0] == "FROM" {
			stages = append(stages, dockerStage{from: strings.Join(words[1:], " ")})
			continue
		}
		if len(stages) == 0 {
			t.Fatalf("%s: %s before FROM", file, words[0])
		}
		stages[len(stages)-1].instr = append(stages[len(stages)-1].instr, words)
	}
	if len(stages) == 0 {
		t.Fatalf("%s: no FROM", file)
	}
	return stages
}

// copyArgs splits a COPY instruction into its --flags, sources and
// destination.
func copyArgs(words []string) (flags, srcs []string, dst string) {
	args := words[1:]
	for len(args) > 0 && strings.HasPrefix(args[0], "--") {
		flags, args = append(flags, args[0]), args[1:]
	}
	if len(args) < 2 {
		return flags, nil, ""
	}
	return flags, args[:len(args)-1], args[len(args)-1]
}

func TestDockerfile(t *testing.T) {
	root := repoRoot(t)
	c := loadCompose(t)
	build := c.Services[adapterService].Build
	if build.Context == "" {
		t.Fatalf("service %s has no build context", adapterService)
	}
	dockerfile := build.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	file := filepath.Join(root, build.Context, dockerfile)
	stages := loadDockerfile(t, file)
	final := stages[len(stages)-1]

	var user string
	var entrypoint bool
	for _, in := range final.instr {
		switch in[0] {
		case "USER":
			user = in[1]
		case "ENTRYPOINT":
			entrypoint = true
		}
	}
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "root" || u == "0" {
		t.Errorf("%s: the final stage runs as %q, want a non-root USER", file, user)
	}
	if !entrypoint {
		t.Errorf("%s: the final stage has no ENTRYPOINT", file)
	}

	// A fresh named volume takes the owner of the image directory it is
	// mounted over; unless the image creates the output directory owned by
	// the non-root user, the adapter cannot write into the volume.
	outDir := path.Dir(requireFlag(t, c, adapterService, "output.file"))
	owned := false
	for _, in := range final.instr {
		if in[0] != "COPY" {
			continue
		}
		flags, _, dst := copyArgs(in)
		if path.Clean(dst) == outDir && slices.ContainsFunc(flags, func(f string) bool { return strings.HasPrefix(f, "--chown=") }) {
			owned = true
		}
	}
	if !owned {
		t.Errorf("%s: the final stage does not create %s (the adapter's output directory) with COPY --chown for the non-root user", file, outDir)
	}
}

// A `# syntax=` directive makes BuildKit pull a frontend image from a
// registry before it builds anything; the Dockerfile needs only the
// built-in one, and builds where no registry is reachable.
func TestDockerfileNoSyntaxDirective(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Parser directives are "# key=value" comments at the top of the file.
	for _, line := range strings.Split(string(data), "\n") {
		text, ok := strings.CutPrefix(strings.TrimSpace(line), "#")
		if !ok {
			break
		}
		key, _, isDirective := strings.Cut(text, "=")
		if isDirective && strings.EqualFold(strings.TrimSpace(key), "syntax") {
			t.Errorf("Dockerfile: parser directive %q fetches a frontend image; the built-in one is enough", strings.TrimSpace(line))
		}
	}
}

// The Dockerfile copies only some directories into the build; a package
// added elsewhere would break `docker compose build`, which nothing here can
// run.
func TestDockerfileCopiesEveryPackage(t *testing.T) {
	root := repoRoot(t)
	stages := loadDockerfile(t, filepath.Join(root, "Dockerfile"))

	var copied []string
	for _, stage := range stages {
		for _, in := range stage.instr {
			if in[0] != "COPY" {
				continue
			}
			flags, srcs, _ := copyArgs(in)
			if slices.ContainsFunc(flags, func(f string) bool { return strings.HasPrefix(f, "--from=") }) {
				continue
			}
			for _, s := range srcs {
				copied = append(copied, path.Clean(s))
			}
		}
	}
	isCopied := func(rel string) bool {
		for _, s := range copied {
			if s == "." || rel == s || strings.HasPrefix(rel, s+"/") {
				return true
			}
		}
		return false
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if !isCopied(f) {
			t.Errorf("Dockerfile does not copy %s", f)
		}
	}

	cmd := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", "./cmd/consul-sd-adapter")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/consul-sd-adapter: %v\n%s", err, stderr.String())
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg != modulePath && !strings.HasPrefix(pkg, modulePath+"/") {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, modulePath), "/")
		if rel == "" {
			rel = "."
		}
		if !isCopied(rel) {
			t.Errorf("cmd/consul-sd-adapter imports %s, but the Dockerfile does not COPY %s/", pkg, rel)
		}
	}
}

// ---------------------------------------------------------------------------
// prometheus.yml

type promConfig struct {
	ScrapeConfigs []promScrapeConfig `yaml:"scrape_configs"`
}

type promScrapeConfig struct {
	JobName       string `yaml:"job_name"`
	FileSDConfigs []struct {
		Files []string `yaml:"files"`
	} `yaml:"file_sd_configs"`
	RelabelConfigs []promRelabel `yaml:"relabel_configs"`
}

type promRelabel struct {
	SourceLabels []string `yaml:"source_labels"`
	Separator    string   `yaml:"separator"`
	Regex        *string  `yaml:"regex"`
	TargetLabel  string   `yaml:"target_label"`
	Replacement  *string  `yaml:"replacement"`
	Action       string   `yaml:"action"`
}

// copies reports whether the rule copies the single label from into to,
// unchanged, when from is non-empty.
func (r promRelabel) copies(from, to string) bool {
	if r.Action != "" && r.Action != "replace" {
		return false
	}
	if !slices.Equal(r.SourceLabels, []string{from}) || r.TargetLabel != to {
		return false
	}
	regexOK := r.Regex == nil || *r.Regex == "(.*)" || *r.Regex == "(.+)"
	replacementOK := r.Replacement == nil || *r.Replacement == "$1" || *r.Replacement == "${1}"
	return regexOK && replacementOK
}

const sdJob = "consul-sd"

func loadPromConfig(t *testing.T) promScrapeConfig {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg promConfig
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("prometheus.yml: %v", err)
	}
	for _, sc := range cfg.ScrapeConfigs {
		if sc.JobName == sdJob {
			return sc
		}
	}
	t.Fatalf("prometheus.yml: no scrape config with job_name %q", sdJob)
	return promScrapeConfig{}
}

func fileSDFiles(t *testing.T, sc promScrapeConfig) []string {
	t.Helper()
	var files []string
	for _, fsd := range sc.FileSDConfigs {
		files = append(files, fsd.Files...)
	}
	return files
}

func TestPrometheusConfig(t *testing.T) {
	sc := loadPromConfig(t)
	if files := fileSDFiles(t, sc); !slices.Contains(files, "sd/custom_sd.json") {
		t.Errorf("job %s: file_sd_configs files %q, want sd/custom_sd.json", sdJob, files)
	}
	// Without the first rule every target is in job "consul-sd"; without
	// the other two the Consul agent (service consul-agent in consul.json)
	// is scraped at /metrics and answers 404.
	for _, want := range [][2]string{
		{"__meta_consul_service", "job"},
		{"__meta_consul_service_metadata_metrics_path", "__metrics_path__"},
		{"__meta_consul_service_metadata_format", "__param_format"},
	} {
		if !slices.ContainsFunc(sc.RelabelConfigs, func(r promRelabel) bool { return r.copies(want[0], want[1]) }) {
			t.Errorf("job %s: no relabel rule copying %s to %s", sdJob, want[0], want[1])
		}
	}
}

// promtool is what Prometheus itself runs on the file, so it catches what
// the YAML checks above do not (unknown fields, bad regexes, ...). It runs
// on a copy next to an sd/custom_sd.json, as in the stack: promtool warns
// about a missing file_sd file, and a warning here means the path is wrong.
func TestPromtoolCheckConfig(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run make test (it installs prometheus), or apt-get install prometheus")
	}
	dir := t.TempDir()
	cfg, err := os.ReadFile(filepath.Join(repoRoot(t), "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, f := range fileSDFiles(t, loadPromConfig(t)) {
		if filepath.IsAbs(f) {
			t.Fatalf("file_sd path %s is absolute; the stack relies on it resolving next to prometheus.yml", f)
		}
		sd := filepath.Join(dir, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(sd), 0o755); err != nil {
			t.Fatal(err)
		}
		group := `[{"targets":["127.0.0.1:9090"],"labels":{"__meta_consul_service":"prometheus"}}]`
		if err := os.WriteFile(sd, []byte(group), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(promtool, "check", "config", "prometheus.yml")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config prometheus.yml: %v\n%s", err, out)
	}
	if bytes.Contains(out, []byte("WARNING")) {
		t.Errorf("promtool check config prometheus.yml warns:\n%s", out)
	}
}

// ---------------------------------------------------------------------------
// consul.json

type consulConfig struct {
	EnableScriptChecks *bool `json:"enable_script_checks"`
	Telemetry          struct {
		PrometheusRetentionTime string `json:"prometheus_retention_time"`
	} `json:"telemetry"`
	Ports struct {
		HTTP int `json:"http"`
	} `json:"ports"`
	Services []consulServiceDef `json:"services"`
}

type consulServiceDef struct {
	ID      string            `json:"id"`
	Name    string            `json:"name"`
	Address string            `json:"address"`
	Port    int               `json:"port"`
	Tags    []string          `json:"tags"`
	Meta    map[string]string `json:"meta"`
	Check   *consulCheck      `json:"check"`
	Checks  []consulCheck     `json:"checks"`
}

type consulCheck struct {
	HTTP     string   `json:"http"`
	TCP      string   `json:"tcp"`
	Args     []string `json:"args"`
	Interval string   `json:"interval"`
}

func loadConsulConfig(t *testing.T) consulConfig {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "consul.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg consulConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("consul.json: %v", err)
	}
	return cfg
}

func TestConsulConfig(t *testing.T) {
	cfg := loadConsulConfig(t)
	if cfg.EnableScriptChecks == nil || *cfg.EnableScriptChecks {
		t.Error("consul.json: want enable_script_checks: false (the agent's API is open to anything that can reach it)")
	}
	if len(cfg.Services) == 0 {
		t.Fatal("consul.json registers no services")
	}

	ids := map[string]bool{}
	instances := map[string]int{}
	for _, s := range cfg.Services {
		if s.ID == "" || s.Name == "" {
			t.Errorf("service %+v: want both id and name", s)
		}
		if ids[s.ID] {
			t.Errorf("service id %q is registered twice", s.ID)
		}
		ids[s.ID] = true
		instances[s.Name]++

		// Explicit loopback addresses: without one Consul advertises the
		// node address, and the stack reaches every service over the
		// loopback of the namespace it shares.
		if ip := net.ParseIP(s.Address); ip == nil || !ip.IsLoopback() {
			t.Errorf("service %s: address %q, want an explicit loopback IP", s.ID, s.Address)
		}
		if s.Port <= 0 {
			t.Errorf("service %s: no port", s.ID)
		}

		// The demo shows Consul's health next to Prometheus's up/down, so
		// every service needs a check, and the check must probe the
		// service's own address.
		checks := s.Checks
		if s.Check != nil {
			checks = append(checks, *s.Check)
		}
		if len(checks) == 0 {
			t.Errorf("service %s has no health check", s.ID)
		}
		self := net.JoinHostPort(s.Address, strconv.Itoa(s.Port))
		for _, ch := range checks {
			if len(ch.Args) > 0 {
				t.Errorf("service %s: script check %q; script checks are disabled", s.ID, ch.Args)
			}
			if ch.Interval == "" {
				t.Errorf("service %s: check without interval", s.ID)
			}
			if target := ch.TCP + ch.HTTP; !strings.Contains(target, self) {
				t.Errorf("service %s: check probes %q, not the service's %s", s.ID, target, self)
			}
		}

		if s.Meta["format"] == "prometheus" && cfg.Telemetry.PrometheusRetentionTime == "" {
			t.Errorf("service %s is scraped with format=prometheus, which the agent only serves with telemetry.prometheus_retention_time set", s.ID)
		}
	}

	if instances["web"] != 2 {
		t.Errorf("consul.json registers %d instances of web, want 2 (one service with several instances)", instances["web"])
	}
	for _, name := range []string{"prometheus", "consul-sd-adapter", "consul-agent"} {
		if instances[name] == 0 {
			t.Errorf("consul.json does not register %s", name)
		}
	}
}

// Consul itself is the judge of consul.json: an unknown key or a malformed
// check stops the agent, which the JSON checks above would not notice.
// `consul validate` insists on a data_dir, which -dev does not need, and
// on a machine with several private addresses (Docker's bridges) on a bind
// address, which the demo and the stack pass as a flag; both are supplied
// in a second file.
func TestConsulValidate(t *testing.T) {
	consul := consultest.Binary(t)
	extra := filepath.Join(t.TempDir(), "extra.json")
	if err := os.WriteFile(extra, []byte(fmt.Sprintf(`{"data_dir": %q, "bind_addr": "127.0.0.1"}`, t.TempDir())), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(consul, "validate", filepath.Join(repoRoot(t), "consul.json"), extra).CombinedOutput()
	if err != nil {
		t.Fatalf("consul validate consul.json: %v\n%s", err, out)
	}
}

// ---------------------------------------------------------------------------
// Makefile

// makeDryRun returns what `make -n target` would run.
func makeDryRun(t *testing.T, target string) string {
	t.Helper()
	cmd := exec.Command("make", "-n", target)
	cmd.Dir = repoRoot(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n %s: %v\n%s", target, err, out)
	}
	return string(out)
}

// Only the status page test runs Chromium: the demo must not install 124 MB
// it never starts.
func TestMakeInstallsChromiumOnlyForTests(t *testing.T) {
	if out := makeDryRun(t, "demo"); strings.Contains(out, "chromium") {
		t.Errorf("make demo would install chromium:\n%s", out)
	}
	if out := makeDryRun(t, "test"); !strings.Contains(out, "chromium") {
		t.Errorf("make test would not install chromium, which the status page test needs:\n%s", out)
	}
}

// ldflagsVars returns the variables that -X flags in s set, as
// "package.Name".
func ldflagsVars(s string) []string {
	var vars []string
	for _, m := range regexp.MustCompile(`-X\s+([^=\s]+)=`).FindAllStringSubmatch(s, -1) {
		vars = append(vars, m[1])
	}
	slices.Sort(vars)
	return slices.Compact(vars)
}

// Every build of the binary carries the version data make build stamps:
// the demo's, through make demo, and the image's, through make docker and
// the build arguments of docker-compose.yml.
func TestVersionStampedEverywhere(t *testing.T) {
	root := repoRoot(t)
	build := makeDryRun(t, "build")
	want := ldflagsVars(build)
	if !slices.Contains(want, "github.com/prometheus/common/version.Version") {
		t.Fatalf("make build sets no version with -X: %s", build)
	}

	demo := makeDryRun(t, "demo")
	if got := ldflagsVars(demo); !slices.Equal(got, want) {
		t.Errorf("make demo passes -X for %q, make build for %q", got, want)
	}
	script, err := os.ReadFile(filepath.Join(root, "scripts", "demo.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`go build -ldflags "\$\{?LDFLAGS`).Match(script) {
		t.Error("scripts/demo.sh does not build the adapter with $LDFLAGS")
	}

	var run string
	for _, stage := range loadDockerfile(t, filepath.Join(root, "Dockerfile")) {
		for _, in := range stage.instr {
			if in[0] == "RUN" && strings.Contains(strings.Join(in, " "), "./cmd/consul-sd-adapter") {
				run = strings.Join(in, " ")
			}
		}
	}
	if got := ldflagsVars(run); !slices.Equal(got, want) {
		t.Errorf("the Dockerfile's build sets -X for %q, make build for %q", got, want)
	}
	dockerMake := makeDryRun(t, "docker")
	for _, arg := range []string{"VERSION", "REVISION"} {
		if !strings.Contains(run, "${"+arg+"}") || !strings.Contains(dockerMake, arg+"=") {
			t.Errorf("build argument %s: want it used in the Dockerfile's build (%s) and set by make docker (%s)", arg, run, dockerMake)
		}
	}
	composeArgs, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Build struct {
				Args []string `yaml:"args"`
			} `yaml:"build"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(composeArgs, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	if got := c.Services[adapterService].Build.Args; !slices.Contains(got, "VERSION") || !slices.Contains(got, "REVISION") {
		t.Errorf("docker-compose.yml: service %s: build args %q, want VERSION and REVISION passed from the environment", adapterService, got)
	}
}
