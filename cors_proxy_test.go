package edgeguard_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// proxyCaddyfile puts edge_guard in front of reverse_proxy to Go upstreams:
// one that answers everything, one that is down, one too slow for the
// transport's response header timeout. {$HANDLE_ERRORS} adds error routes.
const proxyCaddyfile = `{
	admin off
	auto_https off
	default_bind {$EDGEGUARD_BIND}
}

http://:{$EDGEGUARD_PORT} {
	handle /down/* {
		edge_guard {
			import policy
		}
		reverse_proxy {$DOWN}
	}
	handle /slow/* {
		edge_guard {
			import policy
		}
		reverse_proxy {$UPSTREAM} {
			transport http {
				response_header_timeout 300ms
			}
		}
	}
	handle {
		edge_guard {
			import policy
		}
		reverse_proxy {$UPSTREAM} {
			flush_interval -1
		}
	}
	{$HANDLE_ERRORS}
}
`

// proxyPolicy is the route policy every handle block imports.
const proxyPolicy = `(policy) {
	name proxy
	allow_origins https://app.example.com
	allow_methods GET POST PUT
	allow_headers Content-Type
	expose_headers X-Request-Id
	{$USE_HANDLE_ERRORS}
	issuer {$ISSUER} {
		jwks_url {$JWKS_URL}
		audience items-api
	}
}
`

// careless sets what a wildcard CORS library sends upstream.
func careless(h http.Header) {
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Credentials", "true")
	h.Set("Access-Control-Allow-Headers", "*")
	h.Set("Access-Control-Expose-Headers", "X-Secret")
	h.Set("Access-Control-Max-Age", "86400")
	h.Set("Vary", "Accept-Encoding")
}

// goUpstream is an API written in Go that misbehaves in every way a
// response can carry CORS fields.
type goUpstream struct {
	requests atomic.Int64
}

func (u *goUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.requests.Add(1)
	switch strings.TrimPrefix(r.URL.Path, "/") {
	case "early":
		careless(w.Header())
		w.Header().Set("Link", "</app.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		careless(w.Header())
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "after hints")
	case "stream":
		careless(w.Header())
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := range 3 {
			fmt.Fprintf(w, "{\"chunk\":%d}\n", i)
			http.NewResponseController(w).Flush()
		}
	case "trailers":
		careless(w.Header())
		w.Header().Set("Trailer", "Access-Control-Allow-Origin, X-Checksum")
		io.WriteString(w, "with trailers")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("X-Checksum", "abc")
		w.Header().Set(http.TrailerPrefix+"Access-Control-Allow-Credentials", "true")
	case "error":
		careless(w.Header())
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, `{"error":"upstream"}`)
	case "ws":
		u.upgrade(w, r)
	case "slow/x":
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	default:
		careless(w.Header())
		io.WriteString(w, "ok")
	}
}

// upgrade answers a WebSocket handshake with 101 and CORS fields, then
// echoes bytes back: enough of RFC 6455 to go through reverse_proxy.
func (u *goUpstream) upgrade(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "not an upgrade", http.StatusBadRequest)
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprint(brw, "HTTP/1.1 101 Switching Protocols\r\n"+
		"Upgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"+
		"Access-Control-Allow-Origin: *\r\nAccess-Control-Allow-Credentials: true\r\n\r\n")
	brw.Flush()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(brw, buf); err == nil {
		conn.Write(buf)
	}
}

type proxyStack struct {
	gateway  *testkit.Gateway
	upstream *goUpstream
	token    string
	env      map[string]string
}

func startProxyStack(t *testing.T) *proxyStack {
	t.Helper()
	key := testkit.MustRSAKey(t, "k1")
	jwks := testkit.StartJWKS(t, key)
	up := &goUpstream{}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)

	// a loopback port that nothing listens on
	down := "127.0.0.1:" + strconv.Itoa(testkit.MustFreePort(t))

	env := map[string]string{
		"UPSTREAM":      srv.Listener.Addr().String(),
		"DOWN":          down,
		"ISSUER":        jwks.Issuer,
		"JWKS_URL":      jwks.URL,
		"HANDLE_ERRORS": "",
	}
	gw, err := testkit.StartGateway([]byte(proxyPolicy+proxyCaddyfile), "Caddyfile", env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gw.Stop)
	token := testkit.MustSign(t, key, testkit.Claims(jwks.Issuer, "items-api", "alice", time.Hour))
	return &proxyStack{gateway: gw, upstream: up, token: token, env: env}
}

// assertOnlyGatewayCORS checks a response for an allowed origin: the
// gateway's fields, none of the upstream's, and Origin once in Vary.
func assertOnlyGatewayCORS(t *testing.T, h http.Header, expose string) {
	t.Helper()
	for name, values := range h {
		if !strings.HasPrefix(strings.ToLower(name), "access-control-") {
			continue
		}
		switch name {
		case "Access-Control-Allow-Origin":
			if len(values) != 1 || values[0] != appOrigin {
				t.Errorf("%s %q", name, values)
			}
		case "Access-Control-Expose-Headers":
			if len(values) != 1 || values[0] != expose {
				t.Errorf("%s %q, want %q", name, values, expose)
			}
		default:
			t.Errorf("upstream field %s %q reached the client", name, values)
		}
	}
	if h.Get("Access-Control-Allow-Origin") == "" {
		t.Error("no Access-Control-Allow-Origin")
	}
	vary := strings.ToLower(strings.Join(h.Values("Vary"), ","))
	if strings.Count(vary, "origin") != 1 {
		t.Errorf("Vary %q", h.Values("Vary"))
	}
}

func TestCORSThroughReverseProxy(t *testing.T) {
	s := startProxyStack(t)
	client := &http.Client{Timeout: 10 * time.Second}

	do := func(t *testing.T, method, path string, trace *httptrace.ClientTrace, headers ...string) (*http.Response, string) {
		t.Helper()
		ctx := context.Background()
		if trace != nil {
			ctx = httptrace.WithClientTrace(ctx, trace)
		}
		req, _ := http.NewRequestWithContext(ctx, method, s.gateway.URL+path, nil)
		for i := 0; i+1 < len(headers); i += 2 {
			req.Header.Add(headers[i], headers[i+1])
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for name := range resp.Trailer {
			if strings.HasPrefix(strings.ToLower(name), "access-control-") {
				t.Errorf("%s %s: trailer %s reached the client", method, path, name)
			}
		}
		return resp, string(body)
	}
	auth := []string{"Origin", appOrigin, "Authorization", "Bearer " + s.token}

	cases := []struct {
		path   string
		status int
		body   string
		expose string
	}{
		{"/plain", 200, "ok", "X-Request-Id"},
		{"/early", 200, "after hints", "X-Request-Id"},
		{"/stream", 200, "{\"chunk\":0}\n{\"chunk\":1}\n{\"chunk\":2}\n", "X-Request-Id"},
		{"/trailers", 200, "with trailers", "X-Request-Id"},
		{"/error", 500, `{"error":"upstream"}`, "X-Request-Id"},
		{"/down/x", 502, "", "WWW-Authenticate, Retry-After, X-Request-Id"},
		{"/slow/x", 504, "", "WWW-Authenticate, Retry-After, X-Request-Id"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			// the preflight is answered by the gateway for every route,
			// the ones whose upstream is down included
			before := s.upstream.requests.Load()
			resp, _ := do(t, "OPTIONS", tc.path, nil, "Origin", appOrigin,
				"Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "authorization")
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("preflight: status %d", resp.StatusCode)
			}
			if s.upstream.requests.Load() != before {
				t.Fatal("the preflight reached the upstream")
			}

			var mu sync.Mutex
			var hints []textproto.MIMEHeader
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				mu.Lock()
				defer mu.Unlock()
				hints = append(hints, h)
				return nil
			}}
			resp, body := do(t, "GET", tc.path, trace, auth...)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (body %q)", resp.StatusCode, tc.status, body)
			}
			if tc.body != "" && body != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			assertOnlyGatewayCORS(t, resp.Header, tc.expose)
			if tc.path == "/trailers" && resp.Trailer.Get("X-Checksum") != "abc" {
				t.Errorf("other trailers lost: %q", resp.Trailer)
			}
			mu.Lock()
			defer mu.Unlock()
			if tc.path == "/early" {
				if len(hints) != 1 || hints[0].Get("Link") == "" {
					t.Errorf("103 Early Hints did not come through: %v", hints)
				}
			}
			for _, h := range hints {
				for name := range h {
					if strings.HasPrefix(strings.ToLower(name), "access-control-") {
						t.Errorf("1xx response carries %s", name)
					}
				}
			}

			// a refused origin gets nothing and reaches nothing
			before = s.upstream.requests.Load()
			resp, _ = do(t, "GET", tc.path, nil, "Origin", "https://evil.test", "Authorization", "Bearer "+s.token)
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("refused origin: status %d", resp.StatusCode)
			}
			for name := range resp.Header {
				if strings.HasPrefix(strings.ToLower(name), "access-control-") {
					t.Errorf("refused origin: %s", name)
				}
			}
			if s.upstream.requests.Load() != before {
				t.Error("a request from a refused origin reached the upstream")
			}
		})
	}

	t.Run("same origin", func(t *testing.T) {
		// a page served by the gateway itself sends its own origin; it is
		// not cross-origin, so it passes without being on the list
		before := s.upstream.requests.Load()
		resp, body := do(t, "POST", "/plain", nil, "Origin", s.gateway.URL, "Authorization", "Bearer "+s.token)
		if resp.StatusCode != http.StatusOK || body != "ok" || s.upstream.requests.Load() != before+1 {
			t.Fatalf("status %d body %q", resp.StatusCode, body)
		}
		for name := range resp.Header {
			if strings.HasPrefix(strings.ToLower(name), "access-control-") {
				t.Errorf("same-origin answer carries %s", name)
			}
		}
		// the same page on another port is another origin
		_, port, _ := net.SplitHostPort(s.gateway.Addr)
		other := "http://127.0.0.1:" + strconv.Itoa(1+(mustAtoi(t, port)%65535))
		resp, _ = do(t, "POST", "/plain", nil, "Origin", other, "Authorization", "Bearer "+s.token)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: status %d", other, resp.StatusCode)
		}
	})

	t.Run("websocket upgrade", func(t *testing.T) {
		conn, err := net.DialTimeout("tcp", s.gateway.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(conn, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"+
			"Origin: %s\r\nAuthorization: Bearer %s\r\n\r\n", s.gateway.Addr, appOrigin, s.token)
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("status %d", resp.StatusCode)
		}
		for name, values := range resp.Header {
			if strings.HasPrefix(strings.ToLower(name), "access-control-") &&
				(name != "Access-Control-Allow-Origin" && name != "Access-Control-Expose-Headers" ||
					len(values) != 1 || values[0] == "*") {
				t.Errorf("101 carries %s %q", name, values)
			}
		}
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != appOrigin {
			t.Errorf("101 Access-Control-Allow-Origin %q", got)
		}
		// the upgraded connection still works
		conn.Write([]byte("ping"))
		echo := make([]byte, 4)
		if _, err := io.ReadFull(br, echo); err != nil || string(echo) != "ping" {
			t.Errorf("echo %q, %v", echo, err)
		}
	})

	t.Run("websocket upgrade from a refused origin", func(t *testing.T) {
		before := s.upstream.requests.Load()
		resp, _ := do(t, "GET", "/ws", nil, "Origin", "https://evil.test", "Authorization", "Bearer "+s.token,
			"Upgrade", "websocket", "Connection", "Upgrade")
		if resp.StatusCode != http.StatusForbidden || s.upstream.requests.Load() != before {
			t.Errorf("status %d, upstream reached %v", resp.StatusCode, s.upstream.requests.Load() != before)
		}
	})

	t.Run("handle_errors", func(t *testing.T) {
		env := map[string]string{}
		for k, v := range s.env {
			env[k] = v
		}
		env["USE_HANDLE_ERRORS"] = "use_handle_errors"
		env["HANDLE_ERRORS"] = "handle_errors {\n\t\theader X-Error-Page yes\n\t\trespond \"custom {err.status_code}\"\n\t}"
		if err := s.gateway.Reload([]byte(proxyPolicy+proxyCaddyfile), "Caddyfile", env); err != nil {
			t.Fatal(err)
		}
		// the old config's server closes its idle connections
		client.CloseIdleConnections()
		for _, tc := range []struct {
			path    string
			headers []string
			status  int
			cors    bool
		}{
			{"/down/x", auth, 502, true},
			{"/slow/x", auth, 504, true},
			{"/plain", []string{"Origin", appOrigin}, 401, true},
			{"/plain", []string{"Origin", "https://evil.test", "Authorization", "Bearer " + s.token}, 403, false},
		} {
			resp, body := do(t, "GET", tc.path, nil, tc.headers...)
			if resp.StatusCode != tc.status || body != "custom "+strconv.Itoa(tc.status) ||
				resp.Header.Get("X-Error-Page") != "yes" {
				t.Errorf("%s: status %d, body %q: want handle_errors' %d", tc.path, resp.StatusCode, body, tc.status)
			}
			if tc.cors {
				assertOnlyGatewayCORS(t, resp.Header, "WWW-Authenticate, Retry-After, X-Request-Id")
			} else if v := resp.Header.Values("Access-Control-Allow-Origin"); len(v) != 0 {
				t.Errorf("%s: refused origin got Access-Control-Allow-Origin %q", tc.path, v)
			}
		}
	})
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
