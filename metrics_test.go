package edgeguard_test

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// opsCaddyfile has two routes on one key set and a third on a key set
// that is down; {$OPS_GLOBAL} is replaced by global options (admin, log).
const opsCaddyfile = `{
	auto_https off
	{$OPS_GLOBAL}
}

http://{$EDGEGUARD_BIND}:{$EDGEGUARD_PORT} {
	handle /api/down/* {
		edge_guard {$OPS_PREFIX}-down {
			allow_origins https://app.example.com
			issuer {$OPS_DOWN_ISSUER} {
				jwks_url {$OPS_DOWN_JWKS_URL}
				audience items-api
			}
		}
		reverse_proxy {$OPS_UPSTREAM}
	}
	handle /api/* {
		edge_guard {$OPS_PREFIX}-public {
			allow_origins https://app.example.com
			allow_methods GET POST
			issuer {$OPS_ISSUER} {
				jwks_url {$OPS_JWKS_URL}
				audience items-api
			}
			claim_header X-User-Id sub
			claim_header X-Tenant tenant
		}
		reverse_proxy {$OPS_UPSTREAM}
	}
}
`

// opsStack is a gateway with a good key set, a failing one, and an
// upstream that echoes nothing back.
type opsStack struct {
	gateway   *testkit.Gateway
	key       *testkit.Key
	jwks      *testkit.JWKSServer
	down      *testkit.JWKSServer
	env       map[string]string
	client    *http.Client
	upstream  *httptest.Server
	caddyfile []byte
}

func startOps(t *testing.T, prefix, global string) *opsStack {
	t.Helper()
	s := &opsStack{key: testkit.MustRSAKey(t, prefix+"-key"), client: &http.Client{Timeout: 10 * time.Second}}
	s.jwks = testkit.StartJWKS(t, s.key)
	s.down = testkit.StartJWKS(t, s.key)
	s.down.SetStatus(http.StatusInternalServerError)
	s.upstream = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Access-Control-Allow-Origin", "*")
		_, _ = io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(s.upstream.Close)

	s.caddyfile = []byte(strings.Replace(opsCaddyfile, "{$OPS_GLOBAL}", global, 1))
	s.env = map[string]string{
		"OPS_PREFIX":        prefix,
		"OPS_ISSUER":        s.jwks.Issuer,
		"OPS_JWKS_URL":      s.jwks.URL,
		"OPS_DOWN_ISSUER":   s.down.Issuer,
		"OPS_DOWN_JWKS_URL": s.down.URL,
		"OPS_UPSTREAM":      strings.TrimPrefix(s.upstream.URL, "http://"),
	}
	var err error
	s.gateway, err = testkit.StartGateway(s.caddyfile, "Caddyfile", s.env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.gateway.Stop)
	return s
}

func (s *opsStack) token(t *testing.T, issuer, subject string, edit func(map[string]any)) string {
	t.Helper()
	claims := testkit.Claims(issuer, "items-api", subject, time.Hour)
	if edit != nil {
		edit(claims)
	}
	return testkit.MustSign(t, s.key, claims)
}

func (s *opsStack) send(t *testing.T, method, path string, headers ...string) int {
	t.Helper()
	return roundTrip(t, s.client, method, s.gateway.URL+path, headers...).status
}

// requestMix sends one request of each kind and checks the answers, so
// that the counts asserted afterwards follow from known decisions.
type sent struct {
	name   string
	status int
	got    int
}

func (s *opsStack) requestMix(t *testing.T, tokens mixTokens) []sent {
	t.Helper()
	const app = "https://app.example.com"
	bearer := func(token string) string { return "Bearer " + token }
	results := []sent{
		{"valid", 200, s.send(t, "GET", "/api/items", "Origin", app, "Authorization", bearer(tokens.valid))},
		{"valid again (cache)", 200, s.send(t, "GET", "/api/items", "Origin", app, "Authorization", bearer(tokens.valid))},
		{"expired", 401, s.send(t, "GET", "/api/items", "Origin", app, "Authorization", bearer(tokens.expired))},
		{"forged", 401, s.send(t, "GET", "/api/items", "Origin", app, "Authorization", bearer(tokens.forged))},
		{"no token", 401, s.send(t, "GET", "/api/items", "Origin", app)},
		{"bad origin", 403, s.send(t, "GET", "/api/items", "Origin", "https://evil.example", "Authorization", bearer(tokens.valid))},
		{"preflight", 204, s.send(t, "OPTIONS", "/api/items", "Origin", app, "Access-Control-Request-Method", "POST",
			"Access-Control-Request-Headers", "authorization")},
		{"preflight, bad method", 403, s.send(t, "OPTIONS", "/api/items", "Origin", app, "Access-Control-Request-Method", "DELETE")},
		{"key set down", 503, s.send(t, "GET", "/api/down/items", "Origin", app, "Authorization", bearer(tokens.down))},
	}
	for _, r := range results {
		if r.got != r.status {
			t.Errorf("%s: status %d, want %d", r.name, r.got, r.status)
		}
	}
	return results
}

type mixTokens struct{ valid, expired, forged, down string }

func (s *opsStack) mixTokens(t *testing.T, subject string) mixTokens {
	t.Helper()
	forger := testkit.MustRSAKey(t, s.key.Kid)
	forgedClaims := testkit.Claims(s.jwks.Issuer, "items-api", subject, time.Hour)
	forgedClaims["tenant"] = subject + "-tenant"
	return mixTokens{
		valid: s.token(t, s.jwks.Issuer, subject, func(c map[string]any) { c["tenant"] = subject + "-tenant" }),
		expired: s.token(t, s.jwks.Issuer, subject, func(c map[string]any) {
			c["tenant"] = subject + "-tenant"
			c["exp"] = time.Now().Add(-time.Hour).Unix()
			c["iat"] = time.Now().Add(-2 * time.Hour).Unix()
		}),
		forged: testkit.MustSign(t, forger, forgedClaims),
		down:   s.token(t, s.down.Issuer, subject, func(c map[string]any) { c["tenant"] = subject + "-tenant" }),
	}
}

// scrape reads the admin endpoint's /metrics into series -> value.
func scrape(t *testing.T, adminAddr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatalf("scraping /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: status %d", resp.StatusCode)
	}
	series := make(map[string]float64)
	lines := bufio.NewScanner(resp.Body)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	for lines.Scan() {
		line := lines.Text()
		if !strings.HasPrefix(line, "edgeguard_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		value, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		series[line[:i]] = value
	}
	return series
}

// metric names one series: labels in the exposition format's order
// (sorted by name).
func metric(name string, labels ...string) string {
	var parts []string
	for i := 0; i+1 < len(labels); i += 2 {
		parts = append(parts, labels[i]+`="`+labels[i+1]+`"`)
	}
	return name + "{" + strings.Join(parts, ",") + "}"
}

func TestMetricsOnTheAdminEndpoint(t *testing.T) {
	adminAddr := "127.0.0.1:" + strconv.Itoa(testkit.MustFreePort(t))
	s := startOps(t, "metrics", "admin "+adminAddr)
	tokens := s.mixTokens(t, "metrics-subject-5d2e")
	s.requestMix(t, tokens)

	public, down := "metrics-public", "metrics-down"
	decision := func(route, reason string) string {
		return metric("edgeguard_decisions_total", "reason", reason, "route", route)
	}
	got := scrape(t, adminAddr)
	want := map[string]float64{
		decision(public, "allowed"):                                                      2,
		decision(public, "expired"):                                                      1,
		decision(public, "bad_signature"):                                                1,
		decision(public, "missing_token"):                                                1,
		decision(public, "origin_not_allowed"):                                           1,
		decision(public, "preflight_allowed"):                                            1,
		decision(public, "preflight_method_refused"):                                     1,
		decision(public, "wrong_audience"):                                               0,
		decision(down, "keys_unavailable"):                                               1,
		decision(down, "allowed"):                                                        0,
		metric("edgeguard_token_cache_lookups_total", "result", "hit", "route", public):  1,
		metric("edgeguard_token_cache_lookups_total", "result", "miss", "route", public): 3,
	}
	for series, value := range want {
		if v, ok := got[series]; !ok || v != value {
			t.Errorf("%s = %v (present %t), want %v", series, v, ok, value)
		}
	}
	if v := got[metric("edgeguard_jwks_fetches_total", "key_set", s.jwks.URL, "result", "ok")]; v < 1 {
		t.Errorf("good key set: %v successful fetches, want at least 1", v)
	}
	if v := got[metric("edgeguard_jwks_fetches_total", "key_set", s.down.URL, "result", "error")]; v < 1 {
		t.Errorf("failing key set: %v failed fetches, want at least 1", v)
	}
	if v := got[metric("edgeguard_jwks_fetches_total", "key_set", s.down.URL, "result", "ok")]; v != 0 {
		t.Errorf("failing key set: %v successful fetches, want 0", v)
	}
	loaded := got[metric("edgeguard_jwks_last_success_timestamp_seconds", "key_set", s.jwks.URL)]
	if age := time.Since(time.Unix(int64(loaded), 0)); loaded == 0 || age < -time.Minute || age > time.Hour {
		t.Errorf("good key set last loaded at %v, want about now", loaded)
	}

	// label values come only from the config and a fixed set of reasons
	reasons := regexp.MustCompile(`^edgeguard_decisions_total\{reason="([^"]*)",route="([^"]*)"\}$`)
	for series := range got {
		if !strings.HasPrefix(series, "edgeguard_decisions_total") {
			continue
		}
		m := reasons.FindStringSubmatch(series)
		if m == nil || !strings.HasPrefix(m[2], "metrics-") || !isKnownReason(m[1]) {
			t.Errorf("unexpected series %s", series)
		}
	}

	// a reload keeps the counts of routes it keeps, and drops the series
	// of routes it removes
	s.env["OPS_PREFIX"] = "metrics-reloaded"
	if err := s.gateway.Reload(s.caddyfile, "Caddyfile", s.env); err != nil {
		t.Fatal(err)
	}
	s.requestMix(t, tokens)
	got = scrape(t, adminAddr)
	if v := got[decision("metrics-reloaded-public", "allowed")]; v != 2 {
		t.Errorf("after reload: allowed = %v on the new route, want 2", v)
	}
	if _, ok := got[decision(public, "allowed")]; ok {
		t.Errorf("after reload: route %s is gone, its series are still served", public)
	}
	if err := s.gateway.Reload(s.caddyfile, "Caddyfile", s.env); err != nil {
		t.Fatal(err)
	}
	got = scrape(t, adminAddr)
	if v := got[decision("metrics-reloaded-public", "allowed")]; v != 2 {
		t.Errorf("after a reload that keeps the route: allowed = %v, want 2 kept", v)
	}
}

func isKnownReason(reason string) bool {
	switch reason {
	case "allowed", "preflight_allowed", "preflight_origin_refused", "preflight_method_refused",
		"preflight_headers_refused", "origin_not_allowed", "bad_origin", "missing_token",
		"bad_authorization", "multiple_authorization", "multiple_tokens", "token_too_large",
		"token_encrypted", "token_malformed", "duplicate_member", "crit_unsupported", "alg_none",
		"alg_not_allowed", "wrong_issuer", "unknown_kid", "no_fitting_key", "bad_signature",
		"bad_claim", "missing_exp", "expired", "not_yet_valid", "issued_in_future", "wrong_audience",
		"missing_claim", "insufficient_scope", "missing_role", "claim_mismatch", "keys_unavailable":
		return true
	}
	return false
}
