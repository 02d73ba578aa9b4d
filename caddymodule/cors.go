package caddymodule

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// CORS is a route's cross-origin policy.
type CORS struct {
	// AllowOrigins lists the origins a browser page may call this route
	// from: exact origins (https://app.example.com), one-label wildcards
	// (https://*.example.com), regular expressions written with a leading
	// "~" and anchored with ^ and $, or the literal null. "*" allows any
	// origin and is refused on routes that check tokens.
	AllowOrigins []string `json:"allow_origins,omitempty"`

	// AllowMethods lists the methods a preflight may ask for. Default:
	// GET, HEAD, POST.
	AllowMethods []string `json:"allow_methods,omitempty"`

	// AllowHeaders lists the request headers a preflight may ask for.
	// Authorization is added on routes that read the bearer token from it.
	// "*" is not supported: name each header.
	AllowHeaders []string `json:"allow_headers,omitempty"`

	// ExposeHeaders lists response headers the page may read.
	// WWW-Authenticate is always exposed on the gateway's own refusals.
	ExposeHeaders []string `json:"expose_headers,omitempty"`

	// AllowCredentials lets pages send cookies and read the response of
	// credentialed requests. Refused together with "*" or a near-wildcard.
	AllowCredentials bool `json:"allow_credentials,omitempty"`

	// MaxAge is how long a browser may cache a preflight answer. Default
	// 10m, at most 24h; 0 keeps the default, a negative value sends none.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// AllowPrivateNetwork answers Private Network Access preflights
	// (Access-Control-Request-Private-Network) for this route.
	AllowPrivateNetwork bool `json:"allow_private_network,omitempty"`

	origins        *originAllowlist
	methods        map[string]struct{}
	headers        map[string]struct{}
	authorization  bool
	methodsValue   string
	maxAgeValue    string
	exposeValue    string
	exposeOnErrors string
}

const (
	defaultMaxAge = 10 * time.Minute
	maxMaxAge     = 24 * time.Hour
	// maxRequestHeaders bounds the names a preflight may list.
	maxRequestHeaders = 64
)

const (
	valueTrue        = "true"
	valuePreflightVy = "Origin, Access-Control-Request-Method, " +
		"Access-Control-Request-Headers, Access-Control-Request-Private-Network"
)

// headerValues hands out one-element header values, all of a response's
// from one allocation. A value is never shared between responses: a later
// handler may edit a value in place (Caddy's header directive does, for a
// replacement), and a shared slice would carry that edit into every later
// response, of every route.
type headerValues struct {
	buf []string
}

func newHeaderValues(n int) headerValues { return headerValues{buf: make([]string, 0, n)} }

// of returns a value holding s, with no room to grow into a neighbour.
func (v *headerValues) of(s string) []string {
	v.buf = append(v.buf, s)
	n := len(v.buf)
	return v.buf[n-1 : n : n]
}

// check refuses method and header lists and a Max-Age that the policy
// cannot honour. It needs no provisioning, so the Caddyfile parser runs it
// too and reports the line.
func (c *CORS) check() error {
	for _, m := range c.AllowMethods {
		if m == "*" || !validToken(m) {
			return fmt.Errorf("allow_methods: %q is not a method name", m)
		}
		// Fetch's forbidden methods: no browser sends them, so listing
		// one is a mistake (Fetch, "forbidden method")
		switch strings.ToUpper(m) {
		case "CONNECT", "TRACE", "TRACK":
			return fmt.Errorf("allow_methods: browsers never send %s", m)
		}
	}
	for _, h := range c.AllowHeaders {
		if h == "*" || !validToken(h) {
			return fmt.Errorf("allow_headers: %q is not a header name (list each one; \"*\" is not supported)", h)
		}
	}
	for _, h := range c.ExposeHeaders {
		if h == "*" || !validToken(h) {
			return fmt.Errorf("expose_headers: %q is not a header name", h)
		}
	}
	// browsers cap the preflight cache themselves (two hours in Chromium);
	// a longer promise only keeps a changed policy from taking effect
	if age := time.Duration(c.MaxAge); age > maxMaxAge {
		return fmt.Errorf("max_age: %s is longer than %s", age, maxMaxAge)
	}
	return nil
}

// provision normalises and compiles the policy. authorizationHeader adds
// Authorization to the headers a preflight may ask for.
func (c *CORS) provision(authorizationHeader bool) error {
	if err := c.check(); err != nil {
		return err
	}
	origins, err := newOriginAllowlist(c.AllowOrigins)
	if err != nil {
		return err
	}
	c.origins = origins

	// methods
	methods := c.AllowMethods
	if len(methods) == 0 {
		methods = []string{http.MethodGet, http.MethodHead, http.MethodPost}
	}
	c.methods = make(map[string]struct{}, len(methods))
	var names []string
	for _, m := range methods {
		m = strings.ToUpper(m)
		if _, dup := c.methods[m]; !dup {
			names = append(names, m)
		}
		c.methods[m] = struct{}{}
	}
	c.methodsValue = strings.Join(names, ", ")

	// headers
	c.headers = make(map[string]struct{}, len(c.AllowHeaders)+1)
	for _, h := range c.AllowHeaders {
		c.headers[strings.ToLower(h)] = struct{}{}
	}
	if authorizationHeader {
		c.headers["authorization"] = struct{}{}
		c.authorization = true
	}

	// expose
	c.exposeValue = strings.Join(c.ExposeHeaders, ", ")
	c.exposeOnErrors = strings.Join(append([]string{"WWW-Authenticate", "Retry-After"},
		c.ExposeHeaders...), ", ")

	// max age
	switch age := time.Duration(c.MaxAge); {
	case age < 0:
	case age == 0:
		c.maxAgeValue = strconv.Itoa(int(defaultMaxAge.Seconds()))
	default:
		c.maxAgeValue = strconv.Itoa(int(age.Seconds()))
	}
	return nil
}

// preflightResult says how a preflight was answered.
type preflightResult int

const (
	preflightAllowed preflightResult = iota
	preflightOriginRefused
	preflightMethodRefused
	preflightHeadersRefused
)

// answerPreflight writes the headers of a preflight answer to h and
// reports whether the preflight is allowed. A refused preflight gets no
// Access-Control-* header at all, so the browser fails it (Fetch, "CORS
// check"), and the caller answers 403.
func (c *CORS) answerPreflight(h http.Header, r *http.Request, origin string) preflightResult {
	vals := newHeaderValues(7)
	h["Vary"] = vals.of(valuePreflightVy)
	if !c.origins.allows(origin) {
		return preflightOriginRefused
	}

	// methods are compared case-insensitively; browsers upper-case the
	// standard ones and send others as written (Fetch, "normalize"), and
	// a preflight asks for exactly one
	requestMethod := r.Header.Values("Access-Control-Request-Method")
	if len(requestMethod) != 1 || !validToken(requestMethod[0]) {
		return preflightMethodRefused
	}
	method := requestMethod[0]
	if _, ok := c.methods[strings.ToUpper(method)]; !ok {
		return preflightMethodRefused
	}

	// every header the browser asks for must be on the list; answering
	// with a subset would only make the browser fail later
	requested, ok := c.requestedHeaders(r.Header.Values("Access-Control-Request-Headers"))
	if !ok {
		return preflightHeadersRefused
	}

	h["Access-Control-Allow-Origin"] = vals.of(origin)
	methods := c.methodsValue
	if _, listed := c.methods[method]; !listed {
		// the browser compares methods byte for byte (Fetch,
		// "CORS-preflight fetch"), so a method it did not normalise,
		// such as "patch", must come back spelt as it was asked for
		methods += ", " + method
	}
	h["Access-Control-Allow-Methods"] = vals.of(methods)
	if requested != "" {
		h["Access-Control-Allow-Headers"] = vals.of(requested)
	}
	if c.AllowCredentials {
		h["Access-Control-Allow-Credentials"] = vals.of(valueTrue)
	}
	if c.maxAgeValue != "" {
		h["Access-Control-Max-Age"] = vals.of(c.maxAgeValue)
	}
	if c.AllowPrivateNetwork && r.Header.Get("Access-Control-Request-Private-Network") == "true" {
		h["Access-Control-Allow-Private-Network"] = vals.of(valueTrue)
	}
	return preflightAllowed
}

// requestedHeaders checks the Access-Control-Request-Headers values and
// returns the lowercase list to echo back. Authorization is always named
// explicitly, whether asked for or not, because "*" never covers it
// (Fetch, "CORS-preflight fetch"): a cached answer then also serves the
// page's next request that carries a token.
func (c *CORS) requestedHeaders(values []string) (string, bool) {
	var b strings.Builder
	count := 0
	authorization := false
	for _, v := range values {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			count++
			if count > maxRequestHeaders || !validToken(name) {
				return "", false
			}
			name = strings.ToLower(name)
			if _, ok := c.headers[name]; !ok {
				return "", false
			}
			authorization = authorization || name == "authorization"
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			b.WriteString(name)
		}
	}
	if c.authorization && !authorization {
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString("authorization")
	}
	return b.String(), true
}

// decorate sets the headers of an actual response for an allowed origin.
// Any Access-Control-* header already there must have been removed.
func (c *CORS) decorate(h http.Header, origin string, gatewayError bool) {
	if origin == "" {
		addVaryOrigin(h)
		return
	}
	vals := newHeaderValues(4)
	addVaryOriginWith(h, &vals)
	// the request's own Origin: it is on the allowlist, so byte for byte
	// the serialised origin (or an entry's normalised form)
	h["Access-Control-Allow-Origin"] = vals.of(origin)
	if c.AllowCredentials {
		h["Access-Control-Allow-Credentials"] = vals.of(valueTrue)
	}
	if gatewayError {
		h["Access-Control-Expose-Headers"] = vals.of(c.exposeOnErrors)
	} else if c.exposeValue != "" {
		h["Access-Control-Expose-Headers"] = vals.of(c.exposeValue)
	}
}

// stripCORSHeaders removes every Access-Control-* header, whoever set it.
func stripCORSHeaders(h http.Header) {
	for name := range h {
		if isCORSHeader(name) {
			delete(h, name)
		}
	}
}

// isCORSHeader reports whether a header name starts with Access-Control-,
// in any case.
func isCORSHeader(name string) bool {
	return len(name) > 15 && strings.EqualFold(name[:15], "Access-Control-")
}

// addVaryOrigin merges Origin into Vary without repeating it. Caches must
// key on Origin because the answer depends on it (Fetch, "CORS protocol
// and HTTP caches"), also when this request had none.
func addVaryOrigin(h http.Header) {
	var vals headerValues
	addVaryOriginWith(h, &vals)
}

// addVaryOriginWith is addVaryOrigin taking a new value from vals.
func addVaryOriginWith(h http.Header, vals *headerValues) {
	values, ok := h["Vary"]
	if !ok {
		h["Vary"] = vals.of("Origin")
		return
	}
	origins, tokens := 0, 0
	for _, v := range values {
		for token := range strings.SplitSeq(v, ",") {
			token = strings.TrimSpace(token)
			switch {
			case token == "":
			case token == "*":
				// the response varies on everything already (RFC 9110
				// section 12.5.5)
				return
			case strings.EqualFold(token, "Origin"):
				origins++
			default:
				tokens++
			}
		}
	}
	switch {
	case origins == 1 && !repeatsName(values):
	case origins == 0 && tokens == 1 && len(values) == 1:
		// the usual case: one field name from the upstream, such as
		// Accept-Encoding
		h["Vary"] = []string{values[0], "Origin"}
	default:
		h["Vary"] = []string{mergeVary(values)}
	}
}

// repeatsName reports whether a field name appears twice in Vary values.
func repeatsName(values []string) bool {
	i := 0
	for _, v := range values {
		for a := range strings.SplitSeq(v, ",") {
			i++
			a = strings.TrimSpace(a)
			j := 0
			for _, w := range values {
				for b := range strings.SplitSeq(w, ",") {
					j++
					if j > i && a != "" && strings.EqualFold(a, strings.TrimSpace(b)) {
						return true
					}
				}
			}
		}
	}
	return false
}

// mergeVary joins Vary values into one, each field name once, in the
// order first seen, with Origin added.
func mergeVary(values []string) string {
	var names []string
	seen := func(name string) bool {
		for _, n := range names {
			if strings.EqualFold(n, name) {
				return true
			}
		}
		return false
	}
	for _, v := range values {
		for token := range strings.SplitSeq(v, ",") {
			if token = strings.TrimSpace(token); token != "" && !seen(token) {
				names = append(names, token)
			}
		}
	}
	if !seen("Origin") {
		names = append(names, "Origin")
	}
	return strings.Join(names, ", ")
}

// validToken reports whether s is an RFC 9110 token (method and header
// names).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}
