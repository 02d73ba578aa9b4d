package caddymodule

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// fuzzAllowlist has one entry of each kind; referenceAllows below decides
// the same question independently.
var fuzzAllowlist = []string{
	appOrigin,
	"http://localhost:3000",
	"https://*.example.org",
	`~^https://pr-[0-9]+\.preview\.example\.net$`,
	`~^https://.+\.tenant\.example\.net$`,
}

var (
	referenceLabel  = `[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?`
	referenceOrigin = regexp.MustCompile(`^(https://` + referenceLabel + `\.example\.org` +
		`|https://pr-[0-9]+\.preview\.example\.net` +
		`|https://(` + referenceLabel + `\.)+tenant\.example\.net)$`)
)

// normalShape is what a normalised entry looks like.
var normalShape = regexp.MustCompile(`^[a-z][a-z0-9+.-]*://(\*\.)?[a-z0-9_.:\[\]-]+$`)

// referenceAllows is what fuzzAllowlist means, written without the code
// under test.
func referenceAllows(origin string) bool {
	if origin == appOrigin || origin == "http://localhost:3000" {
		return true
	}
	host := strings.TrimPrefix(origin, "https://")
	return len(origin) <= maxOriginLength && len(host) <= 253 && referenceOrigin.MatchString(origin)
}

func FuzzNormalizeOrigin(f *testing.F) {
	for _, seed := range []string{
		"https://app.example.com", "HTTPS://APP.example.com:443", "http://[::1]:80",
		"https://*.example.com", "https://a@b", "~^https://x\\.example\\.com$", "null", "*",
	} {
		f.Add(seed)
	}
	probes := append([]string{"null", appOrigin, "https://a.example.org", "https://evil.test"}, wildcardProbes...)
	f.Fuzz(func(t *testing.T, entry string) {
		normal, err := NormalizeOrigin(entry)
		if err == nil {
			if again, err := NormalizeOrigin(normal); err != nil || again != normal {
				t.Fatalf("%q normalises to %q, then to %q (%v)", entry, normal, again, err)
			}
			if !normalShape.MatchString(normal) {
				t.Fatalf("%q normalises to %q", entry, normal)
			}
			if !strings.Contains(normal, "*") && !isSerializedOrigin(normal) {
				t.Fatalf("%q normalises to %q, which is not a serialised origin", entry, normal)
			}
		}

		// any entry, regular expressions included, either is refused or
		// matches no unrelated site
		list, err := newOriginAllowlist([]string{entry})
		if err != nil {
			return
		}
		if list.any {
			return
		}
		for _, probe := range probes {
			if list.allows(probe) && probe != normal && !(probe == "null" && entry == "null") &&
				!strings.HasPrefix(entry, "~") && !strings.Contains(normal, "*") {
				t.Fatalf("entry %q allows %q", entry, probe)
			}
		}
		if !strings.HasPrefix(entry, "~") && entry != "null" && list.nearWildcard() {
			t.Fatalf("entry %q matches unrelated sites", entry)
		}
	})
}

// countingUpstream counts what reaches it and answers with a wildcard, as
// a careless upstream would; it keeps no copies, so long runs stay small.
type countingUpstream struct{ n atomic.Int64 }

func (u *countingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	u.n.Add(1)
	w.Header().Set("Access-Control-Allow-Origin", "*")
	w.WriteHeader(http.StatusOK)
	return nil
}

// fuzzFixture is newFixture for a fuzz target: it lives as long as the
// whole run, and logs nothing.
func fuzzFixture(tb testing.TB) (*Handler, *testkit.Key, *countingUpstream) {
	tb.Helper()
	key := testkit.MustRSAKey(tb, "k1")
	jwks := testkit.StartJWKS(tb, key)
	h := &Handler{
		Name: "fuzz",
		CORS: &CORS{AllowOrigins: fuzzAllowlist, AllowMethods: []string{"GET", "PUT"}},
		Issuers: []*Issuer{{
			Issuer: testIssuer, JWKSURL: jwks.URL, Audiences: []string{testAudience},
		}},
		ClaimHeaders: map[string]string{"X-User-Id": "sub"},
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		tb.Fatalf("provision: %v", err)
	}
	tb.Cleanup(func() { _ = h.Cleanup() })
	h.logger = zap.NewNop()
	return h, key, &countingUpstream{}
}

// FuzzOriginHandler sends arbitrary Origin values through the handler, as
// a preflight and as an actual request with a valid token. Whatever the
// value: no panic, no 5xx, no Access-Control-Allow-Origin other than the
// value itself when the reference allows it, and no forwarded request from
// an origin that is neither allowed nor the request's own.
func FuzzOriginHandler(f *testing.F) {
	h, key, next := fuzzFixture(f)
	token := testkit.MustSign(f, key, testkit.Claims(testIssuer, testAudience, "alice", 24*time.Hour))
	for _, seed := range []string{appOrigin, "https://a.example.org", "https://pr-7.preview.example.net",
		"https://x.tenant.example.net", "null", "http://api.internal", "https://app.example.com.evil.test"} {
		f.Add(seed, true)
		f.Add(seed, false)
	}
	f.Fuzz(func(t *testing.T, origin string, preflight bool) {
		var r *http.Request
		if preflight {
			r = request("OPTIONS", "/api/items", "Access-Control-Request-Method", "PUT",
				"Access-Control-Request-Headers", "authorization")
		} else {
			r = request("GET", "/api/items", "Authorization", "Bearer "+token)
		}
		r.Header["Origin"] = []string{origin}
		before := next.n.Load()
		w := httptest.NewRecorder()
		ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
		if err := h.ServeHTTP(w, r.WithContext(ctx), next); err != nil {
			t.Fatalf("origin %q: handler error %v", origin, err)
		}
		if w.Code >= 500 {
			t.Fatalf("origin %q: status %d", origin, w.Code)
		}

		allowed := referenceAllows(origin)
		acao := w.Header().Values("Access-Control-Allow-Origin")
		switch {
		case len(acao) > 1:
			t.Fatalf("origin %q: %d Access-Control-Allow-Origin fields", origin, len(acao))
		case len(acao) == 1 && (acao[0] != origin || !allowed):
			t.Fatalf("origin %q: Access-Control-Allow-Origin %q", origin, acao[0])
		case len(acao) == 0 && allowed:
			t.Fatalf("origin %q is allowed but got no Access-Control-Allow-Origin (status %d)", origin, w.Code)
		}
		if !allowed {
			for name := range w.Header() {
				if isCORSHeader(name) {
					t.Fatalf("origin %q: refused answer carries %s", origin, name)
				}
			}
		}

		forwarded := next.n.Load() > before
		switch {
		case preflight && forwarded:
			t.Fatalf("origin %q: the preflight was forwarded", origin)
		case forwarded && !allowed && origin != "http://api.internal":
			t.Fatalf("origin %q: forwarded from a refused origin", origin)
		case !preflight && allowed && !forwarded:
			t.Fatalf("origin %q: allowed request not forwarded (status %d)", origin, w.Code)
		}
	})
}

// FuzzOriginPattern checks the load-time rule for regular expressions from
// the attacker's side: when an accepted pattern matches an origin, the
// same origin with a label added after its host, or with its top-level
// domain replaced, must not match. That holds exactly when the pattern
// fixes the end of the host, which is what the rule promises.
func FuzzOriginPattern(f *testing.F) {
	for _, seed := range [][2]string{
		{`https://[a-z]+\.example\.com`, "https://ab.example.com"},
		{`https://.+\.example\.com(:[0-9]+)?`, "https://a.b.example.com:8443"},
		{`https?://(app|admin)\.example\.com`, "http://admin.example.com"},
		{`http://localhost:[0-9]+`, "http://localhost:3000"},
		{`https://pr-.\.example\.com`, "https://pr-1.example.com"},
		{`https://app.example.com`, "https://app.example.com"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, pattern, origin string) {
		list, err := newOriginAllowlist([]string{"~^" + pattern + "$"})
		if err != nil || !list.allows(origin) {
			return
		}
		scheme, rest, _ := strings.Cut(origin, "://")
		host, port := rest, ""
		if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.HasSuffix(rest, "]") {
			host, port = rest[:i], rest[i:]
		}
		if strings.HasPrefix(host, "[") || net.ParseIP(host) != nil {
			return // an address has no domain to extend
		}
		extended := scheme + "://" + host + ".evil-fuzz.test" + port
		if list.allows(extended) {
			t.Fatalf("pattern %q matches %q and also %q", pattern, origin, extended)
		}
		if i := strings.LastIndexByte(host, '.'); i >= 0 {
			other := scheme + "://" + host[:i] + ".evilfuzz" + port
			if list.allows(other) {
				t.Fatalf("pattern %q matches %q and also %q", pattern, origin, other)
			}
		}
	})
}
