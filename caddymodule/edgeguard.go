// Package caddymodule is edgeguard's Caddy HTTP handler: it answers CORS
// preflights at the edge, refuses origins that are not on a route's
// allowlist, validates bearer JWTs against the issuer's key set, and
// forwards only authorized requests, with the verified claims attached and
// only its own CORS headers on the way back.
package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("edge_guard", parseCaddyfile)
	// right after the request is rewritten, before anything that answers
	// by itself (respond, error, a nested handle, templates) or forwards:
	// ordered merely before reverse_proxy, those would run unguarded
	httpcaddyfile.RegisterDirectiveOrder("edge_guard", httpcaddyfile.After, "try_files")
}

// Defaults for token handling.
const (
	defaultLeeway        = 30 * time.Second
	defaultMaxTokenBytes = 8 << 10
	defaultRolesClaim    = "roles"
	defaultName          = "edge_guard"
	maxLeeway            = 5 * time.Minute
)

// Handler guards one route: CORS policy first, then the bearer token, then
// forwarding with claim headers. One instance is one route's policy.
type Handler struct {
	// Name identifies the route in logs and metrics, and is the default
	// realm. Default: "edge_guard".
	Name string `json:"name,omitempty"`

	// CORS is the route's cross-origin policy. Required.
	CORS *CORS `json:"cors,omitempty"`

	// Issuers whose tokens this route accepts. At least one is required.
	Issuers []*Issuer `json:"issuers,omitempty"`

	// Algorithms allowed for tokens on this route. Default: RS256, RS384,
	// RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA. HS256,
	// HS384 and HS512 need an issuer with a shared secret.
	Algorithms []string `json:"algorithms,omitempty"`

	// Leeway is the clock skew allowed for exp, nbf and iat. Default 30s.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// AllowMissingExp accepts tokens without exp. Default: refused.
	AllowMissingExp bool `json:"allow_missing_exp,omitempty"`

	// MaxTokenBytes refuses longer tokens before parsing. Default 8192.
	MaxTokenBytes int `json:"max_token_bytes,omitempty"`

	// TokenCookie also reads the token from this cookie.
	TokenCookie string `json:"token_cookie,omitempty"`

	// TokenQuery also reads the token from this query parameter.
	TokenQuery string `json:"token_query,omitempty"`

	// Anonymous lets requests without a token through (with no identity
	// headers); a token that is sent is still verified.
	Anonymous bool `json:"anonymous,omitempty"`

	// Realm for WWW-Authenticate. Default: Name.
	Realm string `json:"realm,omitempty"`

	// RequireClaims must be present in the token (names or dotted paths).
	RequireClaims []string `json:"require_claims,omitempty"`

	// RequireScopes must all be granted, in scope or scp.
	RequireScopes []string `json:"require_scopes,omitempty"`

	// RequireRoles: at least one must be in the RolesClaim array.
	RequireRoles []string `json:"require_roles,omitempty"`

	// RolesClaim is the claim (or dotted path) holding roles. Default
	// "roles".
	RolesClaim string `json:"roles_claim,omitempty"`

	// RequireClaimValues maps a claim (or dotted path) to accepted
	// values; the claim, or one member of it if it is an array, must
	// equal one of them.
	RequireClaimValues map[string][]string `json:"require_claim_values,omitempty"`

	// ClaimHeaders maps a request header to the claim whose value it
	// carries to the upstream, such as X-User-Id: sub. Every header named
	// here is removed from incoming requests, in any spelling, first.
	ClaimHeaders map[string]string `json:"claim_headers,omitempty"`

	// StripAuthorization keeps the token from the upstream: it removes the
	// Authorization header, and the token cookie and query parameter when
	// those sources are configured. Default: forwarded.
	StripAuthorization bool `json:"strip_authorization,omitempty"`

	// UseHandleErrors hands refusals to the server's handle_errors routes,
	// which then write the answer ({err.status_code}, {err.message}).
	// Those routes run for a request the gateway refused: they must not
	// forward it. Default: the gateway writes a short JSON answer itself.
	UseHandleErrors bool `json:"use_handle_errors,omitempty"`

	// TokenCacheSize bounds the verified-token cache. Default 10000; a
	// negative value disables it.
	TokenCacheSize int `json:"token_cache_size,omitempty"`

	issuers      map[string]*Issuer
	algorithms   map[string]bool
	leeway       float64
	claimHeaders []claimHeader
	requirements requirements
	cache        *tokenCache
	challenge    string
	logger       *zap.Logger
	events       *routeEvents
	now          func() time.Time
}

type claimHeader struct {
	header string // canonical form
	claim  string
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.edge_guard",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills defaults and compiles the policy.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.now = time.Now
	if h.Name == "" {
		h.Name = defaultName
	}
	if h.Realm == "" {
		h.Realm = h.Name
	}
	if h.MaxTokenBytes == 0 {
		h.MaxTokenBytes = defaultMaxTokenBytes
	}
	if h.Leeway == 0 {
		h.Leeway = caddy.Duration(defaultLeeway)
	}
	h.leeway = time.Duration(h.Leeway).Seconds()
	if h.RolesClaim == "" {
		h.RolesClaim = defaultRolesClaim
	}
	if h.TokenCacheSize == 0 {
		h.TokenCacheSize = defaultTokenCacheSize
	}
	h.cache = newTokenCache(h.TokenCacheSize)
	h.challenge = fmt.Sprintf(`Bearer realm=%q`, h.Realm)

	if err := h.check(); err != nil {
		return err
	}
	if err := h.CORS.provision(true); err != nil {
		return fmt.Errorf("route %q: %w", h.Name, err)
	}
	if err := h.provisionAlgorithms(); err != nil {
		return fmt.Errorf("route %q: %w", h.Name, err)
	}

	// claim headers, in a fixed order
	for header, claim := range h.ClaimHeaders {
		h.claimHeaders = append(h.claimHeaders,
			claimHeader{header: http.CanonicalHeaderKey(header), claim: claim})
	}
	slices.SortFunc(h.claimHeaders, func(a, b claimHeader) int { return strings.Compare(a.header, b.header) })

	h.requirements = requirements{
		claims:     h.RequireClaims,
		scopes:     h.RequireScopes,
		roles:      h.RequireRoles,
		rolesClaim: h.RolesClaim,
		values:     h.RequireClaimValues,
		scopeValue: strings.Join(h.RequireScopes, " "),
	}

	h.events = newRouteEvents(ctx, h.Name)
	h.issuers = make(map[string]*Issuer, len(h.Issuers))
	for _, iss := range h.Issuers {
		if err := h.provisionIssuer(ctx, iss); err != nil {
			return fmt.Errorf("route %q: issuer %q: %w", h.Name, iss.Issuer, err)
		}
		h.issuers[iss.Issuer] = iss
	}
	return nil
}

// check refuses configs that are unsafe or inconsistent. It runs before
// anything is started, so that a refused config leaves nothing behind.
func (h *Handler) check() error {
	route := fmt.Sprintf("route %q", h.Name)
	if h.CORS == nil || len(h.CORS.AllowOrigins) == 0 {
		return fmt.Errorf("%s: no origin allowlist: list the origins a browser may call from (allow_origins)", route)
	}
	if len(h.Issuers) == 0 {
		return fmt.Errorf("%s: no issuer: a route must say whose tokens it accepts", route)
	}
	origins, err := newOriginAllowlist(h.CORS.AllowOrigins)
	if err != nil {
		return fmt.Errorf("%s: %w", route, err)
	}
	if origins.any {
		return fmt.Errorf("%s: allow_origins \"*\" lets any site read token-protected responses; list the origins", route)
	}
	if h.CORS.AllowCredentials && origins.nearWildcard() {
		return fmt.Errorf("%s: allow_credentials with an allowlist that matches unrelated sites", route)
	}
	if err := h.CORS.check(); err != nil {
		return fmt.Errorf("%s: %w", route, err)
	}
	if h.MaxTokenBytes < 0 {
		return fmt.Errorf("%s: max_token_bytes must be positive", route)
	}
	for header := range h.ClaimHeaders {
		if !validToken(header) {
			return fmt.Errorf("%s: claim_header %q is not a header name", route, header)
		}
		if reservedHeaders[strings.ToLower(strings.ReplaceAll(header, "_", "-"))] ||
			strings.HasPrefix(strings.ToLower(header), "access-control-") {
			return fmt.Errorf("%s: claim_header %q cannot be set from a claim", route, header)
		}
		for other := range h.ClaimHeaders {
			if other != header && sameHeaderName(other, header) {
				return fmt.Errorf("%s: claim_header %q and %q are one header to an upstream", route, header, other)
			}
		}
	}
	if h.Anonymous && (len(h.RequireClaims) > 0 || len(h.RequireScopes) > 0 ||
		len(h.RequireRoles) > 0 || len(h.RequireClaimValues) > 0) {
		return fmt.Errorf("%s: anonymous lets requests without a token skip the require_* checks; "+
			"put the requirements on a route without anonymous", route)
	}
	for _, list := range [][]string{h.RequireClaims, h.RequireScopes, h.RequireRoles} {
		if slices.Contains(list, "") {
			return fmt.Errorf("%s: an empty claim, scope or role name", route)
		}
	}
	if h.Leeway < 0 || time.Duration(h.Leeway) > maxLeeway {
		return fmt.Errorf("%s: leeway must be between 0 and %s", route, maxLeeway)
	}
	for _, name := range []string{h.TokenCookie, h.TokenQuery} {
		if name != "" && !validToken(name) {
			return fmt.Errorf("%s: token source name %q is not a valid cookie or parameter name", route, name)
		}
	}
	seen := make(map[string]bool)
	for _, iss := range h.Issuers {
		if iss == nil || iss.Issuer == "" {
			return fmt.Errorf("%s: an issuer needs its exact iss value", route)
		}
		if seen[iss.Issuer] {
			return fmt.Errorf("%s: issuer %q is listed twice", route, iss.Issuer)
		}
		seen[iss.Issuer] = true
		if err := iss.check(); err != nil {
			return fmt.Errorf("%s: issuer %q: %w", route, iss.Issuer, err)
		}
	}
	return nil
}

func (iss *Issuer) check() error {
	sources := 0
	for _, set := range []bool{iss.JWKSURL != "", iss.Discovery, iss.JWKSFile != "", iss.JWKS != nil} {
		if set {
			sources++
		}
	}
	if sources > 1 {
		return errors.New("give one key set: jwks_url, discovery, jwks_file or jwks")
	}
	if sources == 0 && iss.HMACSecret == "" {
		return errors.New("no key set: give jwks_url, discovery, jwks_file or jwks")
	}
	if iss.HMACSecret != "" && len(iss.HMACSecret) < 32 {
		return errors.New("hmac_secret must be at least 32 bytes")
	}
	if len(iss.Audiences) == 0 && !iss.AnyAudience {
		return errors.New("no audience: list the audiences this API accepts (audience), or set any_audience")
	}
	if iss.JWKSURL != "" {
		if err := checkKeySetURL(iss.JWKSURL, iss.AllowHTTP); err != nil {
			return err
		}
	}
	if iss.Discovery {
		if err := checkKeySetURL(iss.Issuer, iss.AllowHTTP); err != nil {
			return fmt.Errorf("discovery: %w", err)
		}
	}
	if iss.RefreshMin < 0 || iss.RefreshMax < 0 || iss.MaxStale < 0 || iss.FetchTimeout < 0 ||
		iss.RefetchInterval < 0 {
		return errors.New("durations must not be negative")
	}
	if iss.RefreshMin != 0 && iss.RefreshMax != 0 && iss.RefreshMin > iss.RefreshMax {
		return errors.New("refresh_min is longer than refresh_max")
	}
	return nil
}

func (h *Handler) provisionAlgorithms() error {
	names := h.Algorithms
	if len(names) == 0 {
		names = defaultAlgorithms
	}
	h.algorithms = make(map[string]bool, len(names))
	for _, alg := range names {
		if !supportedAlgorithms[alg] {
			return fmt.Errorf("algorithm %q is not supported", alg)
		}
		h.algorithms[alg] = true
	}
	return nil
}

func (h *Handler) provisionIssuer(ctx caddy.Context, iss *Issuer) error {
	iss.audiences = make(map[string]struct{}, len(iss.Audiences))
	for _, a := range iss.Audiences {
		iss.audiences[a] = struct{}{}
	}

	// algorithms: the issuer's own list narrows the route's
	iss.algorithms = make(map[string]bool)
	names := iss.Algorithms
	if len(names) == 0 {
		// the route's list, less what this issuer has no key for: on a
		// route with HS256 for one issuer, another issuer's key set
		// must not make HS256 an error, nor its tokens checked with HMAC
		hasKeySet := iss.JWKSURL != "" || iss.Discovery || iss.JWKSFile != "" || iss.JWKS != nil
		for alg := range h.algorithms {
			if isHMAC(alg) && iss.HMACSecret != "" || !isHMAC(alg) && hasKeySet {
				names = append(names, alg)
			}
		}
	}
	for _, alg := range names {
		if !h.algorithms[alg] {
			return fmt.Errorf("algorithm %q is not in the route's algorithms", alg)
		}
		if isHMAC(alg) && iss.HMACSecret == "" {
			return fmt.Errorf("algorithm %s needs hmac_secret", alg)
		}
		iss.algorithms[alg] = true
	}
	if len(iss.algorithms) == 0 {
		return errors.New("none of the route's algorithms fits this issuer's keys")
	}
	if iss.HMACSecret != "" {
		iss.hmacKey = &verificationKey{public: hmacSecret(iss.HMACSecret)}
	}

	if iss.JWKSURL == "" && !iss.Discovery && iss.JWKSFile == "" && iss.JWKS == nil {
		return nil
	}
	cfg := keySourceConfig{
		URL:             iss.JWKSURL,
		File:            iss.JWKSFile,
		Inline:          iss.JWKS,
		RefreshMin:      durationOr(iss.RefreshMin, defaultRefreshMin),
		RefreshMax:      durationOr(iss.RefreshMax, defaultRefreshMax),
		MaxStale:        durationOr(iss.MaxStale, defaultMaxStale),
		FetchTimeout:    durationOr(iss.FetchTimeout, defaultFetchTimeout),
		RefetchInterval: durationOr(iss.RefetchInterval, defaultRefetchInterval),
		AllowHTTP:       iss.AllowHTTP,
	}
	if iss.Discovery {
		cfg.DiscoveryIssuer = iss.Issuer
	}
	if cfg.RefreshMin > cfg.RefreshMax {
		cfg.RefreshMin = cfg.RefreshMax
	}
	iss.poolKey = cfg.poolKey()
	logger := ctx.Logger().Named("jwks")
	events := sharedEvents(ctx)
	value, loaded, err := keySources.LoadOrNew(iss.poolKey, func() (caddy.Destructor, error) {
		source := newKeySource(cfg, logger, events)
		if err := source.start(); err != nil {
			return nil, err
		}
		return source, nil
	})
	if err != nil {
		iss.poolKey = ""
		return err
	}
	iss.source = value.(*keySource)
	if loaded {
		iss.source.reconfigure(cfg)
	}
	return nil
}

func durationOr(d caddy.Duration, fallback time.Duration) time.Duration {
	if d == 0 {
		return fallback
	}
	return time.Duration(d)
}

// Validate checks the provisioned handler. The checks themselves run in
// Provision, before anything is started.
func (h *Handler) Validate() error {
	if h.CORS == nil || h.CORS.origins == nil || len(h.issuers) == 0 {
		return errors.New("edge_guard: not provisioned")
	}
	return nil
}

// Cleanup releases the shared key sources and the metric series this
// route used.
func (h *Handler) Cleanup() error {
	h.events.release()
	for _, iss := range h.Issuers {
		if iss != nil && iss.poolKey != "" {
			_, _ = keySources.Delete(iss.poolKey)
			iss.poolKey = ""
		}
	}
	return nil
}

// ServeHTTP guards one request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	// identity headers come only from verified claims, so a client's
	// copies go first, on every request, preflights included
	h.removeClaimHeaders(r.Header)

	// origin
	origin := ""
	switch values := r.Header["Origin"]; len(values) {
	case 0:
	case 1:
		origin = values[0]
		if !validRequestOrigin(origin) {
			return h.refuse(w, r, "", invalidRequest("bad_origin", "the Origin header is not a valid origin"))
		}
	default:
		return h.refuse(w, r, "", invalidRequest("bad_origin", "more than one Origin header"))
	}

	// a preflight is answered here, never forwarded and never asked for a
	// token (Fetch, "CORS-preflight request")
	if r.Method == http.MethodOptions && origin != "" && len(r.Header["Access-Control-Request-Method"]) > 0 {
		return h.answerPreflight(w, r, origin)
	}

	allowedOrigin := ""
	if origin != "" {
		switch {
		case h.CORS.origins.allows(origin):
			allowedOrigin = origin
		case origin == requestOrigin(requestScheme(r), r.Host):
			// same-origin requests are not cross-origin at all
		default:
			return h.refuse(w, r, "", &refusal{status: http.StatusForbidden, code: "origin_not_allowed",
				reason: "origin_not_allowed", description: "this origin may not call this API"})
		}
	}

	// token
	raw, ref := h.extractToken(r)
	if ref != nil {
		return h.refuse(w, r, allowedOrigin, ref)
	}
	var id *identity
	if raw == "" {
		if !h.Anonymous {
			return h.refuse(w, r, allowedOrigin, refusalMissingToken)
		}
	} else if id, ref = h.authenticate(r.Context(), raw); ref != nil {
		return h.refuse(w, r, allowedOrigin, ref)
	}

	// forward
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl != nil {
		repl.Map(unsetIdentityPlaceholder)
	}
	if id != nil {
		h.attachIdentity(r, repl, id)
	}
	if h.StripAuthorization {
		h.removeToken(r)
	}
	if r.Trailer != nil && len(h.claimHeaders) > 0 {
		// trailers arrive after the body and would reach the upstream
		// beside the verified identity headers
		h.removeClaimHeaders(r.Trailer)
		r.Body = &trailerFilter{ReadCloser: r.Body, request: r, handler: h}
	}
	h.events.decision("allowed")
	rw := &responseWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		cors: h.CORS, origin: allowedOrigin}
	err := next.ServeHTTP(rw, r)
	rw.finish()
	if err != nil && !rw.wroteHeader {
		// the error goes to Caddy's error handling (handle_errors or a bare
		// status): give it our CORS headers so the page can read it
		hdr := w.Header()
		stripCORSHeaders(hdr)
		h.CORS.decorate(hdr, allowedOrigin, true)
	}
	return err
}

func requestScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

func (h *Handler) answerPreflight(w http.ResponseWriter, r *http.Request, origin string) error {
	hdr := w.Header()
	stripCORSHeaders(hdr)
	switch h.CORS.answerPreflight(hdr, r, origin) {
	case preflightAllowed:
		h.events.decision("preflight_allowed")
		w.WriteHeader(http.StatusNoContent)
		return nil
	case preflightOriginRefused:
		return h.refuse(w, r, "", &refusal{status: http.StatusForbidden, code: "origin_not_allowed",
			reason: "preflight_origin_refused", description: "this origin may not call this API"})
	case preflightMethodRefused:
		return h.refuse(w, r, "", &refusal{status: http.StatusForbidden, code: "method_not_allowed",
			reason: "preflight_method_refused", description: "this method is not allowed from browsers"})
	default:
		return h.refuse(w, r, "", &refusal{status: http.StatusForbidden, code: "headers_not_allowed",
			reason: "preflight_headers_refused", description: "a requested header is not allowed"})
	}
}

// attachIdentity sets the claim headers and placeholders of a verified
// token.
func (h *Handler) attachIdentity(r *http.Request, repl *caddy.Replacer, id *identity) {
	for i, ch := range h.claimHeaders {
		if v := id.headerValues[i]; v != "" {
			r.Header[ch.header] = []string{v}
		}
	}
	if len(h.claimHeaders) > 0 {
		h.protectFromConnection(r.Header)
	}
	if repl != nil {
		for _, p := range id.placeholders {
			repl.Set(p.key, p.value)
		}
	}
}

// removeClaimHeaders deletes every header that a claim header could be
// confused with upstream: any case, and "_" for "-", since WSGI and CGI
// servers fold both to the same variable (PEP 3333, "environ").
func (h *Handler) removeClaimHeaders(header http.Header) {
	if len(h.claimHeaders) == 0 {
		return
	}
	for name := range header {
		for _, ch := range h.claimHeaders {
			if sameHeaderName(name, ch.header) {
				delete(header, name)
				break
			}
		}
	}
}

// removeToken deletes the token from every source it may have come from.
func (h *Handler) removeToken(r *http.Request) {
	r.Header.Del("Authorization")
	if h.TokenCookie != "" && len(r.Header["Cookie"]) > 0 {
		cookies := r.Cookies()
		r.Header.Del("Cookie")
		for _, c := range cookies {
			if c.Name != h.TokenCookie {
				r.AddCookie(c)
			}
		}
	}
	if h.TokenQuery != "" && r.URL.RawQuery != "" {
		if query := r.URL.Query(); query.Has(h.TokenQuery) {
			query.Del(h.TokenQuery)
			r.URL.RawQuery = query.Encode()
		}
	}
}

// reservedHeaders cannot carry claims: the proxy would drop them as
// hop-by-hop or framing headers, or they decide routing and
// authentication themselves.
var reservedHeaders = map[string]bool{
	"authorization": true, "host": true, "connection": true, "keep-alive": true,
	"proxy-authorization": true, "proxy-authenticate": true, "proxy-connection": true,
	"te": true, "trailer": true, "transfer-encoding": true, "upgrade": true,
	"content-length": true, "cookie": true, "origin": true, "forwarded": true,
}

// trailerFilter removes claim headers from request trailers once the body
// has been read, which is when the server fills them in, and before the
// proxy sends them on.
type trailerFilter struct {
	io.ReadCloser
	request *http.Request
	handler *Handler
}

func (f *trailerFilter) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if err != nil {
		f.handler.removeClaimHeaders(f.request.Trailer)
	}
	return n, err
}

// sameHeaderName compares header names ignoring case and treating "_" as
// "-".
func sameHeaderName(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if x == '_' {
			x = '-'
		}
		if y == '_' {
			y = '-'
		}
		if x != y && lower(x) != lower(y) {
			return false
		}
	}
	return true
}

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// protectFromConnection removes claim header names from Connection, which
// would otherwise make the proxy drop them as hop-by-hop headers (RFC 9110
// section 7.6.1) and let a client strip its own identity.
func (h *Handler) protectFromConnection(header http.Header) {
	values, ok := header["Connection"]
	if !ok {
		return
	}
	named := false
	for _, v := range values {
		for token := range strings.SplitSeq(v, ",") {
			named = named || h.isClaimHeader(strings.TrimSpace(token))
		}
	}
	if !named {
		return
	}
	var kept []string
	for _, v := range values {
		for token := range strings.SplitSeq(v, ",") {
			if token = strings.TrimSpace(token); token != "" && !h.isClaimHeader(token) {
				kept = append(kept, token)
			}
		}
	}
	if len(kept) == 0 {
		delete(header, "Connection")
		return
	}
	header["Connection"] = []string{strings.Join(kept, ", ")}
}

func (h *Handler) isClaimHeader(name string) bool {
	for _, ch := range h.claimHeaders {
		if sameHeaderName(name, ch.header) {
			return true
		}
	}
	return false
}

// refuse answers a request the gateway will not forward. For an allowed
// origin the answer carries CORS headers, so the page can read why. When
// the server has handle_errors routes, they write the body; otherwise the
// gateway writes a short JSON one.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, origin string, ref *refusal) error {
	hdr := w.Header()
	stripCORSHeaders(hdr)
	h.CORS.decorate(hdr, origin, true)
	if ref.status == http.StatusUnauthorized || ref.status == http.StatusForbidden && ref.code == "insufficient_scope" ||
		ref.status == http.StatusBadRequest && ref.code == "invalid_request" {
		hdr.Set("WWW-Authenticate", h.challengeFor(ref))
	}
	if ref.status == http.StatusServiceUnavailable {
		hdr.Set("Retry-After", "5")
	}
	h.events.decision(ref.reason)
	if c := h.logger.Check(zap.DebugLevel, "request refused"); c != nil {
		c.Write(zap.String("route", h.Name), zap.String("reason", ref.reason),
			zap.Int("status", ref.status), zap.String("method", r.Method), zap.String("path", r.URL.Path))
	}

	// handle_errors only when asked for: an error route that proxies
	// (a common way to serve error pages) would forward the very request
	// that was just refused
	if h.UseHandleErrors {
		if srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok &&
			srv.Errors != nil && len(srv.Errors.Routes) > 0 {
			return caddyhttp.Error(ref.status, ref)
		}
	}
	code := ref.code
	if code == "" {
		code = ref.reason
	}
	body := `{"error":` + jsonString(code) + `,"error_description":` + jsonString(ref.description) + "}\n"
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	hdr.Del("Content-Length")
	w.WriteHeader(ref.status)
	_, _ = w.Write([]byte(body))
	return nil
}

// challengeFor builds the WWW-Authenticate value (RFC 6750 section 3): no
// error code when no token was sent, otherwise the code and a short
// description, never anything from the token.
func (h *Handler) challengeFor(ref *refusal) string {
	if ref.code == "" {
		return h.challenge
	}
	v := h.challenge + `, error="` + ref.code + `", error_description="` + ref.description + `"`
	if ref.scope != "" {
		v += `, scope="` + ref.scope + `"`
	}
	return v
}

func jsonString(s string) string {
	if s == "" {
		return `""`
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range s {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteRune(c)
		case c < 0x20:
			fmt.Fprintf(&b, `\u%04x`, c)
		default:
			b.WriteRune(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
