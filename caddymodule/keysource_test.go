package caddymodule

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// fakeClock is an injectable clock that tests move by hand; it is safe
// to read from the key source's own goroutines.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := new(fakeClock)
	c.ns.Store(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// startSource starts a key source on the fake clock, with the defaults
// Provision would fill in for any setting cfg leaves zero.
func startSource(t *testing.T, cfg keySourceConfig, clock *fakeClock) *keySource {
	t.Helper()
	defaults := []struct {
		field *time.Duration
		value time.Duration
	}{
		{&cfg.RefreshMin, defaultRefreshMin},
		{&cfg.RefreshMax, defaultRefreshMax},
		{&cfg.MaxStale, defaultMaxStale},
		{&cfg.FetchTimeout, defaultFetchTimeout},
		{&cfg.RefetchInterval, defaultRefetchInterval},
	}
	for _, d := range defaults {
		if *d.field == 0 {
			*d.field = d.value
		}
	}
	s := newKeySource(cfg, zap.NewNop(), nil)
	s.now = clock.Now
	if err := s.start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() { _ = s.Destruct() })
	return s
}

// mustKeys returns the source's keys, failing the test if there are none.
func mustKeys(t *testing.T, s *keySource) *keySnapshot {
	t.Helper()
	snap, err := s.keys(context.Background())
	if err != nil {
		t.Fatalf("keys: %v", err)
	}
	return snap
}

// refetch forces one request-driven fetch, the way an unknown kid does,
// after moving the clock past the rate limit.
func refetch(t *testing.T, s *keySource, clock *fakeClock) {
	t.Helper()
	clock.Advance(s.cfg().RefetchInterval)
	call := s.startFetch(false)
	if call == nil {
		t.Fatal("refetch refused by the rate limit")
	}
	<-call.done
}

func assertKids(t *testing.T, snap *keySnapshot, want ...string) {
	t.Helper()
	var got []string
	for _, k := range snap.keys.all {
		got = append(got, k.kid)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("keys %q, want %q", got, want)
	}
}

func TestKeySourceStartsWhileIssuerIsDown(t *testing.T) {
	clock := newFakeClock()
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	jwks.SetStatus(http.StatusServiceUnavailable)

	s := startSource(t, keySourceConfig{URL: jwks.URL}, clock)
	if _, err := s.keys(context.Background()); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("keys while the issuer is down: %v, want ErrKeysUnavailable", err)
	}
	if jwks.Fetches() == 0 {
		t.Fatal("no fetch was tried")
	}

	jwks.SetStatus(0)
	clock.Advance(s.cfg().RefetchInterval)
	assertKids(t, mustKeys(t, s), "k1")
}

func TestKeySourceNeverReplacesGoodKeys(t *testing.T) {
	good := testkit.MustRSAKey(t, "good")
	other := testkit.MustRSAKey(t, "other")
	encOnly := other.PublicJWK()
	encOnly["use"] = "enc"
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	small := &testkit.Key{Kid: "small", Alg: "RS256", Private: weak}

	cases := []struct {
		name  string
		spoil func(s *testkit.JWKSServer)
	}{
		{"server error", func(s *testkit.JWKSServer) { s.SetStatus(500) }},
		{"not found", func(s *testkit.JWKSServer) { s.SetStatus(404) }},
		{"redirect without location", func(s *testkit.JWKSServer) { s.SetStatus(302) }},
		{"garbage", func(s *testkit.JWKSServer) { s.SetBody([]byte("<html>maintenance</html>")) }},
		{"truncated", func(s *testkit.JWKSServer) { s.SetBody([]byte(`{"keys":[{"kty":"RSA","kid":"x"`)) }},
		{"empty set", func(s *testkit.JWKSServer) { s.SetBody([]byte(`{"keys":[]}`)) }},
		{"no keys member", func(s *testkit.JWKSServer) { s.SetBody([]byte(`{"error":"oops"}`)) }},
		{"null", func(s *testkit.JWKSServer) { s.SetBody([]byte(`null`)) }},
		{"only encryption keys", func(s *testkit.JWKSServer) { s.SetJWKs(encOnly) }},
		{"only a symmetric key", func(s *testkit.JWKSServer) {
			s.SetBody([]byte(`{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}`))
		}},
		{"only a weak key", func(s *testkit.JWKSServer) { s.SetKeys(small) }},
		{"larger than allowed", func(s *testkit.JWKSServer) {
			s.SetBody([]byte(`{"keys":[],"pad":"` + strings.Repeat("a", maxKeySetBytes) + `"}`))
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			jwks := testkit.StartJWKS(t, good)
			s := startSource(t, keySourceConfig{URL: jwks.URL}, clock)
			before := mustKeys(t, s)

			tc.spoil(jwks)
			fetches := jwks.Fetches()
			refetch(t, s, clock)
			if jwks.Fetches() == fetches {
				t.Fatal("the broken key set was never fetched")
			}

			after := mustKeys(t, s)
			assertKids(t, after, "good")
			if after.generation != before.generation {
				t.Errorf("generation %d, want %d: a bad fetch changed the keys", after.generation, before.generation)
			}
		})
	}
}

func TestKeySourceServesStaleKeysUpToMaxStale(t *testing.T) {
	clock := newFakeClock()
	jwks := testkit.StartJWKS(t, testkit.MustRSAKey(t, "k1"))
	s := startSource(t, keySourceConfig{URL: jwks.URL, MaxStale: time.Hour}, clock)
	mustKeys(t, s)

	jwks.SetStatus(http.StatusBadGateway)
	refetch(t, s, clock) // fails; the keys are 10s old

	clock.Advance(59 * time.Minute)
	assertKids(t, mustKeys(t, s), "k1") // within max_stale: still served

	clock.Advance(2 * time.Minute)
	if _, err := s.keys(context.Background()); !errors.Is(err, ErrKeysUnavailable) {
		t.Fatalf("keys past max_stale: %v, want ErrKeysUnavailable", err)
	}

	// the issuer comes back: the next allowed fetch restores service
	jwks.SetStatus(0)
	clock.Advance(s.cfg().RefetchInterval)
	assertKids(t, mustKeys(t, s), "k1")
}

func TestUnknownKidFloodIsRateLimited(t *testing.T) {
	clock := newFakeClock()
	k1 := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, k1)
	s := startSource(t, keySourceConfig{URL: jwks.URL}, clock)
	mustKeys(t, s)
	base := jwks.Fetches()

	// flood runs n concurrent lookups of made-up kids and returns how many
	// were not refused as unknown
	var counter atomic.Int64
	flood := func(n int) int {
		var wg sync.WaitGroup
		var found atomic.Int64
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				kid := fmt.Sprintf("random-%d", counter.Add(1))
				if _, err := s.keysForKid(context.Background(), kid); !errors.Is(err, ErrUnknownKeyID) {
					found.Add(1)
				}
			}()
		}
		wg.Wait()
		return int(found.Load())
	}

	cases := []struct {
		name    string
		advance time.Duration
		delay   time.Duration
		fetches int
	}{
		{"right after a fetch", 0, 0, 0},
		{"interval passed, slow issuer", s.cfg().RefetchInterval, 200 * time.Millisecond, 1},
		{"again within the interval", s.cfg().RefetchInterval / 2, 0, 0},
		{"interval passed again", s.cfg().RefetchInterval, 0, 1},
	}
	for _, tc := range cases {
		clock.Advance(tc.advance)
		jwks.SetDelay(tc.delay)
		if n := flood(300); n != 0 {
			t.Errorf("%s: %d made-up kids were accepted", tc.name, n)
		}
		if got := jwks.Fetches() - base; got != tc.fetches {
			t.Errorf("%s: 300 made-up kids cost %d fetches, want %d", tc.name, got, tc.fetches)
		}
		base = jwks.Fetches()
	}
}

func TestNewKidIsFetchedOnceAndRemembered(t *testing.T) {
	clock := newFakeClock()
	k1, k2 := testkit.MustRSAKey(t, "k1"), testkit.MustRSAKey(t, "k2")
	jwks := testkit.StartJWKS(t, k1)
	s := startSource(t, keySourceConfig{URL: jwks.URL}, clock)
	mustKeys(t, s)

	// a kid that is still unknown after its refetch is remembered: asking
	// again later costs nothing until the negative entry expires
	clock.Advance(s.cfg().RefetchInterval)
	base := jwks.Fetches()
	if _, err := s.keysForKid(context.Background(), "k2"); !errors.Is(err, ErrUnknownKeyID) {
		t.Fatalf("k2 before rotation: %v", err)
	}
	if jwks.Fetches() != base+1 {
		t.Fatalf("unknown kid cost %d fetches, want 1", jwks.Fetches()-base)
	}
	jwks.SetKeys(k1, k2)
	clock.Advance(s.cfg().RefetchInterval)
	if _, err := s.keysForKid(context.Background(), "k2"); !errors.Is(err, ErrUnknownKeyID) {
		t.Fatalf("k2 within the negative cache: %v", err)
	}
	if jwks.Fetches() != base+1 {
		t.Fatal("a remembered unknown kid was fetched again")
	}

	// once the entry expires, the rotated-in key is found with one fetch
	clock.Advance(negativeCacheTTL)
	snap, err := s.keysForKid(context.Background(), "k2")
	if err != nil {
		t.Fatalf("k2 after rotation: %v", err)
	}
	assertKids(t, snap, "k1", "k2")
	if jwks.Fetches() != base+2 {
		t.Errorf("rotated-in kid cost %d fetches, want 1", jwks.Fetches()-base-1)
	}
}

func TestKeySourceHonoursCacheControlWithinBounds(t *testing.T) {
	cases := []struct {
		cacheControl string
		want         time.Duration
	}{
		{"", 15 * time.Minute},
		{"max-age=300", 5 * time.Minute},
		{"public, max-age=1200, must-revalidate", 20 * time.Minute},
		{"max-age=5", 2 * time.Minute},      // refresh_min
		{"max-age=86400", 30 * time.Minute}, // refresh_max
		{"max-age=0", 2 * time.Minute},
		{"no-store", 2 * time.Minute},
		{"no-cache", 2 * time.Minute},
		{`max-age="600"`, 10 * time.Minute},
		{"max-age=-5", 15 * time.Minute},
		{"max-age=soon", 15 * time.Minute},
	}
	jwks := testkit.StartJWKS(t, testkit.MustRSAKey(t, "k1"))
	clock := newFakeClock()
	s := startSource(t, keySourceConfig{URL: jwks.URL, RefreshMin: 2 * time.Minute,
		RefreshMax: 30 * time.Minute}, clock)
	mustKeys(t, s)
	for _, tc := range cases {
		jwks.SetCacheControl(tc.cacheControl)
		refetch(t, s, clock)
		if got := s.nextRefresh(); got != tc.want {
			t.Errorf("Cache-Control %q: next refresh in %s, want %s", tc.cacheControl, got, tc.want)
		}
	}
}

func TestKeySourceRefreshesInTheBackground(t *testing.T) {
	jwks := testkit.StartJWKS(t, testkit.MustRSAKey(t, "k1"))
	jwks.SetCacheControl("max-age=0")
	s := newKeySource(keySourceConfig{URL: jwks.URL, RefreshMin: 20 * time.Millisecond,
		RefreshMax: time.Hour, MaxStale: time.Hour, FetchTimeout: 5 * time.Second,
		RefetchInterval: time.Hour}, zap.NewNop(), nil)
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Destruct() })

	// no request asks for keys: only the background refresh fetches, and
	// the rotated key arrives without one
	k2 := testkit.MustRSAKey(t, "k2")
	jwks.SetKeys(k2)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if snap := s.snapshot.Load(); snap != nil && snap.keys.hasKid("k2") && jwks.Fetches() >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d fetches the background refresh has not loaded k2", jwks.Fetches())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestKeySourceDiscovery(t *testing.T) {
	jwks := testkit.StartJWKS(t, testkit.MustRSAKey(t, "k1"))
	clock := newFakeClock()
	s := startSource(t, keySourceConfig{DiscoveryIssuer: jwks.Issuer}, clock)
	assertKids(t, mustKeys(t, s), "k1")
	if jwks.DiscoveryFetches() != 1 || jwks.Fetches() != 1 {
		t.Errorf("discovery %d, key set %d fetches; want 1 and 1", jwks.DiscoveryFetches(), jwks.Fetches())
	}

	// metadata that names another issuer is not believed
	var keyFetches atomic.Int64
	liar := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/keys" {
			keyFetches.Add(1)
		}
		fmt.Fprintf(w, `{"issuer":"https://someone-else.example","jwks_uri":"http://%s/keys"}`, r.Host)
	}))
	t.Cleanup(liar.Close)
	s = startSource(t, keySourceConfig{DiscoveryIssuer: liar.URL}, clock)
	if _, err := s.keys(context.Background()); !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("keys through lying metadata: %v", err)
	}
	if keyFetches.Load() != 0 {
		t.Error("the key set named by lying metadata was fetched")
	}
}

func TestKeySetURLTransport(t *testing.T) {
	cases := []struct {
		url       string
		allowHTTP bool
		ok        bool
	}{
		{"https://login.example.com/jwks.json", false, true},
		{"http://127.0.0.1:8080/jwks.json", false, true},
		{"http://127.9.9.9/jwks.json", false, true},
		{"http://[::1]:8080/jwks.json", false, true},
		{"http://localhost/jwks.json", false, true},
		{"http://login.example.com/jwks.json", false, false},
		{"http://10.0.0.1/jwks.json", false, false},
		{"http://localhost.example.com/jwks.json", false, false},
		{"http://login.example.com/jwks.json", true, true},
		{"ftp://login.example.com/jwks.json", true, false},
		{"file:///etc/jwks.json", true, false},
		{"https:///jwks.json", false, false},
		{"//login.example.com/jwks.json", false, false},
	}
	for _, tc := range cases {
		err := checkKeySetURL(tc.url, tc.allowHTTP)
		if (err == nil) != tc.ok {
			t.Errorf("%s (allow_http %t): error %v, want ok=%t", tc.url, tc.allowHTTP, err, tc.ok)
		}
		if !tc.ok && strings.HasPrefix(tc.url, "http://") && !errors.Is(err, ErrInsecureKeySetURL) {
			t.Errorf("%s: %v does not wrap ErrInsecureKeySetURL", tc.url, err)
		}
	}
}

func TestRoutesShareOneFetcherWhateverTheirSettings(t *testing.T) {
	jwks := testkit.StartJWKS(t, testkit.MustRSAKey(t, "k1"))
	first := newFixture(t, func(h *Handler) { h.Issuers[0].JWKSURL = jwks.URL })
	second := newFixture(t, func(h *Handler) {
		h.Issuers[0].JWKSURL = jwks.URL
		h.Issuers[0].RefetchInterval = caddy.Duration(time.Minute)
		h.Issuers[0].MaxStale = caddy.Duration(time.Hour)
	})
	src := first.h.issuers[testIssuer].source
	if src != second.h.issuers[testIssuer].source {
		t.Fatal("two routes naming one key set got two fetchers")
	}

	if got := src.cfg(); got.RefetchInterval != time.Minute || got.MaxStale != time.Hour {
		t.Errorf("settings %+v, want the second route's, loaded last", got)
	}
}

func TestKeySourceFollowsNewSettings(t *testing.T) {
	clock := newFakeClock()
	jwks := testkit.StartJWKS(t, testkit.MustRSAKey(t, "k1"))
	cfg := keySourceConfig{URL: jwks.URL, RefreshMin: time.Minute, RefreshMax: time.Hour,
		MaxStale: time.Hour, FetchTimeout: 5 * time.Second, RefetchInterval: 10 * time.Second}
	s := startSource(t, cfg, clock)
	mustKeys(t, s)

	// a reload lengthens the refetch interval and shortens max_stale
	cfg.RefetchInterval, cfg.MaxStale = time.Minute, 30*time.Minute
	s.reconfigure(cfg)
	clock.Advance(10 * time.Second)
	if s.startFetch(false) != nil {
		t.Error("a refetch ran after the old interval")
	}
	jwks.SetStatus(http.StatusInternalServerError)
	clock.Advance(time.Minute)
	call := s.startFetch(false)
	if call == nil {
		t.Fatal("no refetch after the new interval")
	}
	<-call.done
	clock.Advance(30 * time.Minute)
	if _, err := s.keys(context.Background()); !errors.Is(err, ErrKeysUnavailable) {
		t.Errorf("keys past the new max_stale: %v", err)
	}
}

func TestLocalKeySets(t *testing.T) {
	key := testkit.MustEdKey(t, "local")
	doc, err := json.Marshal(map[string]any{"keys": []any{key.PublicJWK()}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(file, doc, 0o600); err != nil {
		t.Fatal(err)
	}
	token := testkit.MustSign(t, key, validClaims())
	for name, set := range map[string]func(iss *Issuer){
		"file":   func(iss *Issuer) { iss.JWKSFile = file },
		"inline": func(iss *Issuer) { iss.JWKS = doc },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, func(h *Handler) {
				h.Issuers[0].JWKSURL = ""
				set(h.Issuers[0])
			})
			if w := f.serve(t, request("GET", "/", "Authorization", "Bearer "+token)); w.Code != 200 {
				t.Errorf("status %d", w.Code)
			}
			other := testkit.MustSign(t, testkit.MustEdKey(t, "local"), validClaims())
			if w := f.serve(t, request("GET", "/", "Authorization", "Bearer "+other)); w.Code != 401 {
				t.Errorf("token of another key: status %d", w.Code)
			}
		})
	}
}

// TestUnsafeKeySetConfigRefused checks that Provision refuses, before any
// fetch, what the key set rules forbid. No URL here is ever dialled.
func TestUnsafeKeySetConfigRefused(t *testing.T) {
	cases := []struct {
		name  string
		set   func(iss *Issuer)
		error string
	}{
		{"plain http to another host", func(iss *Issuer) { iss.JWKSURL = "http://login.example.com/jwks.json" }, "https"},
		{"plain http discovery", func(iss *Issuer) {
			iss.JWKSURL, iss.Issuer, iss.Discovery = "", "http://login.example.com", true
		}, "https"},
		{"inline set without a usable key", func(iss *Issuer) {
			iss.JWKSURL, iss.JWKS = "", json.RawMessage(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`)
		}, "usable"},
		{"inline set that is not a key set", func(iss *Issuer) { iss.JWKSURL, iss.JWKS = "", json.RawMessage(`[]`) }, "JSON Web Key Set"},
		{"missing file", func(iss *Issuer) { iss.JWKSURL, iss.JWKSFile = "", "/nonexistent/jwks.json" }, "reading"},
		{"two key sets", func(iss *Issuer) { iss.JWKSFile = "/nonexistent/jwks.json" }, "one key set"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{Name: "t", CORS: &CORS{AllowOrigins: []string{appOrigin}},
				Issuers: []*Issuer{{Issuer: testIssuer, JWKSURL: "https://login.example.com/jwks.json",
					Audiences: []string{testAudience}}}}
			tc.set(h.Issuers[0])
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := h.Provision(ctx)
			_ = h.Cleanup()
			if err == nil || !strings.Contains(err.Error(), tc.error) {
				t.Errorf("error %v, want one saying %q", err, tc.error)
			}
		})
	}
	// with allow_http, plain http to another host is the operator's call
	if err := (&Issuer{Issuer: testIssuer, JWKSURL: "http://login.example.com/jwks.json",
		AllowHTTP: true, Audiences: []string{testAudience}}).check(); err != nil {
		t.Errorf("allow_http: %v", err)
	}
}

func TestKeySetTroubleIsLogged(t *testing.T) {
	clock := newFakeClock()
	jwks := testkit.StartJWKS(t, testkit.MustRSAKey(t, "k1"))
	core, logs := observer.New(zap.InfoLevel)
	s := newKeySource(keySourceConfig{URL: jwks.URL, RefreshMin: time.Minute, RefreshMax: time.Hour,
		MaxStale: time.Hour, FetchTimeout: 5 * time.Second, RefetchInterval: 10 * time.Second},
		zap.New(core), nil)
	s.now = clock.Now
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Destruct() })
	mustKeys(t, s)

	jwks.SetStatus(http.StatusBadGateway)
	refetch(t, s, clock)
	clock.Advance(2 * time.Hour)
	refetch(t, s, clock)

	want := []struct {
		level   zapcore.Level
		message string
	}{
		{zap.InfoLevel, "key set loaded"},
		{zap.WarnLevel, "key set refresh failed; serving the last good keys"},
		{zap.ErrorLevel, "last good keys are older than max_stale; requests get 503"},
	}
	for _, w := range want {
		if logs.FilterLevelExact(w.level).FilterMessage(w.message).Len() == 0 {
			t.Errorf("no %s log %q", w.level, w.message)
		}
	}
	for _, entry := range logs.All() {
		if entry.ContextMap()["key_set"] != jwks.URL {
			t.Errorf("log %q does not name the key set", entry.Message)
		}
	}
}

func TestKidAskedForDuringAnOutageIsNotRemembered(t *testing.T) {
	clock := newFakeClock()
	k1, k2 := testkit.MustRSAKey(t, "k1"), testkit.MustRSAKey(t, "k2")
	jwks := testkit.StartJWKS(t, k1)
	s := startSource(t, keySourceConfig{URL: jwks.URL}, clock)
	mustKeys(t, s)

	cases := []struct {
		name  string
		spoil func()
	}{
		{"issuer down", func() { jwks.SetStatus(http.StatusServiceUnavailable) }},
		{"garbage", func() { jwks.SetBody([]byte("<html>")) }},
	}
	for _, tc := range cases {
		jwks.SetKeys(k1)
		tc.spoil()
		clock.Advance(s.cfg().RefetchInterval)
		if _, err := s.keysForKid(context.Background(), "k2"); !errors.Is(err, ErrUnknownKeyID) {
			t.Fatalf("%s: k2 during the outage: %v", tc.name, err)
		}

		// the issuer is back with k2 well within the negative cache's
		// lifetime: the next allowed refetch finds it
		jwks.SetStatus(0)
		jwks.SetKeys(k1, k2)
		clock.Advance(s.cfg().RefetchInterval)
		if _, err := s.keysForKid(context.Background(), "k2"); err != nil {
			t.Errorf("%s: k2 after the outage: %v", tc.name, err)
		}
		jwks.SetKeys(k1)
		refetch(t, s, clock)
	}
}
