package e2e

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/consul-sd-adapter/consul-sd-adapter/internal/consultest"
	"github.com/consul-sd-adapter/consul-sd-adapter/internal/faultproxy"
)

// The status page, loaded in a real headless Chromium: what an operator
// sees, not the HTML the handler writes.

// TestStatusPageInBrowser loads the status page of an adapter in front of a
// real Consul: first after a successful refresh, then while Consul fails
// one query. The page must list every service with its instances and
// health, and once refreshes fail show the error while still listing the
// targets of the last successful refresh.
func TestStatusPageInBrowser(t *testing.T) {
	agent := consultest.Start(t)
	insts := []consultest.Instance{
		{Node: "node-a", NodeAddress: "127.0.0.11", Service: "web", ID: "web-1"},
		{Node: "node-b", NodeAddress: "127.0.0.12", Service: "web", ID: "web-2", Health: "critical"},
		{Node: "node-c", NodeAddress: "127.0.0.13", Service: "db", ID: "db-1"},
	}
	for i := range insts {
		insts[i].Port = closedPort(t, host(insts[i]))
		agent.RegisterInstance(t, insts[i])
	}
	proxy := faultproxy.Start(t, agent.Addr)
	adapter := startAdapter(t, proxy.Addr, filepath.Join(t.TempDir(), "custom_sd.json"))
	b := startBrowser(t)
	url := "http://" + adapter.addr + "/"

	// After a successful refresh.
	page := b.load(t, url)
	b.screenshot(t, "status-page-ok.png")
	if !page.LastResult {
		t.Errorf("#last-result missing after a successful refresh; #last-error: %q", page.LastError)
	}
	if page.LastError != "" {
		t.Errorf("#last-error shown after a successful refresh: %q", page.LastError)
	}
	if !strings.Contains(page.LastResultText, "succeeded") {
		t.Errorf("#last-result: %q, want it to say the refresh succeeded", page.LastResultText)
	}
	checkPage(t, page, insts)

	// Then db's query fails. A round queries only the services whose
	// instances changed, so db must change for the fault to be hit: a new
	// instance of it, which must not show up, since no round after it
	// succeeds.
	const failures = `consul_sd_adapter_refreshes_total{result="failure"}`
	failed := adapter.metric(t, failures)
	proxy.Set("/v1/health/service/db", faultproxy.Status500)
	agent.RegisterInstance(t, consultest.Instance{Node: "node-d", NodeAddress: "127.0.0.14", Service: "db", ID: "db-2", Port: 6379})
	// Two failures: the status the page shows is recorded after the
	// counter, and a second failed round means the first one's is in.
	waitFor(t, "two failed refreshes", func() (bool, string) {
		n := adapter.metric(t, failures)
		return n >= failed+2, fmt.Sprintf("%s went from %v to %v", failures, failed, n)
	})

	page = b.load(t, url)
	b.screenshot(t, "status-page-failing.png")
	if page.LastResult {
		t.Errorf("#last-result shown while refreshes fail: %q", page.LastResultText)
	}
	if !strings.Contains(page.LastError, "500") || !strings.Contains(page.LastError, "db") {
		t.Errorf("#last-error: %q, want the failure of db's query with its status 500", page.LastError)
	}
	if page.LastSuccess == "" || strings.HasPrefix(page.LastSuccess, "never") {
		t.Errorf("#last-success: %q, want the time of the last successful refresh", page.LastSuccess)
	}
	checkPage(t, page, insts) // the last successful refresh's, without db-2
}

// TestStatusPagePagingInBrowser: with more services than one page shows,
// the page lists the first ones, says where it is, and its Next link leads
// to the rest; the counts are the catalog's, not the page's.
func TestStatusPagePagingInBrowser(t *testing.T) {
	const services = 60 // the page shows 50
	agent := consultest.Start(t)
	var insts []consultest.Instance
	for i := range services {
		inst := consultest.Instance{
			Node: fmt.Sprintf("node-%02d", i), NodeAddress: fmt.Sprintf("127.0.1.%d", i+1),
			Service: fmt.Sprintf("svc-%02d", i), ID: fmt.Sprintf("svc-%02d-1", i), Port: 80,
		}
		agent.RegisterInstance(t, inst)
		insts = append(insts, inst)
	}
	adapter := startAdapter(t, agent.Addr, filepath.Join(t.TempDir(), "custom_sd.json"))
	b := startBrowser(t)

	first := b.load(t, "http://"+adapter.addr+"/")
	b.screenshot(t, "status-page-paged.png")
	if !strings.Contains(first.PageInfo, "page 1 of 2") {
		t.Errorf("first page says %q, want page 1 of 2", first.PageInfo)
	}
	next := run(t, b, "reading the Next link", chromedp.Evaluate[string](`(document.querySelector("a[rel=next]") || {}).href || ""`))
	if next == "" {
		t.Fatal("the first page has no Next link")
	}
	second := b.load(t, next)
	if !strings.Contains(second.PageInfo, "page 2 of 2") {
		t.Errorf("second page says %q, want page 2 of 2", second.PageInfo)
	}
	if len(first.Services) >= services || len(second.Services) == 0 {
		t.Errorf("the pages list %d and %d services, want the %d split over both", len(first.Services), len(second.Services), services)
	}
	// Together the two pages are what one page used to be.
	both := first
	both.Services = append(slices.Clip(first.Services), second.Services...)
	checkPage(t, both, insts)
}

// statusPage is what the browser shows, read through the DOM.
type statusPage struct {
	Title          string
	LastResult     bool
	LastResultText string
	LastError      string // text of #last-error; "" when absent
	LastSuccess    string
	ServiceCount   string
	TargetCount    string
	PageInfo       string // where the page is among all ("page 1 of 2"); "" on a single page
	Services       []pageService
	// ScrollWidth > ClientWidth means the page scrolls sideways.
	ScrollWidth, ClientWidth int
}

type pageService struct {
	Name string
	// Rows are the cells of the table after the heading, header row
	// first; Classes the class of each row's health cell.
	Rows    [][]string
	Classes []string
}

// readPageJS reads the status page as a user sees it: innerText is the
// rendered text, so hidden or collapsed content would not count.
const readPageJS = `(() => {
	const text = id => { const e = document.getElementById(id); return e ? e.innerText.trim() : ""; };
	const services = [...document.querySelectorAll("h3.service")].map(h => {
		let table = h.nextElementSibling;
		const rows = [], classes = [];
		if (table && table.tagName === "TABLE") {
			for (const tr of table.querySelectorAll("tr")) {
				const cells = [...tr.children];
				rows.push(cells.map(c => c.innerText.trim()));
				classes.push(cells.length ? cells[cells.length - 1].className : "");
			}
		}
		return {Name: h.innerText.trim(), Rows: rows, Classes: classes};
	});
	return {
		Title: document.title,
		LastResult: document.getElementById("last-result") !== null,
		LastResultText: text("last-result"),
		LastError: text("last-error"),
		LastSuccess: text("last-success"),
		ServiceCount: text("service-count"),
		TargetCount: text("target-count"),
		PageInfo: (document.querySelector(".page-info") || {innerText: ""}).innerText.trim(),
		Services: services,
		ScrollWidth: document.documentElement.scrollWidth,
		ClientWidth: document.documentElement.clientWidth,
	};
})()`

// checkPage asserts that the page lists exactly the services of insts, in
// name order, each with its instances in address order, their node and
// health; and that the counts agree.
func checkPage(t *testing.T, page statusPage, insts []consultest.Instance) {
	t.Helper()
	want := map[string][][]string{}
	for _, inst := range insts {
		health := inst.Health
		if health == "" {
			health = "passing"
		}
		want[inst.Service] = append(want[inst.Service], []string{address(inst), inst.Node, health})
	}
	var names []string
	for _, s := range page.Services {
		names = append(names, s.Name)
	}
	wantNames := slices.Sorted(maps.Keys(want))
	if strings.Join(names, ",") != strings.Join(wantNames, ",") {
		t.Errorf("services on the page: %q, want %q", names, wantNames)
	}
	for _, s := range page.Services {
		rows, ok := want[s.Name]
		if !ok {
			continue
		}
		// The page sorts instances by address.
		slices.SortFunc(rows, func(a, b []string) int { return strings.Compare(a[0], b[0]) })
		if len(s.Rows) == 0 || strings.Join(s.Rows[0], "|") != "Address|Node|Health" {
			t.Errorf("service %s: table header %q, want Address|Node|Health", s.Name, s.Rows)
			continue
		}
		got := s.Rows[1:]
		if fmt.Sprint(got) != fmt.Sprint(rows) {
			t.Errorf("service %s: rows\n  %q\nwant\n  %q", s.Name, got, rows)
			continue
		}
		// The health cell's class selects its colour: critical in red.
		for i, row := range got {
			if class := s.Classes[i+1]; class != row[2] {
				t.Errorf("service %s, %s: health cell class %q, want %q", s.Name, row[0], class, row[2])
			}
		}
	}
	if want := fmt.Sprint(len(want)); page.ServiceCount != want {
		t.Errorf("#service-count: %q, want %s", page.ServiceCount, want)
	}
	if want := fmt.Sprint(len(insts)); page.TargetCount != want {
		t.Errorf("#target-count: %q, want %s", page.TargetCount, want)
	}
	if page.ScrollWidth > page.ClientWidth {
		t.Errorf("the page scrolls sideways: %dpx wide in a %dpx window", page.ScrollWidth, page.ClientWidth)
	}
}

// browser is a headless Chromium with one tab, closed when the test ends.
type browser struct {
	ctx context.Context
	log *logBuffer
}

// Window size of a common laptop screen: the screenshots show what an
// operator sees there.
const windowWidth, windowHeight = 1366, 768

func startBrowser(t *testing.T) *browser {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: run `make test`: it installs Debian's chromium package")
	}
	b := &browser{log: &logBuffer{}}
	// Chromium makes a directory in $TMPDIR (org.chromium.Chromium.*) that
	// it does not remove when it is killed: it gets one of its own, which
	// goes with the test's.
	leftovers := filepath.Join(os.TempDir(), "org.chromium.Chromium.*")
	before, _ := filepath.Glob(leftovers)
	// Bounds the whole browser, so that a hung start cannot hang the test;
	// each action has its own, shorter, bound (see run).
	ctx, cancelAll := context.WithTimeout(context.Background(), 5*hangGuard)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(bin),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // root in a container
		chromedp.Flag("disable-gpu", true),
		// This machine's network is closed: without these, Chromium's
		// background connections are refused and it stalls on them.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Env("TMPDIR="+t.TempDir()),
		chromedp.WindowSize(windowWidth, windowHeight),
		chromedp.CombinedOutput(b.log),
	)
	b.ctx, _ = chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		// Cancelling the allocator kills Chromium and waits for it.
		cancelAlloc()
		cancelAll()
		after, _ := filepath.Glob(leftovers)
		for _, dir := range after {
			if !slices.Contains(before, dir) {
				t.Errorf("chromium left %s behind", dir)
			}
		}
		if t.Failed() {
			t.Logf("chromium output, last lines:\n%s", b.log.tail(20))
		}
	})
	// The first action starts the browser, which then lives as long as the
	// context of that action: b.ctx, not one with a shorter deadline.
	if err := chromedp.Do(b.ctx); err != nil {
		t.Fatalf("starting %s: %v\n%s", bin, err, b.log.tail(20))
	}
	return b
}

// run runs one action in the tab, bounded by hangGuard.
func run[T any](t *testing.T, b *browser, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, hangGuard)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("chromium: %s: %v", what, err)
	}
	return v
}

// load navigates to url, checks it answered 200 with HTML, and reads the
// page.
func (b *browser) load(t *testing.T, url string) statusPage {
	t.Helper()
	resp := run(t, b, "loading "+url, chromedp.NavigateResponse(url))
	if resp == nil || resp.Status != 200 {
		t.Fatalf("loading %s: %+v, want 200", url, resp)
	}
	if ct := resp.MimeType; ct != "text/html" {
		t.Errorf("%s: MIME type %q, want text/html", url, ct)
	}
	page := run(t, b, "reading the page", chromedp.Evaluate[statusPage](readPageJS))
	if page.Title == "" {
		t.Errorf("%s: no title", url)
	}
	return page
}

// screenshot writes a full-page PNG of the tab to the artefacts directory
// ($E2E_ARTIFACTS, else a directory under the system's temporary one, kept
// after the test) and returns its path.
func (b *browser) screenshot(t *testing.T, name string) string {
	t.Helper()
	data := run(t, b, "taking a screenshot", chromedp.FullScreenshot(100)) // 100: PNG
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("screenshot %s is no PNG: %v", name, err)
	}
	if w := img.Bounds().Dx(); w < 800 {
		t.Errorf("screenshot %s is %dpx wide, want at least 800", name, w)
	}
	dir := os.Getenv("E2E_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "consul-sd-adapter-e2e-artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot (%dx%d): %s", img.Bounds().Dx(), img.Bounds().Dy(), path)
	return path
}
