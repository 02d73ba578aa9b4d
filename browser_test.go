package edgeguard_test

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// chromiumPath is Debian's Chromium; ./scripts/test installs it.
const chromiumPath = "/usr/bin/chromium"

// browserCaddyfile allows exactly one page origin, in front of the example
// Flask app (which itself answers every origin with *).
const browserCaddyfile = `{
	admin off
	auto_https off
	default_bind {$EDGEGUARD_BIND}
}

http://:{$EDGEGUARD_PORT} {
	handle /api/* {
		edge_guard {
			name browser
			allow_origins {$PAGE_ORIGIN}
			allow_methods GET POST PUT
			allow_headers Content-Type X-Custom
			issuer {$ISSUER} {
				jwks_url {$JWKS_URL}
				audience items-api
			}
			claim_header X-User-Id sub
		}
		reverse_proxy {$FLASK}
	}
}
`

// fetchResult is what the page's fetch saw: a network error (the browser
// refused the response) or a status and body it could read.
type fetchResult struct {
	OK     bool   `json:"ok"`
	Status int    `json:"status"`
	Body   string `json:"body"`
	Error  string `json:"error"`
}

// startPageServer serves an empty page on a loopback port and returns the
// origin it is reached by, under host (127.0.0.1 or localhost).
func startPageServer(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write([]byte("<!doctype html><title>page</title><p>page</p>"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + host + ":" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

// browserLog is what the tab's network events showed: every URL it
// requested, and every load that Chromium failed for a CORS reason.
type browserLog struct {
	mu         sync.Mutex
	urls       []string
	corsErrors []string
}

func (l *browserLog) record(ev any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch e := ev.(type) {
	case *network.EventRequestWillBeSent:
		l.urls = append(l.urls, e.Request.URL)
	case *network.EventLoadingFailed:
		if e.CorsErrorStatus != nil {
			l.corsErrors = append(l.corsErrors, string(e.CorsErrorStatus.CorsError))
		}
	}
}

func (l *browserLog) requested() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.urls...)
}

func (l *browserLog) failedForCORS() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.corsErrors...)
}

// newBrowser starts headless Chromium with a fresh profile, kept off every
// network but loopback, and returns a tab context and its network log.
func newBrowser(t *testing.T) (context.Context, *browserLog) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%s: %v (install Debian's chromium; ./scripts/test does)", chromiumPath, err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Headless,
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("safebrowsing-disable-auto-update", true),
		chromedp.Flag("disable-features", "OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,"+
			"CertificateTransparencyComponentUpdater,DialMediaRouteProvider"),
		// no proxy, and every name but localhost fails to resolve: the
		// browser can reach loopback and nothing else
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)

	log := &browserLog{}
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithListener(log.record))
	t.Cleanup(cancel)
	ctx, cancelTimeout := context.WithTimeout(ctx, 120*time.Second)
	t.Cleanup(cancelTimeout)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx, log
}

// pageFetch navigates to page and runs fetch(target, init) there.
func pageFetch(t *testing.T, ctx context.Context, page, target, init string) fetchResult {
	t.Helper()
	script := `(async () => {
	try {
		const r = await fetch(` + strconv.Quote(target) + `, ` + init + `);
		return {ok: true, status: r.status, body: await r.text()};
	} catch (e) {
		return {ok: false, error: String(e)};
	}
})()`
	if err := chromedp.Do(ctx, chromedp.Navigate(page+"/")); err != nil {
		t.Fatalf("navigate to %s: %v", page, err)
	}
	res, err := chromedp.Run(ctx, chromedp.Evaluate[fetchResult](script, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("fetch from %s: %v", page, err)
	}
	return res
}

func TestBrowser(t *testing.T) {
	if _, err := exec.LookPath(chromiumPath); err != nil {
		t.Fatalf("chromium is required: %v", err)
	}
	flask := testkit.MustStartFlask(t)
	key := testkit.MustRSAKey(t, "browser-1")
	jwks := testkit.StartJWKS(t, key)
	allowed := startPageServer(t, "127.0.0.1")
	refused := startPageServer(t, "localhost")

	gw, err := testkit.StartGateway([]byte(browserCaddyfile), "Caddyfile", map[string]string{
		"PAGE_ORIGIN": allowed,
		"ISSUER":      jwks.Issuer,
		"JWKS_URL":    jwks.URL,
		"FLASK":       flask.Addr,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Stop)

	token := testkit.MustSign(t, key, testkit.Claims(jwks.Issuer, "items-api", "alice", time.Hour))
	items := gw.URL + "/api/public/items"
	withToken := `{headers: {"Authorization": "Bearer ` + token + `"}}`

	ctx, log := newBrowser(t)

	cases := []struct {
		name    string
		page    string
		target  string
		init    string
		ok      bool   // the page could read the response
		status  int    // with ok
		body    string // with ok: a substring
		reaches string // the method Flask must have seen; "" for none
	}{
		{"allowed page reads the JSON", allowed, items, withToken,
			true, 200, `"user":"alice"`, "GET"},
		{"allowed page reads a 401", allowed, items, `{}`,
			true, 401, `"error":"missing_token"`, ""},
		{"allowed page reads a 401 for a bad token", allowed, items, `{headers: {"Authorization": "Bearer x.y.z"}}`,
			true, 401, `"error":"invalid_token"`, ""},
		{"allowed page, preflighted POST with a custom header", allowed, items,
			`{method: "POST", headers: {"Authorization": "Bearer ` + token + `", "Content-Type": "application/json",
				"X-Custom": "1"}, body: JSON.stringify({name: "lamp"})}`,
			true, 201, `"name":"lamp"`, "POST"},
		{"allowed page, preflighted PUT", allowed, items,
			`{method: "PUT", headers: {"Authorization": "Bearer ` + token + `"}}`,
			true, 405, "", "PUT"},
		{"allowed page, header not on the list", allowed, items,
			`{headers: {"Authorization": "Bearer ` + token + `", "X-Other": "1"}}`,
			false, 0, "", ""},
		{"refused page with a token", refused, items, withToken,
			false, 0, "", ""},
		{"refused page, simple request", refused, items, `{}`,
			false, 0, "", ""},
		{"refused page, simple POST", refused, items,
			`{method: "POST", headers: {"Content-Type": "text/plain"}, body: "x"}`,
			false, 0, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testkit.MustReset(t, flask)
			corsErrors := len(log.failedForCORS())
			res := pageFetch(t, ctx, tc.page, tc.target, tc.init)
			if res.OK != tc.ok {
				t.Fatalf("fetch ok=%v, want %v (status %d, error %q, body %q)",
					res.OK, tc.ok, res.Status, res.Error, res.Body)
			}
			// a refusal must be Chromium's CORS check failing, not the
			// network: the request reached the gateway and was answered
			if failed := log.failedForCORS()[corsErrors:]; tc.ok == (len(failed) > 0) {
				t.Errorf("CORS failures %q, want some: %v", failed, !tc.ok)
			}
			if tc.ok {
				if res.Status != tc.status || !strings.Contains(res.Body, tc.body) {
					t.Errorf("status %d body %q, want %d with %q", res.Status, res.Body, tc.status, tc.body)
				}
				if strings.Contains(res.Body, token) {
					t.Error("the body echoes the token")
				}
			}
			seen := testkit.MustRequests(t, flask)
			switch {
			case tc.reaches == "" && len(seen) != 0:
				t.Errorf("Flask saw %d requests (first: %s %s), want none", len(seen), seen[0].Method, seen[0].Path)
			case tc.reaches != "" && (len(seen) != 1 || seen[0].Method != tc.reaches):
				t.Errorf("Flask saw %v, want one %s", seen, tc.reaches)
			}
		})
	}

	// the control: without the gateway, Flask's * lets the refused page
	// read the API, so the refusals above are the gateway's doing
	t.Run("Flask alone lets the refused page read", func(t *testing.T) {
		res := pageFetch(t, ctx, refused, flask.URL+"/api/public/items", `{}`)
		if !res.OK || res.Status != 200 || !strings.Contains(res.Body, "keyboard") {
			t.Fatalf("direct fetch: %+v", res)
		}
	})

	t.Run("the page talked to loopback only", func(t *testing.T) {
		urls := log.requested()
		if len(urls) == 0 {
			t.Fatal("no request was recorded")
		}
		for _, raw := range urls {
			u, err := url.Parse(raw)
			if err != nil {
				t.Errorf("%q: %v", raw, err)
				continue
			}
			if h := u.Hostname(); h != "127.0.0.1" && h != "localhost" {
				t.Errorf("the page requested %s", raw)
			}
		}
	})
}
