package caddymodule

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// The fuzz targets run on fixed keys and a fixed clock, so that the
// committed seed corpus (testdata/fuzz) keeps its valid tokens valid.
const (
	fuzzIssuer   = "https://fuzz.issuer.test"
	fuzzAudience = "fuzz-api"
)

var fuzzNow = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

// fuzzKeys derives the issuer's Ed25519 and P-256 keys from fixed seeds.
func fuzzKeys(tb testing.TB) (ed, ec *testkit.Key) {
	tb.Helper()
	edSeed := sha256.Sum256([]byte("edgeguard fuzz ed25519"))
	ecScalar := sha256.Sum256([]byte("edgeguard fuzz p-256"))
	ecPriv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), ecScalar[:])
	if err != nil {
		tb.Fatal(err)
	}
	return &testkit.Key{Kid: "fuzz-ed", Alg: "EdDSA", Private: ed25519.NewKeyFromSeed(edSeed[:])},
		&testkit.Key{Kid: "fuzz-ec", Alg: "ES256", Private: ecPriv}
}

// fuzzGuard is a provisioned route whose issuer's keys are inline, so no
// input can make it wait on the network, and which accepts the token from
// the Authorization header, a cookie and the query.
func fuzzGuard(tb testing.TB) (*Handler, *upstream, []*testkit.Key) {
	tb.Helper()
	ed, ec := fuzzKeys(tb)
	jwks, err := json.Marshal(map[string]any{"keys": []any{ed.PublicJWK(), ec.PublicJWK()}})
	if err != nil {
		tb.Fatal(err)
	}
	h := &Handler{
		Name:          "fuzz",
		CORS:          &CORS{AllowOrigins: []string{appOrigin}},
		Issuers:       []*Issuer{{Issuer: fuzzIssuer, JWKS: jwks, Audiences: []string{fuzzAudience}}},
		ClaimHeaders:  map[string]string{"X-User-Id": "sub"},
		RequireClaims: []string{"sub"},
		TokenCookie:   "session",
		TokenQuery:    "access_token",
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	tb.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = h.Cleanup() })
	h.now = func() time.Time { return fuzzNow }
	return h, &upstream{}, []*testkit.Key{ed, ec}
}

// fuzzSeedTokens are valid tokens and classic forgeries of them.
func fuzzSeedTokens(tb testing.TB, keys []*testkit.Key) []string {
	tb.Helper()
	claims := testkit.Claims(fuzzIssuer, fuzzAudience, "alice", time.Hour)
	claims["iat"], claims["exp"] = fuzzNow.Unix(), fuzzNow.Add(time.Hour).Unix()
	claims["roles"] = []string{"reader"}
	var seeds []string
	for _, key := range keys {
		seeds = append(seeds, testkit.MustSign(tb, key, claims))
	}
	valid := seeds[0]
	parts := strings.Split(valid, ".")
	hmac, err := testkit.SignHMAC([]byte(mustJSON(tb, keys[0].PublicJWK())),
		map[string]any{"alg": "HS256", "kid": "fuzz-ed"}, claims)
	if err != nil {
		tb.Fatal(err)
	}
	seeds = append(seeds,
		seg(`{"alg":"none"}`)+"."+parts[1]+".",
		hmac,
		seg(`{"alg":"EdDSA","kid":"fuzz-ed","alg":"none"}`)+"."+parts[1]+"."+parts[2],
		seg(`{"alg":"EdDSA","kid":"fuzz-ed","crit":["x"],"x":1}`)+"."+parts[1]+"."+parts[2],
		seg(`{"alg":"EdDSA","jku":"http://127.0.0.1:1/k"}`)+"."+parts[1]+"."+parts[2],
		parts[0]+"."+seg(`{"sub":"alice","sub":"admin"}`)+"."+parts[2],
		parts[0]+"."+parts[1],
		valid+".AAAA.AAAA",
		valid+"=",
		`{"payload":"`+parts[1]+`","signatures":[]}`,
	)
	return seeds
}

// assertNotForged fails unless raw is a compact token that the issuer's
// own key signed, checked with the standard library alone.
func assertNotForged(t *testing.T, raw string, keys []*testkit.Key) {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("accepted %q, which is not a three-part token", raw)
	}
	for _, key := range keys {
		if testkit.VerifyToken(key, raw) == nil {
			return
		}
	}
	t.Fatalf("accepted %q, which no issuer key signed", raw)
}

func FuzzToken(f *testing.F) {
	h, up, keys := fuzzGuard(f)
	for _, seed := range fuzzSeedTokens(f, keys) {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		// the parser on its own: what it accepts is canonical, so that no
		// two spellings of one token exist
		if tok, err := parseCompact(raw, defaultMaxTokenBytes); err == nil {
			parts := strings.Split(raw, ".")
			if len(parts) != 3 || tok.signingInput != parts[0]+"."+parts[1] ||
				b64.EncodeToString(tok.signature) != parts[2] {
				t.Fatalf("parsed %q into a different token", raw)
			}
			if tok.header.Alg == "" || tok.claims == nil {
				t.Fatalf("parsed %q without alg or claims", raw)
			}
		}

		// the whole route, with the token as a bearer token
		before := up.count()
		r := httptest.NewRequest("GET", "http://api.internal/", nil)
		r.Header["Authorization"] = []string{"Bearer " + raw}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, up); err != nil {
			t.Fatalf("ServeHTTP returned %v", err)
		}
		assertFuzzAnswer(t, w, up, before, strings.TrimLeft(raw, " "), keys)
	})
}

func FuzzAuthorization(f *testing.F) {
	h, up, keys := fuzzGuard(f)
	valid := fuzzSeedTokens(f, keys)[0]
	for _, seed := range []struct{ authorization, cookie, query string }{
		{"Bearer " + valid, "", ""},
		{"bearer " + valid, "session=" + valid, ""},
		{"BEARER  " + valid, "", "access_token=" + valid},
		{"Bearer " + valid, "session=x.y.z", ""},
		{"Basic YWxpY2U6cHc=", "session=" + valid, "access_token=" + valid + "&access_token=x"},
		{"Bearer", "", ""},
		{"Bearer " + valid + " x", "", ""},
		{"Bearer a.b.c==", "session=\"" + valid + "\"", "access_token=%00"},
		{"", "session=" + valid + "; session=" + valid, "access_token=" + valid},
	} {
		f.Add(seed.authorization, seed.cookie, seed.query)
	}
	f.Fuzz(func(t *testing.T, authorization, cookie, query string) {
		r := httptest.NewRequest("GET", "http://api.internal/", nil)
		r.URL.RawQuery = query
		for v := range strings.SplitSeq(authorization, "\n") {
			r.Header.Add("Authorization", v)
		}
		if cookie != "" {
			r.Header.Set("Cookie", cookie)
		}

		// extraction on its own: a refusal is a malformed request, and a
		// token comes from one of the sources, in token68 syntax when it
		// came from the header
		raw, ref := h.extractToken(r)
		if ref != nil && (ref.status != http.StatusBadRequest || ref.code != "invalid_request") {
			t.Fatalf("extraction refused with %d %s", ref.status, ref.code)
		}
		if raw != "" && !strings.Contains(authorization, raw) && !strings.Contains(cookie, raw) &&
			!strings.Contains(r.URL.Query().Get("access_token"), raw) {
			t.Fatalf("extracted %q, which no source holds", raw)
		}

		before := up.count()
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, up); err != nil {
			t.Fatalf("ServeHTTP returned %v", err)
		}
		assertFuzzAnswer(t, w, up, before, raw, keys)
	})
}

// assertFuzzAnswer checks a fuzzed request's outcome: a 4xx refusal that
// was not forwarded, or a forwarded request that carried a genuine token
// and an identity from it.
func assertFuzzAnswer(t *testing.T, w *httptest.ResponseRecorder, up *upstream, before int,
	raw string, keys []*testkit.Key) {
	t.Helper()
	forwarded := up.count() > before
	switch {
	case w.Code == http.StatusOK:
		if !forwarded {
			t.Fatal("200 without forwarding")
		}
		assertNotForged(t, raw, keys)
		if got := up.last().Header.Values("X-User-Id"); len(got) != 1 || got[0] == "" {
			t.Fatalf("forwarded with X-User-Id %q", got)
		}
	case w.Code >= 400 && w.Code < 500:
		if forwarded {
			t.Fatalf("refused with %d but forwarded", w.Code)
		}
		// refusal texts hold no dot, so a token-shaped input seen in one
		// would be an echo
		if strings.Contains(raw, ".") && strings.Contains(w.Body.String(), raw) {
			t.Fatal("the refusal echoes the token")
		}
	default:
		t.Fatalf("status %d", w.Code)
	}
}

// TestFuzzSeedsBehave keeps the harness honest: its valid seeds pass and
// its forgeries do not, so the fuzz targets start from both sides.
func TestFuzzSeedsBehave(t *testing.T) {
	h, up, keys := fuzzGuard(t)
	for i, raw := range fuzzSeedTokens(t, keys) {
		r := httptest.NewRequest("GET", "http://api.internal/", nil)
		r.Header.Set("Authorization", "Bearer "+raw)
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, up); err != nil {
			t.Fatal(err)
		}
		if want := i < len(keys); (w.Code == http.StatusOK) != want {
			t.Errorf("seed %d: status %d, want passing %t", i, w.Code, want)
		}
	}
}
