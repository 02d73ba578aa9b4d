package caddymodule

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// caddyfileSeeds are edge_guard blocks as people write them, plus a few
// that must be refused; the committed corpus in
// testdata/fuzz/FuzzCaddyfile adds more.
var caddyfileSeeds = []string{
	`edge_guard {
	allow_origins https://app.example.com
	issuer https://login.example.com/ {
		jwks_url https://login.example.com/jwks.json
		audience items-api
	}
}`,
	`edge_guard api {
	allow_origins https://app.example.com https://*.preview.example.com ~^https://pr-[0-9]+\.example\.net$
	allow_methods GET POST PUT DELETE
	allow_headers Content-Type X-Requested-With
	expose_headers X-Request-Id
	allow_credentials
	max_age 1h
	allow_private_network
	issuer https://login.example.com/
	jwks_url http://127.0.0.1:9999/jwks.json
	audience items-api other-api
	algorithms RS256 ES256 EdDSA
	leeway 10s
	max_token_bytes 4096
	token_cookie session
	token_query access_token
	realm items
	require_claim email_verified true
	require_claim realm_access.roles
	require_scope items:read
	require_role admin
	roles_claim realm_access.roles
	claim_header X-User-Id sub
	claim_header X-User-Email email
	strip_authorization
	token_cache_size 500
}`,
	`edge_guard {
	allow_origins null http://localhost:3000
	issuer https://a.example.com {
		discovery
		any_audience
		refresh_min 30s
		refresh_max 10m
		max_stale 1h
		fetch_timeout 2s
		refetch_interval 5s
	}
	issuer https://b.example.com {
		jwks {"keys":[]}
		hmac_secret 0123456789abcdef0123456789abcdef
		algorithms HS256
		audience b
	}
	algorithms RS256 HS256
	anonymous
}`,
	"edge_guard {\n\tallow_origins *\n}",
	"edge_guard {\n\tallow_origins https://app.example.com/\n}",
	"edge_guard {\n\tissuer x {\n\t\tjwks_url ftp://x\n\t}\n}",
	"edge_guard a b",
	"edge_guard {\n\tname\n}",
	"edge_guard {\n\tmax_age -1s\n\tleeway 1y\n\ttoken_cache_size 1e9\n}",
	"edge_guard {\n\tissuer {\n\t\t{\n\t}\n}",
	"edge_guard {\n\tallow_origins `https://app.example.com` \"https://b.example.com\"\n\tissuer <<EOF\n\tx\n\tEOF\n}",
}

// FuzzCaddyfile feeds arbitrary text to the edge_guard Caddyfile parser.
// Whatever it gets, the parser returns an error or a config; it never
// panics. An error names the Caddyfile line, as caddy adapt and caddy
// validate report it; a config it accepts survives Caddy's JSON round
// trip unchanged and is one that Provision's own checks accept.
func FuzzCaddyfile(f *testing.F) {
	for _, seed := range caddyfileSeeds {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil || len(tokens) == 0 || tokens[0].Text != "edge_guard" {
			// not a directive: the lexer, not this module, refuses it
			return
		}
		d := caddyfile.NewDispenser(tokens)

		h := new(Handler)
		if err := h.UnmarshalCaddyfile(d); err != nil {
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Fatalf("error without the Caddyfile line: %v", err)
			}
			return
		}

		// accepted: what caddy adapt would write must load back the same
		raw, err := json.Marshal(h)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		back := new(Handler)
		if err := json.Unmarshal(raw, back); err != nil {
			t.Fatalf("accepted config does not load back from %s: %v", raw, err)
		}
		if again, _ := json.Marshal(back); string(again) != string(raw) {
			t.Fatalf("JSON round trip changed the config:\n%s\n%s", raw, again)
		}
		if !reflect.DeepEqual(h.CORS.AllowOrigins, back.CORS.AllowOrigins) {
			t.Fatalf("origins changed in the round trip: %q, %q", h.CORS.AllowOrigins, back.CORS.AllowOrigins)
		}

		// the config-time checks agree with the parser, and nothing the
		// parser let through makes them panic
		if err := back.check(); err != nil {
			t.Fatalf("parser accepted a config that Provision refuses: %v\n%s", err, raw)
		}
		// some CORS settings are only refused when the config loads; that
		// may fail here, but must not panic
		_ = back.CORS.provision(true)
	})
}
