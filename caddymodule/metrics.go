package caddymodule

import (
	"errors"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Metrics are process-wide collectors. Caddy gives every config load a
// fresh registry, and its admin /metrics endpoint serves the current one,
// so each load registers them again; the counts survive reloads the way
// the key sources do. Label values are bounded by the config (route names,
// key set locations) and by the fixed set of reasons below.
var (
	decisionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "edgeguard",
		Name:      "decisions_total",
		Help:      "Requests decided by edge_guard, by route and reason (allowed, preflight_allowed, or why refused).",
	}, []string{"route", "reason"})
	tokenCacheTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "edgeguard",
		Name:      "token_cache_lookups_total",
		Help:      "Verified-token cache lookups, by route and result (hit or miss).",
	}, []string{"route", "result"})
	// TODO: drop a key set's series when its source is destructed, as
	// routes do; until then they stay for the process's life, which is
	// safe because their number is that of the key set locations
	// configured since the start.
	jwksFetchesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "edgeguard",
		Name:      "jwks_fetches_total",
		Help:      "Key set loads, by key set and result (ok or error).",
	}, []string{"key_set", "result"})
	jwksKeyAge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "edgeguard",
		Name:      "jwks_last_success_timestamp_seconds",
		Help:      "When each key set was last loaded successfully (Unix time); key age is time() minus this.",
	}, []string{"key_set"})
)

// knownReasons are given counters up front, so the request path never
// builds label sets.
var knownReasons = []string{
	"allowed", "preflight_allowed", "preflight_origin_refused", "preflight_method_refused",
	"preflight_headers_refused", "origin_not_allowed", "bad_origin", "missing_token",
	"bad_authorization", "multiple_authorization", "multiple_tokens", "token_too_large",
	"token_encrypted", "token_malformed", "duplicate_member", "crit_unsupported", "alg_none",
	"alg_not_allowed", "wrong_issuer", "unknown_kid", "no_fitting_key", "bad_signature",
	"bad_claim", "missing_exp", "expired", "not_yet_valid", "issued_in_future", "wrong_audience",
	"missing_claim", "insufficient_scope", "missing_role", "claim_mismatch", "keys_unavailable",
}

func registerMetrics(ctx caddy.Context) {
	registry := ctx.GetMetricsRegistry()
	if registry == nil {
		return
	}
	for _, c := range []prometheus.Collector{decisionsTotal, tokenCacheTotal, jwksFetchesTotal, jwksKeyAge} {
		var already prometheus.AlreadyRegisteredError
		if err := registry.Register(c); err != nil && !errors.As(err, &already) {
			ctx.Logger().Warn("registering metrics", zap.Error(err))
		}
	}
}

// routeEvents counts one route's decisions.
type routeEvents struct {
	route     string
	decisions map[string]prometheus.Counter
	hits      prometheus.Counter
	misses    prometheus.Counter
	released  sync.Once
}

// routesInUse counts the provisioned handlers per route name, so that a
// route's series go away when the last config naming it is unloaded, and
// stay across a reload that keeps it (the new config is provisioned
// before the old one is cleaned up).
var routesInUse = struct {
	sync.Mutex
	count map[string]int
}{count: make(map[string]int)}

func newRouteEvents(ctx caddy.Context, route string) *routeEvents {
	registerMetrics(ctx)
	routesInUse.Lock()
	routesInUse.count[route]++
	routesInUse.Unlock()
	e := &routeEvents{
		route:     route,
		decisions: make(map[string]prometheus.Counter, len(knownReasons)),
		hits:      tokenCacheTotal.WithLabelValues(route, "hit"),
		misses:    tokenCacheTotal.WithLabelValues(route, "miss"),
	}
	for _, reason := range knownReasons {
		e.decisions[reason] = decisionsTotal.WithLabelValues(route, reason)
	}
	return e
}

// release ends one handler's use of the route's series.
func (e *routeEvents) release() {
	if e == nil {
		return
	}
	e.released.Do(func() {
		routesInUse.Lock()
		defer routesInUse.Unlock()
		routesInUse.count[e.route]--
		if routesInUse.count[e.route] > 0 {
			return
		}
		delete(routesInUse.count, e.route)
		decisionsTotal.DeletePartialMatch(prometheus.Labels{"route": e.route})
		tokenCacheTotal.DeletePartialMatch(prometheus.Labels{"route": e.route})
	})
}

func (e *routeEvents) decision(reason string) {
	if c, ok := e.decisions[reason]; ok {
		c.Inc()
		return
	}
	decisionsTotal.WithLabelValues(e.route, reason).Inc()
}

func (e *routeEvents) cacheHit(hit bool) {
	if hit {
		e.hits.Inc()
	} else {
		e.misses.Inc()
	}
}

// keySetEvents reports key set loads to the metrics.
type keySetEvents struct{}

func sharedEvents(ctx caddy.Context) keySourceEvents {
	registerMetrics(ctx)
	return keySetEvents{}
}

func (keySetEvents) fetched(source string, err error) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	jwksFetchesTotal.WithLabelValues(source, result).Inc()
}

func (keySetEvents) keysLoaded(source string, at time.Time) {
	jwksKeyAge.WithLabelValues(source).Set(float64(at.UnixNano()) / 1e9)
}
