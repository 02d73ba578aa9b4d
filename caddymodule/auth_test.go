package caddymodule

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// serveWithReplacer runs one request and also returns the Caddy replacer
// the handler published its placeholders in.
func (f *fixture) serveWithReplacer(t *testing.T, r *http.Request) (*httptest.ResponseRecorder, *caddy.Replacer) {
	t.Helper()
	repl := caddy.NewReplacer()
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	w := httptest.NewRecorder()
	if err := f.h.ServeHTTP(w, r, f.upstream); err != nil {
		t.Fatalf("ServeHTTP returned %v", err)
	}
	return w, repl
}

// upstreamHeader returns every value the upstream received under name,
// in any spelling a WSGI server would merge with it.
func upstreamHeader(r *http.Request, name string) []string {
	var values []string
	for n, v := range r.Header {
		if sameHeaderName(n, name) {
			values = append(values, v...)
		}
	}
	return values
}

func TestRouteRequirements(t *testing.T) {
	cases := []struct {
		name   string
		route  func(h *Handler)
		claims map[string]any
		status int
	}{
		{"required claim present", func(h *Handler) { h.RequireClaims = []string{"email"} },
			map[string]any{"email": "a@example.com"}, 200},
		{"required claim missing", func(h *Handler) { h.RequireClaims = []string{"email"} },
			nil, 403},
		{"required claim null is present", func(h *Handler) { h.RequireClaims = []string{"email"} },
			map[string]any{"email": nil}, 200},
		{"required dotted path present", func(h *Handler) { h.RequireClaims = []string{"realm_access.roles"} },
			map[string]any{"realm_access": map[string]any{"roles": []string{"x"}}}, 200},
		{"required dotted path missing", func(h *Handler) { h.RequireClaims = []string{"realm_access.roles"} },
			map[string]any{"realm_access": map[string]any{"groups": []string{"x"}}}, 403},
		{"dotted path through a string", func(h *Handler) { h.RequireClaims = []string{"realm_access.roles"} },
			map[string]any{"realm_access": "roles"}, 403},

		{"scopes in scope", func(h *Handler) { h.RequireScopes = []string{"items:read", "items:write"} },
			map[string]any{"scope": "openid items:write items:read"}, 200},
		{"scopes in scp array", func(h *Handler) { h.RequireScopes = []string{"items:read", "items:write"} },
			map[string]any{"scp": []string{"items:read", "items:write"}}, 200},
		{"scopes in scp string", func(h *Handler) { h.RequireScopes = []string{"items:read"} },
			map[string]any{"scp": "items:read"}, 200},
		{"one scope of two", func(h *Handler) { h.RequireScopes = []string{"items:read", "items:write"} },
			map[string]any{"scope": "items:read"}, 403},
		{"scope as a substring", func(h *Handler) { h.RequireScopes = []string{"items:read"} },
			map[string]any{"scope": "items:read-only"}, 403},
		{"scope in another claim", func(h *Handler) { h.RequireScopes = []string{"items:read"} },
			map[string]any{"scopes": "items:read"}, 403},
		{"no scope at all", func(h *Handler) { h.RequireScopes = []string{"items:read"} },
			nil, 403},

		{"role in roles", func(h *Handler) { h.RequireRoles = []string{"admin", "ops"} },
			map[string]any{"roles": []string{"reader", "ops"}}, 200},
		{"role missing", func(h *Handler) { h.RequireRoles = []string{"admin"} },
			map[string]any{"roles": []string{"reader"}}, 403},
		{"role differs in case", func(h *Handler) { h.RequireRoles = []string{"admin"} },
			map[string]any{"roles": []string{"Admin"}}, 403},
		{"role in a nested array object", func(h *Handler) { h.RequireRoles = []string{"admin"} },
			map[string]any{"roles": []any{map[string]any{"name": "admin"}}}, 403},
		{"roles from a dotted path", func(h *Handler) {
			h.RequireRoles = []string{"admin"}
			h.RolesClaim = "realm_access.roles"
		}, map[string]any{"realm_access": map[string]any{"roles": []string{"admin"}}}, 200},
		{"roles at the top level when a path is configured", func(h *Handler) {
			h.RequireRoles = []string{"admin"}
			h.RolesClaim = "realm_access.roles"
		}, map[string]any{"roles": []string{"admin"}}, 403},

		{"claim equals value", func(h *Handler) { h.RequireClaimValues = map[string][]string{"tenant": {"acme", "initech"}} },
			map[string]any{"tenant": "initech"}, 200},
		{"claim has another value", func(h *Handler) { h.RequireClaimValues = map[string][]string{"tenant": {"acme"}} },
			map[string]any{"tenant": "acme-evil"}, 403},
		{"claim bool equals value", func(h *Handler) { h.RequireClaimValues = map[string][]string{"email_verified": {"true"}} },
			map[string]any{"email_verified": true}, 200},
		{"claim bool false", func(h *Handler) { h.RequireClaimValues = map[string][]string{"email_verified": {"true"}} },
			map[string]any{"email_verified": false}, 403},
		{"claim string true is not the bool", func(h *Handler) { h.RequireClaimValues = map[string][]string{"email_verified": {"true"}} },
			map[string]any{"email_verified": "true "}, 403},
		{"claim array member equals value", func(h *Handler) { h.RequireClaimValues = map[string][]string{"groups": {"ops"}} },
			map[string]any{"groups": []string{"dev", "ops"}}, 200},
		{"claim dotted path equals value", func(h *Handler) { h.RequireClaimValues = map[string][]string{"org.id": {"42"}} },
			map[string]any{"org": map[string]any{"id": 42}}, 200},
		{"claim missing", func(h *Handler) { h.RequireClaimValues = map[string][]string{"tenant": {"acme"}} },
			nil, 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.route)
			token := f.token(t, func(c map[string]any) {
				for k, v := range tc.claims {
					c[k] = v
				}
			})
			before := f.upstream.count()
			w := f.serve(t, request("GET", "/", "Origin", appOrigin, "Authorization", "Bearer "+token))
			assertOutcome(t, f, before, w, token, tc.status, "insufficient_scope")
			if tc.status == http.StatusForbidden {
				assertAllowOrigin(t, w, appOrigin)
				if scopes := f.h.RequireScopes; len(scopes) > 0 &&
					!strings.Contains(w.Header().Get("WWW-Authenticate"), `scope="`+strings.Join(scopes, " ")+`"`) {
					t.Errorf("WWW-Authenticate %q does not name the scope", w.Header().Get("WWW-Authenticate"))
				}
			}
			// a repeat is answered from the cache, with the same decision
			w = f.serve(t, request("GET", "/", "Authorization", "Bearer "+token))
			if w.Code != tc.status {
				t.Errorf("repeat: status %d, want %d", w.Code, tc.status)
			}
		})
	}
}

func TestAnonymousRoutes(t *testing.T) {
	f := newFixture(t, func(h *Handler) { h.Anonymous = true })
	other := testkit.MustRSAKey(t, "k1")
	forged := []string{"X-User-Id", "admin", "x_user_id", "admin", "X-USER-ROLES", "admin"}
	cases := []struct {
		name    string
		headers []string
		status  int
		user    string
	}{
		{"no token", nil, 200, ""},
		{"no token, forged identity", forged, 200, ""},
		{"valid token", []string{"Authorization", "Bearer " + f.token(t, nil)}, 200, "alice"},
		{"valid token, forged identity", append([]string{"Authorization", "Bearer " + f.token(t, nil)}, forged...), 200, "alice"},
		{"bad signature", []string{"Authorization", "Bearer " + testkit.MustSign(t, other,
			testkit.Claims(testIssuer, testAudience, "admin", time.Hour))}, 401, ""},
		{"expired", []string{"Authorization", "Bearer " + f.token(t, func(c map[string]any) {
			c["exp"] = time.Now().Add(-time.Hour).Unix()
		})}, 401, ""},
		{"garbage", []string{"Authorization", "Bearer garbage"}, 401, ""},
		{"empty bearer", []string{"Authorization", "Bearer "}, 400, ""},
		{"two authorization headers", []string{"Authorization", "Bearer a.b.c", "Authorization", "Basic x"}, 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.upstream.count()
			w := f.serve(t, request("GET", "/", tc.headers...))
			code := "invalid_token"
			if tc.status == http.StatusBadRequest {
				code = "invalid_request"
			}
			assertOutcome(t, f, before, w, "", tc.status, code)
			if tc.status != http.StatusOK {
				return
			}
			got := f.upstream.last()
			ids := upstreamHeader(got, "X-User-Id")
			if tc.user == "" && len(ids) != 0 {
				t.Errorf("anonymous request reached the upstream with X-User-Id %q", ids)
			}
			if tc.user != "" && (len(ids) != 1 || ids[0] != tc.user) {
				t.Errorf("upstream saw X-User-Id %q, want [%s]", ids, tc.user)
			}
			if roles := upstreamHeader(got, "X-User-Roles"); len(roles) != 0 {
				t.Errorf("upstream saw X-User-Roles %q, which no token granted", roles)
			}
		})
	}
}

func TestTokenSources(t *testing.T) {
	plain := newFixture(t, nil)
	sources := newFixture(t, func(h *Handler) {
		h.Issuers[0].JWKSURL = plain.jwks.URL
		h.TokenCookie = "session"
		h.TokenQuery = "access_token"
	})
	token := plain.token(t, nil)
	other := plain.token(t, func(c map[string]any) { c["sub"] = "bob" })
	q := func(v string) string { return "/?access_token=" + url.QueryEscape(v) }

	cases := []struct {
		name    string
		f       *fixture
		target  string
		headers []string
		status  int
		code    string
	}{
		{"bearer", plain, "/", []string{"Authorization", "Bearer " + token}, 200, ""},
		{"scheme in lower case", plain, "/", []string{"Authorization", "bearer " + token}, 200, ""},
		{"scheme in upper case", plain, "/", []string{"Authorization", "BEARER " + token}, 200, ""},
		{"two spaces", plain, "/", []string{"Authorization", "Bearer  " + token}, 200, ""},
		{"other scheme", plain, "/", []string{"Authorization", "Basic YWxpY2U6cHc="}, 401, ""},
		{"scheme only", plain, "/", []string{"Authorization", "Bearer"}, 400, "invalid_request"},
		{"scheme glued to the token", plain, "/", []string{"Authorization", "Bearer" + token}, 401, ""},
		{"two tokens in one header", plain, "/", []string{"Authorization", "Bearer " + token + " " + other}, 400, "invalid_request"},
		{"token list", plain, "/", []string{"Authorization", "Bearer " + token + ", Bearer " + other}, 400, "invalid_request"},
		{"two headers, same token", plain, "/", []string{"Authorization", "Bearer " + token, "Authorization", "Bearer " + token}, 400, "invalid_request"},
		{"two headers, one empty", plain, "/", []string{"Authorization", "Bearer " + token, "Authorization", ""}, 400, "invalid_request"},
		{"cookie on a route without token_cookie", plain, "/", []string{"Cookie", "session=" + token}, 401, ""},
		{"query on a route without token_query", plain, q(token), nil, 401, ""},
		{"cookie and bearer differ, cookie ignored", plain, "/", []string{"Authorization", "Bearer " + token, "Cookie", "session=" + other}, 200, ""},

		{"cookie", sources, "/", []string{"Cookie", "session=" + token}, 200, ""},
		{"query", sources, q(token), nil, 200, ""},
		{"cookie and bearer agree", sources, "/", []string{"Authorization", "Bearer " + token, "Cookie", "session=" + token}, 200, ""},
		{"cookie and bearer differ", sources, "/", []string{"Authorization", "Bearer " + token, "Cookie", "session=" + other}, 400, "invalid_request"},
		{"query and bearer differ", sources, q(other), []string{"Authorization", "Bearer " + token}, 400, "invalid_request"},
		{"query and cookie differ", sources, q(other), []string{"Cookie", "session=" + token}, 400, "invalid_request"},
		{"two cookies differ", sources, "/", []string{"Cookie", "session=" + token + "; session=" + other}, 400, "invalid_request"},
		{"two query parameters", sources, q(token) + "&access_token=" + token, nil, 400, "invalid_request"},
		{"cookie with a bad token", sources, "/", []string{"Cookie", "session=abc.def.ghi"}, 401, "invalid_token"},
		{"query with a line break", sources, q(token[:20] + "\n" + token[20:]), nil, 401, "invalid_token"},
		{"cookie of another name", sources, "/", []string{"Cookie", "sessionid=" + token}, 401, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.f.upstream.count()
			w := tc.f.serve(t, request("GET", tc.target, tc.headers...))
			assertOutcome(t, tc.f, before, w, token, tc.status, tc.code)
			if tc.status == http.StatusUnauthorized && tc.code == "" {
				if got := w.Header().Get("WWW-Authenticate"); got != `Bearer realm="test"` {
					t.Errorf("WWW-Authenticate %q, want a bare challenge", got)
				}
			}
			if tc.status == http.StatusOK {
				if ids := upstreamHeader(tc.f.upstream.last(), "X-User-Id"); len(ids) != 1 || ids[0] != "alice" {
					t.Errorf("upstream saw X-User-Id %q", ids)
				}
			}
		})
	}
}

func TestIdentityComesOnlyFromVerifiedClaims(t *testing.T) {
	f := newFixture(t, func(h *Handler) {
		h.ClaimHeaders = map[string]string{
			"X-User-Id":     "sub",
			"X-User-Email":  "email",
			"X-User-Roles":  "roles",
			"X-Tenant":      "org.tenant",
			"X-User-Banner": "banner",
		}
	})
	token := f.token(t, func(c map[string]any) {
		c["email"] = "alice@example.com"
		c["roles"] = []string{"reader", "writer"}
		c["org"] = map[string]any{"tenant": "acme"}
		c["banner"] = "hi\r\nX-User-Id: admin"
		c["id"] = "admin"
	})
	forged := []string{
		"X-User-Id", "admin", "x-user-id", "root", "X_User_Id", "admin", "x_USER-id", "admin",
		"X-USER_ID", "admin", "X-User-Email", "admin@example.com", "x_user_email", "admin@example.com",
		"X-Tenant", "initech", "X_TENANT", "initech", "X-User-Banner", "forged",
		"Connection", "X-User-Id, x_user_email, X-Tenant, keep-alive", "Connection", "X-User-Roles",
	}
	w, repl := f.serveWithReplacer(t, request("GET", "/", append([]string{"Authorization", "Bearer " + token}, forged...)...))
	if w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	got := f.upstream.last()
	want := map[string]string{
		"X-User-Id":     "alice",
		"X-User-Email":  "alice@example.com",
		"X-User-Roles":  "reader,writer",
		"X-Tenant":      "acme",
		"X-User-Banner": "", // a value that is not header-safe is left out
	}
	for name, value := range want {
		values := upstreamHeader(got, name)
		if value == "" && len(values) != 0 || value != "" && (len(values) != 1 || values[0] != value) {
			t.Errorf("upstream saw %s %q, want %q", name, values, value)
		}
	}
	for _, v := range got.Header.Values("Connection") {
		for token := range strings.SplitSeq(v, ",") {
			if f.h.isClaimHeader(strings.TrimSpace(token)) {
				t.Errorf("Connection still names %q, so a proxy would drop it", token)
			}
		}
	}
	if got.Header.Get("Authorization") == "" {
		t.Error("Authorization was not forwarded")
	}

	// placeholders: the subject, and each claim; a claim called id does
	// not replace the subject
	placeholders := map[string]string{
		"http.auth.user.id":    "alice",
		"http.auth.user.sub":   "alice",
		"http.auth.user.email": "alice@example.com",
		"http.auth.user.roles": "reader,writer",
		"http.auth.user.iss":   testIssuer,
	}
	for key, value := range placeholders {
		if v, _ := repl.GetString(key); v != value {
			t.Errorf("{%s} = %q, want %q", key, v, value)
		}
	}
	// a claim with no header-safe rendering, and one the token lacks,
	// are empty rather than left as placeholder text
	for _, key := range []string{"http.auth.user.banner", "http.auth.user.phone"} {
		if got := repl.ReplaceKnown("{"+key+"}", ""); got != "" {
			t.Errorf("{%s} = %q, want empty", key, got)
		}
	}
}

func TestStripAuthorization(t *testing.T) {
	f := newFixture(t, func(h *Handler) { h.StripAuthorization = true })
	w := f.serve(t, request("GET", "/", "Authorization", "Bearer "+f.token(t, nil)))
	if w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	if v := f.upstream.last().Header.Values("Authorization"); len(v) != 0 {
		t.Errorf("upstream saw Authorization %q", v)
	}
}

func TestKeysUnavailableIs503(t *testing.T) {
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	jwks.SetStatus(http.StatusServiceUnavailable)
	f := newFixture(t, func(h *Handler) { h.Issuers[0].JWKSURL = jwks.URL })
	token := testkit.MustSign(t, key, validClaims())

	w := f.serve(t, request("GET", "/", "Origin", appOrigin, "Authorization", "Bearer "+token))
	if w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q; want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	assertAllowOrigin(t, w, appOrigin)
	if f.upstream.count() != 0 {
		t.Fatal("forwarded without keys")
	}

	// once the issuer answers, the same token passes
	jwks.SetStatus(0)
	src := f.h.issuers[testIssuer].source
	<-src.startFetch(true).done
	if w := f.serve(t, request("GET", "/", "Authorization", "Bearer "+token)); w.Code != 200 {
		t.Fatalf("after the keys arrived: status %d", w.Code)
	}
}
