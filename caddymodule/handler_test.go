package caddymodule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

const (
	testIssuer   = "https://issuer.test"
	testAudience = "items-api"
	appOrigin    = "https://app.example.com"
)

// upstream stands in for the proxied API: it records what reached it and
// answers with the CORS headers a wildcard flask-cors would send.
type upstream struct {
	mu       sync.Mutex
	requests []*http.Request
	status   int
	err      error
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	u.mu.Lock()
	u.requests = append(u.requests, r.Clone(context.Background()))
	u.mu.Unlock()
	if u.err != nil {
		return u.err
	}
	w.Header().Set("Access-Control-Allow-Origin", "*")
	w.Header().Set("Access-Control-Allow-Credentials", "true")
	w.Header().Set("access-control-expose-headers", "X-Secret")
	w.Header().Set("Vary", "Accept-Encoding")
	w.Header().Set("Content-Type", "application/json")
	status := u.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, `{"ok":true}`)
	return nil
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.requests)
}

func (u *upstream) last() *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.requests) == 0 {
		return nil
	}
	return u.requests[len(u.requests)-1]
}

// fixture is a provisioned handler with its key and upstream.
type fixture struct {
	h        *Handler
	key      *testkit.Key
	jwks     *testkit.JWKSServer
	upstream *upstream
}

// newFixture provisions a handler from JSON, filling in the issuer's key
// set URL from a fresh JWKS server. edit may change the config first.
func newFixture(t *testing.T, edit func(h *Handler)) *fixture {
	t.Helper()
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	h := &Handler{
		Name: "test",
		CORS: &CORS{
			AllowOrigins:  []string{appOrigin, "https://*.example.org", `~^https://[a-z]+\.example\.net$`},
			AllowMethods:  []string{"GET", "POST", "PUT"},
			AllowHeaders:  []string{"Content-Type", "X-Requested-With"},
			ExposeHeaders: []string{"X-Request-Id"},
		},
		Issuers: []*Issuer{{
			Issuer:    testIssuer,
			JWKSURL:   jwks.URL,
			Audiences: []string{testAudience},
		}},
		ClaimHeaders: map[string]string{"X-User-Id": "sub", "X-User-Roles": "roles"},
	}
	if edit != nil {
		edit(h)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	return &fixture{h: h, key: key, jwks: jwks, upstream: &upstream{}}
}

func (f *fixture) token(t *testing.T, edit func(claims map[string]any)) string {
	t.Helper()
	claims := testkit.Claims(testIssuer, testAudience, "alice", time.Hour)
	if edit != nil {
		edit(claims)
	}
	return testkit.MustSign(t, f.key, claims)
}

// serve runs one request through the handler the way Caddy would.
func (f *fixture) serve(t *testing.T, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	repl := caddy.NewReplacer()
	ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
	r = r.WithContext(ctx)
	w := httptest.NewRecorder()
	if err := f.h.ServeHTTP(w, r, f.upstream); err != nil {
		if he, ok := err.(caddyhttp.HandlerError); ok {
			w.WriteHeader(he.StatusCode)
		} else {
			t.Fatalf("ServeHTTP returned %v", err)
		}
	}
	return w
}

func request(method, target string, headers ...string) *http.Request {
	r := httptest.NewRequest(method, "http://api.internal"+target, nil)
	for i := 0; i+1 < len(headers); i += 2 {
		r.Header.Add(headers[i], headers[i+1])
	}
	return r
}

func assertNoCORS(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	for name := range w.Header() {
		if strings.HasPrefix(strings.ToLower(name), "access-control-") {
			t.Errorf("unexpected %s: %q", name, w.Header()[name])
		}
	}
}

func assertVaryOrigin(t *testing.T, w *httptest.ResponseRecorder) {
	t.Helper()
	n := 0
	for _, v := range w.Header().Values("Vary") {
		for token := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(token), "Origin") {
				n++
			}
		}
	}
	if n != 1 {
		t.Errorf("Vary %q: want Origin exactly once", w.Header().Values("Vary"))
	}
}

func assertAllowOrigin(t *testing.T, w *httptest.ResponseRecorder, origin string) {
	t.Helper()
	got := w.Header().Values("Access-Control-Allow-Origin")
	if len(got) != 1 || got[0] != origin {
		t.Errorf("Access-Control-Allow-Origin %q, want exactly [%q]", got, origin)
	}
}

func decodeBody(t *testing.T, w *httptest.ResponseRecorder) map[string]string {
	t.Helper()
	var body map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatalf("body %q is not JSON: %v", w.Body.String(), err)
	}
	return body
}

func TestPreflightAnsweredAtTheEdge(t *testing.T) {
	f := newFixture(t, nil)
	w := f.serve(t, request("OPTIONS", "/api/items",
		"Origin", appOrigin,
		"Access-Control-Request-Method", "PUT",
		"Access-Control-Request-Headers", "authorization, content-type"))
	if w.Code != http.StatusNoContent {
		t.Fatalf("status %d, want 204", w.Code)
	}
	assertAllowOrigin(t, w, appOrigin)
	if got := w.Header().Get("Access-Control-Allow-Headers"); got != "authorization, content-type" {
		t.Errorf("Access-Control-Allow-Headers %q", got)
	}
	if got := w.Header().Get("Access-Control-Allow-Methods"); got != "GET, POST, PUT" {
		t.Errorf("Access-Control-Allow-Methods %q", got)
	}
	if got := w.Header().Get("Access-Control-Max-Age"); got != "600" {
		t.Errorf("Access-Control-Max-Age %q", got)
	}
	assertVaryOrigin(t, w)
	if f.upstream.count() != 0 {
		t.Error("preflight reached the upstream")
	}
}

func TestPreflightRefused(t *testing.T) {
	f := newFixture(t, nil)
	cases := map[string][]string{
		"other origin":      {"Origin", "https://evil.example", "Access-Control-Request-Method", "GET"},
		"method":            {"Origin", appOrigin, "Access-Control-Request-Method", "DELETE"},
		"header":            {"Origin", appOrigin, "Access-Control-Request-Method", "GET", "Access-Control-Request-Headers", "x-admin"},
		"suffix look-alike": {"Origin", "https://app.example.com.evil.example", "Access-Control-Request-Method", "GET"},
	}
	for name, headers := range cases {
		t.Run(name, func(t *testing.T) {
			w := f.serve(t, request("OPTIONS", "/api/items", headers...))
			if w.Code != http.StatusForbidden {
				t.Errorf("status %d, want 403", w.Code)
			}
			assertNoCORS(t, w)
			assertVaryOrigin(t, w)
		})
	}
	if f.upstream.count() != 0 {
		t.Error("a refused preflight reached the upstream")
	}
}

func TestActualRequests(t *testing.T) {
	f := newFixture(t, nil)
	valid := f.token(t, nil)
	cases := []struct {
		name     string
		headers  []string
		status   int
		origin   string // expected ACAO, "" for none
		forwards bool
	}{
		{"allowed origin, valid token", []string{"Origin", appOrigin, "Authorization", "Bearer " + valid}, 200, appOrigin, true},
		{"wildcard origin", []string{"Origin", "https://shop.example.org", "Authorization", "Bearer " + valid}, 200, "https://shop.example.org", true},
		{"regexp origin", []string{"Origin", "https://beta.example.net", "Authorization", "Bearer " + valid}, 200, "https://beta.example.net", true},
		{"no origin, valid token", []string{"Authorization", "Bearer " + valid}, 200, "", true},
		{"same origin", []string{"Origin", "http://api.internal", "Authorization", "Bearer " + valid}, 200, "", true},
		{"scheme is case-insensitive", []string{"Origin", appOrigin, "Authorization", "bEaReR " + valid}, 200, appOrigin, true},
		{"disallowed origin", []string{"Origin", "https://evil.example", "Authorization", "Bearer " + valid}, 403, "", false},
		{"allowed origin, no token", []string{"Origin", appOrigin}, 401, appOrigin, false},
		{"allowed origin, garbage token", []string{"Origin", appOrigin, "Authorization", "Bearer abc.def.ghi"}, 401, appOrigin, false},
		{"two authorization headers", []string{"Origin", appOrigin, "Authorization", "Bearer " + valid, "Authorization", "Bearer " + valid}, 400, appOrigin, false},
		{"two origins", []string{"Origin", appOrigin, "Origin", appOrigin, "Authorization", "Bearer " + valid}, 400, "", false},
		{"origin list", []string{"Origin", appOrigin + " https://evil.example", "Authorization", "Bearer " + valid}, 400, "", false},
		{"options without request method needs a token", []string{"Origin", appOrigin}, 401, appOrigin, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.upstream.count()
			method := "GET"
			if strings.HasPrefix(tc.name, "options") {
				method = "OPTIONS"
			}
			w := f.serve(t, request(method, "/api/items", tc.headers...))
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d (body %s)", w.Code, tc.status, w.Body)
			}
			if tc.origin != "" {
				assertAllowOrigin(t, w, tc.origin)
			} else if v := w.Header().Values("Access-Control-Allow-Origin"); len(v) > 0 {
				t.Errorf("Access-Control-Allow-Origin %q, want none", v)
			}
			assertVaryOrigin(t, w)
			if got := w.Header().Values("Access-Control-Allow-Origin"); len(got) > 0 && got[0] == "*" {
				t.Error("the upstream's wildcard reached the client")
			}
			if forwarded := f.upstream.count() > before; forwarded != tc.forwards {
				t.Errorf("forwarded = %v, want %v", forwarded, tc.forwards)
			}
			if tc.status >= 400 {
				body := decodeBody(t, w)
				if body["error"] == "" || strings.Contains(w.Body.String(), valid) {
					t.Errorf("body %q: want an error code and no token", w.Body)
				}
			}
		})
	}
}

func TestTokenRefusals(t *testing.T) {
	f := newFixture(t, nil)
	other := testkit.MustRSAKey(t, "k1")
	cases := []struct {
		name   string
		token  string
		status int
		code   string
	}{
		{"expired", f.token(t, func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() }), 401, "invalid_token"},
		{"no exp", f.token(t, func(c map[string]any) { delete(c, "exp") }), 401, "invalid_token"},
		{"not yet valid", f.token(t, func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() }), 401, "invalid_token"},
		{"wrong issuer", f.token(t, func(c map[string]any) { c["iss"] = "https://evil.test" }), 401, "invalid_token"},
		{"wrong audience", f.token(t, func(c map[string]any) { c["aud"] = "other-api" }), 401, "invalid_token"},
		{"audience array", f.token(t, func(c map[string]any) { c["aud"] = []string{"x", testAudience} }), 200, ""},
		{"exp as string", f.token(t, func(c map[string]any) { c["exp"] = "9999999999" }), 401, "invalid_token"},
		{"badly signed", testkit.MustSign(t, other, testkit.Claims(testIssuer, testAudience, "alice", time.Hour)), 401, "invalid_token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := f.serve(t, request("GET", "/api/items", "Origin", appOrigin, "Authorization", "Bearer "+tc.token))
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d (body %s)", w.Code, tc.status, w.Body)
			}
			if tc.code != "" {
				challenge := w.Header().Get("WWW-Authenticate")
				if !strings.HasPrefix(challenge, `Bearer realm="test"`) || !strings.Contains(challenge, `error="`+tc.code+`"`) {
					t.Errorf("WWW-Authenticate %q", challenge)
				}
				if strings.Contains(w.Body.String(), tc.token) || strings.Contains(challenge, tc.token) {
					t.Error("the token was echoed")
				}
			}
		})
	}
}

func TestClaimHeadersComeOnlyFromTheToken(t *testing.T) {
	f := newFixture(t, nil)
	token := f.token(t, func(c map[string]any) { c["roles"] = []string{"reader", "writer"} })
	r := request("GET", "/api/items", "Authorization", "Bearer "+token,
		"X-User-Id", "admin", "x_user_id", "admin", "X-USER_ID", "admin", "Connection", "X-User-Id, keep-alive")
	w := f.serve(t, r)
	if w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	got := f.upstream.last()
	var ids []string
	for name, values := range got.Header {
		if sameHeaderName(name, "X-User-Id") {
			ids = append(ids, values...)
		}
	}
	if len(ids) != 1 || ids[0] != "alice" {
		t.Errorf("upstream saw user id headers %q, want only alice", ids)
	}
	if roles := got.Header.Get("X-User-Roles"); roles != "reader,writer" {
		t.Errorf("X-User-Roles %q", roles)
	}
	if strings.Contains(strings.ToLower(got.Header.Get("Connection")), "x-user-id") {
		t.Errorf("Connection still names the claim header: %q", got.Header.Get("Connection"))
	}

	// a preflight removes them as well, and anonymous requests carry none
	f.serve(t, request("OPTIONS", "/", "Origin", appOrigin, "Access-Control-Request-Method", "GET", "X-User-Id", "admin"))
}

func TestUpstreamCORSHeadersReplaced(t *testing.T) {
	f := newFixture(t, nil)
	w := f.serve(t, request("GET", "/api/items", "Origin", appOrigin, "Authorization", "Bearer "+f.token(t, nil)))
	assertAllowOrigin(t, w, appOrigin)
	if got := w.Header().Values("Access-Control-Expose-Headers"); len(got) != 1 || got[0] != "X-Request-Id" {
		t.Errorf("Access-Control-Expose-Headers %q", got)
	}
	if got := w.Header().Values("Access-Control-Allow-Credentials"); len(got) != 0 {
		t.Errorf("upstream's Access-Control-Allow-Credentials survived: %q", got)
	}
	if got := w.Header().Values("Vary"); len(got) != 2 || got[0] != "Accept-Encoding" || got[1] != "Origin" {
		t.Errorf("Vary %q", got)
	}
}

func TestUpstreamErrorCarriesCORS(t *testing.T) {
	f := newFixture(t, nil)
	f.upstream.err = caddyhttp.Error(http.StatusBadGateway, io.ErrUnexpectedEOF)
	r := request("GET", "/api/items", "Origin", appOrigin, "Authorization", "Bearer "+f.token(t, nil))
	w := httptest.NewRecorder()
	w.Header().Set("Access-Control-Allow-Origin", "*")
	err := f.h.ServeHTTP(w, r, f.upstream)
	if err == nil {
		t.Fatal("error from upstream was swallowed")
	}
	assertAllowOrigin(t, w, appOrigin)
	assertVaryOrigin(t, w)
}

func TestRequirements(t *testing.T) {
	f := newFixture(t, func(h *Handler) {
		h.RequireRoles = []string{"admin"}
		h.RequireScopes = []string{"items:read"}
	})
	cases := []struct {
		name   string
		claims func(map[string]any)
		status int
	}{
		{"role and scope", func(c map[string]any) { c["roles"] = []string{"admin"}; c["scope"] = "items:read other" }, 200},
		{"scp array", func(c map[string]any) { c["roles"] = []string{"admin"}; c["scp"] = []string{"items:read"} }, 200},
		{"missing role", func(c map[string]any) { c["roles"] = []string{"reader"}; c["scope"] = "items:read" }, 403},
		{"missing scope", func(c map[string]any) { c["roles"] = []string{"admin"}; c["scope"] = "items:write" }, 403},
		{"role as prefix", func(c map[string]any) { c["roles"] = []string{"administrator"}; c["scope"] = "items:read" }, 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := f.serve(t, request("GET", "/", "Authorization", "Bearer "+f.token(t, tc.claims)))
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d", w.Code, tc.status)
			}
			if tc.status == 403 && !strings.Contains(w.Header().Get("WWW-Authenticate"), `error="insufficient_scope"`) {
				t.Errorf("WWW-Authenticate %q", w.Header().Get("WWW-Authenticate"))
			}
		})
	}
}
