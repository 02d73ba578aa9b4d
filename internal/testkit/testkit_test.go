package testkit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jwt"
)

func newKeys(t *testing.T) []*Key {
	t.Helper()
	return []*Key{MustRSAKey(t, "rsa-1"), MustECKey(t, "ec-1"), MustEdKey(t, "ed-1")}
}

func TestSignedTokensVerify(t *testing.T) {
	keys := newKeys(t)
	jwks := StartJWKS(t, keys...)

	// jwx is an independent implementation: if it accepts the published
	// key set and the tokens, both the JWK encoding and the signatures
	// follow the RFCs, not just this package's own reading of them
	set := fetchKeySet(t, jwks.URL)
	if set.Len() != len(keys) {
		t.Fatalf("published %d keys, want %d", set.Len(), len(keys))
	}

	for _, key := range keys {
		t.Run(key.Alg, func(t *testing.T) {
			claims := Claims(jwks.Issuer, "items-api", "alice", time.Minute)
			token := MustSign(t, key, claims)

			if err := VerifyToken(key, token); err != nil {
				t.Fatalf("VerifyToken: %v", err)
			}
			parsed, err := jwt.Parse([]byte(token), jwt.WithKeySet(set),
				jwt.WithIssuer(jwks.Issuer), jwt.WithAudience("items-api"))
			if err != nil {
				t.Fatalf("jwx rejects the token: %v", err)
			}
			if parsed.Subject() != "alice" {
				t.Errorf("sub = %q, want alice", parsed.Subject())
			}

			header := decodeJSON(t, strings.Split(token, ".")[0])
			want := map[string]any{"alg": key.Alg, "kid": key.Kid, "typ": "JWT"}
			if len(header) != len(want) {
				t.Errorf("header = %v, want %v", header, want)
			}
			for k, v := range want {
				if header[k] != v {
					t.Errorf("header %s = %v, want %v", k, header[k], v)
				}
			}

			// any change to the signed part breaks the signature
			parts := strings.Split(token, ".")
			forged := Claims(jwks.Issuer, "items-api", "admin", time.Minute)
			body, _ := json.Marshal(forged)
			tampered := parts[0] + "." + encodeSegment(body) + "." + parts[2]
			if err := VerifyToken(key, tampered); !errors.Is(err, ErrBadSignature) {
				t.Errorf("tampered token: err = %v, want ErrBadSignature", err)
			}
			if _, err := jwt.Parse([]byte(tampered), jwt.WithKeySet(set)); err == nil {
				t.Error("jwx accepts the tampered token")
			}
		})
	}

	t.Run("other key", func(t *testing.T) {
		token := MustSign(t, keys[0], Claims("x", "y", "z", time.Minute))
		other := MustRSAKey(t, "rsa-1")
		if err := VerifyToken(other, token); !errors.Is(err, ErrBadSignature) {
			t.Errorf("err = %v, want ErrBadSignature", err)
		}
	})
}

func TestECDSASignatureIsRawAndPadded(t *testing.T) {
	key := MustECKey(t, "ec")
	for range 50 {
		token := MustSign(t, key, map[string]any{"sub": "a"})
		sig, err := DecodeSegment(strings.Split(token, ".")[2])
		if err != nil {
			t.Fatal(err)
		}
		if len(sig) != 64 {
			t.Fatalf("ES256 signature is %d bytes, want 64 (r || s)", len(sig))
		}
	}
}

func TestHostileTokens(t *testing.T) {
	key := MustRSAKey(t, "k")

	none, err := SignWithHeader(nil, map[string]any{"alg": "none"}, map[string]any{"sub": "a"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(none, ".") || strings.Count(none, ".") != 2 {
		t.Errorf("unsigned token %q does not end with an empty signature", none)
	}

	// header says ES256, the signature is RS256: the header is kept as
	// written and the signature still checks with the RSA key
	lying := MustSignWithHeader(t, key, map[string]any{"alg": "ES256", "kid": "k"}, nil)
	if got := decodeJSON(t, strings.Split(lying, ".")[0])["alg"]; got != "ES256" {
		t.Errorf("header alg = %v, want ES256 as written", got)
	}
	if err := VerifyToken(key, lying); err != nil {
		t.Errorf("signature made with key.Alg does not verify: %v", err)
	}

	raw, err := SignRaw(key, []byte(`{"alg":"RS256","alg":"none"}`), []byte(`[1,2]`))
	if err != nil {
		t.Fatal(err)
	}
	head, _ := DecodeSegment(strings.Split(raw, ".")[0])
	if string(head) != `{"alg":"RS256","alg":"none"}` {
		t.Errorf("raw header = %s", head)
	}

	hs, err := SignHMAC([]byte("secret"), map[string]any{"alg": "HS256"}, map[string]any{"sub": "a"})
	if err != nil {
		t.Fatal(err)
	}
	// HMAC-SHA256 of this input with "secret", computed independently
	const wantHS = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0." +
		"UUtsUaeO3koQylSZ3wxP4lqVvgFw6mGsVzGNBNF_1sQ"
	if hs != wantHS {
		t.Errorf("HS256 token = %s", hs)
	}
	if _, err := SignHMAC(nil, map[string]any{"alg": "RS256"}, nil); err == nil {
		t.Error("SignHMAC accepted RS256")
	}

	mismatched := &Key{Kid: "k", Alg: "ES256", Private: key.Private}
	if _, err := Sign(mismatched, nil); err == nil {
		t.Error("Sign accepted ES256 with an RSA key")
	}
}

func TestJWKSServer(t *testing.T) {
	key := MustECKey(t, "ec-1")
	s := StartJWKS(t, key)
	client := loopbackClient()

	get := func(url string) (*http.Response, []byte) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, body
	}

	// keys
	resp, body := get(s.URL)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"kid":"ec-1"`) {
		t.Fatalf("key set: %d %s", resp.StatusCode, body)
	}
	if strings.Contains(string(body), `"d"`) {
		t.Fatalf("key set publishes private material: %s", body)
	}
	if got := s.Fetches(); got != 1 {
		t.Errorf("Fetches = %d after one fetch", got)
	}

	// discovery
	_, body = get(s.DiscoveryURL)
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc["issuer"] != s.Issuer || doc["jwks_uri"] != s.URL {
		t.Errorf("discovery = %s", body)
	}
	if s.Fetches() != 1 || s.DiscoveryFetches() != 1 {
		t.Errorf("Fetches = %d, DiscoveryFetches = %d", s.Fetches(), s.DiscoveryFetches())
	}
	if !strings.HasPrefix(s.URL, "http://127.0.0.1:") {
		t.Errorf("URL = %s, want loopback", s.URL)
	}

	// failures and headers
	s.SetStatus(http.StatusServiceUnavailable)
	if resp, _ = get(s.URL); resp.StatusCode != 503 {
		t.Errorf("SetStatus(503): got %d", resp.StatusCode)
	}
	s.SetStatus(0)
	s.SetBody([]byte("{not json"))
	if _, body = get(s.URL); string(body) != "{not json" {
		t.Errorf("SetBody: got %s", body)
	}
	s.SetKeys(key, MustEdKey(t, "ed-1"))
	s.SetCacheControl("max-age=60")
	resp, body = get(s.URL)
	if resp.Header.Get("Cache-Control") != "max-age=60" || !strings.Contains(string(body), "ed-1") {
		t.Errorf("after SetKeys/SetCacheControl: %v %s", resp.Header, body)
	}
	if got := s.Fetches(); got != 4 {
		t.Errorf("Fetches = %d after four fetches", got)
	}

	// a slow answer: the client gives up, the server still counts it,
	// and Close does not wait out the delay
	s.SetDelay(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.URL, nil)
	if _, err := client.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("delayed fetch: err = %v, want deadline exceeded", err)
	}
	go func() { _, _ = client.Get(s.URL) }()
	waitFor(t, func() bool { return s.Fetches() == 6 })
	start := time.Now()
	s.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %s with a delayed answer pending", d)
	}
}

func TestFlask(t *testing.T) {
	if err := CheckFlask(context.Background()); err != nil {
		t.Fatal(err)
	}
	f := MustStartFlask(t)
	if !strings.HasPrefix(f.URL, "http://127.0.0.1:") || !strings.HasSuffix(f.URL, f.Addr) {
		t.Fatalf("URL = %q, Addr = %q", f.URL, f.Addr)
	}
	client := loopbackClient()

	// the problem the gateway solves: any origin may read the API
	req, _ := http.NewRequest("GET", f.URL+"/api/public/items?page=2", nil)
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("X-User-Id", "mallory")
	req.Header["X-User_id"] = []string{"root"}
	resp := do(t, client, req)
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "*" {
		t.Errorf("direct ACAO = %q, want *", got)
	}
	var items map[string]any
	if err := json.Unmarshal(resp.body, &items); err != nil {
		t.Fatal(err)
	}
	// WSGI merged both spellings into one header
	if items["user"] != "mallory,root" && items["user"] != "root,mallory" {
		t.Errorf("user = %v, want both spellings merged", items["user"])
	}

	reqs := MustRequests(t, f)
	if len(reqs) != 1 {
		t.Fatalf("record has %d requests, want 1: %+v", len(reqs), reqs)
	}
	got := reqs[0]
	if got.Method != "GET" || got.Path != "/api/public/items" || got.Query != "page=2" {
		t.Errorf("recorded %s %s ? %s", got.Method, got.Path, got.Query)
	}
	if v := got.Header("origin"); len(v) != 1 || v[0] != "https://evil.example" {
		t.Errorf("Header(origin) = %q", v)
	}
	if v := got.Header("x_user_id"); len(v) != 1 || !strings.Contains(v[0], "mallory") {
		t.Errorf("Header(x_user_id) = %q", v)
	}

	// preflights, unknown paths, errors and streams are all recorded
	MustReset(t, f)
	pre, _ := http.NewRequest("OPTIONS", f.URL+"/api/public/items", nil)
	pre.Header.Set("Origin", "https://evil.example")
	pre.Header.Set("Access-Control-Request-Method", "DELETE")
	if resp := do(t, client, pre); resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("flask preflight ACAO = %q", resp.Header.Get("Access-Control-Allow-Origin"))
	}
	errReq, _ := http.NewRequest("GET", f.URL+"/api/public/error", nil)
	errReq.Header.Set("Origin", "https://evil.example")
	if resp := do(t, client, errReq); resp.StatusCode != 500 ||
		resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("error endpoint: %d %v", resp.StatusCode, resp.Header)
	}
	post, _ := http.NewRequest("POST", f.URL+"/api/public/items", strings.NewReader(`{"name":"lamp"}`))
	post.Header.Set("Content-Type", "application/json")
	if resp := do(t, client, post); resp.StatusCode != 201 || string(resp.body) != `{"name":"lamp"}`+"\n" {
		t.Errorf("POST: %d %q", resp.StatusCode, resp.body)
	}
	missing, _ := http.NewRequest("GET", f.URL+"/nope", nil)
	if resp := do(t, client, missing); resp.StatusCode != 404 {
		t.Errorf("/nope: %d", resp.StatusCode)
	}
	streamed := readStream(t, client, f.URL+"/api/public/stream?chunks=3&delay_ms=50")
	if streamed != 3 {
		t.Errorf("stream gave %d lines, want 3", streamed)
	}
	var methods []string
	for _, r := range MustRequests(t, f) {
		methods = append(methods, r.Method+" "+r.Path)
	}
	want := "OPTIONS /api/public/items,GET /api/public/error,POST /api/public/items," +
		"GET /nope,GET /api/public/stream"
	if strings.Join(methods, ",") != want {
		t.Errorf("record = %v\nwant %s", methods, want)
	}

	// Close stops the process: the port no longer answers
	f.Close()
	f.Close()
	if c, err := net.DialTimeout("tcp", f.Addr, time.Second); err == nil {
		c.Close()
		t.Error("flask still listening after Close")
	}
}

func TestStartFlaskBadApp(t *testing.T) {
	if _, err := StartFlask(context.Background(), "/nonexistent/app.py"); err == nil {
		t.Error("StartFlask succeeded without an app")
	}
	bad := t.TempDir() + "/app.py"
	if err := os.WriteFile(bad, []byte("import flask_that_is_not_there\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := StartFlask(context.Background(), bad)
	if err == nil || !strings.Contains(err.Error(), "flask_that_is_not_there") {
		t.Errorf("err = %v, want the traceback's last line", err)
	}
	if errors.Is(err, ErrFlaskMissing) {
		t.Errorf("a broken app is reported as a missing Flask: %v", err)
	}
}

func TestUpstreamRequestHeader(t *testing.T) {
	r := UpstreamRequest{Headers: [][2]string{
		{"X-User-Id", "a"}, {"Host", "h"}, {"x_user_id", "b"}, {"X-USER-ID", "c"},
	}}
	if got := strings.Join(r.Header("X-User_Id"), ","); got != "a,b,c" {
		t.Errorf("Header = %q, want a,b,c", got)
	}
	if got := r.Header("Authorization"); got != nil {
		t.Errorf("Header(Authorization) = %q, want nil", got)
	}
}

func TestFreePort(t *testing.T) {
	port := MustFreePort(t)
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("port %d not usable: %v", port, err)
	}
	ln.Close()
}

type response struct {
	*http.Response
	body []byte
}

func do(t *testing.T, c *http.Client, req *http.Request) response {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{resp, body}
}

func readStream(t *testing.T, c *http.Client, url string) int {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("stream ACAO = %q", resp.Header.Get("Access-Control-Allow-Origin"))
	}
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		n++
	}
	return n
}

func fetchKeySet(t *testing.T, url string) jwk.Set {
	t.Helper()
	resp, err := loopbackClient().Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		t.Fatalf("jwx rejects the key set: %v\n%s", err, body)
	}
	return set
}

func decodeJSON(t *testing.T, segment string) map[string]any {
	t.Helper()
	raw, err := DecodeSegment(segment)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMissingModule(t *testing.T) {
	for stderr, want := range map[string]bool{
		"ModuleNotFoundError: No module named 'flask'":                   true,
		"ModuleNotFoundError: No module named 'flask_cors'":              true,
		"ModuleNotFoundError: No module named 'werkzeug'":                true,
		"ModuleNotFoundError: No module named 'flask_that_is_not_there'": false,
		"SyntaxError: invalid syntax":                                    false,
	} {
		if got := missingModule(stderr); got != want {
			t.Errorf("missingModule(%q) = %v, want %v", stderr, got, want)
		}
	}
}
