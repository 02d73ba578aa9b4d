package caddymodule

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// The benchmarks below measure the request path against the performance
// budget in DESIGN.md; BENCHMARKS.md records how they were run and what
// they gave. They assert correctness of what they measure, never speed.

// nopNext is the cheapest next handler: it answers 200 with no body, so
// that a benchmark measures the gateway and not an upstream.
type nopNext struct{}

func (nopNext) ServeHTTP(w http.ResponseWriter, _ *http.Request) error {
	w.WriteHeader(http.StatusOK)
	return nil
}

// discardWriter is an http.ResponseWriter that keeps its header map
// between requests, as a connection's writer does in net/http.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }

// inlineHandler provisions a handler whose issuer publishes key inline,
// so that no key set is fetched while a benchmark runs.
func inlineHandler(tb testing.TB, key *testkit.Key, cacheSize int) *Handler {
	tb.Helper()
	jwks, err := json.Marshal(map[string]any{"keys": []any{key.PublicJWK()}})
	if err != nil {
		tb.Fatal(err)
	}
	h := &Handler{
		Name: "bench",
		CORS: &CORS{
			AllowOrigins: []string{appOrigin, "https://*.example.org"},
			AllowMethods: []string{"GET", "POST", "PUT"},
			AllowHeaders: []string{"Content-Type"},
		},
		Issuers: []*Issuer{{
			Issuer:    testIssuer,
			JWKS:      jwks,
			Audiences: []string{testAudience},
		}},
		ClaimHeaders:   map[string]string{"X-User-Id": "sub"},
		TokenCacheSize: cacheSize,
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		tb.Fatalf("provision: %v", err)
	}
	tb.Cleanup(func() { _ = h.Cleanup() })
	return h
}

func benchToken(tb testing.TB, key *testkit.Key, subject string) string {
	tb.Helper()
	claims := testkit.Claims(testIssuer, testAudience, subject, time.Hour)
	claims["roles"] = []string{"reader"}
	return testkit.MustSign(tb, key, claims)
}

// BenchmarkCORS measures the CORS step alone: answering a preflight, and
// deciding on the origin of an actual request and writing its headers.
func BenchmarkCORS(b *testing.B) {
	h := inlineHandler(b, testkit.MustEdKey(b, "ed"), 0)
	cors := h.CORS

	b.Run("preflight", func(b *testing.B) {
		r := httptest.NewRequest(http.MethodOptions, "http://api.internal/items", nil)
		r.Header.Set("Origin", appOrigin)
		r.Header.Set("Access-Control-Request-Method", "PUT")
		r.Header.Set("Access-Control-Request-Headers", "authorization, content-type")
		header := make(http.Header)
		b.ReportAllocs()
		for b.Loop() {
			stripCORSHeaders(header)
			if cors.answerPreflight(header, r, appOrigin) != preflightAllowed {
				b.Fatal("preflight refused")
			}
		}
	})

	b.Run("actual", func(b *testing.B) {
		for _, origin := range []string{appOrigin, "https://shop.example.org"} {
			b.Run(strings.TrimPrefix(origin, "https://"), func(b *testing.B) {
				header := http.Header{"Vary": {"Accept-Encoding"}, "Access-Control-Allow-Origin": {"*"}}
				upstreamValue := []string{"*"}
				b.ReportAllocs()
				for b.Loop() {
					if !cors.origins.allows(origin) {
						b.Fatal("origin refused")
					}
					header["Access-Control-Allow-Origin"] = upstreamValue
					stripCORSHeaders(header)
					cors.decorate(header, origin, false)
				}
				if got := header["Access-Control-Allow-Origin"]; len(got) != 1 || got[0] != origin {
					b.Fatalf("Access-Control-Allow-Origin %q", got)
				}
			})
		}
	})
}

// BenchmarkHandlerCachedToken runs the whole handler for the usual browser
// request: an allowed origin and a token the cache already holds, with a
// next handler that does nothing.
func BenchmarkHandlerCachedToken(b *testing.B) {
	key := testkit.MustRSAKey(b, "rsa")
	h := inlineHandler(b, key, 0)
	token := benchToken(b, key, "alice")

	r := httptest.NewRequest(http.MethodGet, "http://api.internal/items", nil)
	r.Header.Set("Origin", appOrigin)
	r.Header.Set("Authorization", "Bearer "+token)
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
	w := &discardWriter{header: make(http.Header)}
	if err := h.ServeHTTP(w, r, nopNext{}); err != nil || w.status != http.StatusOK {
		b.Fatalf("warm-up: status %d, error %v", w.status, err)
	}

	b.ReportAllocs()
	for b.Loop() {
		if err := h.ServeHTTP(w, r, nopNext{}); err != nil {
			b.Fatal(err)
		}
	}
	if w.status != http.StatusOK || r.Header.Get("X-User-Id") != "alice" {
		b.Fatalf("status %d, X-User-Id %q", w.status, r.Header.Get("X-User-Id"))
	}
}

// BenchmarkVerify compares the first sight of a token (the cache is off,
// so every iteration parses, looks up the key, checks the signature and
// the claims) with the bare signature check of the standard library on
// the same key and signing input. The budget is 1.5x.
func BenchmarkVerify(b *testing.B) {
	keys := []*testkit.Key{
		testkit.MustRSAKey(b, "rsa"),
		testkit.MustECKey(b, "ec"),
		testkit.MustEdKey(b, "ed"),
	}
	for _, key := range keys {
		b.Run(key.Alg, func(b *testing.B) {
			h := inlineHandler(b, key, -1)
			token := benchToken(b, key, "alice")
			dot := strings.LastIndexByte(token, '.')
			input := []byte(token[:dot])
			signature, err := testkit.DecodeSegment(token[dot+1:])
			if err != nil {
				b.Fatal(err)
			}

			b.Run("edgeguard", func(b *testing.B) {
				ctx := context.Background()
				b.ReportAllocs()
				for b.Loop() {
					if id, ref := h.authenticate(ctx, token); ref != nil || id.subject != "alice" {
						b.Fatalf("refused: %v", ref)
					}
				}
			})

			b.Run("stdlib", func(b *testing.B) {
				check := rawCheck(b, key, signature)
				b.ReportAllocs()
				for b.Loop() {
					if !check(input) {
						b.Fatal("signature does not verify")
					}
				}
			})
		})
	}
}

// rawCheck returns the standard library's check of a JWS signature on
// key: the SHA-256 digest of the signing input and the verification, with
// the signature brought into the form the package wants beforehand.
func rawCheck(tb testing.TB, key *testkit.Key, signature []byte) func(input []byte) bool {
	tb.Helper()
	switch pub := key.Public().(type) {
	case *rsa.PublicKey:
		return func(input []byte) bool {
			digest := sha256.Sum256(input)
			return rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], signature) == nil
		}
	case *ecdsa.PublicKey:
		half := len(signature) / 2
		der := encodeECDSASignature(signature[:half], signature[half:])
		return func(input []byte) bool {
			digest := sha256.Sum256(input)
			return ecdsa.VerifyASN1(pub, digest[:], der)
		}
	case ed25519.PublicKey:
		return func(input []byte) bool { return ed25519.Verify(pub, input, signature) }
	}
	tb.Fatalf("unsupported key %T", key.Public())
	return nil
}

// TestTokenCacheStaysWithinSize streams distinct valid tokens through the
// handler and checks after each one that the cache holds no more than its
// configured size, so memory stays bounded however many tokens arrive.
func TestTokenCacheStaysWithinSize(t *testing.T) {
	key := testkit.MustEdKey(t, "ed")
	cases := []struct {
		size   int
		tokens int
	}{
		{size: 1, tokens: 20},
		{size: 8, tokens: 100},
		{size: 50, tokens: 400},
	}
	for _, tc := range cases {
		t.Run("size "+strconv.Itoa(tc.size), func(t *testing.T) {
			h := inlineHandler(t, key, tc.size)
			largest := 0
			for i := range tc.tokens {
				token := benchToken(t, key, "user-"+strconv.Itoa(i))
				r := httptest.NewRequest(http.MethodGet, "http://api.internal/items", nil)
				r.Header.Set("Authorization", "Bearer "+token)
				w := &discardWriter{header: make(http.Header)}
				if err := h.ServeHTTP(w, r, nopNext{}); err != nil || w.status != http.StatusOK {
					t.Fatalf("token %d: status %d, error %v", i, w.status, err)
				}
				n := h.cache.len()
				if n > tc.size {
					t.Fatalf("after %d distinct tokens the cache holds %d, more than its size %d", i+1, n, tc.size)
				}
				largest = max(largest, n)
			}
			// a cache that never fills is not being exercised
			if largest != tc.size {
				t.Errorf("the cache peaked at %d entries, want it to reach its size %d", largest, tc.size)
			}
		})
	}
}
