package edgeguard_test

import (
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/edgeguard/edgeguard/caddymodule"
	"github.com/edgeguard/edgeguard/internal/testkit"
)

const (
	appOrigin   = "https://app.example.com"
	adminOrigin = "https://admin.example.com"
	evilOrigin  = "https://evil.example"
	audience    = "items-api"
)

// stack is the real thing on loopback: the example Flask app, a key
// endpoint, and Caddy running Caddyfile.example in this process.
type stack struct {
	flask   *testkit.Flask
	jwks    *testkit.JWKSServer
	key     *testkit.Key
	gateway *testkit.Gateway
	client  *http.Client
}

func startStack(t *testing.T) *stack {
	t.Helper()
	s := &stack{flask: testkit.MustStartFlask(t), client: &http.Client{Timeout: 10 * time.Second}}
	s.key = testkit.MustRSAKey(t, "demo-1")
	s.jwks = testkit.StartJWKS(t, s.key)

	caddyfile, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	s.gateway, err = testkit.StartGateway(caddyfile, "Caddyfile.example", map[string]string{
		"EDGEGUARD_UPSTREAM": s.flask.Addr,
		"EDGEGUARD_ISSUER":   s.jwks.Issuer,
		"EDGEGUARD_JWKS_URL": s.jwks.URL,
		"EDGEGUARD_AUDIENCE": audience,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.gateway.Stop)
	return s
}

func (s *stack) token(t *testing.T, edit func(map[string]any)) string {
	t.Helper()
	claims := testkit.Claims(s.jwks.Issuer, audience, "alice", time.Hour)
	claims["roles"] = []string{"reader"}
	if edit != nil {
		edit(claims)
	}
	return testkit.MustSign(t, s.key, claims)
}

type exchange struct {
	status int
	header http.Header
	body   string
}

func (s *stack) do(t *testing.T, method, path string, headers ...string) exchange {
	t.Helper()
	return roundTrip(t, s.client, method, s.gateway.URL+path, headers...)
}

// roundTrip sends one request with headers given as name, value pairs
// and reads the whole answer.
func roundTrip(t *testing.T, client *http.Client, method, url string, headers ...string) exchange {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Add(headers[i], headers[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return exchange{resp.StatusCode, resp.Header, string(body)}
}

// upstreamSaw returns what reached Flask since the last reset.
func (s *stack) upstreamSaw(t *testing.T) []testkit.UpstreamRequest {
	t.Helper()
	return testkit.MustRequests(t, s.flask)
}

func assertCORS(t *testing.T, e exchange, origin string) {
	t.Helper()
	got := e.header.Values("Access-Control-Allow-Origin")
	switch {
	case origin == "" && len(got) != 0:
		t.Errorf("Access-Control-Allow-Origin %q, want none", got)
	case origin != "" && (len(got) != 1 || got[0] != origin):
		t.Errorf("Access-Control-Allow-Origin %q, want exactly [%q]", got, origin)
	}
	vary := strings.ToLower(strings.Join(e.header.Values("Vary"), ","))
	if strings.Count(vary, "origin") != 1 {
		t.Errorf("Vary %q: want Origin once", e.header.Values("Vary"))
	}
}

func TestFlaskAloneSendsTheWildcard(t *testing.T) {
	flask := testkit.MustStartFlask(t)
	req, _ := http.NewRequest("GET", flask.URL+"/api/public/items", nil)
	req.Header.Set("Origin", evilOrigin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// the premise of the product: without the gateway, any site may read
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Fatalf("the example app should send ACAO *, sent %q", got)
	}
}

func TestEndToEnd(t *testing.T) {
	s := startStack(t)
	valid := s.token(t, nil)
	other := testkit.MustRSAKey(t, "demo-1") // same kid, wrong key

	t.Run("preflight allowed", func(t *testing.T) {
		testkit.MustReset(t, s.flask)
		e := s.do(t, "OPTIONS", "/api/public/items", "Origin", appOrigin,
			"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "Authorization, Content-Type")
		if e.status != http.StatusNoContent {
			t.Fatalf("status %d", e.status)
		}
		assertCORS(t, e, appOrigin)
		if got := e.header.Get("Access-Control-Allow-Headers"); got != "authorization, content-type" {
			t.Errorf("Access-Control-Allow-Headers %q", got)
		}
		if n := len(s.upstreamSaw(t)); n != 0 {
			t.Errorf("the preflight reached Flask (%d requests)", n)
		}
	})

	t.Run("preflight refused", func(t *testing.T) {
		testkit.MustReset(t, s.flask)
		for _, origin := range []string{evilOrigin, adminOrigin} {
			e := s.do(t, "OPTIONS", "/api/public/items", "Origin", origin, "Access-Control-Request-Method", "GET")
			if e.status != http.StatusForbidden {
				t.Errorf("%s: status %d", origin, e.status)
			}
			for name := range e.header {
				if strings.HasPrefix(name, "Access-Control-") {
					t.Errorf("%s: refused preflight carries %s", origin, name)
				}
			}
		}
		if n := len(s.upstreamSaw(t)); n != 0 {
			t.Errorf("a refused preflight reached Flask (%d requests)", n)
		}
	})

	cases := []struct {
		name    string
		path    string
		origin  string
		token   string
		status  int
		acao    string
		reaches bool
	}{
		{"valid token, allowed origin", "/api/public/items", appOrigin, valid, 200, appOrigin, true},
		{"valid token, no origin", "/api/public/items", "", valid, 200, "", true},
		{"valid token, disallowed origin", "/api/public/items", evilOrigin, valid, 403, "", false},
		{"valid token, other route's origin", "/api/public/items", adminOrigin, valid, 403, "", false},
		{"missing token", "/api/public/items", appOrigin, "", 401, appOrigin, false},
		{"expired token", "/api/public/items", appOrigin, s.token(t, func(c map[string]any) {
			c["exp"] = time.Now().Add(-10 * time.Minute).Unix()
		}), 401, appOrigin, false},
		{"wrong issuer", "/api/public/items", appOrigin, s.token(t, func(c map[string]any) {
			c["iss"] = "https://issuer.invalid"
		}), 401, appOrigin, false},
		{"wrong audience", "/api/public/items", appOrigin, s.token(t, func(c map[string]any) {
			c["aud"] = "billing-api"
		}), 401, appOrigin, false},
		{"badly signed", "/api/public/items", appOrigin, testkit.MustSign(t, other,
			testkit.Claims(s.jwks.Issuer, audience, "alice", time.Hour)), 401, appOrigin, false},
		{"reader on the admin route", "/api/admin/stats", adminOrigin, valid, 403, adminOrigin, false},
		{"admin on the admin route", "/api/admin/stats", adminOrigin, s.token(t, func(c map[string]any) {
			c["roles"] = []string{"admin"}
		}), 200, adminOrigin, true},
		{"streamed response", "/api/public/stream", appOrigin, valid, 200, appOrigin, true},
		{"upstream error", "/api/public/error", appOrigin, valid, 500, appOrigin, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			testkit.MustReset(t, s.flask)
			var headers []string
			if tc.origin != "" {
				headers = append(headers, "Origin", tc.origin)
			}
			if tc.token != "" {
				headers = append(headers, "Authorization", "Bearer "+tc.token)
			}
			e := s.do(t, "GET", tc.path, headers...)
			if e.status != tc.status {
				t.Fatalf("status %d, want %d (body %q)", e.status, tc.status, e.body)
			}
			assertCORS(t, e, tc.acao)
			if got := e.header.Values("Access-Control-Allow-Origin"); len(got) > 0 && got[0] == "*" {
				t.Error("Flask's wildcard reached the client")
			}
			if tc.token != "" && strings.Contains(e.body, tc.token) {
				t.Error("the response echoes the token")
			}
			seen := s.upstreamSaw(t)
			if reached := len(seen) > 0; reached != tc.reaches {
				t.Fatalf("reached Flask = %v, want %v", reached, tc.reaches)
			}
			if tc.reaches {
				if ids := seen[0].Header("X-User-Id"); len(ids) != 1 || ids[0] != "alice" {
					t.Errorf("Flask saw X-User-Id %q, want [alice]", ids)
				}
			}
			if tc.status == 401 && !strings.HasPrefix(e.header.Get("WWW-Authenticate"), "Bearer realm=") {
				t.Errorf("WWW-Authenticate %q", e.header.Get("WWW-Authenticate"))
			}
		})
	}

	t.Run("forged claim header replaced", func(t *testing.T) {
		testkit.MustReset(t, s.flask)
		e := s.do(t, "GET", "/api/public/items", "Origin", appOrigin, "Authorization", "Bearer "+valid,
			"X-User-Id", "admin", "X_User_Id", "admin", "x-user-id", "root")
		if e.status != 200 {
			t.Fatalf("status %d", e.status)
		}
		seen := s.upstreamSaw(t)
		if len(seen) != 1 {
			t.Fatalf("Flask saw %d requests", len(seen))
		}
		if ids := seen[0].Header("X-User-Id"); len(ids) != 1 || ids[0] != "alice" {
			t.Errorf("Flask saw X-User-Id %q, want only alice", ids)
		}
		if !strings.Contains(e.body, `"alice"`) || strings.Contains(e.body, `"admin"`) {
			t.Errorf("Flask answered as someone else: %s", e.body)
		}
	})
}
