package edgeguard_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// TestFlaskSurvivesHostileTokenPayloads sends the example app, directly,
// tokens whose payload its hand-written decoder cannot read. Behind the
// gateway only signed payloads reach it, but an issuer may sign claims a
// user chose; either way a payload it cannot read must count as no claims,
// not as a 500.
func TestFlaskSurvivesHostileTokenPayloads(t *testing.T) {
	flask := testkit.MustStartFlask(t)
	client := &http.Client{Timeout: 10 * time.Second}
	enc := base64.RawURLEncoding.EncodeToString
	tests := []struct {
		name    string
		payload string
	}{
		{"deep arrays", `{"sub":"admin","d":` + strings.Repeat("[", 5000) + strings.Repeat("]", 5000) + `}`},
		{"deep objects", `{"sub":"admin","d":` + strings.Repeat(`{"a":`, 5000) + "1" + strings.Repeat("}", 5000) + `}`},
		{"long integer", `{"sub":"admin","n":` + strings.Repeat("9", 5000) + `}`},
		{"not utf-8", "{\"sub\":\"adm\xffin\"}"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			token := enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(tc.payload)) + ".c2ln"
			req, err := http.NewRequest(http.MethodGet, flask.URL+"/api/public/items", nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200: %.200s", resp.StatusCode, body)
			}
			var got map[string]any
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("body %.200q: %v", body, err)
			}
			if sub, ok := got["token_sub_unverified"]; ok {
				t.Errorf("unreadable payload read as sub %v", sub)
			}
		})
	}
}

// A refused request must never reach the API, whatever the server's
// handle_errors routes do with the error.
func TestRefusedRequestNeverReachesHandleErrorsProxy(t *testing.T) {
	flask := testkit.MustStartFlask(t)
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	caddyfile := []byte(`{
	admin off
	auto_https off
}
http://{$EDGEGUARD_BIND}:{$EDGEGUARD_PORT} {
	bind {$EDGEGUARD_BIND}
	handle /api/* {
		edge_guard {
			allow_origins https://app.example.com
			issuer {$ISS} {
				jwks_url {$JWKS}
				audience items-api
			}
			claim_header X-User-Id sub
		}
		reverse_proxy {$UP}
	}
	handle_errors {
		reverse_proxy {$UP}
	}
}
`)
	gw, err := testkit.StartGateway(caddyfile, "Caddyfile",
		map[string]string{"ISS": jwks.Issuer, "JWKS": jwks.URL, "UP": flask.Addr})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Stop()
	client := &http.Client{Timeout: 10 * time.Second}
	tests := []struct{ name, origin, auth string }{
		{"no token", "", ""},
		{"forged token", "", "Bearer e30.eyJzdWIiOiJhZG1pbiJ9.c2ln"},
		{"origin not allowed", "https://evil.example", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			testkit.MustReset(t, flask)
			req, _ := http.NewRequest(http.MethodGet, gw.URL+"/api/admin/stats", nil)
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if reqs := testkit.MustRequests(t, flask); len(reqs) != 0 {
				t.Errorf("status %d, and the API saw %d request(s): %s %s", resp.StatusCode, len(reqs), reqs[0].Method, reqs[0].Path)
			}
			if resp.StatusCode < 400 {
				t.Errorf("status %d for a refused request", resp.StatusCode)
			}
		})
	}
}
