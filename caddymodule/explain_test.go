package caddymodule

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

const explainCaddyfile = `{
	admin off
}

http://127.0.0.1:0 {
	handle /health {
		respond 204
	}
	handle /api/admin/* {
		edge_guard admin {
			allow_origins https://admin.example.com
			issuer {$EXPLAIN_ISSUER} {
				jwks_url {$EXPLAIN_JWKS_URL}
				audience items-api
			}
			require_role admin
			claim_header X-User-Id sub
		}
		# never contacted: the explain command forwards nowhere
		reverse_proxy 127.0.0.1:9
	}
	handle /api/* {
		edge_guard public {
			allow_origins https://app.example.com
			issuer {$EXPLAIN_ISSUER} {
				jwks_url {$EXPLAIN_JWKS_URL}
				audience items-api
			}
			claim_header X-User-Id sub
			claim_header X-Tenant tenant
		}
		# never contacted: the explain command forwards nowhere
		reverse_proxy 127.0.0.1:9
	}
}
`

// explainSetup writes the Caddyfile for a key endpoint of its own and
// returns its path.
func explainSetup(t *testing.T, jwks *testkit.JWKSServer) string {
	t.Helper()
	t.Setenv("EXPLAIN_ISSUER", jwks.Issuer)
	t.Setenv("EXPLAIN_JWKS_URL", jwks.URL)
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(explainCaddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExplain(t *testing.T) {
	key := testkit.MustRSAKey(t, "explain-1")
	forger := testkit.MustRSAKey(t, "explain-1") // same kid, other key
	stranger := testkit.MustRSAKey(t, "explain-unknown")
	jwks := testkit.StartJWKS(t, key)
	config := explainSetup(t, jwks)

	sign := func(k *testkit.Key, edit func(map[string]any)) string {
		claims := testkit.Claims(jwks.Issuer, "items-api", "explain-subject-7f3a", time.Hour)
		claims["roles"] = []string{"reader"}
		claims["tenant"] = "explain-tenant-91c2"
		if edit != nil {
			edit(claims)
		}
		return testkit.MustSign(t, k, claims)
	}
	valid := sign(key, nil)
	admin := sign(key, func(c map[string]any) { c["roles"] = []string{"admin"} })
	expired := sign(key, func(c map[string]any) {
		c["exp"] = time.Now().Add(-time.Hour).Unix()
		c["iat"] = time.Now().Add(-2 * time.Hour).Unix()
	})
	otherAudience := sign(key, func(c map[string]any) { c["aud"] = "billing-api" })
	forged := sign(forger, nil)
	unknownKid := sign(stranger, nil)

	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(valid+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name     string
		opts     explainOptions
		stdin    string
		token    string // the token the output must not show
		wantCode int
		want     []string
	}{
		{"valid", explainOptions{Token: valid, Path: "/api/items", Origin: "https://app.example.com"}, "", valid,
			0, []string{"route: public", "PASS", "X-Tenant, X-User-Id", "match path"}},
		{"no origin", explainOptions{Token: valid, Path: "/api/items"}, "", valid,
			0, []string{"route: public", "PASS"}},
		{"token from a file", explainOptions{Token: "@" + tokenFile, Path: "/api/items"}, "", valid,
			0, []string{"PASS"}},
		{"token from stdin, as a header value", explainOptions{Token: "-", Path: "/api/items"}, "Bearer " + valid, valid,
			0, []string{"PASS"}},
		{"expired", explainOptions{Token: expired, Path: "/api/items"}, "", expired,
			exitRefused, []string{"route: public", "REFUSED with 401", "reason: expired", "exp is in the past"}},
		{"wrong audience", explainOptions{Token: otherAudience, Path: "/api/items"}, "", otherAudience,
			exitRefused, []string{"reason: wrong_audience"}},
		{"forged", explainOptions{Token: forged, Path: "/api/items"}, "", forged,
			exitRefused, []string{"reason: bad_signature"}},
		{"unknown kid", explainOptions{Token: unknownKid, Path: "/api/items"}, "", unknownKid,
			exitRefused, []string{"reason: unknown_kid"}},
		{"origin not allowed", explainOptions{Token: valid, Path: "/api/items", Origin: "https://evil.example"}, "", valid,
			exitRefused, []string{"REFUSED with 403", "reason: origin_not_allowed"}},
		{"admin route, reader token", explainOptions{Token: valid, Path: "/api/admin/stats"}, "", valid,
			exitRefused, []string{"route: admin", "reason: missing_role", "require_role"}},
		{"admin route, admin token", explainOptions{Token: admin, Path: "/api/admin/stats"}, "", admin,
			0, []string{"route: admin", "PASS", "X-User-Id"}},
		{"route named", explainOptions{Token: valid, Route: "admin", Path: "/elsewhere"}, "", valid,
			exitRefused, []string{"route: admin", "reason: missing_role"}},
		{"OPTIONS without a requested method is an ordinary request",
			explainOptions{Token: valid, Method: "OPTIONS", Path: "/api/items", Origin: "https://app.example.com"}, "", valid,
			0, []string{"request: OPTIONS", "PASS: the request would be forwarded"}},
		{"preflight allowed", explainOptions{Token: valid, Preflight: "POST", Path: "/api/items", Origin: "https://app.example.com"}, "", valid,
			0, []string{"preflight: OPTIONS /api/items", "route: public", "answered at the edge with 204"}},
		{"preflight, no token given", explainOptions{Preflight: "GET", Path: "/api/items", Origin: "https://app.example.com"}, "", valid,
			0, []string{"answered at the edge with 204"}},
		{"preflight for a method not allowed", explainOptions{Token: valid, Preflight: "DELETE", Path: "/api/items",
			Origin: "https://app.example.com"}, "", valid,
			exitRefused, []string{"REFUSED with 403", "reason: preflight_method_refused"}},
		{"preflight from another origin", explainOptions{Token: valid, Preflight: "GET", Path: "/api/admin/stats",
			Origin: "https://app.example.com"}, "", valid,
			exitRefused, []string{"route: admin", "reason: preflight_origin_refused"}},
		{"unguarded path", explainOptions{Token: valid, Path: "/health"}, "", valid,
			exitRefused, []string{"NOT GUARDED", "static_response"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Config = config
			if tt.opts.Method == "" {
				tt.opts.Method = "GET"
			}
			var out bytes.Buffer
			code, err := explain(tt.opts, strings.NewReader(tt.stdin), &out)
			if err != nil {
				t.Fatalf("explain: %v", err)
			}
			assertExplained(t, out.String(), code, tt.wantCode, tt.want, tt.token)
		})
	}
}

func TestExplainKeySetDown(t *testing.T) {
	key := testkit.MustRSAKey(t, "explain-down")
	jwks := testkit.StartJWKS(t, key)
	jwks.SetStatus(503)
	config := explainSetup(t, jwks)
	token := testkit.MustSign(t, key, testkit.Claims(jwks.Issuer, "items-api", "explain-subject-d0wn", time.Hour))

	var out bytes.Buffer
	code, err := explain(explainOptions{Config: config, Token: token, Path: "/api/items", Method: "GET",
		Timeout: 5 * time.Second}, strings.NewReader(""), &out)
	if err != nil {
		t.Fatalf("explain: %v", err)
	}
	assertExplained(t, out.String(), code, exitRefused,
		[]string{"REFUSED with 503", "reason: keys_unavailable"}, token)
}

func TestExplainRefusesBadInvocations(t *testing.T) {
	key := testkit.MustRSAKey(t, "explain-bad")
	jwks := testkit.StartJWKS(t, key)
	config := explainSetup(t, jwks)
	token := testkit.MustSign(t, key, testkit.Claims(jwks.Issuer, "items-api", "explain-subject-bad", time.Hour))

	tests := []struct {
		name string
		opts explainOptions
		want string
	}{
		{"no token", explainOptions{Config: config, Path: "/api/x"}, "--token is required"},
		{"empty token file", explainOptions{Config: config, Token: "@" + os.DevNull, Path: "/api/x"}, "token is empty"},
		{"no config", explainOptions{Token: token, Path: "/api/x"}, "--config is required"},
		{"no such route", explainOptions{Config: config, Token: token, Route: "nope", Path: "/"}, `no edge_guard route is named "nope"`},
		{"no route for the path", explainOptions{Config: config, Token: token, Path: "/other"}, "no route handles"},
		{"relative path", explainOptions{Config: config, Token: token, Path: "api/x"}, "must start with /"},
		{"preflight without origin", explainOptions{Config: config, Token: token, Path: "/api/x", Preflight: "GET"}, "--preflight needs --origin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			code, err := explain(tt.opts, strings.NewReader(""), &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) || code == 0 {
				t.Fatalf("explain: %d, %v; want an error saying %q", code, err, tt.want)
			}
			if strings.Contains(err.Error(), token) || strings.Contains(out.String(), token) {
				t.Error("the token was printed")
			}
		})
	}
}

func assertExplained(t *testing.T, out string, code, wantCode int, want []string, token string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("exit status %d, want %d; output:\n%s", code, wantCode, out)
	}
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output does not say %q:\n%s", w, out)
		}
	}
	// not the token, nor any part of it, nor a claim value
	for i, part := range strings.Split(token, ".") {
		if len(part) > 8 && strings.Contains(out, part) {
			t.Errorf("output holds segment %d of the token:\n%s", i, out)
		}
	}
	for _, claim := range []string{"explain-subject", "explain-tenant"} {
		if strings.Contains(out, claim) {
			t.Errorf("output holds a claim value (%s):\n%s", claim, out)
		}
	}
}

func TestEveryReasonIsExplained(t *testing.T) {
	for _, reason := range knownReasons {
		if reasonHelp[reason] == "" {
			t.Errorf("reason %q has no explanation in reasonHelp", reason)
		}
	}
	for reason := range reasonHelp {
		found := false
		for _, known := range knownReasons {
			found = found || known == reason
		}
		if !found {
			t.Errorf("reasonHelp explains %q, which is not a known reason", reason)
		}
	}
}
