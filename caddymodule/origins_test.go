package caddymodule

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

func TestNormalizeOrigin(t *testing.T) {
	cases := []struct {
		entry string
		want  string // "" for a config error
	}{
		{"https://app.example.com", "https://app.example.com"},
		{"HTTPS://App.Example.COM", "https://app.example.com"},
		{"https://app.example.com:443", "https://app.example.com"},
		{"http://app.example.com:80", "http://app.example.com"},
		{"http://app.example.com:443", "http://app.example.com:443"},
		{"https://app.example.com:8443", "https://app.example.com:8443"},
		{"http://localhost:3000", "http://localhost:3000"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"http://[::1]:8080", "http://[::1]:8080"},
		{"http://[0:0::1]", "http://[::1]"},
		{"http://[2001:DB8:0:0:1::1]:8080", "http://[2001:db8::1:0:0:1]:8080"},
		{"http://[::ffff:127.0.0.1]", ""},
		{"http://[127.0.0.1]", ""},
		{"http://[::1", ""},
		{"http://::1", ""},
		{"http://127.1", ""},
		{"http://0x7f.0.0.1", ""},
		{"http://127.000.0.1", ""},
		{"http://app.123", ""},
		{"http://123.app", "http://123.app"},
		{"https://*.example.com", "https://*.example.com"},
		{"https://*.Example.com:8443", "https://*.example.com:8443"},
		{"https://xn--80ak6aa92e.example.com", "https://xn--80ak6aa92e.example.com"},

		// not an origin
		{"", ""},
		{"app.example.com", ""},
		{"https://", ""},
		{"https://app.example.com/", ""},
		{"https://app.example.com/api", ""},
		{"https://app.example.com?x=1", ""},
		{"https://app.example.com#top", ""},
		{"https://user@app.example.com", ""},
		{"https://app.example.com@evil.test", ""},
		{"https://app.example.com:", ""},
		{"https://app.example.com:0", ""},
		{"https://app.example.com:08443", ""},
		{"https://app.example.com:65536", ""},
		{"https://app.example.com:http", ""},
		{"https://app..example.com", ""},
		{"https://-app.example.com", ""},
		{"https://app example.com", ""},
		{"https://app.example.com\r\n", ""},
		{"https://аpp.example.com", ""}, // Cyrillic а: write punycode
		{"1http://app.example.com", ""},
		{"https://" + strings.Repeat("a", 1100) + ".com", ""},

		// wildcards
		{"http://*.localhost:3000", "http://*.localhost:3000"},
		{"https://*.com", ""},
		{"https://*.co.uk", ""},
		{"https://*.github.io", ""},
		{"https://*", ""},
		{"https://a.*.example.com", ""},
		{"https://*example.com", ""},
		{"https://**.example.com", ""},
		{"https://*.127.0.0.1", ""},
	}
	for _, tc := range cases {
		t.Run(tc.entry, func(t *testing.T) {
			got, err := NormalizeOrigin(tc.entry)
			switch {
			case tc.want == "" && err == nil:
				t.Errorf("NormalizeOrigin(%q) = %q, want an error", tc.entry, got)
			case tc.want == "" && !errors.Is(err, ErrInvalidOrigin):
				t.Errorf("error %v does not wrap ErrInvalidOrigin", err)
			case tc.want != "" && err != nil:
				t.Errorf("NormalizeOrigin(%q): %v", tc.entry, err)
			case got != tc.want:
				t.Errorf("NormalizeOrigin(%q) = %q, want %q", tc.entry, got, tc.want)
			}
			if err == nil {
				if again, _ := NormalizeOrigin(got); again != got {
					t.Errorf("not idempotent: %q then %q", got, again)
				}
			}
		})
	}
}

// TestOriginPatterns covers the load-time rule for regular expressions:
// the host must end in a literal domain, so that no pattern matches a
// site outside the domain it names.
func TestOriginPatterns(t *testing.T) {
	cases := []struct {
		entry string
		ok    bool
		match []string // with ok: must match
		miss  []string // with ok: must not match
	}{
		{`~^https://pr-[0-9]+\.preview\.example\.com$`, true,
			[]string{"https://pr-1.preview.example.com"},
			[]string{"https://pr-1.preview.example.com.evil.test", "https://pr-x.preview.example.com",
				"https://pr-1.previewxexample.com", "http://pr-1.preview.example.com"}},
		{`~^https://(app|admin)\.example\.com$`, true,
			[]string{"https://app.example.com", "https://admin.example.com"},
			[]string{"https://api.example.com", "https://app.example.com:8443"}},
		{`~^https://(app\.example\.com|admin\.example\.com)$`, true,
			[]string{"https://admin.example.com"}, []string{"https://appxexample.com"}},
		{`~^https?://app\.example\.com$`, true,
			[]string{"http://app.example.com", "https://app.example.com"}, []string{"ftp://app.example.com"}},
		{`~^https://[a-z0-9-]+\.example\.com(:[0-9]+)?$`, true,
			[]string{"https://a.example.com", "https://a.example.com:8443"},
			[]string{"https://a.example.com.evil.test:8443", "https://a.b.example.com"}},
		{`~^http://localhost:[0-9]+$`, true,
			[]string{"http://localhost:3000"}, []string{"http://localhost.evil.test:3000", "http://localhost"}},
		{`~^https://.+\.example\.com$`, true,
			[]string{"https://a.b.example.com"},
			[]string{"https://evil.test/.example.com", "https://evil.test@a.example.com", "https://evil.test?.example.com"}},
		{`~^https://(?i)app\.example\.com$`, true, []string{"https://app.example.com"}, nil},
		// an unescaped dot in the domain would let appxexample.com in
		{`~^https://app.example.com$`, false, nil, nil},
		{`~^https://[a-z]+.example\.com$`, false, nil, nil},
		{`~^https://pr-.\.example\.com$`, true, []string{"https://pr-1.example.com"}, []string{"https://pr-1xexample.com"}},
		{`~^https://[a-z]+\.example.com$`, false, nil, nil},
		{`~^https://app\.example\.com.*$`, false, nil, nil},
		{`~^https://app\.example\.com.+$`, false, nil, nil},
		{`~^https://app\.example\.com[a-z.]*$`, false, nil, nil},
		{`~^https://app\.example\.com[0-9]$`, false, nil, nil},
		{`~^https://.*$`, false, nil, nil},
		{`~^https?://.*\.[a-z]+$`, false, nil, nil},
		{`~^https://[a-z]+\.com$`, false, nil, nil},
		{`~^https://[a-z]+\.co\.uk$`, false, nil, nil},
		{`~^https://[a-z]+\.github\.io$`, false, nil, nil},
		{`~^https://[a-z]+\.example\.com|.*$`, false, nil, nil},
		{`~^https://[a-z]+\.example\.(com|evil)$`, false, nil, nil},
		// not anchored
		{`~https://app\.example\.com`, false, nil, nil},
		{`~^https://app\.example\.com`, false, nil, nil},
		{`~https://app\.example\.com$`, false, nil, nil},
		{`~^https://app\.example\.com\$`, false, nil, nil},
		{`~^https://app\.example\.com(`, false, nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.entry, func(t *testing.T) {
			list, err := newOriginAllowlist([]string{tc.entry})
			if !tc.ok {
				if err == nil {
					t.Fatalf("%s was accepted", tc.entry)
				}
				if !errors.Is(err, ErrInvalidOrigin) {
					t.Errorf("error %v does not wrap ErrInvalidOrigin", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("%s refused: %v", tc.entry, err)
			}
			for _, o := range tc.match {
				if !list.allows(o) {
					t.Errorf("%s does not match %s", tc.entry, o)
				}
			}
			for _, o := range tc.miss {
				if list.allows(o) {
					t.Errorf("%s matches %s", tc.entry, o)
				}
			}
			if list.nearWildcard() {
				t.Errorf("%s matches unrelated sites", tc.entry)
			}
		})
	}
}

// caddyfileLine is how the Caddyfile parser names a line in its errors.
var caddyfileLine = regexp.MustCompile(`Caddyfile:[0-9]+`)

// TestOriginConfigErrors checks that caddy adapt refuses bad entries with
// the Caddyfile line that holds them.
func TestOriginConfigErrors(t *testing.T) {
	cases := []struct {
		name    string
		origins string
		extra   string
		want    string
	}{
		{"trailing slash", "https://app.example.com/", "", "Caddyfile:6"},
		{"path", "https://app.example.com/api", "", "Caddyfile:6"},
		{"query", "https://app.example.com?x", "", "Caddyfile:6"},
		{"user info", "https://a@app.example.com", "", "Caddyfile:6"},
		{"unanchored regexp", `~https://app\.example\.com`, "", "Caddyfile:6"},
		{"regexp with unescaped dot", `~^https://app.example.com$`, "", "Caddyfile:6"},
		{"regexp with open end", `~^https://app\.example\.com.*$`, "", "Caddyfile:6"},
		{"star", "*", "", "Caddyfile:6"},
		{"wildcard over a public suffix", "https://*.co.uk", "", "Caddyfile:6"},
		{"second entry", "https://app.example.com https://app.example.com/", "", "Caddyfile:6"},
		{"credentials with an open regexp", `~^https://.*\.[a-z]+$`, "allow_credentials", "Caddyfile:6"},
		{"credentials with null", "https://app.example.com null", "allow_credentials", "Caddyfile"},
		{"max age above the bound", "https://app.example.com", "max_age 25h", "Caddyfile"},
		{"star method", "https://app.example.com", "allow_methods *", "Caddyfile"},
		{"forbidden method", "https://app.example.com", "allow_methods GET TRACE", "Caddyfile"},
		{"star header", "https://app.example.com", "allow_headers *", "Caddyfile"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			caddyfile := `{
	admin off
}
http://127.0.0.1:0 {
	edge_guard {
		allow_origins ` + tc.origins + `
		` + tc.extra + `
		issuer https://issuer.test {
			jwks_url http://127.0.0.1:9/jwks
			audience items-api
		}
	}
}
`
			_, err := testkit.AdaptCaddyfile([]byte(caddyfile), "Caddyfile", nil)
			if err == nil {
				t.Fatalf("adapt accepted allow_origins %s", tc.origins)
			}
			if !strings.Contains(err.Error(), tc.want) || !caddyfileLine.MatchString(err.Error()) {
				t.Errorf("error %q does not name %s", err, tc.want)
			}
		})
	}

	// the entries above, written correctly, adapt
	good := `{
	admin off
}
http://127.0.0.1:0 {
	edge_guard {
		allow_origins https://app.example.com https://*.example.org ~^https://pr-[0-9]+\.example\.net$ null
		issuer https://issuer.test {
			jwks_url http://127.0.0.1:9/jwks
			audience items-api
		}
	}
}
`
	if _, err := testkit.AdaptCaddyfile([]byte(good), "Caddyfile", nil); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
}

// lookAlikeFixture lists one entry of each kind.
func lookAlikeFixture(t *testing.T, extra ...string) *fixture {
	t.Helper()
	return newFixture(t, func(h *Handler) {
		h.CORS.AllowOrigins = append([]string{
			appOrigin,
			"http://localhost:3000",
			"https://*.example.org",
			`~^https://pr-[0-9]+\.preview\.example\.net$`,
			`~^https://.+\.tenant\.example\.net$`,
		}, extra...)
	})
}

// TestLookAlikeOrigins runs origins that resemble allowed ones through the
// preflight and the actual request: none may get a CORS answer, and none
// may reach the upstream.
func TestLookAlikeOrigins(t *testing.T) {
	f := lookAlikeFixture(t)
	token := f.token(t, nil)
	hostile := []string{
		// prefix and suffix hosts
		"https://app.example.com.evil.test",
		"https://evilapp.example.com",
		"https://app.example.com.",
		"https://app-example.com",
		"https://appxexample.com",
		"https://example.org",
		"https://.example.org",
		"https://a.b.example.org",
		"https://a.example.org.evil.test",
		"https://evil-example.org",
		"https://*.example.org",
		"https://pr-1.preview.example.net.evil.test",
		"https://pr-1xpreviewxexample.net",
		"https://pr-.preview.example.net",
		// other scheme, other port, default port written out
		"http://app.example.com",
		"wss://app.example.com",
		"https://app.example.com:8443",
		"https://app.example.com:443",
		"https://a.example.org:443",
		"https://a.example.org:8443",
		"http://localhost:30000",
		"http://localhost:300",
		"http://localhost",
		"http://127.0.0.1:3000",
		"http://localhost:3000:3000",
		// case variants
		"https://APP.example.com",
		"HTTPS://app.example.com",
		"https://A.example.org",
		"https://PR-1.preview.example.net",
		// null is not listed
		"null",
		"NULL",
		// paths and trailing slashes are never in a serialised origin
		"https://app.example.com/",
		"https://a.example.org/",
		"https://evil.test/.tenant.example.net",
		"https://evil.test?.tenant.example.net",
		"https://evil.test#.tenant.example.net",
		// user info
		"https://app.example.com@evil.test",
		"https://evil.test@a.example.org",
		"https://evil.test@x.tenant.example.net",
		"https://evil.test:x@x.tenant.example.net",
		// lists
		appOrigin + ", https://evil.test",
		appOrigin + " https://evil.test",
		"https://evil.test " + appOrigin,
		// control bytes
		appOrigin + "\r\nAccess-Control-Allow-Origin: *",
		appOrigin + "\n",
		appOrigin + "\x00",
		appOrigin + "\t",
		"\x00" + appOrigin,
		appOrigin + "\x7f",
		// very long
		"https://" + strings.Repeat("a", 5000) + ".example.org",
		"https://" + strings.Repeat("a.", 600) + "tenant.example.net",
		// unicode and punycode look-alikes
		"https://аpp.example.com",        // Cyrillic а
		"https://app.exаmple.com",        // Cyrillic а in the domain
		"https://xn--pp-7ka.example.com", // punycode of a look-alike
		"https://app.example.com\u200b",  // zero-width space
		"https://a.example.org\uff0e",    // fullwidth full stop
		"https://app.xn--exmple-cua.com", // punycode look-alike domain
		"https://a.xn--exmple-cua.org",   // ... for the wildcard
		"https://app.example.com%2eevil.test",
		"",
	}
	for _, origin := range hostile {
		t.Run(origin, func(t *testing.T) {
			before := f.upstream.count()
			preflight := f.serve(t, request("OPTIONS", "/api/items",
				"Origin", origin, "Access-Control-Request-Method", "PUT",
				"Access-Control-Request-Headers", "authorization"))
			actual := f.serve(t, request("GET", "/api/items", "Origin", origin, "Authorization", "Bearer "+token))
			for name, w := range map[string]*httptest.ResponseRecorder{"preflight": preflight, "actual": actual} {
				if w.Code != http.StatusForbidden && w.Code != http.StatusBadRequest {
					t.Errorf("%s: status %d, want 403 or 400", name, w.Code)
				}
				assertNoCORS(t, w)
				assertVaryOrigin(t, w)
			}
			if f.upstream.count() != before {
				t.Error("the request reached the upstream")
			}
		})
	}

	t.Run("several Origin headers", func(t *testing.T) {
		for _, method := range []string{"OPTIONS", "GET"} {
			w := f.serve(t, request(method, "/api/items", "Origin", appOrigin, "Origin", appOrigin,
				"Access-Control-Request-Method", "GET", "Authorization", "Bearer "+token))
			if w.Code != http.StatusBadRequest {
				t.Errorf("%s: status %d, want 400", method, w.Code)
			}
			assertNoCORS(t, w)
		}
		if f.upstream.count() != 0 {
			t.Error("the request reached the upstream")
		}
	})
}

// TestAllowedOrigins is the positive side of the look-alike table: every
// kind of entry lets its origins through, preflight and actual request.
func TestAllowedOrigins(t *testing.T) {
	f := lookAlikeFixture(t, "null")
	token := f.token(t, nil)
	for _, origin := range []string{
		appOrigin,
		"http://localhost:3000",
		"https://a.example.org",
		"https://xn--80ak6aa92e.example.org",
		"https://pr-42.preview.example.net",
		"https://a.b.tenant.example.net",
		"null",
	} {
		t.Run(origin, func(t *testing.T) {
			preflight := f.serve(t, request("OPTIONS", "/api/items",
				"Origin", origin, "Access-Control-Request-Method", "PUT",
				"Access-Control-Request-Headers", "authorization"))
			if preflight.Code != http.StatusNoContent {
				t.Fatalf("preflight: status %d", preflight.Code)
			}
			assertAllowOrigin(t, preflight, origin)
			before := f.upstream.count()
			actual := f.serve(t, request("PUT", "/api/items", "Origin", origin, "Authorization", "Bearer "+token))
			if actual.Code != http.StatusOK {
				t.Fatalf("actual: status %d", actual.Code)
			}
			assertAllowOrigin(t, actual, origin)
			if f.upstream.count() != before+1 {
				t.Error("the request did not reach the upstream")
			}
		})
	}
}

func TestSameOriginPasses(t *testing.T) {
	f := newFixture(t, nil)
	token := f.token(t, nil)
	cases := []struct {
		target, origin string
		status         int
	}{
		{"http://api.internal/x", "http://api.internal", 200},
		{"http://api.internal:80/x", "http://api.internal", 200},
		{"http://API.internal:8080/x", "http://api.internal:8080", 200},
		{"http://[::1]:8080/x", "http://[::1]:8080", 200},
		{"http://api.internal/x", "https://api.internal", 403},
		{"http://api.internal/x", "http://api.internal:8080", 403},
		{"http://api.internal/x", "http://api.internal:80", 403},
		{"http://api.internal/x", "http://api.internal.evil.test", 403},
	}
	for _, tc := range cases {
		t.Run(tc.target+" "+tc.origin, func(t *testing.T) {
			r := httptest.NewRequest("POST", tc.target, nil)
			r.Header.Set("Origin", tc.origin)
			r.Header.Set("Authorization", "Bearer "+token)
			before := f.upstream.count()
			w := f.serve(t, r)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d", w.Code, tc.status)
			}
			// same-origin reads need no CORS headers, so none are sent
			assertNoCORS(t, w)
			if forwarded := f.upstream.count() > before; forwarded != (tc.status == 200) {
				t.Errorf("forwarded = %v", forwarded)
			}
		})
	}
}
