package edgeguard_test

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// The tests in this file attack the real gateway, Caddy in this process
// with edge_guard in front of the example Flask app, and take Flask's own
// record of what reached it as the proof that nothing got through.

// attackCaddyfile has a strict route, an admin route with a role
// requirement, an anonymous route, and routes where edge_guard shares a
// block with directives that answer by themselves. Every route names the
// same issuer through one snippet, so they share one key set fetcher.
const attackCaddyfile = `{
	admin off
	auto_https off
	{$ATTACK_SERVER_OPTIONS}
}

(issuer) {
	issuer {$ATTACK_ISSUER} {
		jwks_url {$ATTACK_JWKS_URL}
		audience items-api
		refetch_interval {$ATTACK_REFETCH_INTERVAL}
	}
}

http://{$EDGEGUARD_BIND}:{$EDGEGUARD_PORT} {
	handle /api/admin/* {
		edge_guard admin {
			allow_origins https://admin.example.com
			import issuer
			require_role admin
			claim_header X-User-Id sub
		}
		reverse_proxy {$ATTACK_UPSTREAM}
	}
	handle /api/* {
		edge_guard api {
			allow_origins https://app.example.com {$ATTACK_EXTRA_ORIGIN}
			allow_methods GET POST
			import issuer
			claim_header X-User-Id sub
			claim_header X-User-Roles roles
		}
		reverse_proxy {$ATTACK_UPSTREAM} {
			header_up X-Auth-Email {http.auth.user.email}
		}
	}
	handle /anon/* {
		edge_guard anon {
			allow_origins https://app.example.com
			import issuer
			anonymous
			claim_header X-User-Id sub
			claim_header X-User-Roles roles
		}
		reverse_proxy {$ATTACK_UPSTREAM} {
			header_up X-Anon-User "u={http.auth.user.id}"
		}
	}
	handle /whoami {
		edge_guard whoami {
			allow_origins https://app.example.com
			import issuer
		}
		header >X-Auth-User {http.auth.user.id}
		respond "user={http.auth.user.id} email={http.auth.user.email}" 200
	}
	handle /shortcut/* {
		edge_guard shortcut {
			allow_origins https://app.example.com
			import issuer
		}
		handle /shortcut/cached {
			respond "cached answer" 200
		}
		reverse_proxy {$ATTACK_UPSTREAM}
	}
}
`

const (
	attackAudience = "items-api"
	attackOrigin   = "https://app.example.com"
)

// attackStack is the gateway, its key endpoint and Flask behind it.
type attackStack struct {
	flask   *testkit.Flask
	jwks    *testkit.JWKSServer
	key     *testkit.Key // RS256, published
	ec      *testkit.Key // ES256, published
	gateway *testkit.Gateway
	env     map[string]string
	client  *http.Client
}

func startAttackStack(t *testing.T, refetchInterval string, jwksStatus int) *attackStack {
	t.Helper()
	s := &attackStack{
		flask:  testkit.MustStartFlask(t),
		key:    testkit.MustRSAKey(t, "k1"),
		ec:     testkit.MustECKey(t, "e1"),
		client: &http.Client{Timeout: 10 * time.Second},
	}
	s.jwks = testkit.StartJWKS(t, s.key, s.ec)
	s.jwks.SetStatus(jwksStatus)
	s.env = map[string]string{
		"ATTACK_ISSUER":           s.jwks.Issuer,
		"ATTACK_JWKS_URL":         s.jwks.URL,
		"ATTACK_REFETCH_INTERVAL": refetchInterval,
		"ATTACK_UPSTREAM":         s.flask.Addr,
		"ATTACK_EXTRA_ORIGIN":     "",
		"ATTACK_SERVER_OPTIONS":   "",
	}
	var err error
	s.gateway, err = testkit.StartGateway([]byte(attackCaddyfile), "Caddyfile.attack", s.env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.gateway.Stop)
	return s
}

func (s *attackStack) claims(edit func(map[string]any)) map[string]any {
	c := testkit.Claims(s.jwks.Issuer, attackAudience, "alice", time.Hour)
	c["roles"] = []string{"reader"}
	c["email"] = "alice@example.com"
	if edit != nil {
		edit(c)
	}
	return c
}

func (s *attackStack) mint(t *testing.T, edit func(map[string]any)) string {
	t.Helper()
	return testkit.MustSign(t, s.key, s.claims(edit))
}

type attackReply struct {
	status int
	header http.Header
	body   string
}

// send makes one request; headers are name, value pairs sent exactly as
// spelled, so a test can send x_user_id or two Authorization fields.
func (s *attackStack) send(t *testing.T, method, target string, headers ...string) attackReply {
	t.Helper()
	req, err := http.NewRequest(method, s.gateway.URL+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header[headers[i]] = append(req.Header[headers[i]], headers[i+1])
	}
	// a reload closes the old server's connections; a request caught in
	// that instant fails before any answer, and clients retry such an
	// idempotent request once (RFC 9112 section 9.3.1.1)
	var answered bool
	trace := &httptrace.ClientTrace{GotFirstResponseByte: func() { answered = true }}
	resp, err := s.client.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	if err != nil && !answered && (method == http.MethodGet || method == http.MethodOptions) {
		resp, err = s.client.Do(req)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return attackReply{resp.StatusCode, resp.Header, string(body)}
}

func attackSeg(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func attackJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func attackRaw(t *testing.T, key *testkit.Key, header, payload string) string {
	t.Helper()
	token, err := testkit.SignRaw(key, []byte(header), []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func TestAttacksNeverReachTheUpstream(t *testing.T) {
	s := startAttackStack(t, "1m", 0)
	claims := s.claims(nil)
	claimsJSON := attackJSON(t, claims)
	valid := s.mint(t, nil)
	parts := strings.Split(valid, ".")
	attacker := testkit.MustRSAKey(t, "attacker")
	impostor := testkit.MustRSAKey(t, "k1") // the issuer's kid, another key
	ecValid := testkit.MustSign(t, s.ec, claims)
	ecInput := ecValid[:strings.LastIndexByte(ecValid, '.')]

	// a loopback server standing where jku and x5u point; it must never
	// be asked for anything
	trap := testkit.StartKeyTrap(t, attacker)
	der := testkit.MustSelfSignedDER(t, attacker, "issuer")
	withHeader := func(extra map[string]any) string {
		h := map[string]any{"alg": "RS256", "kid": "attacker"}
		for k, v := range extra {
			h[k] = v
		}
		return testkit.MustSignWithHeader(t, attacker, h, claims)
	}
	pkixDER, _ := x509.MarshalPKIXPublicKey(s.key.Public())
	publicPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkixDER})
	confused, err := testkit.SignHMAC(publicPEM, map[string]any{"alg": "HS256", "kid": "k1"}, claims)
	if err != nil {
		t.Fatal(err)
	}
	bearer := func(token string) []string { return []string{"Authorization", "Bearer " + token} }
	body := strings.TrimSuffix(claimsJSON, "}")

	cases := []struct {
		name    string
		path    string
		headers []string
		status  int
		code    string // RFC 6750 error code; "" for a bare challenge
	}{
		{"no token", "/api/public/items", nil, 401, ""},
		{"forged identity, no token", "/api/public/items", []string{"X-User-Id", "admin", "x_user_id", "admin"}, 401, ""},
		{"alg none", "/api/public/items", bearer(attackSeg(`{"alg":"none"}`) + "." + parts[1] + "."), 401, "invalid_token"},
		{"alg NoNe, signature kept", "/api/public/items", bearer(attackSeg(`{"alg":"NoNe","kid":"k1"}`) + "." + parts[1] + "." + parts[2]), 401, "invalid_token"},
		{"HS256 with the public key as secret", "/api/public/items", bearer(confused), 401, "invalid_token"},
		{"ES256 token naming the RSA key", "/api/public/items", bearer(testkit.MustSignWithHeader(t, s.ec, map[string]any{"alg": "ES256", "kid": "k1"}, claims)), 401, "invalid_token"},
		{"jku to a loopback server", "/api/public/items", bearer(withHeader(map[string]any{"jku": trap.URL + "/jwks.json"})), 401, "invalid_token"},
		{"x5u to a loopback server", "/api/public/items", bearer(withHeader(map[string]any{"x5u": trap.URL + "/cert.pem"})), 401, "invalid_token"},
		{"embedded jwk", "/api/public/items", bearer(withHeader(map[string]any{"jwk": attacker.PublicJWK()})), 401, "invalid_token"},
		{"embedded x5c", "/api/public/items", bearer(withHeader(map[string]any{"x5c": []string{base64.StdEncoding.EncodeToString(der)}})), 401, "invalid_token"},
		{"jku and the issuer's kid", "/api/public/items", bearer(withHeader(map[string]any{"kid": "k1", "jku": trap.URL})), 401, "invalid_token"},
		{"unknown crit", "/api/public/items", bearer(testkit.MustSignWithHeader(t, s.key, map[string]any{"alg": "RS256", "kid": "k1", "crit": []string{"x"}, "x": 1}, claims)), 401, "invalid_token"},
		{"duplicate alg", "/api/public/items", bearer(attackRaw(t, s.key, `{"alg":"none","kid":"k1","alg":"RS256"}`, claimsJSON)), 401, "invalid_token"},
		{"duplicate escaped alg", "/api/public/items", bearer(attackRaw(t, s.key, `{"\u0061lg":"none","kid":"k1","alg":"RS256"}`, claimsJSON)), 401, "invalid_token"},
		{"duplicate sub", "/api/public/items", bearer(attackRaw(t, s.key, `{"alg":"RS256","kid":"k1"}`, body+`,"s\u0075b":"admin"}`)), 401, "invalid_token"},
		{"zero ECDSA signature", "/api/public/items", bearer(ecInput + "." + attackSeg(string(make([]byte, 64)))), 401, "invalid_token"},
		{"empty signature", "/api/public/items", bearer(parts[0] + "." + parts[1] + "."), 401, "invalid_token"},
		{"stripped signature", "/api/public/items", bearer(parts[0] + "." + parts[1]), 401, "invalid_token"},
		{"JWE", "/api/public/items", bearer(attackSeg(`{"alg":"RSA-OAEP","enc":"A256GCM"}`) + ".AAAA.AAAA.AAAA.AAAA"), 401, "invalid_token"},
		{"JSON serialisation", "/api/public/items", bearer(attackJSON(t, map[string]any{"payload": parts[1], "protected": parts[0], "signature": parts[2]})), 400, "invalid_request"},
		{"trailing part", "/api/public/items", bearer(valid + ".AAAA"), 401, "invalid_token"},
		{"padding", "/api/public/items", bearer(valid + "=="), 401, "invalid_token"},
		{"oversized", "/api/public/items", bearer(s.mint(t, func(c map[string]any) { c["pad"] = strings.Repeat("x", 9000) })), 401, "invalid_token"},
		{"exp as a string", "/api/public/items", bearer(s.mint(t, func(c map[string]any) { c["exp"] = fmt.Sprint(time.Now().Add(time.Hour).Unix()) })), 401, "invalid_token"},
		{"exp out of range", "/api/public/items", bearer(s.mint(t, func(c map[string]any) { c["exp"] = 1e300 })), 401, "invalid_token"},
		{"expired", "/api/public/items", bearer(s.mint(t, func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })), 401, "invalid_token"},
		{"not yet valid", "/api/public/items", bearer(s.mint(t, func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() })), 401, "invalid_token"},
		{"wrong audience string", "/api/public/items", bearer(s.mint(t, func(c map[string]any) { c["aud"] = "billing-api" })), 401, "invalid_token"},
		{"wrong audience array", "/api/public/items", bearer(s.mint(t, func(c map[string]any) { c["aud"] = []string{"billing-api", "x"} })), 401, "invalid_token"},
		{"wrong issuer", "/api/public/items", bearer(s.mint(t, func(c map[string]any) { c["iss"] = "https://evil.test" })), 401, "invalid_token"},
		{"issuer's kid, another key", "/api/public/items", bearer(testkit.MustSign(t, impostor, claims)), 401, "invalid_token"},
		{"random kid", "/api/public/items", bearer(testkit.MustSign(t, testkit.MustRSAKey(t, "random-1"), claims)), 401, "invalid_token"},
		{"two Authorization fields", "/api/public/items", append(bearer(valid), bearer(valid)...), 400, "invalid_request"},
		{"cookie token on a route without token_cookie", "/api/public/items", []string{"Cookie", "token=" + valid}, 401, ""},
		{"query token on a route without token_query", "/api/public/items?access_token=" + url.QueryEscape(valid), nil, 401, ""},
		{"valid token, origin not allowed", "/api/public/items", append(bearer(valid), "Origin", "https://evil.example"), 403, ""},
		{"reader on the admin route", "/api/admin/stats", append(bearer(valid), "Origin", "https://admin.example.com"), 403, "insufficient_scope"},
		{"bad token on the anonymous route", "/anon/items", bearer(testkit.MustSign(t, impostor, claims)), 401, "invalid_token"},
		{"answer in the same block, no token", "/whoami", nil, 401, ""},
		{"nested handle, no token", "/shortcut/cached", nil, 401, ""},
		{"nested handle, alg none", "/shortcut/cached", bearer(attackSeg(`{"alg":"none"}`) + "." + parts[1] + "."), 401, "invalid_token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testkit.MustReset(t, s.flask)
			r := s.send(t, "GET", tc.path, tc.headers...)
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (body %q)", r.status, tc.status, r.body)
			}
			challenge := r.header.Get("WWW-Authenticate")
			if tc.code != "" && !strings.Contains(challenge, `error="`+tc.code+`"`) {
				t.Errorf("WWW-Authenticate %q, want error=%q", challenge, tc.code)
			}
			if tc.status == 401 && !strings.HasPrefix(challenge, "Bearer realm=") {
				t.Errorf("WWW-Authenticate %q", challenge)
			}
			if strings.Contains(r.body, "cached answer") || strings.Contains(r.body, "user=") {
				t.Errorf("a handler behind the guard answered: %q", r.body)
			}
			if seen := testkit.MustRequests(t, s.flask); len(seen) != 0 {
				t.Errorf("Flask saw %d requests, first %s %s", len(seen), seen[0].Method, seen[0].Path)
			}
		})
	}
	if n := trap.Hits(); n != 0 {
		t.Errorf("the gateway fetched a URL named in a token %d times", n)
	}
}

func TestIdentityReachesTheUpstreamOnlyFromTheToken(t *testing.T) {
	s := startAttackStack(t, "1m", 0)
	valid := s.mint(t, func(c map[string]any) { c["roles"] = []string{"reader", "writer"} })
	// one spelling per name and field: Caddy drops every copy of an
	// expected underscore header that arrives twice
	forged := []string{
		"X-User-Id", "admin", "x_USER_id", "root", "X-USER-ROLES", "admin", "x_user_roles", "admin",
		"X-Auth-Email", "admin@example.com", "X_Auth_Email", "admin@example.com",
	}
	// a Connection field naming the identity headers would make the proxy
	// drop them as hop-by-hop (RFC 9110 section 7.6.1)
	connection := []string{"Connection", "X-User-Id, x_user_roles", "Connection", "X-Auth-Email"}
	bearer := []string{"Authorization", "Bearer " + valid}
	join := func(lists ...[]string) []string { return slices.Concat(lists...) }

	cases := []struct {
		name    string
		path    string
		headers []string
		user    []string // X-User-Id values Flask must see; nil for none
		roles   []string
		email   []string
	}{
		{"strict route, valid token", "/api/public/items", join(bearer, forged),
			[]string{"alice"}, []string{"reader,writer"}, []string{"alice@example.com"}},
		{"strict route, Connection naming them", "/api/public/items", join(bearer, forged, connection),
			[]string{"alice"}, []string{"reader,writer"}, []string{"alice@example.com"}},
		// X-Auth-Email is the strict route's own: the anonymous route
		// neither removes nor sets it
		{"anonymous route, no token", "/anon/items", forged, nil, nil, []string{"admin@example.com"}},
		{"anonymous route, valid token", "/anon/items", join(bearer, forged),
			[]string{"alice"}, []string{"reader,writer"}, []string{"admin@example.com"}},
	}
	// Caddy itself drops header names with "_" unless the server expects
	// them; with the identity headers' "_" spellings expected, only the
	// gateway stands between them and Werkzeug, which folds them into the
	// same variable as the "-" spelling
	for _, server := range []struct{ name, options string }{
		{"default server", ""},
		{"underscore headers expected", "servers {\n\t\texpected_underscore_headers x_user_id x_user_roles\n\t}"},
	} {
		s.env["ATTACK_SERVER_OPTIONS"] = server.options
		if err := s.gateway.Reload([]byte(attackCaddyfile), "Caddyfile.attack", s.env); err != nil {
			t.Fatal(err)
		}
		for _, tc := range cases {
			t.Run(server.name+"/"+tc.name, func(t *testing.T) {
				testkit.MustReset(t, s.flask)
				r := s.send(t, "GET", tc.path, tc.headers...)
				seen := testkit.MustRequests(t, s.flask)
				if len(seen) != 1 {
					t.Fatalf("Flask saw %d requests (status %d, body %q)", len(seen), r.status, r.body)
				}
				// Werkzeug's merged view: every spelling of a name in one list
				for _, h := range []struct {
					name string
					want []string
				}{{"X-User-Id", tc.user}, {"X-User-Roles", tc.roles}, {"X-Auth-Email", tc.email}} {
					if got := seen[0].Header(h.name); strings.Join(got, "|") != strings.Join(h.want, "|") {
						t.Errorf("Flask saw %s %q, want %q", h.name, got, h.want)
					}
				}
			})
		}
	}

	// placeholders that no verified claim set are empty, not their text
	for _, tc := range []struct {
		name, path, header, want string
		headers                  []string
	}{
		{"anonymous request", "/anon/items", "X-Anon-User", "u=", nil},
		{"anonymous request, valid token", "/anon/items", "X-Anon-User", "u=alice", []string{"Authorization", "Bearer " + valid}},
		{"token without the claim", "/api/public/items", "X-Auth-Email", "",
			[]string{"Authorization", "Bearer " + s.mint(t, func(c map[string]any) { delete(c, "email") })}},
	} {
		testkit.MustReset(t, s.flask)
		s.send(t, "GET", tc.path, tc.headers...)
		seen := testkit.MustRequests(t, s.flask)
		if len(seen) != 1 {
			t.Fatalf("%s: Flask saw %d requests", tc.name, len(seen))
		}
		if got := strings.Join(seen[0].Header(tc.header), "|"); got != tc.want {
			t.Errorf("%s: Flask saw %s %q, want %q", tc.name, tc.header, got, tc.want)
		}
	}

	// placeholders in a deferred response header and a respond body
	r := s.send(t, "GET", "/whoami", "Authorization", "Bearer "+valid, "X-User-Id", "admin")
	if r.status != 200 || r.body != "user=alice email=alice@example.com" {
		t.Errorf("/whoami: %d %q", r.status, r.body)
	}
	if got := r.header.Get("X-Auth-User"); got != "alice" {
		t.Errorf("X-Auth-User %q, want alice", got)
	}
	if r := s.send(t, "GET", "/shortcut/cached", "Authorization", "Bearer "+valid); r.status != 200 || r.body != "cached answer" {
		t.Errorf("/shortcut/cached with a valid token: %d %q", r.status, r.body)
	}
}

func TestKeySetFetcherSharedAcrossRoutesAndReloads(t *testing.T) {
	s := startAttackStack(t, "1m", 0)
	valid := s.mint(t, func(c map[string]any) { c["roles"] = []string{"admin"} })
	visitAll := func() {
		t.Helper()
		for _, path := range []string{"/api/public/items", "/api/admin/stats", "/anon/items", "/whoami", "/shortcut/x"} {
			if r := s.send(t, "GET", path, "Authorization", "Bearer "+valid); r.status >= 400 && r.status != 404 {
				t.Fatalf("%s: status %d (%q)", path, r.status, r.body)
			}
		}
	}
	visitAll()
	if n := s.jwks.Fetches(); n != 1 {
		t.Fatalf("five routes naming one key set fetched it %d times, want 1", n)
	}

	// reloads that keep the issuer, with another policy around it and
	// other refresh settings for its key set
	for i, step := range []struct{ origin, refetch string }{
		{"https://beta.example.com", "1m"}, {"https://gamma.example.com", "2m"}, {"", "30s"},
	} {
		s.env["ATTACK_EXTRA_ORIGIN"] = step.origin
		s.env["ATTACK_REFETCH_INTERVAL"] = step.refetch
		if err := s.gateway.Reload([]byte(attackCaddyfile), "Caddyfile.attack", s.env); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		// the old config's server closes its idle keep-alive connections;
		// a client that reuses one in that instant reads EOF
		s.client.CloseIdleConnections()
		visitAll()
	}
	if r := s.send(t, "GET", "/api/public/items", "Origin", "https://gamma.example.com",
		"Authorization", "Bearer "+valid); r.status != 403 {
		t.Fatalf("the last reload did not take effect: status %d", r.status)
	}
	if n := s.jwks.Fetches(); n != 1 {
		t.Errorf("after three reloads the key set was fetched %d times, want 1", n)
	}
}

func TestRandomKidFloodCostsTheIssuerOneFetch(t *testing.T) {
	s := startAttackStack(t, "1m", 0)
	if r := s.send(t, "GET", "/api/public/items", "Authorization", "Bearer "+s.mint(t, nil)); r.status != 200 {
		t.Fatalf("warm-up: status %d", r.status)
	}
	before := s.jwks.Fetches()
	testkit.MustReset(t, s.flask)

	attacker := testkit.MustEdKey(t, "x")
	claims := s.claims(nil)
	tokens := make([]string, 400)
	for i := range tokens {
		key := *attacker
		key.Kid = fmt.Sprintf("flood-%d-%d", i, time.Now().UnixNano())
		tokens[i] = testkit.MustSign(t, &key, claims)
	}
	var wg sync.WaitGroup
	var passed, other atomic.Int64
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 10 * time.Second}
			for j := i; j < len(tokens); j += 8 {
				req, _ := http.NewRequest("GET", s.gateway.URL+"/api/public/items", nil)
				req.Header.Set("Authorization", "Bearer "+tokens[j])
				resp, err := client.Do(req)
				if err != nil {
					other.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 401:
				case 200:
					passed.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if passed.Load() != 0 || other.Load() != 0 {
		t.Errorf("of %d made-up kids, %d passed and %d got neither 401 nor 200", len(tokens), passed.Load(), other.Load())
	}
	if n := s.jwks.Fetches() - before; n > 1 {
		t.Errorf("%d made-up kids cost the issuer %d fetches, want at most 1", len(tokens), n)
	}
	if seen := testkit.MustRequests(t, s.flask); len(seen) != 0 {
		t.Errorf("Flask saw %d requests", len(seen))
	}
}

func TestGatewayStartsWhileTheKeySetIsDown(t *testing.T) {
	s := startAttackStack(t, "200ms", http.StatusServiceUnavailable)
	valid := s.mint(t, nil)

	r := s.send(t, "GET", "/api/public/items", "Origin", attackOrigin, "Authorization", "Bearer "+valid)
	if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q; want 503 with Retry-After", r.status, r.header.Get("Retry-After"))
	}
	if got := r.header.Get("Access-Control-Allow-Origin"); got != attackOrigin {
		t.Errorf("the 503 carries Access-Control-Allow-Origin %q", got)
	}
	if seen := testkit.MustRequests(t, s.flask); len(seen) != 0 {
		t.Fatalf("Flask saw %d requests without keys", len(seen))
	}

	// the issuer recovers: the same token passes once keys arrive, with
	// no reload
	s.jwks.SetStatus(0)
	deadline := time.Now().Add(30 * time.Second)
	for {
		r = s.send(t, "GET", "/api/public/items", "Authorization", "Bearer "+valid)
		if r.status == 200 {
			break
		}
		if r.status != http.StatusServiceUnavailable || time.Now().After(deadline) {
			t.Fatalf("after the issuer recovered: status %d (%q)", r.status, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if seen := testkit.MustRequests(t, s.flask); len(seen) != 1 {
		t.Errorf("Flask saw %d requests, want the one that passed", len(seen))
	}
}
