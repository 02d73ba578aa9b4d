package caddymodule

import (
	"net/http"
	"slices"
	"testing"
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
