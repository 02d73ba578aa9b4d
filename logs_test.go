package edgeguard_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLogsHoldNoSecrets runs the request mix with Caddy logging at debug
// level into a file, then reads every line: refusals are there with their
// route and reason, key set trouble at warn or error, and no line holds a
// token, a part of one, an Authorization value or a claim value.
func TestLogsHoldNoSecrets(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	// At debug level, reverse_proxy logs the request it sends upstream
	// with its headers, claim headers included (Caddy redacts only
	// Authorization and cookies). The README's logging advice deletes the
	// claim headers from those lines; this is that config.
	global := `log {
		output file ` + logFile + `
		level DEBUG
		format filter {
			wrap json
			request>headers>X-User-Id delete
			request>headers>X-Tenant delete
		}
	}`
	s := startOps(t, "logs", global)

	// distinctive claim values, so that any echo of them is found
	const subject = "logs-subject-e4b19a"
	tokens := s.mixTokens(t, subject)
	results := s.requestMix(t, tokens)
	// the same requests with the token in other Authorization spellings
	s.send(t, "GET", "/api/items", "Authorization", "bearer "+tokens.valid)
	s.send(t, "GET", "/api/items", "Authorization", "Basic "+tokens.forged)
	s.gateway.Stop() // flush and close the log

	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var entries []map[string]any
	lines := bufio.NewScanner(strings.NewReader(string(data)))
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	for lines.Scan() {
		var entry map[string]any
		if err := json.Unmarshal(lines.Bytes(), &entry); err != nil {
			t.Fatalf("log line is not JSON: %v", err)
		}
		entries = append(entries, entry)
	}
	if len(entries) == 0 {
		t.Fatal("nothing was logged")
	}

	// debug level is on: the proxy's own lines are there too
	proxied := 0
	for _, e := range entries {
		if e["logger"] == "http.handlers.reverse_proxy" && e["level"] == "debug" {
			proxied++
		}
	}
	if proxied == 0 {
		t.Error("no debug line from reverse_proxy: the log is not at debug level")
	}

	// nothing secret, in any line
	secrets := map[string]string{"subject claim": subject, "tenant claim": subject + "-tenant"}
	for name, token := range map[string]string{
		"valid token": tokens.valid, "expired token": tokens.expired,
		"forged token": tokens.forged, "token for the failing key set": tokens.down,
	} {
		for i, part := range strings.Split(token, ".") {
			secrets[name+" segment "+string(rune('0'+i))] = part
		}
	}
	for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		for name, secret := range secrets {
			if strings.Contains(line, secret) {
				t.Errorf("log line %d holds the %s: %.300s", i+1, name, line)
			}
		}
		if strings.Contains(strings.ToLower(line), "bearer ") || strings.Contains(line, "Basic ") {
			t.Errorf("log line %d holds an Authorization value: %.300s", i+1, line)
		}
	}

	// every refusal is logged at debug level with its route and reason
	refusals := make(map[string]int)
	for _, e := range entries {
		if e["msg"] == "request refused" {
			if e["level"] != "debug" {
				t.Errorf("refusal logged at %v, want debug", e["level"])
			}
			refusals[e["route"].(string)+" "+e["reason"].(string)]++
		}
	}
	for _, want := range []string{
		"logs-public expired", "logs-public bad_signature", "logs-public missing_token",
		"logs-public origin_not_allowed", "logs-public preflight_method_refused",
		"logs-down keys_unavailable",
	} {
		if refusals[want] == 0 {
			t.Errorf("no refusal logged for %q; logged: %v", want, refusals)
		}
	}
	refused := 0
	for _, r := range results {
		if r.status >= 400 {
			refused++
		}
	}
	total := 0
	for _, n := range refusals {
		total += n
	}
	if refused += 1; total != refused { // and the Basic credential, a missing token
		t.Errorf("%d refusals logged, %d requests refused", total, refused)
	}

	// the failing key set is reported at warn or error, naming the key set
	troubled := false
	for _, e := range entries {
		level := e["level"]
		if (level == "warn" || level == "error") && e["key_set"] == s.down.URL {
			troubled = true
		}
	}
	if !troubled {
		t.Errorf("no warn or error line names the failing key set %s", s.down.URL)
	}
}
