package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	edge_guard [<name>] {
//	    name                  <name>
//	    allow_origins         <origin...>
//	    allow_methods         <method...>
//	    allow_headers         <header...>
//	    expose_headers        <header...>
//	    allow_credentials
//	    max_age               <duration>
//	    allow_private_network
//	    issuer <iss> {
//	        jwks_url          <url>
//	        jwks_file         <path>
//	        jwks              <json>
//	        discovery
//	        hmac_secret       <secret>
//	        audience          <aud...>
//	        any_audience
//	        algorithms        <alg...>
//	        refresh_min       <duration>
//	        refresh_max       <duration>
//	        max_stale         <duration>
//	        fetch_timeout     <duration>
//	        refetch_interval  <duration>
//	        allow_http
//	    }
//	    algorithms            <alg...>
//	    leeway                <duration>
//	    allow_missing_exp
//	    max_token_bytes       <n>
//	    token_cookie          <name>
//	    token_query           <name>
//	    anonymous
//	    realm                 <realm>
//	    require_claim         <claim> [<value...>]
//	    require_scope         <scope...>
//	    require_role          <role...>
//	    roles_claim           <claim>
//	    claim_header          <header> <claim>
//	    strip_authorization
//	    use_handle_errors
//	    token_cache_size      <n>
//	}
//
// The issuer's own subdirectives may also stand in the outer block when
// the route has exactly one issuer.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	at := lines{"edge_guard": d.Line()}
	if d.NextArg() {
		h.Name = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	h.CORS = new(CORS)

	outer := new(Issuer)
	outerAt := lines{}
	var issuersAt []lines
	for d.NextBlock(0) {
		name := d.Val()
		if _, given := at[name]; given && !repeatable[name] {
			return d.Errf("%s: given twice", name)
		}
		if _, given := outerAt[name]; given && !repeatable[name] {
			return d.Errf("%s: given twice", name)
		}

		// algorithms in the outer block are the route's, not the issuer's
		if name == "algorithms" {
			at.note(name, d.Line())
			if err := unmarshalAlgorithms(d, &h.Algorithms); err != nil {
				return err
			}
			continue
		}
		line := d.Line()
		if handled, err := unmarshalIssuerOption(d, outer); handled {
			if err != nil {
				return err
			}
			outerAt.note(name, line)
			continue
		}
		at.note(name, line)

		var err error
		switch name {
		case "name":
			err = oneArg(d, &h.Name)
		case "allow_origins":
			err = h.unmarshalOrigins(d)
		case "allow_methods":
			err = argList(d, &h.CORS.AllowMethods)
		case "allow_headers":
			err = argList(d, &h.CORS.AllowHeaders)
		case "expose_headers":
			err = argList(d, &h.CORS.ExposeHeaders)
		case "allow_credentials":
			err = flagArg(d, &h.CORS.AllowCredentials)
		case "max_age":
			err = durationArg(d, &h.CORS.MaxAge)
		case "allow_private_network":
			err = flagArg(d, &h.CORS.AllowPrivateNetwork)
		case "issuer":
			var issAt lines
			if issAt, err = h.unmarshalIssuer(d); err == nil {
				issuersAt = append(issuersAt, issAt)
			}
		case "leeway":
			err = durationArg(d, &h.Leeway)
		case "allow_missing_exp":
			err = flagArg(d, &h.AllowMissingExp)
		case "max_token_bytes":
			err = intArg(d, &h.MaxTokenBytes)
		case "token_cookie":
			err = oneArg(d, &h.TokenCookie)
		case "token_query":
			err = oneArg(d, &h.TokenQuery)
		case "anonymous":
			err = flagArg(d, &h.Anonymous)
		case "realm":
			err = oneArg(d, &h.Realm)
		case "require_claim":
			err = h.unmarshalRequireClaim(d)
		case "require_scope":
			err = argList(d, &h.RequireScopes)
		case "require_role":
			err = argList(d, &h.RequireRoles)
		case "roles_claim":
			err = oneArg(d, &h.RolesClaim)
		case "claim_header":
			err = h.unmarshalClaimHeader(d)
		case "strip_authorization":
			err = flagArg(d, &h.StripAuthorization)
		case "use_handle_errors":
			err = flagArg(d, &h.UseHandleErrors)
		case "token_cache_size":
			err = intArg(d, &h.TokenCacheSize)
		default:
			return d.Errf("unrecognized subdirective %q", name)
		}
		if err != nil {
			return err
		}
	}

	// issuer options in the outer block belong to the route's only issuer
	if len(outerAt) > 0 {
		if len(h.Issuers) != 1 {
			return errAt(d, outerAt.first(),
				errors.New("key set and audience options outside an issuer block need exactly one issuer"))
		}
		if field, err := mergeIssuer(h.Issuers[0], outer); err != nil {
			return errAt(d, outerAt[field], fmt.Errorf("issuer %q: %w", h.Issuers[0].Issuer, err))
		}
		for name, line := range outerAt {
			issuersAt[0].note(name, line)
		}
	}

	// the checks Provision makes, reported here with the line of the
	// subdirective at fault (or of the directive, when one is missing)
	probe := *h
	if probe.Name == "" {
		probe.Name = defaultName
	}
	if err := probe.check(); err != nil {
		line := at.blame(err.Error(), "edge_guard")
		for i, iss := range h.Issuers {
			if strings.Contains(err.Error(), fmt.Sprintf("issuer %q:", iss.Issuer)) {
				line = issuersAt[i].blame(err.Error(), "issuer")
				if errors.Is(err, ErrInsecureKeySetURL) && iss.JWKSURL != "" {
					line = issuersAt[i]["jwks_url"]
				}
				break
			}
		}
		return errAt(d, line, err)
	}

	// the CORS policy compiles (on a copy: Provision compiles the real one)
	cors := *h.CORS
	if err := cors.provision(true); err != nil {
		return errAt(d, at.blame(err.Error(), "edge_guard"), fmt.Errorf("route %q: %w", probe.Name, err))
	}
	return nil
}

// lines remembers where each subdirective of a block was given, so that
// checks made once the block is read can name the line at fault. The
// block's own line is under its directive name.
type lines map[string]int

func (l lines) note(name string, line int) {
	if _, given := l[name]; !given {
		l[name] = line
	}
}

// first is the earliest line noted.
func (l lines) first() int {
	least := 0
	for _, line := range l {
		if least == 0 || line < least {
			least = line
		}
	}
	return least
}

// blame returns the line of the first subdirective a check's message
// names that was given, or the line of the block itself (under its
// directive name) when none was: the message then says what is missing.
// Quoted values (origins, issuers, URLs) are skipped, so that a word in a
// value is never taken for a subdirective.
func (l lines) blame(msg, block string) int {
	msg = quotedValue.ReplaceAllString(msg, "")
	for _, word := range strings.FieldsFunc(msg, func(r rune) bool {
		return r != '_' && (r < 'a' || r > 'z')
	}) {
		if line, given := l[word]; given && word != block {
			return line
		}
	}
	return l[block]
}

var quotedValue = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// errAt reports err at a line of the dispenser's file, the way the
// dispenser's own errors do.
func errAt(d *caddyfile.Dispenser, line int, err error) error {
	return fmt.Errorf("%w, at %s:%d", err, d.File(), line)
}

// repeatable subdirectives may be given more than once; their values add
// up.
var repeatable = map[string]bool{
	"allow_origins": true, "allow_methods": true, "allow_headers": true,
	"expose_headers": true, "issuer": true, "require_claim": true,
	"require_scope": true, "require_role": true, "claim_header": true,
	"audience": true,
}

// minHMACSecretBytes is the shortest shared secret accepted: as long as
// the HS256 output (RFC 7518 section 3.2).
const minHMACSecretBytes = 32

func (h *Handler) unmarshalOrigins(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	for _, origin := range args {
		// each entry is checked here so the error carries its line
		if _, err := newOriginAllowlist([]string{origin}); err != nil {
			return d.Errf("allow_origins: %v", err)
		}
		if origin == "*" {
			return d.Err(`allow_origins: "*" lets any site read token-protected responses; list the origins`)
		}
	}
	h.CORS.AllowOrigins = append(h.CORS.AllowOrigins, args...)
	return nil
}

func (h *Handler) unmarshalIssuer(d *caddyfile.Dispenser) (lines, error) {
	iss := new(Issuer)
	at := lines{"issuer": d.Line()}
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	iss.Issuer = d.Val()
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if _, given := at[name]; given && name != "audience" {
			return nil, d.Errf("%s: given twice", name)
		}
		at.note(name, d.Line())
		handled, err := unmarshalIssuerOption(d, iss)
		if !handled {
			return nil, d.Errf("unrecognized issuer subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	h.Issuers = append(h.Issuers, iss)
	return at, nil
}

// unmarshalIssuerOption parses one issuer subdirective, reporting false
// when the name is not one.
func unmarshalIssuerOption(d *caddyfile.Dispenser, iss *Issuer) (bool, error) {
	var err error
	switch d.Val() {
	case "jwks_url":
		err = oneArg(d, &iss.JWKSURL)
		if err == nil {
			if err = checkKeySetURL(iss.JWKSURL, true); err != nil {
				err = d.Errf("jwks_url: %v", err)
			}
		}
	case "jwks_file":
		err = oneArg(d, &iss.JWKSFile)
	case "jwks":
		var raw string
		if err = oneArg(d, &raw); err == nil {
			if !json.Valid([]byte(raw)) {
				return true, d.Err("jwks: not valid JSON")
			}
			iss.JWKS = json.RawMessage(raw)
		}
	case "discovery":
		err = flagArg(d, &iss.Discovery)
	case "hmac_secret":
		if err = oneArg(d, &iss.HMACSecret); err == nil && len(iss.HMACSecret) < minHMACSecretBytes {
			err = d.Errf("hmac_secret: must be at least %d bytes", minHMACSecretBytes)
		}
	case "audience":
		err = argList(d, &iss.Audiences)
	case "any_audience":
		err = flagArg(d, &iss.AnyAudience)
	case "algorithms":
		err = unmarshalAlgorithms(d, &iss.Algorithms)
	case "refresh_min":
		err = durationArg(d, &iss.RefreshMin)
	case "refresh_max":
		err = durationArg(d, &iss.RefreshMax)
	case "max_stale":
		err = durationArg(d, &iss.MaxStale)
	case "fetch_timeout":
		err = durationArg(d, &iss.FetchTimeout)
	case "refetch_interval":
		err = durationArg(d, &iss.RefetchInterval)
	case "allow_http":
		err = flagArg(d, &iss.AllowHTTP)
	default:
		return false, nil
	}
	return true, err
}

// mergeIssuer copies options given in the outer block into the route's
// only issuer, refusing any that its own block sets too; it names the
// subdirective given twice.
func mergeIssuer(dst, src *Issuer) (string, error) {
	var clash string
	str := func(name string, d *string, s string) {
		if s != "" && clash == "" {
			if *d != "" {
				clash = name
			}
			*d = s
		}
	}
	on := func(name string, d *bool, s bool) {
		if s && clash == "" {
			if *d {
				clash = name
			}
			*d = true
		}
	}
	list := func(name string, d *[]string, s []string) {
		if len(s) > 0 && clash == "" {
			if len(*d) > 0 {
				clash = name
			}
			*d = s
		}
	}
	dur := func(name string, d *caddy.Duration, s caddy.Duration) {
		if s != 0 && clash == "" {
			if *d != 0 {
				clash = name
			}
			*d = s
		}
	}

	str("jwks_url", &dst.JWKSURL, src.JWKSURL)
	on("discovery", &dst.Discovery, src.Discovery)
	str("jwks_file", &dst.JWKSFile, src.JWKSFile)
	if src.JWKS != nil {
		if dst.JWKS != nil {
			clash = "jwks"
		}
		dst.JWKS = src.JWKS
	}
	str("hmac_secret", &dst.HMACSecret, src.HMACSecret)
	list("audience", &dst.Audiences, src.Audiences)
	on("any_audience", &dst.AnyAudience, src.AnyAudience)
	list("algorithms", &dst.Algorithms, src.Algorithms)
	dur("refresh_min", &dst.RefreshMin, src.RefreshMin)
	dur("refresh_max", &dst.RefreshMax, src.RefreshMax)
	dur("max_stale", &dst.MaxStale, src.MaxStale)
	dur("fetch_timeout", &dst.FetchTimeout, src.FetchTimeout)
	dur("refetch_interval", &dst.RefetchInterval, src.RefetchInterval)
	on("allow_http", &dst.AllowHTTP, src.AllowHTTP)
	if clash != "" {
		return clash, fmt.Errorf("%s is set both inside and outside the issuer block", clash)
	}
	return "", nil
}

func unmarshalAlgorithms(d *caddyfile.Dispenser, dst *[]string) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	for _, alg := range args {
		if strings.EqualFold(alg, "none") {
			return d.Err(`algorithms: "none" is never accepted`)
		}
		if !supportedAlgorithms[alg] {
			return d.Errf("algorithms: %q is not supported", alg)
		}
	}
	*dst = append(*dst, args...)
	return nil
}

func (h *Handler) unmarshalRequireClaim(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	if len(args) == 1 {
		h.RequireClaims = append(h.RequireClaims, args[0])
		return nil
	}
	if h.RequireClaimValues == nil {
		h.RequireClaimValues = make(map[string][]string)
	}
	h.RequireClaimValues[args[0]] = append(h.RequireClaimValues[args[0]], args[1:]...)
	return nil
}

func (h *Handler) unmarshalClaimHeader(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.ArgErr()
	}
	if h.ClaimHeaders == nil {
		h.ClaimHeaders = make(map[string]string)
	}
	for existing := range h.ClaimHeaders {
		if sameHeaderName(existing, args[0]) {
			return d.Errf("claim_header %s: given twice", args[0])
		}
	}
	h.ClaimHeaders[args[0]] = args[1]
	return nil
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

func argList(d *caddyfile.Dispenser, dst *[]string) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	*dst = append(*dst, args...)
	return nil
}

func flagArg(d *caddyfile.Dispenser, dst *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = true
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(raw)
	if err != nil {
		return d.Errf("%s: %v", name, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}

func intArg(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	var raw string
	if err := oneArg(d, &raw); err != nil {
		return err
	}
	n, err := strconv.Atoi(raw)
	if err != nil {
		return d.Errf("%s: %q is not a whole number", name, raw)
	}
	*dst = n
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
