package caddymodule

import (
	"encoding/json"
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
//	    token_cache_size      <n>
//	}
//
// The issuer's own subdirectives may also stand in the outer block when
// the route has exactly one issuer.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		h.Name = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	h.CORS = new(CORS)

	seen := make(map[string]bool)
	outer := new(Issuer)
	outerSet := false
	for d.NextBlock(0) {
		name := d.Val()
		if !repeatable[name] {
			if seen[name] {
				return d.Errf("%s: given twice", name)
			}
			seen[name] = true
		}

		// algorithms in the outer block are the route's, not the issuer's
		if name == "algorithms" {
			if err := h.unmarshalAlgorithms(d, &h.Algorithms); err != nil {
				return err
			}
			continue
		}
		if handled, err := unmarshalIssuerOption(d, outer); handled {
			if err != nil {
				return err
			}
			outerSet = true
			continue
		}

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
			err = flag(d, &h.CORS.AllowCredentials)
		case "max_age":
			err = durationArg(d, &h.CORS.MaxAge)
		case "allow_private_network":
			err = flag(d, &h.CORS.AllowPrivateNetwork)
		case "issuer":
			err = h.unmarshalIssuer(d)
		case "leeway":
			err = durationArg(d, &h.Leeway)
		case "allow_missing_exp":
			err = flag(d, &h.AllowMissingExp)
		case "max_token_bytes":
			err = intArg(d, &h.MaxTokenBytes)
		case "token_cookie":
			err = oneArg(d, &h.TokenCookie)
		case "token_query":
			err = oneArg(d, &h.TokenQuery)
		case "anonymous":
			err = flag(d, &h.Anonymous)
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
			err = flag(d, &h.StripAuthorization)
		case "token_cache_size":
			err = intArg(d, &h.TokenCacheSize)
		default:
			return d.Errf("unrecognized subdirective %q", name)
		}
		if err != nil {
			return err
		}
	}

	if outerSet {
		if len(h.Issuers) != 1 {
			return d.Err("key set and audience options outside an issuer block need exactly one issuer")
		}
		if err := mergeIssuer(h.Issuers[0], outer); err != nil {
			return d.Errf("issuer %q: %v", h.Issuers[0].Issuer, err)
		}
	}

	// the checks Provision makes, reported here with the file and line
	if err := h.check(); err != nil {
		return d.Err(err.Error())
	}
	return nil
}

// repeatable subdirectives may be given more than once; their values add
// up.
var repeatable = map[string]bool{
	"allow_origins": true, "allow_methods": true, "allow_headers": true,
	"expose_headers": true, "issuer": true, "require_claim": true,
	"require_scope": true, "require_role": true, "claim_header": true,
}

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

func (h *Handler) unmarshalIssuer(d *caddyfile.Dispenser) error {
	iss := new(Issuer)
	if !d.NextArg() {
		return d.ArgErr()
	}
	iss.Issuer = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] && name != "audience" {
			return d.Errf("%s: given twice", name)
		}
		seen[name] = true
		handled, err := unmarshalIssuerOption(d, iss)
		if !handled {
			return d.Errf("unrecognized issuer subdirective %q", name)
		}
		if err != nil {
			return err
		}
	}
	h.Issuers = append(h.Issuers, iss)
	return nil
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
		err = flag(d, &iss.Discovery)
	case "hmac_secret":
		err = oneArg(d, &iss.HMACSecret)
	case "audience":
		err = argList(d, &iss.Audiences)
	case "any_audience":
		err = flag(d, &iss.AnyAudience)
	case "algorithms":
		err = (*Handler)(nil).unmarshalAlgorithms(d, &iss.Algorithms)
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
		err = flag(d, &iss.AllowHTTP)
	default:
		return false, nil
	}
	return true, err
}

// mergeIssuer copies options given in the outer block into the route's
// only issuer, refusing any that its own block sets too.
func mergeIssuer(dst, src *Issuer) error {
	var a, b map[string]any
	da, _ := json.Marshal(dst)
	db, _ := json.Marshal(src)
	_ = json.Unmarshal(da, &a)
	_ = json.Unmarshal(db, &b)
	for k, v := range b {
		if _, both := a[k]; both {
			return &mergeError{k}
		}
		a[k] = v
	}
	merged, _ := json.Marshal(a)
	*dst = Issuer{}
	return json.Unmarshal(merged, dst)
}

type mergeError struct{ field string }

func (e *mergeError) Error() string {
	return e.field + " is set both inside and outside the issuer block"
}

func (*Handler) unmarshalAlgorithms(d *caddyfile.Dispenser, dst *[]string) error {
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

func flag(d *caddyfile.Dispenser, dst *bool) error {
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
