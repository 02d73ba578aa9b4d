package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// Issuer is one token issuer a route trusts, with where its keys come
// from and what its tokens must say.
type Issuer struct {
	// Issuer is the exact iss value of this issuer's tokens. Required.
	Issuer string `json:"issuer,omitempty"`

	// JWKSURL is the issuer's JSON Web Key Set. https, or plain http to a
	// loopback address unless AllowHTTP is set.
	JWKSURL string `json:"jwks_url,omitempty"`

	// Discovery finds the key set through the issuer's OpenID Connect
	// discovery document ({issuer}/.well-known/openid-configuration).
	Discovery bool `json:"discovery,omitempty"`

	// JWKSFile reads the key set from a file, once at load.
	JWKSFile string `json:"jwks_file,omitempty"`

	// JWKS is the key set itself, inline.
	JWKS json.RawMessage `json:"jwks,omitempty"`

	// HMACSecret is a shared secret for HS256/HS384/HS512, at least 32
	// bytes. HMAC algorithms must also be listed in Algorithms.
	HMACSecret string `json:"hmac_secret,omitempty"`

	// Audiences: the token's aud must contain at least one of these.
	// Required unless AnyAudience is set.
	Audiences []string `json:"audiences,omitempty"`

	// AnyAudience accepts tokens whatever their aud says. Only for
	// issuers that mint tokens for this API alone.
	AnyAudience bool `json:"any_audience,omitempty"`

	// Algorithms allowed for this issuer's tokens, within the route's.
	// Default: the route's list.
	Algorithms []string `json:"algorithms,omitempty"`

	// RefreshMin and RefreshMax bound how often the key set is fetched;
	// the server's Cache-Control max-age is honoured between them.
	// Defaults 1m and 1h (15m when the server gives no max-age).
	RefreshMin caddy.Duration `json:"refresh_min,omitempty"`
	RefreshMax caddy.Duration `json:"refresh_max,omitempty"`

	// MaxStale is how long the last good keys keep serving while the key
	// set cannot be fetched. Default 24h.
	MaxStale caddy.Duration `json:"max_stale,omitempty"`

	// FetchTimeout bounds one fetch. Default 5s.
	FetchTimeout caddy.Duration `json:"fetch_timeout,omitempty"`

	// RefetchInterval is the least time between fetches caused by tokens
	// naming an unknown kid. Default 10s.
	RefetchInterval caddy.Duration `json:"refetch_interval,omitempty"`

	// AllowHTTP allows a plain-http key set on a non-loopback host.
	AllowHTTP bool `json:"allow_http,omitempty"`

	source     *keySource
	poolKey    string
	hmacKey    *verificationKey
	audiences  map[string]struct{}
	algorithms map[string]bool
}

// refusal is why a request was not forwarded. status and code are what
// the client sees (RFC 6750 section 3.1 error codes, or the gateway's own
// for CORS); reason is a stable code for logs and metrics.
type refusal struct {
	status      int
	code        string
	reason      string
	description string
	scope       string
}

func (r *refusal) Error() string { return r.reason + ": " + r.description }

func invalidToken(reason, description string) *refusal {
	return &refusal{status: http.StatusUnauthorized, code: "invalid_token",
		reason: reason, description: description}
}

func invalidRequest(reason, description string) *refusal {
	return &refusal{status: http.StatusBadRequest, code: "invalid_request",
		reason: reason, description: description}
}

var (
	refusalMissingToken = &refusal{status: http.StatusUnauthorized, reason: "missing_token",
		description: "a bearer token is required"}
	refusalKeysUnavailable = &refusal{status: http.StatusServiceUnavailable,
		code: "temporarily_unavailable", reason: "keys_unavailable",
		description: "the issuer's signing keys are not available yet"}
)

// shapeReasons maps token shape errors to reason codes.
var shapeReasons = map[error]string{
	errTokenTooLarge:   "token_too_large",
	errTokenEncrypted:  "token_encrypted",
	errTokenMalformed:  "token_malformed",
	errHeaderMalformed: "token_malformed",
	errClaimsMalformed: "token_malformed",
	errDuplicateMember: "duplicate_member",
	errCritUnsupported: "crit_unsupported",
}

// identity is what a verified token says, prepared once so that a repeat
// of the token costs a map lookup.
type identity struct {
	issuer       *Issuer
	generation   uint64
	expires      float64 // exp in seconds; 0 when the token has none
	subject      string
	headerValues []string // one per Handler.claimHeaders entry; "" = absent
	placeholders []placeholder
	denied       *refusal // a route requirement the token fails
}

// placeholder is one Caddy placeholder of a verified identity. The value
// is stored as the interface the replacer keeps, so that setting it on
// every request with a cached token allocates nothing.
type placeholder struct {
	key   string
	value any
}

// stillValid reports whether a cached identity may be used at now.
func (id *identity) stillValid(now float64, leeway float64) bool {
	if id.expires != 0 && now >= id.expires+leeway {
		return false
	}
	if id.issuer.source == nil {
		return true
	}
	snap := id.issuer.source.current()
	return snap != nil && snap.generation == id.generation
}

// authenticate verifies a raw token for this route. It returns the
// identity, or a refusal; an identity that fails a route requirement is
// returned with its refusal.
func (h *Handler) authenticate(ctx context.Context, raw string) (*identity, *refusal) {
	// size first, before the token is hashed for the cache or parsed
	if len(raw) > h.MaxTokenBytes {
		return nil, invalidToken("token_too_large", errTokenTooLarge.Error())
	}
	now := h.now()
	nowSeconds := float64(now.UnixNano()) / 1e9
	if id := h.cache.get(raw); id != nil && id.stillValid(nowSeconds, h.leeway) {
		h.events.cacheHit(true)
		return id, id.denied
	}
	h.events.cacheHit(false)

	tok, err := parseCompact(raw, h.MaxTokenBytes)
	if err != nil {
		return nil, invalidToken(shapeReasons[err], err.Error())
	}

	// algorithm: from an allowlist only; "none" can never be on it
	alg := tok.header.Alg
	if strings.EqualFold(alg, "none") {
		return nil, invalidToken("alg_none", "unsigned tokens are not accepted")
	}
	if !h.algorithms[alg] {
		return nil, invalidToken("alg_not_allowed", "token algorithm is not allowed")
	}

	// issuer: a token is only ever checked with its own issuer's keys
	iss, ok := tok.claims["iss"].(string)
	if !ok {
		return nil, invalidToken("wrong_issuer", "token has no issuer")
	}
	issuer := h.issuers[iss]
	if issuer == nil {
		return nil, invalidToken("wrong_issuer", "token issuer is not trusted here")
	}
	if !issuer.algorithms[alg] {
		return nil, invalidToken("alg_not_allowed", "token algorithm is not allowed for its issuer")
	}

	// key and signature
	generation, ref := h.verifyWithIssuer(ctx, tok, alg, issuer)
	if ref != nil {
		return nil, ref
	}

	// claims
	id, ref := h.checkClaims(tok.claims, issuer, nowSeconds)
	if ref != nil {
		return nil, ref
	}
	id.generation = generation
	id.denied = h.requirements.check(tok.claims)
	h.cache.put(raw, id, nowSeconds)
	return id, id.denied
}

// verifyWithIssuer finds the issuer's keys that fit the token and checks
// the signature, returning the key set generation it used.
func (h *Handler) verifyWithIssuer(ctx context.Context, tok *compactToken, alg string,
	issuer *Issuer) (uint64, *refusal) {
	if isHMAC(alg) {
		if issuer.hmacKey == nil || !verifySignature(tok, alg, issuer.hmacKey) {
			return 0, invalidToken("bad_signature", errBadSignature.Error())
		}
		return 0, nil
	}
	if issuer.source == nil {
		return 0, invalidToken("alg_not_allowed", "token algorithm is not allowed for its issuer")
	}

	kid := tok.header.Kid
	snap, err := issuer.source.keysForKid(ctx, kid)
	switch {
	case errors.Is(err, ErrKeysUnavailable):
		return 0, refusalKeysUnavailable
	case errors.Is(err, ErrUnknownKeyID):
		return 0, invalidToken("unknown_kid", "token key id is not in the issuer's key set")
	}
	candidates := snap.keys.lookup(kid, alg)
	if len(candidates) == 0 {
		return 0, invalidToken("no_fitting_key", "no key of the issuer fits the token's algorithm")
	}
	if kid == "" && len(candidates) > maxKeysWithoutKid {
		candidates = candidates[:maxKeysWithoutKid]
	}
	for _, key := range candidates {
		if verifySignature(tok, alg, key) {
			return snap.generation, nil
		}
	}
	return 0, invalidToken("bad_signature", errBadSignature.Error())
}

// checkClaims applies the registered claims (RFC 7519 section 4.1) and
// prepares the identity.
func (h *Handler) checkClaims(claims map[string]any, issuer *Issuer, now float64) (*identity, *refusal) {
	exp, hasExp, ok := numericDate(claims, "exp")
	if !ok {
		return nil, invalidToken("bad_claim", "exp is not a valid NumericDate")
	}
	if !hasExp && !h.AllowMissingExp {
		return nil, invalidToken("missing_exp", "token has no expiry")
	}
	if hasExp && now >= exp+h.leeway {
		return nil, invalidToken("expired", "token has expired")
	}
	nbf, hasNbf, ok := numericDate(claims, "nbf")
	if !ok {
		return nil, invalidToken("bad_claim", "nbf is not a valid NumericDate")
	}
	if hasNbf && now+h.leeway < nbf {
		return nil, invalidToken("not_yet_valid", "token is not valid yet")
	}
	iat, hasIat, ok := numericDate(claims, "iat")
	if !ok {
		return nil, invalidToken("bad_claim", "iat is not a valid NumericDate")
	}
	if hasIat && now+h.leeway < iat {
		return nil, invalidToken("issued_in_future", "token was issued in the future")
	}

	auds, ok := audiences(claims)
	if !ok {
		return nil, invalidToken("bad_claim", "aud is neither a string nor an array of strings")
	}
	if !issuer.AnyAudience && !slices.ContainsFunc(auds, func(a string) bool {
		_, ok := issuer.audiences[a]
		return ok
	}) {
		return nil, invalidToken("wrong_audience", "token is not meant for this audience")
	}

	subject, isString := claims["sub"].(string)
	if _, present := claims["sub"]; present && !isString {
		return nil, invalidToken("bad_claim", "sub is not a string")
	}

	id := &identity{issuer: issuer, subject: subject}
	if hasExp {
		id.expires = exp
	}
	id.headerValues = make([]string, len(h.claimHeaders))
	for i, ch := range h.claimHeaders {
		if v, ok := lookupClaim(claims, ch.claim); ok {
			id.headerValues[i] = claimHeaderValue(v)
		}
	}
	id.placeholders = claimPlaceholders(claims, subject)
	return id, nil
}

// lookupClaim finds a claim by name, or by a dotted path into nested
// objects ("realm_access.roles"). A top-level name that itself contains
// dots, as namespaced claims do, wins over the path.
func lookupClaim(claims map[string]any, path string) (any, bool) {
	if v, ok := claims[path]; ok {
		return v, true
	}
	var cur any = claims
	for part := range strings.SplitSeq(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// claimHeaderValue renders a claim for a request header: strings as they
// are, numbers and booleans as JSON writes them, arrays of those joined by
// commas. Objects and values that are not valid in a header give "".
func claimHeaderValue(v any) string {
	s := scalarString(v)
	if arr, ok := v.([]any); ok {
		parts := make([]string, 0, len(arr))
		for _, e := range arr {
			p := scalarString(e)
			if p == "" || strings.Contains(p, ",") {
				return ""
			}
			parts = append(parts, p)
		}
		s = strings.Join(parts, ",")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return ""
		}
	}
	return s
}

func scalarString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return strconv.FormatBool(v)
	}
	return ""
}

// claimPlaceholders prepares {http.auth.user.id} and one placeholder per
// top-level claim that has a header-safe rendering. A claim called "id"
// gets none: {http.auth.user.id} is the subject, and a claim must not be
// able to overwrite it.
func claimPlaceholders(claims map[string]any, subject string) []placeholder {
	out := make([]placeholder, 0, len(claims)+1)
	out = append(out, placeholder{"http.auth.user.id", subject})
	for name, v := range claims {
		if name == "id" {
			continue
		}
		if s := claimHeaderValue(v); s != "" {
			out = append(out, placeholder{"http.auth.user." + name, s})
		}
	}
	return out
}

// unsetIdentityPlaceholder makes the {http.auth.user.*} placeholders that
// no verified claim set known and empty: Caddy leaves unknown placeholders
// as they are written, and a header_up of {http.auth.user.id} must not
// send an anonymous request upstream with that text as its user.
func unsetIdentityPlaceholder(key string) (any, bool) {
	if strings.HasPrefix(key, "http.auth.user.") {
		return "", true
	}
	return nil, false
}

// requirements are a route's conditions on a verified token; failing one
// is 403 insufficient_scope (RFC 6750 section 3.1).
type requirements struct {
	claims     []string
	scopes     []string
	roles      []string
	rolesClaim string
	values     map[string][]string
	scopeValue string
}

func (q *requirements) check(claims map[string]any) *refusal {
	for _, path := range q.claims {
		if _, ok := lookupClaim(claims, path); !ok {
			return q.deny("missing_claim", fmt.Sprintf("token lacks the %s claim", path))
		}
	}
	if len(q.scopes) > 0 {
		granted := tokenScopes(claims)
		for _, s := range q.scopes {
			if !slices.Contains(granted, s) {
				return q.deny("insufficient_scope", "token lacks a required scope")
			}
		}
	}
	if len(q.roles) > 0 {
		v, _ := lookupClaim(claims, q.rolesClaim)
		if !slices.ContainsFunc(stringList(v), func(r string) bool { return slices.Contains(q.roles, r) }) {
			return q.deny("missing_role", "token lacks a required role")
		}
	}
	for path, want := range q.values {
		v, _ := lookupClaim(claims, path)
		if !slices.ContainsFunc(stringList(v), func(got string) bool { return slices.Contains(want, got) }) {
			return q.deny("claim_mismatch", fmt.Sprintf("token's %s claim does not have a required value", path))
		}
	}
	return nil
}

func (q *requirements) deny(reason, description string) *refusal {
	return &refusal{status: http.StatusForbidden, code: "insufficient_scope",
		reason: reason, description: description, scope: q.scopeValue}
}

// tokenScopes reads granted scopes from scope (a space-separated string,
// RFC 8693 section 4.2) or scp (an array, or a string, as some issuers
// send it).
func tokenScopes(claims map[string]any) []string {
	var out []string
	for _, name := range []string{"scope", "scp"} {
		switch v := claims[name].(type) {
		case string:
			out = append(out, strings.Fields(v)...)
		case []any:
			out = append(out, stringList(v)...)
		}
	}
	return out
}

// stringList renders a claim as a list of strings: a scalar is a list of
// one, an array keeps its scalar members.
func stringList(v any) []string {
	if arr, ok := v.([]any); ok {
		out := make([]string, 0, len(arr))
		for _, e := range arr {
			if s := scalarString(e); s != "" {
				out = append(out, s)
			}
		}
		return out
	}
	if s := scalarString(v); s != "" {
		return []string{s}
	}
	return nil
}

// maxHeaderTokens bounds how many token candidates one request may carry.
const maxTokenSources = 3

// extractToken finds the bearer token in the configured sources. It
// returns "" without a refusal when there is none.
func (h *Handler) extractToken(r *http.Request) (string, *refusal) {
	var found [maxTokenSources]string
	n := 0

	// Authorization: exactly one header, scheme compared case-insensitively
	// (RFC 9110 section 11.1), token68 syntax (RFC 6750 section 2.1)
	switch values := r.Header["Authorization"]; len(values) {
	case 0:
	case 1:
		// the scheme ends at any whitespace, not only a space: upstreams
		// that split on tabs would otherwise read an unverified token
		value := values[0]
		end := strings.IndexAny(value, " \t")
		if end < 0 {
			end = len(value)
		}
		if strings.EqualFold(value[:end], "Bearer") {
			credentials := strings.TrimLeft(value[end:], " \t")
			if !isToken68(credentials) {
				return "", invalidRequest("bad_authorization",
					"the Authorization header does not hold a valid bearer token")
			}
			found[n] = credentials
			n++
		}
	default:
		return "", invalidRequest("multiple_authorization", "more than one Authorization header")
	}

	if h.TokenCookie != "" {
		var value string
		for _, c := range r.CookiesNamed(h.TokenCookie) {
			if value != "" && c.Value != value {
				return "", invalidRequest("multiple_tokens", "more than one token cookie")
			}
			value = c.Value
		}
		if value != "" {
			found[n] = value
			n++
		}
	}

	if h.TokenQuery != "" && r.URL.RawQuery != "" {
		values := r.URL.Query()[h.TokenQuery]
		if len(values) > 1 {
			return "", invalidRequest("multiple_tokens", "more than one token query parameter")
		}
		if len(values) == 1 && values[0] != "" {
			found[n] = values[0]
			n++
		}
	}

	if n == 0 {
		return "", nil
	}
	for _, t := range found[1:n] {
		if t != found[0] {
			return "", invalidRequest("multiple_tokens", "the request carries two different tokens")
		}
	}
	return found[0], nil
}

// token68Chars marks the characters of RFC 6750 section 2.1's b64token
// before any trailing "=". A table, since every request's token passes
// through isToken68, cached or not.
var token68Chars = func() (set [256]bool) {
	for _, c := range []byte("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~+/") {
		set[c] = true
	}
	return set
}()

// isToken68 reports whether s has the b64token syntax of RFC 6750
// section 2.1.
func isToken68(s string) bool {
	if s == "" {
		return false
	}
	i := 0
	for i < len(s) && token68Chars[s[i]] {
		i++
	}
	if i == 0 {
		return false
	}
	for ; i < len(s); i++ {
		if s[i] != '=' {
			return false
		}
	}
	return true
}

// unixSeconds converts a time to float seconds for NumericDate checks.
func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
