package caddymodule

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// corsUpstream sets the CORS fields a careless upstream sends, in several
// spellings, some of them behind the canonicaliser's back.
func corsUpstream(h http.Header) {
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Credentials", "true")
	h.Set("Access-Control-Allow-Methods", "*")
	h.Set("Access-Control-Max-Age", "86400")
	h["access-control-expose-headers"] = []string{"X-Secret"}
	h["ACCESS-CONTROL-ALLOW-HEADERS"] = []string{"*"}
	h["Access-Control-Allow-Private-Network"] = []string{"true"}
}

// serveOverHTTP puts the handler, with next behind it, on a loopback
// server, so that 1xx responses, flushes and trailers take the real
// net/http path.
func serveOverHTTP(t *testing.T, f *fixture, next caddyhttp.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
		if err := f.h.ServeHTTP(w, r.WithContext(ctx), next); err != nil {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// informational is a 1xx response as the client saw it.
type informational struct {
	code   int
	header textproto.MIMEHeader
}

func TestResponseRewriting(t *testing.T) {
	f := newFixture(t, nil)
	token := f.token(t, nil)
	cases := []struct {
		name     string
		next     caddyhttp.HandlerFunc
		body     string
		trailers bool
	}{
		{"buffered", func(w http.ResponseWriter, r *http.Request) error {
			corsUpstream(w.Header())
			w.WriteHeader(http.StatusOK)
			_, err := io.WriteString(w, "ok")
			return err
		}, "ok", false},
		{"write without WriteHeader", func(w http.ResponseWriter, r *http.Request) error {
			corsUpstream(w.Header())
			_, err := io.WriteString(w, "ok")
			return err
		}, "ok", false},
		{"flushed before the first write", func(w http.ResponseWriter, r *http.Request) error {
			corsUpstream(w.Header())
			if err := http.NewResponseController(w).Flush(); err != nil {
				return err
			}
			_, err := io.WriteString(w, "ok")
			return err
		}, "ok", false},
		{"http.Flusher before the first write", func(w http.ResponseWriter, r *http.Request) error {
			corsUpstream(w.Header())
			w.(http.Flusher).Flush()
			_, err := io.WriteString(w, "ok")
			return err
		}, "ok", false},
		{"chunked stream", func(w http.ResponseWriter, r *http.Request) error {
			corsUpstream(w.Header())
			for i := range 3 {
				if _, err := io.WriteString(w, strings.Repeat("x", i+1)); err != nil {
					return err
				}
				if err := http.NewResponseController(w).Flush(); err != nil {
					return err
				}
			}
			return nil
		}, "xxxxxx", false},
		{"io.Copy through ReadFrom", func(w http.ResponseWriter, r *http.Request) error {
			corsUpstream(w.Header())
			_, err := io.Copy(w, strings.NewReader(strings.Repeat("y", 100000)))
			return err
		}, strings.Repeat("y", 100000), false},
		{"103 Early Hints with CORS fields", func(w http.ResponseWriter, r *http.Request) error {
			corsUpstream(w.Header())
			w.Header().Set("Link", "</app.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			corsUpstream(w.Header())
			w.WriteHeader(http.StatusOK)
			_, err := io.WriteString(w, "ok")
			return err
		}, "ok", false},
		{"trailers", func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Trailer", "Access-Control-Allow-Origin, X-Checksum")
			w.WriteHeader(http.StatusOK)
			if _, err := io.WriteString(w, "ok"); err != nil {
				return err
			}
			w.Header().Set("Access-Control-Allow-Origin", "*")
			w.Header().Set("X-Checksum", "abc")
			w.Header().Set(http.TrailerPrefix+"Access-Control-Allow-Credentials", "true")
			w.Header().Set(http.TrailerPrefix+"access-control-max-age", "1")
			return nil
		}, "ok", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := serveOverHTTP(t, f, tc.next)
			var (
				mu    sync.Mutex
				infos []informational
			)
			trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				mu.Lock()
				defer mu.Unlock()
				infos = append(infos, informational{code, h})
				return nil
			}}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
				"GET", srv.URL+"/api/items", nil)
			req.Header.Set("Origin", appOrigin)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || string(body) != tc.body {
				t.Fatalf("status %d, body %d bytes", resp.StatusCode, len(body))
			}
			assertGatewayCORS(t, resp.Header)
			for _, info := range infos {
				for name := range info.header {
					if isCORSHeader(name) {
						t.Errorf("%d response carries %s", info.code, name)
					}
				}
			}
			if strings.HasPrefix(tc.name, "103") && len(infos) == 0 {
				t.Error("the 103 response did not reach the client")
			}
			for name := range resp.Trailer {
				if isCORSHeader(name) {
					t.Errorf("trailer %s reached the client", name)
				}
			}
			if tc.trailers && resp.Trailer.Get("X-Checksum") != "abc" {
				t.Errorf("other trailers lost: %q", resp.Trailer)
			}
		})
	}
}

// assertGatewayCORS checks that a forwarded response carries exactly the
// gateway's CORS fields for appOrigin.
func assertGatewayCORS(t *testing.T, h http.Header) {
	t.Helper()
	want := map[string]string{
		"Access-Control-Allow-Origin":   appOrigin,
		"Access-Control-Expose-Headers": "X-Request-Id",
	}
	for name, values := range h {
		if !isCORSHeader(name) {
			continue
		}
		if w, ok := want[name]; !ok || len(values) != 1 || values[0] != w {
			t.Errorf("%s: %q", name, values)
		}
	}
	for name := range want {
		if h.Get(name) == "" {
			t.Errorf("%s missing", name)
		}
	}
	if n := strings.Count(strings.ToLower(strings.Join(h.Values("Vary"), ",")), "origin"); n != 1 {
		t.Errorf("Vary %q", h.Values("Vary"))
	}
}

func TestVaryMerge(t *testing.T) {
	cases := []struct {
		upstream []string
		want     []string
	}{
		{nil, []string{"Origin"}},
		{[]string{"Accept-Encoding"}, []string{"Accept-Encoding", "Origin"}},
		{[]string{"Origin"}, []string{"Origin"}},
		{[]string{"origin"}, []string{"origin"}},
		{[]string{"Accept-Encoding, Origin"}, []string{"Accept-Encoding, Origin"}},
		{[]string{"*"}, []string{"*"}},
		{[]string{"Accept-Encoding, User-Agent"}, []string{"Accept-Encoding, User-Agent, Origin"}},
		{[]string{"Accept-Encoding", "User-Agent"}, []string{"Accept-Encoding, User-Agent, Origin"}},
		{[]string{"Origin", "origin"}, []string{"Origin"}},
		{[]string{"Origin, Origin, Accept"}, []string{"Origin, Accept"}},
		{[]string{"Accept", "accept"}, []string{"Accept, Origin"}},
		{[]string{"Accept-Encoding", "Origin"}, []string{"Accept-Encoding", "Origin"}},
		{[]string{""}, []string{"Origin"}},
		{[]string{" , "}, []string{"Origin"}},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.upstream, "|"), func(t *testing.T) {
			h := http.Header{}
			if tc.upstream != nil {
				h["Vary"] = append([]string(nil), tc.upstream...)
			}
			addVaryOrigin(h)
			if got := h["Vary"]; strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("Vary %q, want %q", got, tc.want)
			}
			// merging twice changes nothing
			before := strings.Join(h["Vary"], "|")
			addVaryOrigin(h)
			if after := strings.Join(h["Vary"], "|"); after != before {
				t.Errorf("second merge: %q, then %q", before, after)
			}
		})
	}
}
