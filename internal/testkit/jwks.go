package testkit

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"time"
)

// JWKSPath and DiscoveryPath are where a JWKSServer serves the key set and
// the OpenID Connect discovery document.
const (
	JWKSPath      = "/jwks.json"
	DiscoveryPath = "/.well-known/openid-configuration"
)

// JWKSServer is an issuer's key endpoint on 127.0.0.1 whose answers a test
// controls: which keys it publishes, or a broken body, an error status, a
// slow answer, a Cache-Control header.
type JWKSServer struct {
	// URL is the key set URL, the jwks_uri.
	URL string

	// Issuer is the server's base URL, also the issuer named in the
	// discovery document.
	Issuer string

	// DiscoveryURL is the OpenID Connect discovery document's URL.
	DiscoveryURL string

	server    *httptest.Server
	fetches   atomic.Int64
	discovery atomic.Int64
	closed    chan struct{}
	closeOnce sync.Once

	mu           sync.Mutex
	jwks         []map[string]any
	body         []byte
	status       int
	delay        time.Duration
	cacheControl string
}

// NewJWKSServer starts a key endpoint that publishes keys.
func NewJWKSServer(keys ...*Key) *JWKSServer {
	s := &JWKSServer{closed: make(chan struct{})}
	s.SetKeys(keys...)

	mux := http.NewServeMux()
	mux.HandleFunc("GET "+JWKSPath, s.serveKeySet)
	mux.HandleFunc("GET "+DiscoveryPath, s.serveDiscovery)

	// httptest listens on 127.0.0.1:0 already; this says so explicitly
	// rather than relying on its default
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic("testkit: jwks listener: " + err.Error())
	}
	s.server = httptest.NewUnstartedServer(mux)
	s.server.Listener.Close()
	s.server.Listener = ln
	s.server.Start()

	s.Issuer = s.server.URL
	s.URL = s.server.URL + JWKSPath
	s.DiscoveryURL = s.server.URL + DiscoveryPath
	return s
}

// SetKeys replaces the published key set with the public JWKs of keys.
// It also drops any body set with SetBody.
func (s *JWKSServer) SetKeys(keys ...*Key) {
	jwks := make([]map[string]any, 0, len(keys))
	for _, k := range keys {
		jwks = append(jwks, k.PublicJWK())
	}
	s.SetJWKs(jwks...)
}

// SetJWKs publishes JWKs as given, for keys a test has altered (a wrong
// alg, "use": "enc", a missing kid). It also drops any body set with
// SetBody.
func (s *JWKSServer) SetJWKs(jwks ...map[string]any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.jwks = jwks
	s.body = nil
}

// SetBody makes the key endpoint answer with body instead of the key set,
// for garbage and truncated documents. nil goes back to the key set.
func (s *JWKSServer) SetBody(body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body = body
}

// SetStatus makes the key endpoint answer with status. 0 or 200 goes back
// to normal. A non-200 status is sent with a short error body unless
// SetBody set one.
func (s *JWKSServer) SetStatus(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = status
}

// SetDelay holds every key set answer for d before writing it. The wait
// ends early if the client goes away or the server closes.
func (s *JWKSServer) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// SetCacheControl sets the Cache-Control header of key set answers; ""
// sends none.
func (s *JWKSServer) SetCacheControl(value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cacheControl = value
}

// Fetches returns how many key set requests the server has received,
// answered or not. Discovery requests are not counted.
func (s *JWKSServer) Fetches() int {
	return int(s.fetches.Load())
}

// DiscoveryFetches returns how many discovery document requests the
// server has received.
func (s *JWKSServer) DiscoveryFetches() int {
	return int(s.discovery.Load())
}

// Close stops the server. Delayed answers are cut short first, so Close
// does not wait out a long SetDelay.
func (s *JWKSServer) Close() {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.server.CloseClientConnections()
		s.server.Close()
	})
}

func (s *JWKSServer) serveKeySet(w http.ResponseWriter, r *http.Request) {
	s.fetches.Add(1)

	s.mu.Lock()
	jwks, body, status := s.jwks, s.body, s.status
	delay, cacheControl := s.delay, s.cacheControl
	s.mu.Unlock()

	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return
		case <-s.closed:
			return
		}
	}

	if status == 0 {
		status = http.StatusOK
	}
	if body == nil {
		if status == http.StatusOK {
			body, _ = json.Marshal(map[string]any{"keys": jwks})
		} else {
			body = []byte(`{"error":"key set unavailable"}`)
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if cacheControl != "" {
		w.Header().Set("Cache-Control", cacheControl)
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func (s *JWKSServer) serveDiscovery(w http.ResponseWriter, r *http.Request) {
	s.discovery.Add(1)
	doc, _ := json.Marshal(map[string]any{
		"issuer":                                s.Issuer,
		"jwks_uri":                              s.URL,
		"id_token_signing_alg_values_supported": []string{"RS256", "ES256", "EdDSA"},
	})
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(doc)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago, for
// servers that must be given a port number rather than a listener. Another
// process may take it before it is used; callers that can retry should.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
