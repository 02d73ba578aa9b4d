package edgeguard_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// The tests in this file break what the gateway depends on, the issuer's
// key set and the upstream, and check what a client sees, against Caddy
// running in this process with the real edge_guard and reverse_proxy.

// faultsCaddyfile is one route. Every {$FAULTS_*} value is set by
// startFaultGateway on every load, since the adapter reads them from the
// process environment.
const faultsCaddyfile = `{
	admin {$FAULTS_ADMIN}
	auto_https off
}

http://{$EDGEGUARD_BIND}:{$EDGEGUARD_PORT} {
	header X-Config-Version {$FAULTS_VERSION}
	edge_guard {$FAULTS_ROUTE} {
		allow_origins https://app.example.com
		allow_methods GET POST
		issuer {$FAULTS_ISSUER} {
			jwks_url {$FAULTS_JWKS_URL}
			audience items-api
			fetch_timeout {$FAULTS_FETCH_TIMEOUT}
			refresh_min {$FAULTS_REFRESH_MIN}
			refresh_max {$FAULTS_REFRESH_MAX}
			refetch_interval {$FAULTS_REFETCH_INTERVAL}
		}
		claim_header X-User-Id sub
	}
	reverse_proxy {$FAULTS_UPSTREAM}
}
`

// faultConfig holds the settings a fault test varies; zero values take
// the defaults of defaultFaultConfig.
type faultConfig struct {
	fetchTimeout    string
	refreshMin      string
	refreshMax      string
	refetchInterval string
	upstream        string // host:port; "" starts a recording upstream
	version         int
	route           string
	admin           string // Caddy's admin endpoint; "" is off
}

// keySetUnderTest is the key endpoint plus the gateway and upstream in
// front of and behind it.
type keySetUnderTest struct {
	jwks     *testkit.JWKSServer
	key      *testkit.Key
	gateway  *testkit.Gateway
	upstream *recordingUpstream
	client   *http.Client
	config   faultConfig
	retries  atomic.Int64 // requests retried after a connection closed unanswered
}

// recordingUpstream is a small API that counts what reaches it and, like
// a flask-cors app, allows any origin.
type recordingUpstream struct {
	server *httptest.Server
	hits   atomic.Int64
}

func startRecordingUpstream(t *testing.T) *recordingUpstream {
	t.Helper()
	u := &recordingUpstream{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"user\":%q}\n", r.Header.Get("X-User-Id"))
	}))
	u.server.Listener.Close()
	u.server.Listener = ln
	u.server.Start()
	t.Cleanup(u.server.Close)
	return u
}

func (u *recordingUpstream) addr() string { return u.server.Listener.Addr().String() }

// startFaultGateway starts Caddy with faultsCaddyfile in front of jwks.
func startFaultGateway(t *testing.T, jwks *testkit.JWKSServer, key *testkit.Key, cfg faultConfig) *keySetUnderTest {
	t.Helper()
	s := &keySetUnderTest{jwks: jwks, key: key, config: cfg}
	if cfg.upstream == "" {
		s.upstream = startRecordingUpstream(t)
		s.config.upstream = s.upstream.addr()
	}
	var err error
	s.gateway, err = testkit.StartGateway([]byte(faultsCaddyfile), "faults.Caddyfile", s.env())
	if err != nil {
		t.Fatalf("caddy must start whatever the key set does: %v", err)
	}
	t.Cleanup(s.gateway.Stop)
	s.client = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64},
	}
	t.Cleanup(s.client.CloseIdleConnections)
	return s
}

func (s *keySetUnderTest) env() map[string]string {
	cfg := s.config
	or := func(v, fallback string) string {
		if v == "" {
			return fallback
		}
		return v
	}
	return map[string]string{
		"FAULTS_ADMIN":            or(cfg.admin, "off"),
		"FAULTS_VERSION":          strconv.Itoa(cfg.version),
		"FAULTS_ROUTE":            or(cfg.route, "faults"),
		"FAULTS_ISSUER":           s.jwks.Issuer,
		"FAULTS_JWKS_URL":         s.jwks.URL,
		"FAULTS_FETCH_TIMEOUT":    or(cfg.fetchTimeout, "5s"),
		"FAULTS_REFRESH_MIN":      or(cfg.refreshMin, "1m"),
		"FAULTS_REFRESH_MAX":      or(cfg.refreshMax, "1h"),
		"FAULTS_REFETCH_INTERVAL": or(cfg.refetchInterval, "10s"),
		"FAULTS_UPSTREAM":         cfg.upstream,
	}
}

// reload loads the config again with a new version number, the way
// `caddy reload` does: the adapted config is posted to the admin
// endpoint's /load. Only the apps change; the admin, storage and logging
// settings the gateway started with stay, so nothing is persisted.
func (s *keySetUnderTest) reload(t *testing.T, version int) {
	t.Helper()
	s.config.version = version
	env := s.env()
	_, port, _ := net.SplitHostPort(s.gateway.Addr)
	env["EDGEGUARD_BIND"], env["EDGEGUARD_PORT"] = "127.0.0.1", port
	adapted, err := testkit.AdaptCaddyfile([]byte(faultsCaddyfile), "faults.Caddyfile", env)
	if err != nil {
		t.Fatalf("reload %d: adapt: %v", version, err)
	}
	var running, next map[string]any
	if err := json.Unmarshal(s.gateway.Config, &running); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(adapted, &next); err != nil {
		t.Fatal(err)
	}
	running["apps"] = next["apps"]
	body, err := json.Marshal(running)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := s.client.Post("http://"+s.config.admin+"/load", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("reload %d: %v", version, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("reload %d: admin endpoint answered %d: %s", version, resp.StatusCode, msg)
	}
}

func (s *keySetUnderTest) mint(t *testing.T, key *testkit.Key, subject string) string {
	t.Helper()
	return testkit.MustSign(t, key, testkit.Claims(s.jwks.Issuer, audience, subject, time.Hour))
}

type reply struct {
	status int
	header http.Header
	body   string
}

// get sends one request from the app's origin; token may be "".
func (s *keySetUnderTest) get(t *testing.T, origin, token string) reply {
	t.Helper()
	r, err := s.send(origin, token)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	return r
}

func (s *keySetUnderTest) send(origin, token string) (reply, error) {
	req, err := http.NewRequest(http.MethodGet, s.gateway.URL+"/api/items", nil)
	if err != nil {
		return reply{}, err
	}
	if origin != "" {
		req.Header.Set("Origin", origin)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	// A connection the server closes just as a request goes out fails
	// that request before any answer. Clients retry such an idempotent
	// request once (RFC 9112 section 9.3.1.1), as browsers do; a reload
	// hands the listener to the new config and closes the old server's
	// connections, so this happens. Retries are counted.
	var answered bool
	trace := &httptrace.ClientTrace{GotFirstResponseByte: func() { answered = true }}
	resp, err := s.client.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if err != nil && !answered {
		s.retries.Add(1)
		resp, err = s.client.Do(req)
	}
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, resp.Header, string(body)}, err
}

// waitFor polls until ok holds, failing the test after a generous bound.
// It waits for background work (a key set fetch), it does not time it.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitForFetches waits until the key endpoint has been asked n more times
// than before, so that a fault has really been seen by the gateway.
func waitForFetches(t *testing.T, jwks *testkit.JWKSServer, before, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d more key set fetches", n), func() bool { return jwks.Fetches() >= before+n })
}

func assertUnavailable(t *testing.T, r reply) {
	t.Helper()
	if r.status != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503 (body %q)", r.status, r.body)
	}
	if r.header.Get("Retry-After") == "" {
		t.Error("503 without Retry-After")
	}
	// the page must be able to read why
	if got := r.header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != appOrigin {
		t.Errorf("Access-Control-Allow-Origin %q, want [%q]", got, appOrigin)
	}
}

func assertForwarded(t *testing.T, r reply, user string) {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("status %d, want 200 (body %q)", r.status, r.body)
	}
	if want := fmt.Sprintf("{\"user\":%q}\n", user); r.body != want {
		t.Errorf("upstream answered %q, want %q", r.body, want)
	}
	if got := r.header.Values("Access-Control-Allow-Origin"); len(got) != 1 || got[0] != appOrigin {
		t.Errorf("Access-Control-Allow-Origin %q, want [%q]", got, appOrigin)
	}
}

// TestFaultKeySetDownAtStart: Caddy starts while the key endpoint fails,
// requests get 503 with Retry-After, and once keys can be fetched they
// pass, with no restart.
func TestFaultKeySetDownAtStart(t *testing.T) {
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	jwks.SetStatus(http.StatusServiceUnavailable)
	s := startFaultGateway(t, jwks, key, faultConfig{refreshMin: "100ms", refetchInterval: "100ms"})
	token := s.mint(t, key, "alice")

	assertUnavailable(t, s.get(t, appOrigin, token))
	if n := s.upstream.hits.Load(); n != 0 {
		t.Fatalf("the upstream saw %d requests while no key could check them", n)
	}

	jwks.SetStatus(0)
	var last reply
	waitFor(t, "requests to pass once keys are published", func() bool {
		last = s.get(t, appOrigin, token)
		return last.status != http.StatusServiceUnavailable
	})
	assertForwarded(t, last, "alice")
}

// TestFaultKeySetLostAfterWarmUp: once keys were loaded, a key endpoint
// that fails, stalls or goes away does not stop valid requests, cached or
// seen for the first time.
func TestFaultKeySetLostAfterWarmUp(t *testing.T) {
	cases := []struct {
		name    string
		counted bool // whether failed fetches reach the server's counter
		breakIt func(*testkit.JWKSServer)
	}{
		{"error status", true, func(j *testkit.JWKSServer) { j.SetStatus(http.StatusInternalServerError) }},
		{"slower than fetch_timeout", true, func(j *testkit.JWKSServer) { j.SetDelay(time.Minute) }},
		{"garbage", true, func(j *testkit.JWKSServer) { j.SetBody([]byte("<html>upstream gone</html>")) }},
		{"connection refused", false, func(j *testkit.JWKSServer) { j.Close() }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := testkit.MustRSAKey(t, "k1")
			jwks := testkit.StartJWKS(t, key)
			// a short refresh, so that the gateway meets the fault soon
			s := startFaultGateway(t, jwks, key, faultConfig{
				fetchTimeout: "300ms", refreshMin: "50ms", refreshMax: "100ms", refetchInterval: "100ms",
			})
			warm := s.mint(t, key, "alice")
			assertForwarded(t, s.get(t, appOrigin, warm), "alice")

			before := jwks.Fetches()
			tc.breakIt(jwks)
			if tc.counted {
				waitForFetches(t, jwks, before, 3)
			} else {
				time.Sleep(500 * time.Millisecond) // several refresh periods
			}

			assertForwarded(t, s.get(t, appOrigin, warm), "alice")
			assertForwarded(t, s.get(t, appOrigin, s.mint(t, key, "bob")), "bob")
		})
	}
}

// TestFaultKeySetSlow: a key endpoint slower than fetch_timeout makes
// requests fail fast with 503 rather than hang, and is used once it
// answers in time.
func TestFaultKeySetSlow(t *testing.T) {
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	// far longer than the client waits: had the gateway waited for the
	// answer, the request would fail on the client side, not with 503
	jwks.SetDelay(time.Minute)
	s := startFaultGateway(t, jwks, key, faultConfig{
		fetchTimeout: "200ms", refreshMin: "100ms", refetchInterval: "100ms",
	})
	token := s.mint(t, key, "alice")

	assertUnavailable(t, s.get(t, appOrigin, token))
	waitForFetches(t, jwks, 0, 2)
	assertUnavailable(t, s.get(t, appOrigin, token))

	jwks.SetDelay(0)
	var last reply
	waitFor(t, "requests to pass once the key set answers in time", func() bool {
		last = s.get(t, appOrigin, token)
		return last.status != http.StatusServiceUnavailable
	})
	assertForwarded(t, last, "alice")
}

// TestFaultKeySetGarbage: a key set document that is not one, or holds no
// usable key, never replaces good keys and never causes a 5xx once keys
// were loaded; before that, requests get 503.
func TestFaultKeySetGarbage(t *testing.T) {
	encryptionOnly := func(key *testkit.Key) map[string]any {
		jwk := key.PublicJWK()
		jwk["use"] = "enc"
		return jwk
	}
	cases := []struct {
		name    string
		publish func(*testkit.JWKSServer, *testkit.Key)
	}{
		{"html", func(j *testkit.JWKSServer, _ *testkit.Key) { j.SetBody([]byte("<html><body>502</body></html>")) }},
		{"truncated", func(j *testkit.JWKSServer, _ *testkit.Key) { j.SetBody([]byte(`{"keys":[{"kty":"RSA","n":"`)) }},
		{"no keys member", func(j *testkit.JWKSServer, _ *testkit.Key) { j.SetBody([]byte(`{"issuer":"x"}`)) }},
		{"empty key list", func(j *testkit.JWKSServer, _ *testkit.Key) { j.SetBody([]byte(`{"keys":[]}`)) }},
		{"keys not a list", func(j *testkit.JWKSServer, _ *testkit.Key) { j.SetBody([]byte(`{"keys":"k1"}`)) }},
		{"encryption key only", func(j *testkit.JWKSServer, k *testkit.Key) { j.SetJWKs(encryptionOnly(k)) }},
		{"larger than a key set may be", func(j *testkit.JWKSServer, _ *testkit.Key) {
			j.SetBody([]byte(`{"keys":[],"pad":"` + strings.Repeat("x", 2<<20) + `"}`))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Run("at start", func(t *testing.T) {
				key := testkit.MustRSAKey(t, "k1")
				jwks := testkit.StartJWKS(t, key)
				tc.publish(jwks, key)
				s := startFaultGateway(t, jwks, key, faultConfig{refreshMin: "100ms", refetchInterval: "100ms"})
				waitForFetches(t, jwks, 0, 1)
				assertUnavailable(t, s.get(t, appOrigin, s.mint(t, key, "alice")))
			})

			t.Run("after warm-up", func(t *testing.T) {
				key := testkit.MustRSAKey(t, "k1")
				jwks := testkit.StartJWKS(t, key)
				s := startFaultGateway(t, jwks, key, faultConfig{
					refreshMin: "50ms", refreshMax: "100ms", refetchInterval: "50ms",
				})
				assertForwarded(t, s.get(t, appOrigin, s.mint(t, key, "alice")), "alice")

				before := jwks.Fetches()
				tc.publish(jwks, key)
				waitForFetches(t, jwks, before, 3)
				assertForwarded(t, s.get(t, appOrigin, s.mint(t, key, "bob")), "bob")

				// an unknown kid makes the gateway fetch the garbage once
				// more: the token is refused as a bad token, not with 5xx
				stranger := testkit.MustRSAKey(t, "k-unknown")
				r := s.get(t, appOrigin, s.mint(t, stranger, "mallory"))
				if r.status != http.StatusUnauthorized || !strings.Contains(r.header.Get("WWW-Authenticate"), "invalid_token") {
					t.Errorf("unknown kid: status %d, WWW-Authenticate %q, want 401 invalid_token",
						r.status, r.header.Get("WWW-Authenticate"))
				}
				assertForwarded(t, s.get(t, appOrigin, s.mint(t, key, "carol")), "carol")
			})
		})
	}
}

// load sends requests from workers until stopped, each with a token from
// the current pool, and records every answer that is not a 200.
type load struct {
	s        *keySetUnderTest
	pool     atomic.Pointer[[]string]
	sent     atomic.Int64
	perToken sync.Map // token -> *atomic.Int64 of 200 answers

	mu       sync.Mutex
	failures []string

	stop context.CancelFunc
	done sync.WaitGroup
}

func startLoad(t *testing.T, s *keySetUnderTest, workers int, pool []string) *load {
	t.Helper()
	l := &load{s: s}
	l.setPool(pool)
	ctx, stop := context.WithCancel(context.Background())
	l.stop = stop
	for w := range workers {
		l.done.Go(func() {
			for i := w; ctx.Err() == nil; i += workers {
				tokens := *l.pool.Load()
				token := tokens[i%len(tokens)]
				r, err := s.send(appOrigin, token)
				l.sent.Add(1)
				switch {
				case err != nil:
					l.fail(fmt.Sprintf("request error: %v", err))
				case r.status != http.StatusOK:
					l.fail(fmt.Sprintf("status %d, WWW-Authenticate %q", r.status, r.header.Get("WWW-Authenticate")))
				default:
					n, _ := l.perToken.LoadOrStore(token, new(atomic.Int64))
					n.(*atomic.Int64).Add(1)
				}
			}
		})
	}
	t.Cleanup(l.finish)
	return l
}

func (l *load) setPool(tokens []string) { l.pool.Store(&tokens) }

func (l *load) fail(what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failures = append(l.failures, what)
}

// finish stops the workers and waits for them.
func (l *load) finish() {
	l.stop()
	l.done.Wait()
}

// run lets the load go on for d; the load is the point, not the timing.
func (l *load) run(d time.Duration) { time.Sleep(d) }

func (l *load) assertNoFailures(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) > 0 {
		t.Errorf("%d of %d requests failed; first: %s", len(l.failures), l.sent.Load(), l.failures[0])
	}
	if l.sent.Load() == 0 {
		t.Error("no request was sent")
	}
}

func (l *load) passed(tokens []string) int64 {
	var n int64
	for _, token := range tokens {
		if v, ok := l.perToken.Load(token); ok {
			n += v.(*atomic.Int64).Load()
		}
	}
	return n
}

// TestFaultKeyRotationUnderLoad rotates the issuer's keys the way issuers
// do, publish the new key, sign with it, retire the old one, while
// requests keep coming: no valid request fails at any step, tokens of the
// new key pass as soon as it is published, and the retired key's tokens
// stop passing once the gateway has seen it go.
func TestFaultKeyRotationUnderLoad(t *testing.T) {
	oldKey := testkit.MustRSAKey(t, "2026-old")
	newKey := testkit.MustRSAKey(t, "2026-new")
	jwks := testkit.StartJWKS(t, oldKey)
	s := startFaultGateway(t, jwks, oldKey, faultConfig{refetchInterval: "100ms"})

	var oldTokens, newTokens []string
	for i := range 24 {
		oldTokens = append(oldTokens, s.mint(t, oldKey, "old-"+strconv.Itoa(i)))
		newTokens = append(newTokens, s.mint(t, newKey, "new-"+strconv.Itoa(i)))
	}
	assertForwarded(t, s.get(t, appOrigin, oldTokens[0]), "old-0")

	l := startLoad(t, s, 8, oldTokens)
	l.run(300 * time.Millisecond)

	// publish the new key, then sign with it
	jwks.SetKeys(oldKey, newKey)
	l.setPool(append(append([]string(nil), oldTokens...), newTokens...))
	l.run(500 * time.Millisecond)

	// stop signing with the old key, then retire it
	l.setPool(newTokens)
	l.run(200 * time.Millisecond)
	jwks.SetKeys(newKey)
	before := jwks.Fetches()
	// a token naming a kid the gateway does not know makes it fetch the
	// key set again, and so notice the retired key
	time.Sleep(150 * time.Millisecond) // past refetch_interval
	if r := s.get(t, appOrigin, s.mint(t, testkit.MustRSAKey(t, "2027"), "eve")); r.status != http.StatusUnauthorized {
		t.Errorf("token of an unpublished key: status %d, want 401", r.status)
	}
	waitForFetches(t, jwks, before, 1)
	l.run(300 * time.Millisecond)
	l.finish()

	l.assertNoFailures(t)
	if n := l.passed(newTokens); n == 0 {
		t.Error("no token of the new key passed")
	}
	// the cache was emptied when the keys changed: a token of the retired
	// key fails whether the gateway has seen it before or not
	for _, token := range []string{oldTokens[0], s.mint(t, oldKey, "late")} {
		if r := s.get(t, appOrigin, token); r.status != http.StatusUnauthorized {
			t.Errorf("token of the retired key: status %d, want 401", r.status)
		}
	}
}

// TestFaultKeyPublishedDuringRefresh: a token of a new key arrives while
// a refresh that began before the key was published is still running. Its
// answer lacks the key; the token must still pass once the key set that
// has it can be fetched, not be refused for as long as the negative cache
// lasts.
func TestFaultKeyPublishedDuringRefresh(t *testing.T) {
	oldKey := testkit.MustRSAKey(t, "2026-old")
	newKey := testkit.MustRSAKey(t, "2026-new")
	jwks := testkit.StartJWKS(t, oldKey)
	s := startFaultGateway(t, jwks, oldKey, faultConfig{
		refreshMin: "200ms", refreshMax: "200ms", refetchInterval: "100ms",
	})
	assertForwarded(t, s.get(t, appOrigin, s.mint(t, oldKey, "alice")), "alice")

	// hold the next scheduled refresh, with the old key set in its answer
	jwks.SetDelay(time.Second)
	before := jwks.Fetches()
	waitForFetches(t, jwks, before, 1)
	jwks.SetDelay(0)
	jwks.SetKeys(oldKey, newKey)

	assertForwarded(t, s.get(t, appOrigin, s.mint(t, newKey, "bob")), "bob")
}

// TestFaultUpstreamDown: when the upstream cannot be reached, an allowed
// origin gets the proxy's 502 with the gateway's CORS headers, so the page
// can tell the API is down; other refusals stay what they were.
func TestFaultUpstreamDown(t *testing.T) {
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	// a port the kernel gave out and that nothing listens on any more
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(testkit.MustFreePort(t)))
	s := startFaultGateway(t, jwks, key, faultConfig{upstream: dead})
	token := s.mint(t, key, "alice")

	cases := []struct {
		name   string
		origin string
		token  string
		status int
		acao   string
	}{
		{"allowed origin", appOrigin, token, http.StatusBadGateway, appOrigin},
		{"no origin", "", token, http.StatusBadGateway, ""},
		{"origin not allowed", evilOrigin, token, http.StatusForbidden, ""},
		{"no token", appOrigin, "", http.StatusUnauthorized, appOrigin},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := s.get(t, tc.origin, tc.token)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (body %q)", r.status, tc.status, r.body)
			}
			got := r.header.Values("Access-Control-Allow-Origin")
			switch {
			case tc.acao == "" && len(got) != 0:
				t.Errorf("Access-Control-Allow-Origin %q, want none", got)
			case tc.acao != "" && (len(got) != 1 || got[0] != tc.acao):
				t.Errorf("Access-Control-Allow-Origin %q, want [%q]", got, tc.acao)
			}
			vary := strings.ToLower(strings.Join(r.header.Values("Vary"), ","))
			if strings.Count(vary, "origin") != 1 {
				t.Errorf("Vary %q: want Origin once", r.header.Values("Vary"))
			}
		})
	}
}

// TestFaultReloadUnderLoad reloads the config through the admin endpoint,
// as `caddy reload` does, again and again while requests keep coming:
// none is lost, and the key set, shared across reloads, is not fetched
// again.
func TestFaultReloadUnderLoad(t *testing.T) {
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	admin := net.JoinHostPort("127.0.0.1", strconv.Itoa(testkit.MustFreePort(t)))
	s := startFaultGateway(t, jwks, key, faultConfig{admin: admin})
	t.Cleanup(func() {
		// caddy.Stop leaves the admin endpoint up; a config without one
		// closes it before the gateway stops
		s.config.admin = ""
		if err := s.gateway.Reload([]byte(faultsCaddyfile), "faults.Caddyfile", s.env()); err != nil {
			t.Errorf("closing the admin endpoint: %v", err)
		}
	})

	tokens := make([]string, 32)
	for i := range tokens {
		tokens[i] = s.mint(t, key, "user-"+strconv.Itoa(i))
	}
	assertForwarded(t, s.get(t, appOrigin, tokens[0]), "user-0")
	fetches := jwks.Fetches()

	l := startLoad(t, s, 8, tokens)
	l.run(200 * time.Millisecond)
	const reloads = 6
	for version := 1; version <= reloads; version++ {
		// the route's name changes with the version, so that every reload
		// provisions a new handler, as a real config change would
		s.config.route = "faults-" + strconv.Itoa(version%2)
		s.reload(t, version)
		l.run(150 * time.Millisecond)
	}
	l.finish()

	l.assertNoFailures(t)
	t.Logf("%d requests, %d retried once after the connection closed unanswered", l.sent.Load(), s.retries.Load())
	r := s.get(t, appOrigin, tokens[1])
	assertForwarded(t, r, "user-1")
	if got := r.header.Get("X-Config-Version"); got != strconv.Itoa(reloads) {
		t.Errorf("X-Config-Version %q: the last reload did not take effect", got)
	}
	if got := jwks.Fetches(); got != fetches {
		t.Errorf("the key set was fetched %d times during the reloads, want 0", got-fetches)
	}
}
