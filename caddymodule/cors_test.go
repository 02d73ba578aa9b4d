package caddymodule

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// the fields a preflight asks with (Fetch, "CORS-preflight request")
const (
	askMethod  = "Access-Control-Request-Method"
	askHeaders = "Access-Control-Request-Headers"
)

// TestPreflightRules runs each preflight rule of the Fetch standard
// ("CORS-preflight request") through the preflight and then through the
// actual request the browser would send after it.
func TestPreflightRules(t *testing.T) {
	cases := []struct {
		name    string
		edit    func(*CORS)
		headers []string // preflight headers besides Origin
		status  int
		want    map[string]string // expected preflight headers; "" means absent
		method  string            // the actual request
	}{
		{
			name:    "method and headers compared case-insensitively",
			headers: []string{askMethod, "put", askHeaders, "Content-Type,X-REQUESTED-WITH"},
			status:  204,
			want: map[string]string{
				"Access-Control-Allow-Methods": "GET, POST, PUT, put",
				"Access-Control-Allow-Headers": "content-type, x-requested-with, authorization",
			},
			method: "PUT",
		},
		{
			name:    "a method the browser does not normalise comes back as sent",
			edit:    func(c *CORS) { c.AllowMethods = []string{"GET", "PATCH"} },
			headers: []string{askMethod, "patch", askHeaders, "authorization"},
			status:  204,
			want:    map[string]string{"Access-Control-Allow-Methods": "GET, PATCH, patch"},
			method:  "patch",
		},
		{
			name:    "Authorization is named even when not asked for",
			headers: []string{askMethod, "POST"},
			status:  204,
			want: map[string]string{
				"Access-Control-Allow-Headers":     "authorization",
				"Access-Control-Allow-Credentials": "",
				"Access-Control-Max-Age":           "600",
			},
			method: "POST",
		},
		{
			name:    "Authorization is never covered by a star",
			headers: []string{askMethod, "GET", askHeaders, "Authorization"},
			status:  204,
			want:    map[string]string{"Access-Control-Allow-Headers": "authorization"},
			method:  "GET",
		},
		{
			name:    "headers split over several fields and empty items",
			headers: []string{askMethod, "GET", askHeaders, "content-type,,", askHeaders, " authorization "},
			status:  204,
			want:    map[string]string{"Access-Control-Allow-Headers": "content-type, authorization"},
			method:  "GET",
		},
		{
			name:    "credentials when configured",
			edit:    func(c *CORS) { c.AllowCredentials = true },
			headers: []string{askMethod, "GET"},
			status:  204,
			want:    map[string]string{"Access-Control-Allow-Credentials": "true"},
			method:  "GET",
		},
		{
			name:    "max age configured",
			edit:    func(c *CORS) { c.MaxAge = caddy.Duration(time.Hour) },
			headers: []string{askMethod, "GET"},
			status:  204,
			want:    map[string]string{"Access-Control-Max-Age": "3600"},
			method:  "GET",
		},
		{
			name:    "max age turned off",
			edit:    func(c *CORS) { c.MaxAge = -1 },
			headers: []string{askMethod, "GET"},
			status:  204,
			want:    map[string]string{"Access-Control-Max-Age": ""},
			method:  "GET",
		},
		{
			name:    "private network not answered unless the route opts in",
			headers: []string{askMethod, "GET", "Access-Control-Request-Private-Network", "true"},
			status:  204,
			want:    map[string]string{"Access-Control-Allow-Private-Network": ""},
			method:  "GET",
		},
		{
			name:    "private network answered on a route that opts in",
			edit:    func(c *CORS) { c.AllowPrivateNetwork = true },
			headers: []string{askMethod, "GET", "Access-Control-Request-Private-Network", "true"},
			status:  204,
			want:    map[string]string{"Access-Control-Allow-Private-Network": "true"},
			method:  "GET",
		},
		{
			name:    "private network only when asked",
			edit:    func(c *CORS) { c.AllowPrivateNetwork = true },
			headers: []string{askMethod, "GET"},
			status:  204,
			want:    map[string]string{"Access-Control-Allow-Private-Network": ""},
			method:  "GET",
		},
		{
			name:    "method not allowed",
			headers: []string{askMethod, "DELETE"},
			status:  403,
			method:  "DELETE",
		},
		{
			name:    "two requested methods",
			headers: []string{askMethod, "GET", askMethod, "PUT"},
			status:  403,
			method:  "GET",
		},
		{
			name:    "a list in one requested method",
			headers: []string{askMethod, "GET, PUT"},
			status:  403,
			method:  "GET",
		},
		{
			name:    "empty requested method",
			headers: []string{askMethod, ""},
			status:  403,
			method:  "GET",
		},
		{
			name:    "header not allowed",
			headers: []string{askMethod, "GET", askHeaders, "authorization, x-admin"},
			status:  403,
			method:  "GET",
		},
		{
			name:    "star as a requested header",
			headers: []string{askMethod, "GET", askHeaders, "*"},
			status:  403,
			method:  "GET",
		},
		{
			name:    "not a header name",
			headers: []string{askMethod, "GET", askHeaders, "content-type\x00"},
			status:  403,
			method:  "GET",
		},
		{
			name: "too many requested headers",
			headers: []string{askMethod, "GET",
				askHeaders, strings.Repeat("content-type,", maxRequestHeaders+1)},
			status: 403,
			method: "GET",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(h *Handler) {
				if tc.edit != nil {
					tc.edit(h.CORS)
				}
			})

			// preflight
			headers := append([]string{"Origin", appOrigin}, tc.headers...)
			w := f.serve(t, request("OPTIONS", "/api/items", headers...))
			if w.Code != tc.status {
				t.Fatalf("preflight: status %d, want %d", w.Code, tc.status)
			}
			assertVaryOrigin(t, w)
			if tc.status != http.StatusNoContent {
				assertNoCORS(t, w)
			} else {
				assertAllowOrigin(t, w, appOrigin)
			}
			for name, want := range tc.want {
				if got := strings.Join(w.Header().Values(name), ","); got != want {
					t.Errorf("preflight %s %q, want %q", name, got, want)
				}
			}
			if f.upstream.count() != 0 {
				t.Fatal("the preflight reached the upstream")
			}

			// actual request: CORS methods and headers bind the browser; the
			// gateway's gate for the request itself is the token
			w = f.serve(t, request(tc.method, "/api/items", "Origin", appOrigin,
				"Authorization", "Bearer "+f.token(t, nil)))
			if w.Code != http.StatusOK || f.upstream.count() != 1 {
				t.Fatalf("actual request: status %d, forwarded %d", w.Code, f.upstream.count())
			}
			assertAllowOrigin(t, w, appOrigin)
			assertVaryOrigin(t, w)
			if got := w.Header().Values("Access-Control-Max-Age"); len(got) != 0 {
				t.Errorf("actual response carries Access-Control-Max-Age %q", got)
			}
			wantCredentials := tc.edit != nil && strings.Contains(tc.name, "credentials")
			if got := w.Header().Get("Access-Control-Allow-Credentials"); (got == "true") != wantCredentials {
				t.Errorf("Access-Control-Allow-Credentials %q", got)
			}
		})
	}
}

// TestWhatIsAPreflight: only OPTIONS with both Origin and
// Access-Control-Request-Method is answered at the edge; every other
// request goes through the token check.
func TestWhatIsAPreflight(t *testing.T) {
	f := newFixture(t, nil)
	token := f.token(t, nil)
	origin := []string{"Origin", appOrigin}
	asks := []string{askMethod, "GET"}
	bearer := []string{"Authorization", "Bearer " + token}
	join := func(parts ...[]string) []string { return slices.Concat(parts...) }
	cases := []struct {
		name     string
		method   string
		headers  []string
		status   int
		forwards bool
	}{
		{"preflight", "OPTIONS", join(origin, asks), 204, false},
		{"preflight with a token is answered here", "OPTIONS", join(origin, asks, bearer), 204, false},
		{"OPTIONS without request method, no token", "OPTIONS", origin, 401, false},
		{"OPTIONS without request method, token", "OPTIONS", join(origin, bearer), 200, true},
		{"OPTIONS without origin, no token", "OPTIONS", asks, 401, false},
		{"OPTIONS without origin, token", "OPTIONS", join(asks, bearer), 200, true},
		{"GET with request method, no token", "GET", join(origin, asks), 401, false},
		{"lowercase options is not OPTIONS", "options", join(origin, asks), 401, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.upstream.count()
			w := f.serve(t, request(tc.method, "/api/items", tc.headers...))
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d", w.Code, tc.status)
			}
			if forwarded := f.upstream.count() > before; forwarded != tc.forwards {
				t.Errorf("forwarded = %v, want %v", forwarded, tc.forwards)
			}
			assertVaryOrigin(t, w)
			if tc.status == 401 && w.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
}

func TestCORSConfigBounds(t *testing.T) {
	cases := []struct {
		name string
		cors CORS
		ok   bool
	}{
		{"max age at the bound", CORS{MaxAge: caddy.Duration(maxMaxAge)}, true},
		{"max age above the bound", CORS{MaxAge: caddy.Duration(maxMaxAge + time.Second)}, false},
		{"star method", CORS{AllowMethods: []string{"*"}}, false},
		{"method with a space", CORS{AllowMethods: []string{"GET POST"}}, false},
		{"star header", CORS{AllowHeaders: []string{"*"}}, false},
		{"header with a colon", CORS{AllowHeaders: []string{"X-A:"}}, false},
		{"star expose", CORS{ExposeHeaders: []string{"*"}}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cors
			c.AllowOrigins = []string{appOrigin}
			if err := c.provision(true); (err == nil) != tc.ok {
				t.Errorf("provision: %v, want ok=%v", err, tc.ok)
			}
		})
	}

	// routes check tokens: "*" and open allowlists are refused outright,
	// with credentials or without
	for _, origins := range [][]string{{"*"}, {appOrigin, "*"}} {
		for _, credentials := range []bool{false, true} {
			h := &Handler{Name: "r", CORS: &CORS{AllowOrigins: origins, AllowCredentials: credentials},
				Issuers: []*Issuer{{Issuer: testIssuer, JWKSURL: "http://127.0.0.1:9/", Audiences: []string{"a"}}}}
			if err := h.check(); err == nil {
				t.Errorf("allow_origins %q (credentials %v) accepted", origins, credentials)
			}
		}
	}

	// null is any sandboxed page: listed alone it is allowed, with
	// credentials it is refused
	for _, credentials := range []bool{false, true} {
		h := &Handler{Name: "r", CORS: &CORS{AllowOrigins: []string{appOrigin, "null"}, AllowCredentials: credentials},
			Issuers: []*Issuer{{Issuer: testIssuer, JWKSURL: "http://127.0.0.1:9/", Audiences: []string{"a"}}}}
		if err := h.check(); (err == nil) == credentials {
			t.Errorf("null with credentials %v: %v", credentials, err)
		}
	}
}

// TestErrorsCarryCORS: the gateway's own refusals are readable by an
// allowed page, with WWW-Authenticate exposed, and unreadable by others.
func TestErrorsCarryCORS(t *testing.T) {
	f := newFixture(t, func(h *Handler) { h.CORS.AllowCredentials = true })
	for _, tc := range []struct {
		name    string
		headers []string
		status  int
	}{
		{"no token", nil, 401},
		{"bad token", []string{"Authorization", "Bearer x.y.z"}, 401},
		{"two tokens", []string{"Authorization", "Bearer a", "Authorization", "Bearer b"}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := f.serve(t, request("GET", "/", append([]string{"Origin", appOrigin}, tc.headers...)...))
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d", w.Code, tc.status)
			}
			assertAllowOrigin(t, w, appOrigin)
			assertVaryOrigin(t, w)
			if got := w.Header().Get("Access-Control-Allow-Credentials"); got != "true" {
				t.Errorf("Access-Control-Allow-Credentials %q", got)
			}
			expose := strings.ToLower(w.Header().Get("Access-Control-Expose-Headers"))
			if !strings.Contains(expose, "www-authenticate") || !strings.Contains(expose, "x-request-id") {
				t.Errorf("Access-Control-Expose-Headers %q", expose)
			}

			// the same refusal for an origin that is not allowed is a 403
			// without any CORS header
			w = f.serve(t, request("GET", "/", append([]string{"Origin", "https://evil.test"}, tc.headers...)...))
			if w.Code != http.StatusForbidden {
				t.Errorf("other origin: status %d", w.Code)
			}
			assertNoCORS(t, w)
		})
	}
	if f.upstream.count() != 0 {
		t.Error("a refused request reached the upstream")
	}
}
