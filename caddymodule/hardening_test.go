package caddymodule

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// TestHeaderValuesNotShared edits every header value of one answer in
// place, as Caddy's header directive does for a replacement
// (header >Vary Origin "Origin, Accept-Language"), and checks that the
// next answer is unchanged: a value slice shared between responses would
// carry the edit into every later response, of every route, and grow with
// each request.
func TestHeaderValuesNotShared(t *testing.T) {
	f := newFixture(t, func(h *Handler) { h.CORS.AllowCredentials = true })
	token := f.token(t, nil)
	tests := []struct {
		name    string
		request func() *http.Request
	}{
		{"refusal without origin", func() *http.Request { return request("GET", "/api/items") }},
		{"refusal for an allowed origin", func() *http.Request {
			return request("GET", "/api/items", "Origin", appOrigin)
		}},
		{"forwarded for an allowed origin", func() *http.Request {
			return request("GET", "/api/items", "Origin", appOrigin, "Authorization", "Bearer "+token)
		}},
		{"forwarded for a wildcard origin", func() *http.Request {
			return request("GET", "/api/items", "Origin", "https://shop.example.org", "Authorization", "Bearer "+token)
		}},
		{"preflight allowed", func() *http.Request {
			return request("OPTIONS", "/api/items", "Origin", appOrigin, "Access-Control-Request-Method", "PUT",
				"Access-Control-Request-Headers", "content-type")
		}},
		{"preflight refused", func() *http.Request {
			return request("OPTIONS", "/api/items", "Origin", "https://evil.example", "Access-Control-Request-Method", "PUT")
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first := f.serve(t, tc.request()).Header()
			want := first.Clone()
			for _, values := range first {
				for i := range values {
					values[i] = "edited by a later handler"
				}
			}
			got := f.serve(t, tc.request()).Header()
			for name, values := range want {
				if name == "Date" {
					continue
				}
				if !slices.Equal(got[name], values) {
					t.Errorf("%s: %q after an edit to the previous answer, want %q", name, got[name], values)
				}
			}
		})
	}
}

// provisionError provisions h and returns the error, if any.
func provisionError(t *testing.T, h *Handler) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	err := h.Provision(ctx)
	if err == nil {
		t.Cleanup(func() { _ = h.Cleanup() })
	}
	return err
}

// A JSON config must be refused where the Caddyfile is: claim headers
// that an upstream merges into one (case, "_" for "-") would otherwise
// both be set, in an order that changes from one load to the next.
func TestJSONClaimHeaderSpellings(t *testing.T) {
	tests := []struct {
		name    string
		headers map[string]string
	}{
		{"case", map[string]string{"X-User-Id": "sub", "x-user-id": "email"}},
		{"underscore", map[string]string{"X-User-Id": "sub", "X_User_Id": "email"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			h := &Handler{CORS: &CORS{AllowOrigins: []string{appOrigin}},
				Issuers:      []*Issuer{{Issuer: testIssuer, JWKSURL: f.jwks.URL, Audiences: []string{testAudience}}},
				ClaimHeaders: tc.headers}
			if err := provisionError(t, h); err == nil {
				t.Errorf("claim_headers %v accepted", tc.headers)
			}
		})
	}
}

// Requirements on an anonymous route are skipped by sending no token at
// all; such a config must be refused.
func TestAnonymousWithRequirements(t *testing.T) {
	tests := []struct {
		name string
		edit func(h *Handler)
	}{
		{"role", func(h *Handler) { h.RequireRoles = []string{"admin"} }},
		{"scope", func(h *Handler) { h.RequireScopes = []string{"items:write"} }},
		{"claim", func(h *Handler) { h.RequireClaims = []string{"email"} }},
		{"value", func(h *Handler) { h.RequireClaimValues = map[string][]string{"tenant": {"a"}} }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			h := &Handler{CORS: &CORS{AllowOrigins: []string{appOrigin}}, Anonymous: true,
				Issuers: []*Issuer{{Issuer: testIssuer, JWKSURL: f.jwks.URL, Audiences: []string{testAudience}}}}
			tc.edit(h)
			if err := provisionError(t, h); err != nil {
				return
			}
			// accepted: then at least a request without a token must not pass
			w := httptest.NewRecorder()
			up := &upstream{}
			r := request("GET", "/admin")
			r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
			_ = h.ServeHTTP(w, r, up)
			if up.count() != 0 {
				t.Errorf("a request without a token passed a route that requires %s", tc.name)
			}
		})
	}
}

// An Authorization header whose scheme is Bearer followed by a tab (or
// other whitespace) is a bearer token to many upstream parsers, which
// split on any whitespace. The gateway must not forward it unverified.
func TestBearerWithOtherWhitespace(t *testing.T) {
	tests := []struct{ name, value string }{
		{"tab", "Bearer\t"},
		{"tab and space", "Bearer\t "},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, func(h *Handler) { h.Anonymous = true })
			forged := f.token(t, func(c map[string]any) { c["sub"] = "admin" })
			forged = forged[:len(forged)-4] + "AAAA"
			w := f.serve(t, request("GET", "/api/items", "Authorization", tc.value+forged))
			if f.upstream.count() != 0 {
				t.Errorf("status %d: %q with an unverified token reached the upstream", w.Code, tc.value)
			}
			if w.Code != http.StatusBadRequest && w.Code != http.StatusUnauthorized {
				t.Errorf("status %d, want 400 or 401", w.Code)
			}
		})
	}
}

// Request trailers are filled in after the body is read; a trailer named
// like a claim header must not reach the upstream in any spelling.
func TestRequestTrailersCarryNoIdentity(t *testing.T) {
	f := newFixture(t, func(h *Handler) { h.Anonymous = true })
	var mu sync.Mutex
	var got http.Header
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		got = r.Trailer.Clone()
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
		return nil
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		if err := f.h.ServeHTTP(w, r, next); err != nil {
			w.WriteHeader(http.StatusInternalServerError)
		}
	}))
	defer srv.Close()

	tests := []struct{ name, declared, trailer string }{
		{"declared", "X-User-Id", "X-User-Id: admin"},
		{"underscore", "X_User_Id", "X_User_Id: admin"},
		{"undeclared", "X-Checksum", "x-user-id: admin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", srv.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "POST /api/items HTTP/1.1\r\nHost: api.internal\r\nTransfer-Encoding: chunked\r\n"+
				"Trailer: %s\r\nConnection: close\r\n\r\n2\r\nab\r\n0\r\n%s\r\n\r\n", tc.declared, tc.trailer)
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			for name, values := range got {
				if sameHeaderName(name, "X-User-Id") && len(values) > 0 {
					t.Errorf("status %d: upstream read trailer %s: %q", resp.StatusCode, name, values)
				}
			}
		})
	}
}

// TestStripAuthorizationRemovesEverySource checks that strip_authorization
// keeps the token from the upstream wherever it was sent: a token cookie
// or query parameter would otherwise reach it beside the claim headers.
func TestStripAuthorizationRemovesEverySource(t *testing.T) {
	f := newFixture(t, func(h *Handler) {
		h.StripAuthorization = true
		h.TokenCookie = "session"
		h.TokenQuery = "access_token"
	})
	token := f.token(t, nil)
	tests := []struct {
		name    string
		target  string
		headers []string
	}{
		{"header", "/api/items?page=2", []string{"Authorization", "Bearer " + token}},
		{"cookie", "/api/items?page=2", []string{"Cookie", "theme=dark; session=" + token}},
		{"query", "/api/items?page=2&access_token=" + token, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := f.serve(t, request("GET", tc.target, tc.headers...))
			if w.Code != http.StatusOK {
				t.Fatalf("status %d (%s)", w.Code, w.Body)
			}
			got := f.upstream.last()
			for name, values := range got.Header {
				for _, v := range values {
					if strings.Contains(v, token) {
						t.Errorf("upstream saw the token in %s", name)
					}
				}
			}
			if strings.Contains(got.URL.RawQuery, token) {
				t.Error("upstream saw the token in the query")
			}
			if got.URL.Query().Get("page") != "2" {
				t.Errorf("query %q lost its other parameters", got.URL.RawQuery)
			}
			if tc.name == "cookie" && got.Header.Get("Cookie") != "theme=dark" {
				t.Errorf("Cookie %q, want the other cookies kept", got.Header.Get("Cookie"))
			}
			if got.Header.Get("X-User-Id") != "alice" {
				t.Errorf("X-User-Id %q", got.Header.Get("X-User-Id"))
			}
		})
	}
}
