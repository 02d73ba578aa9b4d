// Command edgeguard-demo shows edge_guard protecting a Flask API, end to
// end and on loopback only.
//
// It starts the example Flask app (examples/flask-api), shows that the app
// on its own lets any web origin read it, then starts a key endpoint and
// Caddy with Caddyfile.example in this process, and sends real requests
// through the gateway: preflights, missing and valid tokens, a forged
// identity header, a role the token lacks. Every exchange is printed with
// its expected outcome checked. The exit status is 0 only if every outcome
// was the expected one.
//
//	go run ./cmd/edgeguard-demo [-v] [-caddyfile path]
//
// Flask comes from Debian's python3-flask and python3-flask-cors packages,
// run with /usr/bin/python3. When they are missing and the demo runs as
// root on a system with apt-get, it installs them.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/edgeguard/edgeguard/caddymodule"
	"github.com/edgeguard/edgeguard/internal/testkit"
)

// The origins and audience that Caddyfile.example is written for.
const (
	appOrigin   = "https://app.example.com"
	adminOrigin = "https://admin.example.com"
	evilOrigin  = "https://evil.example"
	audience    = "items-api"
)

func main() {
	verbose := flag.Bool("v", false, "show Caddy's own log (debug level)")
	caddyfile := flag.String("caddyfile", "",
		"Caddyfile to run (default: Caddyfile.example at the top of the checkout)")
	flag.Parse()

	d := &demo{out: os.Stdout, verbose: *verbose, caddyfile: *caddyfile, client: newClient()}

	// Flask runs in its own process group, so a Ctrl-C in the terminal
	// does not reach it: stop it here before leaving. SIGPIPE is caught
	// too, for `edgeguard-demo | head`.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	go func() {
		<-sigs
		fmt.Fprintln(d.out, "\ninterrupted, cleaning up")
		d.cleanup()
		os.Exit(130)
	}()

	err := d.run()
	d.cleanup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "\nedgeguard-demo: %v\n", err)
		os.Exit(1)
	}
}

type demo struct {
	out       io.Writer
	verbose   bool
	caddyfile string
	client    *http.Client

	flask   *testkit.Flask
	gateway string // base URL of the gateway
	step    int
	checks  int
	failed  []string

	cleanupMu sync.Mutex
	closers   []func()
}

func (d *demo) run() error {
	root, err := testkit.RepoRoot()
	if err != nil {
		return fmt.Errorf("%w (run the demo from inside the edgeguard checkout)", err)
	}

	// 1
	d.section("Start the Flask API, the upstream to protect")
	if err := ensureFlask(d.out); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	flask, err := testkit.StartFlask(ctx, filepath.Join(root, "examples", "flask-api", "app.py"))
	if err != nil {
		return err
	}
	d.flask = flask
	d.onCleanup(flask.Close)
	d.say("Flask listens on %s (examples/flask-api/app.py)", flask.URL)

	// 2
	d.section("The problem: on its own, Flask lets any web page read it")
	d.say("flask-cors is set up with origins=\"*\", so a page on %s", evilOrigin)
	d.say("may call the API from a visitor's browser and read the answer.")
	res, err := d.send("GET", flask.URL+"/api/public/items", header{"Origin", evilOrigin})
	if err != nil {
		return err
	}
	d.expect(res.acao() == "*", "Flask answers "+evilOrigin+" with Access-Control-Allow-Origin: *",
		res.acao())
	d.say("The app also decodes bearer tokens without checking their signature and")
	d.say("trusts X-User-Id from the client. The gateway fixes all three.")

	// 3
	d.section("Start an issuer key endpoint (JWKS) and pick the gateway's port")
	key, err := testkit.NewRSAKey("demo-rsa-1")
	if err != nil {
		return err
	}
	jwks := testkit.NewJWKSServer(key)
	d.onCleanup(jwks.Close)
	d.say("RSA key %q (RS256), published at %s", key.Kid, jwks.URL)
	d.say("issuer %s, audience %s", jwks.Issuer, audience)

	// 4
	name := "Caddyfile.example"
	if d.caddyfile != "" {
		name = d.caddyfile
	}
	d.section("Run Caddy with edge_guard, using " + name)
	if err := d.startCaddy(root, flask.Addr, jwks); err != nil {
		return err
	}

	// 5
	tokens, err := d.tokens(key, jwks.Issuer)
	if err != nil {
		return err
	}
	d.throughGateway(tokens)

	// summary
	d.section("Summary")
	if len(d.failed) > 0 {
		for _, f := range d.failed {
			fmt.Fprintf(d.out, "   FAILED  %s\n", f)
		}
		return fmt.Errorf("%d of %d checks failed", len(d.failed), d.checks)
	}
	d.say("All %d checks passed. With edge_guard in front of the Flask API:", d.checks)
	d.say("- preflights are answered at the edge, for allowed origins only;")
	d.say("- requests without a valid token never reach Flask;")
	d.say("- the browser sees the gateway's CORS headers, never Flask's \"*\";")
	d.say("- X-User-Id reaching Flask comes from a verified token, not the client;")
	d.say("- admin routes need the admin role and the admin origin.")
	return nil
}

// startCaddy adapts Caddyfile.example with the demo's addresses and runs
// it in this process.
func (d *demo) startCaddy(root, upstream string, jwks *testkit.JWKSServer) error {
	path := d.caddyfile
	if path == "" {
		path = filepath.Join(root, "Caddyfile.example")
	}
	caddyfile, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading the example config: %w", err)
	}

	// Caddy keeps its state (instance id, storage locks) under these;
	// a throwaway directory keeps the demo from touching the user's
	state, err := os.MkdirTemp("", "edgeguard-demo-")
	if err != nil {
		return err
	}
	d.onCleanup(func() { os.RemoveAll(state) })

	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := testkit.FreePort()
		if err != nil {
			return err
		}
		listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		// the listen address is given both whole and as bind address
		// and port, so the demo fits either way of writing the site
		env := [][2]string{
			{"EDGEGUARD_LISTEN", listen},
			{"EDGEGUARD_BIND", "127.0.0.1"},
			{"EDGEGUARD_PORT", strconv.Itoa(port)},
			{"EDGEGUARD_UPSTREAM", upstream},
			{"EDGEGUARD_ISSUER", jwks.Issuer},
			{"EDGEGUARD_JWKS_URL", jwks.URL},
			{"EDGEGUARD_AUDIENCE", audience},
			{"XDG_DATA_HOME", filepath.Join(state, "data")},
			{"XDG_CONFIG_HOME", filepath.Join(state, "config")},
		}
		for _, kv := range env {
			os.Setenv(kv[0], kv[1])
			if attempt == 0 && strings.HasPrefix(kv[0], "EDGEGUARD_") {
				d.say("%s=%s", kv[0], kv[1])
			}
		}

		cfg, err := d.adapt(path, caddyfile, state)
		if err != nil {
			return err
		}
		err = caddy.Load(cfg, true)
		if err == nil {
			d.onCleanup(func() { _ = caddy.Stop() })
			conn, err := net.DialTimeout("tcp", listen, 2*time.Second)
			if err != nil {
				return fmt.Errorf("caddy started but does not listen on %s: the site "+
					"address in %s must come from EDGEGUARD_LISTEN, or from "+
					"EDGEGUARD_BIND and EDGEGUARD_PORT", listen, filepath.Base(path))
			}
			conn.Close()
			d.gateway = "http://" + listen
			d.say("Caddy serves the gateway on %s", d.gateway)
			return nil
		}
		lastErr = err
		// the port picked a moment ago may have been taken since
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return fmt.Errorf("starting Caddy: %w", lastErr)
}

// adapt turns the Caddyfile into JSON and quiets Caddy for the transcript:
// logs at error level unless -v, no autosaved config, storage in the
// throwaway directory.
func (d *demo) adapt(path string, caddyfile []byte, state string) ([]byte, error) {
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return nil, errors.New("the caddyfile config adapter is not registered")
	}
	raw, warnings, err := adapter.Adapt(caddyfile, map[string]any{"filename": path})
	if err != nil {
		return nil, fmt.Errorf("adapting %s: %w", filepath.Base(path), err)
	}
	if d.verbose {
		for _, w := range warnings {
			fmt.Fprintf(d.out, "   caddyfile warning: %s\n", w)
		}
	}

	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, err
	}
	admin, _ := cfg["admin"].(map[string]any)
	if admin == nil {
		admin = map[string]any{}
		cfg["admin"] = admin
	}
	admin["config"] = map[string]any{"persist": false}
	cfg["storage"] = map[string]any{
		"module": "file_system",
		"root":   filepath.Join(state, "storage"),
	}
	level := "ERROR"
	if d.verbose {
		level = "DEBUG"
	}
	cfg["logging"] = map[string]any{
		"logs": map[string]any{"default": map[string]any{"level": level}},
	}
	return json.Marshal(cfg)
}

type demoTokens struct {
	reader, admin string
}

func (d *demo) tokens(key *testkit.Key, issuer string) (demoTokens, error) {
	var t demoTokens
	reader := testkit.Claims(issuer, audience, "alice", 5*time.Minute)
	reader["roles"] = []string{"reader"}
	admin := testkit.Claims(issuer, audience, "carol", 5*time.Minute)
	admin["roles"] = []string{"admin"}

	var err error
	if t.reader, err = testkit.Sign(key, reader); err != nil {
		return t, err
	}
	if t.admin, err = testkit.Sign(key, admin); err != nil {
		return t, err
	}
	return t, nil
}

// throughGateway sends the demo's requests through Caddy. A failed check
// is recorded and the demo goes on, so one transcript shows everything.
func (d *demo) throughGateway(tokens demoTokens) {
	items := d.gateway + "/api/public/items"
	stats := d.gateway + "/api/admin/stats"
	bearer := func(token string) header { return header{"Authorization", "Bearer " + token} }

	d.section("Preflight from an allowed origin")
	res, ok := d.sendOrFail("OPTIONS", items,
		header{"Origin", appOrigin},
		header{"Access-Control-Request-Method", "GET"},
		header{"Access-Control-Request-Headers", "authorization"})
	if ok {
		d.expect(res.status() == http.StatusNoContent, "answered at the edge with 204",
			res.statusLine())
		d.expect(res.acao() == appOrigin, "Access-Control-Allow-Origin is "+appOrigin,
			res.acao())
		d.expect(len(res.upstream) == 0, "Flask never saw the preflight", res.upstreamSummary())
		allowed := strings.ToLower(res.resp.Header.Get("Access-Control-Allow-Headers"))
		if !strings.Contains(allowed, "authorization") {
			d.say("note: Authorization is not in Access-Control-Allow-Headers, so a browser")
			d.say("      would not send the token on the actual request")
		}
	}

	d.section("Preflight from an origin that is not on the allowlist")
	res, ok = d.sendOrFail("OPTIONS", items,
		header{"Origin", evilOrigin},
		header{"Access-Control-Request-Method", "GET"},
		header{"Access-Control-Request-Headers", "authorization"})
	if ok {
		d.expect(res.status() == http.StatusForbidden, "refused with 403", res.statusLine())
		d.expect(len(res.corsHeaders()) == 0, "no Access-Control-* headers",
			strings.Join(res.corsHeaders(), ", "))
		d.expect(len(res.upstream) == 0, "Flask never saw it", res.upstreamSummary())
	}

	d.section("GET without a token, from an allowed origin")
	res, ok = d.sendOrFail("GET", items, header{"Origin", appOrigin})
	if ok {
		d.expect(res.status() == http.StatusUnauthorized, "refused with 401", res.statusLine())
		www := res.resp.Header.Get("WWW-Authenticate")
		d.expect(strings.HasPrefix(www, "Bearer realm="),
			"WWW-Authenticate: Bearer realm=... (RFC 6750)", www)
		d.expect(res.acao() == appOrigin,
			"Access-Control-Allow-Origin is set, so the app can read the error", res.acao())
		d.expect(len(res.upstream) == 0, "Flask never saw it", res.upstreamSummary())
	}

	d.section("GET with a valid token (sub alice, roles [reader])")
	res, ok = d.sendOrFail("GET", items, header{"Origin", appOrigin}, bearer(tokens.reader))
	if ok {
		d.expect(res.status() == http.StatusOK, "forwarded, 200", res.statusLine())
		d.expect(res.jsonField("user") == "alice",
			"Flask got X-User-Id: alice from the gateway", res.jsonField("user"))
		acao := res.resp.Header.Values("Access-Control-Allow-Origin")
		d.expect(len(acao) == 1 && acao[0] == appOrigin,
			"exactly one Access-Control-Allow-Origin, "+appOrigin+", Flask's \"*\" is gone",
			strings.Join(acao, ", "))
	}

	d.section("GET with a valid token for alice and a forged X-User-Id: admin")
	d.say("The client adds X-User-Id and X-User_Id, which WSGI would merge into one.")
	res, ok = d.sendOrFail("GET", items, header{"Origin", appOrigin}, bearer(tokens.reader),
		header{"X-User-Id", "admin"}, header{"X-User_Id", "admin"})
	if ok {
		d.expect(res.status() == http.StatusOK, "forwarded, 200", res.statusLine())
		var seen []string
		if len(res.upstream) == 1 {
			seen = res.upstream[0].Header("X-User-Id")
		}
		d.expect(slices.Equal(seen, []string{"alice"}),
			"Flask's request record shows X-User-Id: alice and nothing else",
			strings.Join(seen, " | "))
	}

	d.section("GET with a valid token from an origin that is not allowed")
	res, ok = d.sendOrFail("GET", items, header{"Origin", evilOrigin}, bearer(tokens.reader))
	if ok {
		d.expect(res.status() == http.StatusForbidden, "refused with 403", res.statusLine())
		d.expect(res.jsonField("error") == "origin_not_allowed",
			"error origin_not_allowed", res.jsonField("error"))
		d.expect(len(res.upstream) == 0, "Flask never saw it", res.upstreamSummary())
	}

	d.section("GET /api/admin/stats with a reader token")
	res, ok = d.sendOrFail("GET", stats, header{"Origin", adminOrigin}, bearer(tokens.reader))
	if ok {
		d.expect(res.status() == http.StatusForbidden, "refused with 403", res.statusLine())
		www := res.resp.Header.Get("WWW-Authenticate")
		d.expect(strings.Contains(www, `error="insufficient_scope"`) &&
			res.jsonField("error") == "insufficient_scope",
			"insufficient_scope, in WWW-Authenticate and the body", www)
		d.expect(len(res.upstream) == 0, "Flask never saw it", res.upstreamSummary())
	}

	d.section("GET /api/admin/stats with an admin token (sub carol, roles [admin])")
	res, ok = d.sendOrFail("GET", stats, header{"Origin", adminOrigin}, bearer(tokens.admin))
	if ok {
		d.expect(res.status() == http.StatusOK, "forwarded, 200", res.statusLine())
		d.expect(res.jsonField("user") == "carol",
			"Flask got X-User-Id: carol", res.jsonField("user"))
		d.expect(res.acao() == adminOrigin,
			"Access-Control-Allow-Origin is "+adminOrigin, res.acao())
	}
}

type header [2]string

type result struct {
	resp     *http.Response
	body     []byte
	upstream []testkit.UpstreamRequest
}

func (r *result) status() int { return r.resp.StatusCode }

func (r *result) statusLine() string {
	return strconv.Itoa(r.resp.StatusCode) + " " + http.StatusText(r.resp.StatusCode)
}

func (r *result) acao() string {
	return r.resp.Header.Get("Access-Control-Allow-Origin")
}

func (r *result) corsHeaders() []string {
	var names []string
	for name := range r.resp.Header {
		if strings.HasPrefix(name, "Access-Control-") {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

func (r *result) jsonField(name string) string {
	var body map[string]any
	if json.Unmarshal(r.body, &body) != nil {
		return ""
	}
	s, _ := body[name].(string)
	return s
}

func (r *result) upstreamSummary() string {
	var lines []string
	for _, u := range r.upstream {
		lines = append(lines, u.Method+" "+u.Path)
	}
	return "Flask saw " + strings.Join(lines, ", ")
}

// sendOrFail sends a request and records a failed check if it could not
// be sent at all.
func (d *demo) sendOrFail(method, url string, headers ...header) (*result, bool) {
	res, err := d.send(method, url, headers...)
	if err != nil {
		d.expect(false, method+" "+url, err.Error())
		return nil, false
	}
	return res, true
}

// send empties Flask's request record, sends one request, prints the
// exchange and what reached Flask.
func (d *demo) send(method, url string, headers ...header) (*result, error) {
	if err := d.flask.Reset(); err != nil {
		return nil, err
	}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return nil, err
	}
	for _, h := range headers {
		// set the map directly: X-User_Id must go out spelled as is
		req.Header[h[0]] = append(req.Header[h[0]], h[1])
	}

	fmt.Fprintf(d.out, "\n   -> %s %s\n", method, url)
	for _, h := range headers {
		fmt.Fprintf(d.out, "      %s: %s\n", h[0], redact(h[0], h[1]))
	}

	resp, err := d.client.Do(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return nil, err
	}

	fmt.Fprintf(d.out, "   <- %d %s\n", resp.StatusCode, http.StatusText(resp.StatusCode))
	for _, name := range relevantHeaders(resp.Header) {
		for _, v := range resp.Header.Values(name) {
			fmt.Fprintf(d.out, "      %s: %s\n", name, v)
		}
	}
	if excerpt := bodyExcerpt(body, headers); excerpt != "" {
		fmt.Fprintf(d.out, "      body: %s\n", excerpt)
	}

	res := &result{resp: resp, body: body}
	if strings.HasPrefix(url, d.flask.URL) {
		return res, nil
	}
	if res.upstream, err = d.flask.Requests(); err != nil {
		return nil, err
	}
	if len(res.upstream) == 0 {
		fmt.Fprintf(d.out, "   upstream: Flask saw nothing\n")
	}
	for _, u := range res.upstream {
		line := u.Method + " " + u.Path
		for _, name := range []string{"X-User-Id", "Authorization"} {
			for _, v := range u.Header(name) {
				line += fmt.Sprintf(", %s: %s", name, redact(name, v))
			}
		}
		fmt.Fprintf(d.out, "   upstream: Flask saw %s\n", line)
	}
	return res, nil
}

// relevantHeaders picks the response headers the demo is about, sorted.
func relevantHeaders(h http.Header) []string {
	var names []string
	for name := range h {
		switch {
		case strings.HasPrefix(name, "Access-Control-"),
			name == "Vary", name == "Www-Authenticate", name == "Content-Type":
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// redact shortens tokens so that the transcript never holds a whole one.
func redact(name, value string) string {
	if !strings.EqualFold(name, "Authorization") {
		return value
	}
	scheme, token, found := strings.Cut(value, " ")
	if !found {
		return shorten(value)
	}
	return scheme + " " + shorten(token)
}

func shorten(token string) string {
	const keep = 10
	if len(token) <= keep {
		return token
	}
	return token[:keep] + "…"
}

// bodyExcerpt returns the body on one line, at most 110 characters, with
// any token the request carried shortened.
func bodyExcerpt(body []byte, headers []header) string {
	s := strings.Join(strings.Fields(string(body)), " ")
	for _, h := range headers {
		if strings.EqualFold(h[0], "Authorization") {
			if _, token, ok := strings.Cut(h[1], " "); ok && token != "" {
				s = strings.ReplaceAll(s, token, shorten(token))
			}
		}
	}
	if r := []rune(s); len(r) > 110 {
		s = string(r[:110]) + "…"
	}
	return s
}

func (d *demo) section(title string) {
	d.step++
	fmt.Fprintf(d.out, "\n== %d. %s\n", d.step, title)
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "   "+format+"\n", args...)
}

// expect records one check and prints its outcome.
func (d *demo) expect(ok bool, what, got string) {
	d.checks++
	if ok {
		fmt.Fprintf(d.out, "   ok      %s\n", what)
		return
	}
	fmt.Fprintf(d.out, "   FAILED  %s (got %q)\n", what, got)
	d.failed = append(d.failed, fmt.Sprintf("step %d: %s (got %q)", d.step, what, got))
}

func (d *demo) onCleanup(f func()) {
	d.cleanupMu.Lock()
	defer d.cleanupMu.Unlock()
	d.closers = append(d.closers, f)
}

// cleanup runs the registered closers, last first, once.
func (d *demo) cleanup() {
	d.cleanupMu.Lock()
	defer d.cleanupMu.Unlock()
	for i := len(d.closers) - 1; i >= 0; i-- {
		d.closers[i]()
	}
	d.closers = nil
}

// ensureFlask checks that Debian's Python can import Flask and flask-cors,
// and installs them with apt-get when it may.
func ensureFlask(out io.Writer) error {
	ctx := context.Background()
	err := testkit.CheckFlask(ctx)
	if err == nil || !errors.Is(err, testkit.ErrFlaskMissing) {
		return err
	}

	const install = "apt-get install -y python3-flask python3-flask-cors"
	_, aptErr := exec.LookPath("apt-get")
	if os.Geteuid() != 0 || aptErr != nil {
		fmt.Fprintf(out, "   Flask is not installed for %s.\n", testkit.Python)
		fmt.Fprintf(out, "   Install it with:  sudo %s\n", install)
		return err
	}

	fmt.Fprintf(out, "   Flask is not installed for %s.\n", testkit.Python)
	fmt.Fprintf(out, "   Running as root with apt-get available, so installing it:\n")
	fmt.Fprintf(out, "   $ %s\n", install)
	cmd := exec.Command("apt-get", "install", "-y", "python3-flask", "python3-flask-cors")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout, cmd.Stderr = out, out
	if runErr := cmd.Run(); runErr != nil {
		fmt.Fprintf(out, "   The install failed; try `apt-get update` first, then:  %s\n", install)
		return fmt.Errorf("installing flask: %w", runErr)
	}
	return testkit.CheckFlask(ctx)
}

// newClient talks to loopback only: no proxy, no redirects followed.
func newClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		Timeout:   15 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
