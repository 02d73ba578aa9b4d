package caddymodule

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

func TestTokenCacheIsBounded(t *testing.T) {
	cases := []struct {
		size, puts, max int
	}{
		{1, 10, 1},
		{8, 100, 8},
		{1000, 5000, 1000},
		{-1, 10, 0},
	}
	for _, tc := range cases {
		c := newTokenCache(tc.size)
		for i := range tc.puts {
			c.put(fmt.Sprintf("token-%d", i), &identity{expires: 1e12}, 0)
		}
		if n := c.len(); n > tc.max || (tc.max > 0 && n == 0) {
			t.Errorf("size %d after %d puts: %d entries, want 1..%d", tc.size, tc.puts, n, tc.max)
		}
		if tc.size > 0 && c.get(fmt.Sprintf("token-%d", tc.puts-1)) == nil {
			t.Errorf("size %d: the newest entry is not there", tc.size)
		}
	}
}

func TestTokenCacheDropsExpiredEntriesFirst(t *testing.T) {
	c := newTokenCache(4)
	c.put("live", &identity{expires: 2000}, 0)
	for i := range 3 {
		c.put(fmt.Sprintf("expired-%d", i), &identity{expires: 500}, 0)
	}
	c.put("new", &identity{expires: 2000}, 1000)
	if c.get("live") == nil || c.get("new") == nil {
		t.Error("a live entry was evicted while expired ones could go")
	}
	if c.len() != 2 {
		t.Errorf("%d entries, want the 2 live ones", c.len())
	}
}

func TestCachedTokenNotUsedPastItsExpiry(t *testing.T) {
	f := newFixture(t, nil)
	start := time.Now()
	f.h.now = func() time.Time { return start }
	token := f.token(t, func(c map[string]any) { c["exp"] = start.Add(time.Minute).Unix() })

	cases := []struct {
		name   string
		at     time.Duration
		status int
	}{
		{"first sight", 0, 200},
		{"cached, before exp", 50 * time.Second, 200},
		{"cached, within leeway", time.Minute + 20*time.Second, 200},
		{"past exp and leeway", time.Minute + 31*time.Second, 401},
		{"clock back, verified afresh", 0, 200},
	}
	for _, tc := range cases {
		f.h.now = func() time.Time { return start.Add(tc.at) }
		w := f.serve(t, request("GET", "/", "Authorization", "Bearer "+token))
		if w.Code != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, w.Code, tc.status)
		}
	}
}

func TestCachedTokenStopsWorkingWhenItsKeyIsRemoved(t *testing.T) {
	f := newFixture(t, nil)
	src := f.h.issuers[testIssuer].source
	refresh := func() { <-src.startFetch(true).done }
	token := f.token(t, nil)
	get := func() int {
		return f.serve(t, request("GET", "/", "Authorization", "Bearer "+token)).Code
	}

	if code := get(); code != 200 {
		t.Fatalf("first sight: status %d", code)
	}
	if f.h.cache.get(token) == nil {
		t.Fatal("the verified token was not cached")
	}

	// an outage or an unchanged key set keeps the cached entry
	f.jwks.SetStatus(http.StatusInternalServerError)
	refresh()
	f.jwks.SetStatus(0)
	refresh()
	if code := get(); code != 200 {
		t.Fatalf("after an outage and an unchanged refresh: status %d", code)
	}

	// rotation: k1 leaves the key set
	k2 := testkit.MustRSAKey(t, "k2")
	f.jwks.SetKeys(k2)
	refresh()
	if code := get(); code != http.StatusUnauthorized {
		t.Fatalf("after k1 was removed: status %d, want 401", code)
	}
	fresh := testkit.MustSign(t, k2, testkit.Claims(testIssuer, testAudience, "alice", time.Hour))
	if code := f.serve(t, request("GET", "/", "Authorization", "Bearer "+fresh)).Code; code != 200 {
		t.Fatalf("token of the new key: status %d", code)
	}
}

func TestTokenCacheOff(t *testing.T) {
	f := newFixture(t, func(h *Handler) { h.TokenCacheSize = -1 })
	token := f.token(t, nil)
	for range 3 {
		if w := f.serve(t, request("GET", "/", "Authorization", "Bearer "+token)); w.Code != 200 {
			t.Fatalf("status %d", w.Code)
		}
	}
	if n := f.h.cache.len(); n != 0 {
		t.Errorf("a disabled cache holds %d entries", n)
	}
}

func TestCachedTokenNotUsedPastMaxStale(t *testing.T) {
	// the route's key source is made first, on a fake clock, so that
	// Provision finds it in the pool
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	clock := newFakeClock()
	cfg := keySourceConfig{URL: jwks.URL}
	if _, _, err := keySources.LoadOrNew(cfg.poolKey(), func() (caddy.Destructor, error) {
		return startSource(t, cfg, clock), nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = keySources.Delete(cfg.poolKey()) })
	f := newFixture(t, func(h *Handler) {
		h.Issuers[0].JWKSURL = jwks.URL
		h.Issuers[0].MaxStale = caddy.Duration(time.Hour)
	})
	token := testkit.MustSign(t, key, validClaims())
	get := func() int { return f.serve(t, request("GET", "/", "Authorization", "Bearer "+token)).Code }

	if code := get(); code != 200 {
		t.Fatalf("first sight: status %d", code)
	}
	jwks.SetStatus(http.StatusServiceUnavailable)
	clock.Advance(50 * time.Minute)
	if code := get(); code != 200 {
		t.Fatalf("within max_stale: status %d", code)
	}
	clock.Advance(20 * time.Minute)
	if code := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("past max_stale: status %d, want 503 rather than the cached answer", code)
	}
	jwks.SetStatus(0)
	clock.Advance(time.Minute)
	if code := get(); code != 200 {
		t.Fatalf("after the issuer came back: status %d", code)
	}
}
