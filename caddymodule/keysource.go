package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// Defaults for fetching a remote key set.
const (
	defaultRefreshMin      = time.Minute
	defaultRefreshMax      = time.Hour
	defaultRefresh         = 15 * time.Minute
	defaultMaxStale        = 24 * time.Hour
	defaultFetchTimeout    = 5 * time.Second
	defaultRefetchInterval = 10 * time.Second
	negativeCacheTTL       = time.Minute
	negativeCacheSize      = 1024
	maxKeySetBytes         = 1 << 20
	maxRetryBackoff        = 30 * time.Second
	startDelay             = time.Second
)

var (
	// ErrKeysUnavailable means no key set could be loaded yet, or the
	// last good one has outlived max_stale.
	ErrKeysUnavailable = errors.New("signing keys are unavailable")
	// ErrUnknownKeyID means the token names a kid the key set lacks, also
	// after the refetch the gateway allows itself.
	ErrUnknownKeyID = errors.New("unknown key id")
	// ErrInsecureKeySetURL is returned for plain-http key sets that are
	// not on loopback and not explicitly allowed.
	ErrInsecureKeySetURL = errors.New("key set URL must use https")
)

// keySources holds one keySource per key set location, for the whole
// process. Caddy's usage pool keeps an entry alive while any loaded config
// uses it, so a reload that keeps the same issuer reuses the fetched keys
// instead of fetching again, and routes that name the same key set share
// one fetcher whatever their other settings.
var keySources = caddy.NewUsagePool()

// keySourceConfig says where a key set comes from and how it is kept
// fresh. Routes with the same location share one keySource; the settings
// of the config loaded last apply to it.
type keySourceConfig struct {
	URL             string        // JWKS URL, fetched over HTTP
	DiscoveryIssuer string        // find jwks_uri through OIDC discovery
	File            string        // JWKS file, read at load and on refresh
	Inline          []byte        // JWKS given in the config
	RefreshMin      time.Duration // lower bound on the refresh interval
	RefreshMax      time.Duration // upper bound, and the default
	MaxStale        time.Duration // how long the last good keys serve through an outage
	FetchTimeout    time.Duration
	RefetchInterval time.Duration // least time between refetches for unknown kids
	AllowHTTP       bool
}

// poolKey identifies the key set by its location alone.
func (c keySourceConfig) poolKey() string {
	sum := sha256.Sum256(c.Inline)
	return fmt.Sprintf("url=%s|disc=%s|file=%s|inline=%x", c.URL, c.DiscoveryIssuer, c.File, sum[:8])
}

// sameSettings reports whether c and o keep the key set fresh the same
// way; their location is the same by construction.
func (c *keySourceConfig) sameSettings(o *keySourceConfig) bool {
	return c.RefreshMin == o.RefreshMin && c.RefreshMax == o.RefreshMax && c.MaxStale == o.MaxStale &&
		c.FetchTimeout == o.FetchTimeout && c.RefetchInterval == o.RefetchInterval &&
		c.AllowHTTP == o.AllowHTTP
}

// describe names the source in logs and metrics; never holds secrets.
func (c keySourceConfig) describe() string {
	switch {
	case c.URL != "":
		return c.URL
	case c.DiscoveryIssuer != "":
		return c.DiscoveryIssuer + " (discovery)"
	case c.File != "":
		return "file:" + c.File
	default:
		return "inline"
	}
}

// checkKeySetURL applies the transport rule: https, or plain http to a
// loopback host, or plain http anywhere when explicitly allowed.
func checkKeySetURL(raw string, allowHTTP bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("key set URL %q: %w", raw, err)
	}
	if u.Host == "" {
		return fmt.Errorf("key set URL %q: missing host", raw)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if allowHTTP || isLoopbackHost(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%w: %q (plain http is only allowed to loopback unless allow_http is set)",
			ErrInsecureKeySetURL, raw)
	}
	return fmt.Errorf("key set URL %q: scheme must be https", raw)
}

func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// keySnapshot is what a keySource publishes after each good load.
type keySnapshot struct {
	keys       *keySet
	loaded     time.Time // when these keys were last confirmed
	generation uint64    // changes whenever the keys change
	digest     [32]byte
}

// keySource loads one key set and keeps it current: a background refresh
// that honours Cache-Control within bounds, one shared refetch for unknown
// kids at most every RefetchInterval, and the last good keys kept through
// failures for up to MaxStale.
type keySource struct {
	settings atomic.Pointer[keySourceConfig]
	client   *http.Client
	logger   *zap.Logger
	now      func() time.Time
	events   keySourceEvents

	snapshot  atomic.Pointer[keySnapshot]
	mu        sync.Mutex
	inflight  *fetchCall
	lastFetch time.Time // start of the last fetch that was not a scheduled refresh
	negative  map[string]time.Time
	jwksURI   string        // resolved by discovery
	maxAge    time.Duration // from the last response's Cache-Control
	staleLog  bool          // the "serving stale keys" warning was logged

	cancel context.CancelFunc
	done   chan struct{}
	wake   chan struct{} // new settings: the refresh loop recomputes its wait
}

// keySourceEvents receives what a keySource does, for metrics.
type keySourceEvents interface {
	fetched(source string, err error)
	keysLoaded(source string, at time.Time)
}

type fetchCall struct {
	done    chan struct{}
	err     error
	started time.Time
}

func newKeySource(cfg keySourceConfig, logger *zap.Logger, events keySourceEvents) *keySource {
	s := &keySource{
		logger:   logger,
		now:      time.Now,
		events:   events,
		negative: make(map[string]time.Time),
		done:     make(chan struct{}),
		wake:     make(chan struct{}, 1),
	}
	s.settings.Store(&cfg)
	// every fetch runs under a context with the fetch timeout, which
	// bounds dialling, TLS, headers and body alike and follows the
	// settings when a reload changes them
	s.client = &http.Client{
		Transport: &http.Transport{
			Proxy:           http.ProxyFromEnvironment,
			MaxIdleConns:    2,
			IdleConnTimeout: 90 * time.Second,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return errors.New("too many redirects")
			}
			return checkKeySetURL(req.URL.String(), s.cfg().AllowHTTP)
		},
	}
	return s
}

// cfg returns the settings in force.
func (s *keySource) cfg() *keySourceConfig { return s.settings.Load() }

// reconfigure applies the settings of a config that names this key set
// again, on another route or after a reload: the config loaded last wins.
func (s *keySource) reconfigure(cfg keySourceConfig) {
	old := s.settings.Swap(&cfg)
	if old.sameSettings(&cfg) {
		return
	}
	if c := s.logger.Check(zap.InfoLevel, "key set settings changed"); c != nil {
		c.Write(zap.String("key_set", cfg.describe()), zap.Duration("refresh_min", cfg.RefreshMin),
			zap.Duration("refresh_max", cfg.RefreshMax), zap.Duration("max_stale", cfg.MaxStale),
			zap.Duration("refetch_interval", cfg.RefetchInterval))
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// start loads the keys once from local sources, or begins fetching remote
// ones in the background. It never blocks on the network: Caddy must start
// while the issuer is down.
func (s *keySource) start() error {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if s.cfg().URL == "" && s.cfg().DiscoveryIssuer == "" {
		close(s.done)
		return s.load(ctx)
	}
	go s.refreshLoop(ctx)
	return nil
}

// Destruct stops the background refresh when no config uses the source.
func (s *keySource) Destruct() error {
	if s.cancel != nil {
		s.cancel()
	}
	<-s.done
	return nil
}

// current returns the keys to verify with, or nil when there are none that
// may be used.
func (s *keySource) current() *keySnapshot {
	snap := s.snapshot.Load()
	if snap == nil {
		return nil
	}
	if maxStale := s.cfg().MaxStale; maxStale > 0 && s.now().Sub(snap.loaded) > maxStale && s.remote() {
		return nil
	}
	return snap
}

func (s *keySource) remote() bool {
	cfg := s.cfg()
	return cfg.URL != "" || cfg.DiscoveryIssuer != ""
}

// keys returns usable keys, waiting for a fetch in flight or starting one
// (within the refetch rate limit) when there are none yet.
func (s *keySource) keys(ctx context.Context) (*keySnapshot, error) {
	if snap := s.current(); snap != nil {
		return snap, nil
	}
	if !s.remote() {
		return nil, ErrKeysUnavailable
	}
	if call := s.startFetch(false); call != nil {
		s.wait(ctx, call)
	}
	if snap := s.current(); snap != nil {
		return snap, nil
	}
	return nil, ErrKeysUnavailable
}

// keysForKid returns keys that include kid if at all possible. An unknown
// kid causes one refetch shared by every request waiting for it, no more
// often than RefetchInterval; a kid still unknown after a refetch is
// remembered for a minute, so a flood of made-up kids costs the issuer at
// most one fetch per interval.
func (s *keySource) keysForKid(ctx context.Context, kid string) (*keySnapshot, error) {
	snap, err := s.keys(ctx)
	if err != nil {
		return nil, err
	}
	if kid == "" || snap.keys.hasKid(kid) || !s.remote() {
		return snap, nil
	}

	s.mu.Lock()
	if until, ok := s.negative[kid]; ok && s.now().Before(until) {
		s.mu.Unlock()
		return snap, ErrUnknownKeyID
	}
	s.mu.Unlock()

	for attempt := 0; ; attempt++ {
		asked := s.now()
		call := s.startFetch(false)
		if call == nil {
			// rate-limited; a fetch may have brought the kid since snap
			if fresh := s.current(); fresh != nil && fresh.keys.hasKid(kid) {
				return fresh, nil
			}
			return snap, ErrUnknownKeyID
		}
		done := s.wait(ctx, call)
		if fresh := s.current(); fresh != nil {
			snap = fresh
		}
		if snap.keys.hasKid(kid) {
			return snap, nil
		}
		if !done || call.err != nil {
			// the request gave up waiting, or the issuer did not answer:
			// neither says the kid does not exist, so it is not remembered
			return snap, ErrUnknownKeyID
		}
		// a fetch that was already running when the kid was asked for may
		// hold the key set from before the key was published: its answer
		// is no reason to refuse the kid for a minute, so ask once more
		if attempt > 0 || !call.started.Before(asked) {
			break
		}
	}

	s.mu.Lock()
	if len(s.negative) >= negativeCacheSize {
		clear(s.negative)
	}
	s.negative[kid] = s.now().Add(negativeCacheTTL)
	s.mu.Unlock()
	return snap, ErrUnknownKeyID
}

// wait waits for a fetch, or for the request to end; it reports whether
// the fetch finished.
func (s *keySource) wait(ctx context.Context, call *fetchCall) bool {
	select {
	case <-call.done:
		return true
	case <-ctx.Done():
		return false
	}
}

// startFetch joins the fetch in flight or starts one. Fetches asked for by
// requests are rate-limited; scheduled refreshes are not. It returns nil
// when the rate limit forbids a new fetch.
func (s *keySource) startFetch(scheduled bool) *fetchCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight != nil {
		return s.inflight
	}
	// every fetch counts towards the limit: keys fetched a moment ago by
	// the scheduled refresh are as fresh as a refetch would make them
	now := s.now()
	if !scheduled && !s.lastFetch.IsZero() && now.Sub(s.lastFetch) < s.cfg().RefetchInterval {
		return nil
	}
	s.lastFetch = now
	call := &fetchCall{done: make(chan struct{}), started: now}
	s.inflight = call
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg().FetchTimeout)
		defer cancel()
		call.err = s.load(ctx)
		s.mu.Lock()
		s.inflight = nil
		s.mu.Unlock()
		close(call.done)
	}()
	return call
}

// refreshLoop keeps a remote key set fresh until the source is destroyed.
func (s *keySource) refreshLoop(ctx context.Context) {
	defer close(s.done)

	// `caddy validate` provisions a config and unloads it at once; waiting
	// a moment before the first fetch keeps it from reaching the issuer.
	// A request that arrives sooner starts the fetch itself.
	select {
	case <-time.After(startDelay):
	case <-ctx.Done():
		return
	}

	failures := 0
	for {
		// keys a request-driven refetch loaded meanwhile postpone the
		// scheduled one
		wait := s.freshFor()
		if wait <= 0 {
			call := s.startFetch(true)
			select {
			case <-call.done:
			case <-ctx.Done():
				return
			}
			if call.err == nil {
				failures = 0
				continue
			}
			failures++
			wait = min(time.Second<<min(failures-1, 10), maxRetryBackoff, s.cfg().RefreshMin)
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-s.wake:
			timer.Stop()
		case <-ctx.Done():
			timer.Stop()
			return
		}
	}
}

// freshFor is how long the current keys remain fresh: their age
// subtracted from the refresh interval, or 0 when they are due.
func (s *keySource) freshFor() time.Duration {
	snap := s.snapshot.Load()
	if snap == nil {
		return 0
	}
	return max(s.nextRefresh()-s.now().Sub(snap.loaded), 0)
}

// nextRefresh is the delay before the next scheduled fetch, taken from
// the last response's Cache-Control max-age within the configured bounds.
func (s *keySource) nextRefresh() time.Duration {
	cfg := s.cfg()
	s.mu.Lock()
	d := s.maxAge
	s.mu.Unlock()
	if d <= 0 {
		d = min(defaultRefresh, cfg.RefreshMax)
	}
	return max(cfg.RefreshMin, min(d, cfg.RefreshMax))
}

// load fetches or reads the key set and publishes it if it is good. A
// failed or malformed load never replaces keys that work.
func (s *keySource) load(ctx context.Context) error {
	data, maxAge, err := s.read(ctx)
	if err == nil {
		err = s.publish(data)
	}
	if s.events != nil {
		s.events.fetched(s.cfg().describe(), err)
	}
	if err != nil {
		// a local key set fails only while the config loads, which then
		// fails with this error; only a remote one has an outage to log
		if s.remote() {
			s.logFailure(err)
		}
		return err
	}
	s.mu.Lock()
	s.maxAge = maxAge
	s.staleLog = false
	s.mu.Unlock()
	return nil
}

func (s *keySource) publish(data []byte) error {
	keys, skipped, err := parseKeySet(data)
	if err != nil {
		return err
	}
	now := s.now()
	digest := sha256.Sum256(data)
	old := s.snapshot.Load()
	next := &keySnapshot{keys: keys, loaded: now, digest: digest, generation: 1}
	if old != nil {
		next.generation = old.generation
		if old.digest != digest {
			next.generation++
		}
	}
	if old == nil || old.digest != digest {
		if c := s.logger.Check(zap.InfoLevel, "key set loaded"); c != nil {
			c.Write(zap.String("key_set", s.cfg().describe()),
				zap.Int("keys", len(keys.all)), zap.Strings("skipped", skipped))
		}
	}
	s.snapshot.Store(next)
	if s.events != nil {
		s.events.keysLoaded(s.cfg().describe(), now)
	}
	return nil
}

func (s *keySource) logFailure(err error) {
	snap := s.snapshot.Load()
	if snap == nil {
		if c := s.logger.Check(zap.ErrorLevel, "key set unavailable; requests get 503 until it loads"); c != nil {
			c.Write(zap.String("key_set", s.cfg().describe()), zap.Error(err))
		}
		return
	}
	age := s.now().Sub(snap.loaded)
	if c := s.logger.Check(zap.WarnLevel, "key set refresh failed; serving the last good keys"); c != nil {
		c.Write(zap.String("key_set", s.cfg().describe()), zap.Error(err),
			zap.Duration("key_age", age), zap.Duration("max_stale", s.cfg().MaxStale))
	}
	s.mu.Lock()
	expired := s.cfg().MaxStale > 0 && age > s.cfg().MaxStale && !s.staleLog
	if expired {
		s.staleLog = true
	}
	s.mu.Unlock()
	if expired {
		if c := s.logger.Check(zap.ErrorLevel, "last good keys are older than max_stale; requests get 503"); c != nil {
			c.Write(zap.String("key_set", s.cfg().describe()), zap.Duration("key_age", age))
		}
	}
}

// read returns the raw key set and the max-age its server asked for.
func (s *keySource) read(ctx context.Context) ([]byte, time.Duration, error) {
	switch {
	case s.cfg().Inline != nil:
		return s.cfg().Inline, 0, nil
	case s.cfg().File != "":
		data, err := os.ReadFile(s.cfg().File)
		if err != nil {
			return nil, 0, fmt.Errorf("reading key set: %w", err)
		}
		return data, 0, nil
	}

	target := s.cfg().URL
	if target == "" {
		var err error
		if target, err = s.discover(ctx); err != nil {
			return nil, 0, err
		}
	}
	data, header, err := s.get(ctx, target, "application/jwk-set+json, application/json")
	if err != nil {
		if s.cfg().DiscoveryIssuer != "" {
			// the issuer may have moved its keys; look again next time
			s.mu.Lock()
			s.jwksURI = ""
			s.mu.Unlock()
		}
		return nil, 0, err
	}
	return data, cacheMaxAge(header.Get("Cache-Control")), nil
}

// discover finds jwks_uri in the issuer's OpenID Provider metadata
// (OpenID Connect Discovery 1.0, section 4).
func (s *keySource) discover(ctx context.Context) (string, error) {
	s.mu.Lock()
	known := s.jwksURI
	s.mu.Unlock()
	if known != "" {
		return known, nil
	}

	issuer := s.cfg().DiscoveryIssuer
	data, _, err := s.get(ctx, strings.TrimSuffix(issuer, "/")+"/.well-known/openid-configuration",
		"application/json")
	if err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	var meta struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(data, &meta); err != nil {
		return "", fmt.Errorf("discovery: metadata is not JSON: %w", err)
	}
	// the metadata must be about the issuer we asked for (section 4.3)
	if meta.Issuer != issuer {
		return "", fmt.Errorf("discovery: metadata names issuer %q, want %q", meta.Issuer, issuer)
	}
	if meta.JWKSURI == "" {
		return "", errors.New("discovery: metadata has no jwks_uri")
	}
	if err := checkKeySetURL(meta.JWKSURI, s.cfg().AllowHTTP); err != nil {
		return "", fmt.Errorf("discovery: %w", err)
	}
	s.mu.Lock()
	s.jwksURI = meta.JWKSURI
	s.mu.Unlock()
	return meta.JWKSURI, nil
}

func (s *keySource) get(ctx context.Context, target, accept string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", accept)
	req.Header.Set("User-Agent", "edgeguard")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching %s: %w", target, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, nil, fmt.Errorf("fetching %s: status %d", target, resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxKeySetBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("fetching %s: %w", target, err)
	}
	if len(data) > maxKeySetBytes {
		return nil, nil, fmt.Errorf("fetching %s: document larger than %d bytes", target, maxKeySetBytes)
	}
	return data, resp.Header, nil
}

// cacheMaxAge reads max-age from a Cache-Control value (RFC 9111
// section 5.2.2); 0 when absent. no-store, no-cache and max-age=0 ask for
// the shortest refresh the bounds allow.
func cacheMaxAge(value string) time.Duration {
	for directive := range strings.SplitSeq(value, ",") {
		name, arg, _ := strings.Cut(strings.TrimSpace(directive), "=")
		switch strings.ToLower(name) {
		case "no-store", "no-cache":
			return time.Nanosecond
		case "max-age", "s-maxage":
			n, err := strconv.ParseInt(strings.Trim(arg, `"`), 10, 64)
			if err == nil && n >= 0 {
				return max(time.Duration(min(n, int64(365*24*3600)))*time.Second, time.Nanosecond)
			}
		}
	}
	return 0
}
