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
