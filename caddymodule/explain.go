package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// exitRefused is the explain command's exit status when the request would
// be refused, so that scripts can tell it from a failure to explain.
const exitRefused = 3

func init() {
	fs := flag.NewFlagSet("edge-guard-explain", flag.ExitOnError)
	fs.String("config", "", "Configuration file (Caddyfile or JSON)")
	fs.String("adapter", "", "Name of the config adapter (default: by file name)")
	fs.String("token", "", "The bearer token, @<file> to read it from a file, or - for stdin (not needed with --preflight)")
	fs.String("path", "/", "Request path")
	fs.String("method", http.MethodGet, "Request method")
	fs.String("origin", "", "Origin header, as a browser would send it")
	fs.String("preflight", "", "Explain the CORS preflight for this method instead (needs --origin)")
	fs.String("host", "", "Host header; when empty, host matchers are not checked and count as matching")
	fs.String("route", "", "Name of the edge_guard route to use, instead of matching the path")
	fs.Duration("timeout", 15*time.Second, "How long to wait for the key set")

	caddycmd.RegisterCommand(caddycmd.Command{
		Name: "edge-guard-explain",
		Usage: "--config <path> --token <token|@file|-> [--path </api/x>] [--method GET] " +
			"[--origin <origin>] [--preflight <method>] [--host <host>] [--route <name>] [--adapter <name>]",
		Short: "Explains whether an edge_guard route would let a request through, and why not",
		Long: `
Loads the config, finds the edge_guard route that would handle the request
(or the route named with --route), loads that route's key sets from their
configured sources, and runs the request through the route without
forwarding it anywhere. It prints which route decided, and either that the
request would be forwarded or the reason code and description of the
refusal. With --preflight <method> it explains the CORS preflight a browser
sends before such a request from --origin instead.

The token is never printed. Pass it as @<file> or - (stdin) to keep it out
of the shell history.

Exit status: 0 when the request would be forwarded (or the preflight
allowed), 3 when it would be refused, 1 when the config or the token cannot
be read.
`,
		Flags: fs,
		Func: func(fl caddycmd.Flags) (int, error) {
			opts := explainOptions{
				Config:    fl.String("config"),
				Adapter:   fl.String("adapter"),
				Token:     fl.String("token"),
				Path:      fl.String("path"),
				Method:    fl.String("method"),
				Origin:    fl.String("origin"),
				Preflight: fl.String("preflight"),
				Host:      fl.String("host"),
				Route:     fl.String("route"),
				Timeout:   fl.Duration("timeout"),
			}
			return explain(opts, os.Stdin, os.Stdout)
		},
	})
}

// explainOptions are the explain command's flags.
type explainOptions struct {
	Config, Adapter, Token     string
	Path, Method, Origin, Host string
	Preflight                  string
	Route                      string
	Timeout                    time.Duration
}

// explanation is what the explain command found.
type explanation struct {
	route       string   // the edge_guard route's name
	trail       []string // how the route was reached
	bypassed    string   // a handler that would answer without any edge_guard
	status      int
	forwarded   bool
	preflight   bool // a preflight, answered at the edge
	reason      string
	description string
	headers     []string // claim headers set on the forwarded request
}

func explain(opts explainOptions, stdin io.Reader, stdout io.Writer) (int, error) {
	// a preflight carries no token, so none is needed to explain one
	var token string
	var err error
	if opts.Preflight == "" || opts.Token != "" {
		if token, err = readToken(opts.Token, stdin); err != nil {
			return caddy.ExitCodeFailedStartup, err
		}
	}
	if opts.Config == "" {
		return caddy.ExitCodeFailedStartup, errors.New("explain: --config is required")
	}
	cfgJSON, _, _, err := caddycmd.LoadConfig(opts.Config, opts.Adapter)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("explain: %w", err)
	}
	ex, err := explainRequest(cfgJSON, opts, token)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("explain: %w", err)
	}
	ex.print(stdout, opts)
	if !ex.forwarded && !(ex.preflight && ex.status == http.StatusNoContent) {
		return exitRefused, nil
	}
	return caddy.ExitCodeSuccess, nil
}

// readToken takes the token from the flag, a file (@path) or stdin (-).
// Errors never include the token.
func readToken(value string, stdin io.Reader) (string, error) {
	var raw []byte
	var err error
	switch {
	case value == "":
		return "", errors.New("explain: --token is required (a token, @<file> or -)")
	case value == "-":
		raw, err = io.ReadAll(io.LimitReader(stdin, 1<<20))
	case strings.HasPrefix(value, "@"):
		raw, err = os.ReadFile(value[1:])
	default:
		raw = []byte(value)
	}
	if err != nil {
		return "", fmt.Errorf("explain: reading the token: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	// a pasted header value works too
	if scheme, rest, ok := strings.Cut(token, " "); ok && strings.EqualFold(scheme, "Bearer") {
		token = strings.TrimSpace(rest)
	}
	if token == "" {
		return "", errors.New("explain: the token is empty")
	}
	return token, nil
}

// explainRequest finds the route and runs the request through it.
func explainRequest(cfgJSON []byte, opts explainOptions, token string) (*explanation, error) {
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []json.RawMessage `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return nil, fmt.Errorf("decoding config: %w", err)
	}
	if opts.Method == "" {
		opts.Method = http.MethodGet
	}
	if !strings.HasPrefix(opts.Path, "/") {
		return nil, fmt.Errorf("--path %q: must start with /", opts.Path)
	}
	if opts.Preflight != "" {
		if opts.Origin == "" {
			return nil, errors.New("--preflight needs --origin: browsers send preflights only cross-origin")
		}
		opts.Method = http.MethodOptions
	}

	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	req, err := explainedRequest(opts, token)
	if err != nil {
		return nil, err
	}

	// the route: by name, or the first that matches, server by server
	names := make([]string, 0, len(cfg.Apps.HTTP.Servers))
	for name := range cfg.Apps.HTTP.Servers {
		names = append(names, name)
	}
	slices.Sort(names)
	var found *routeSearch
	for _, name := range names {
		s := &routeSearch{ctx: ctx, req: req, hostGiven: opts.Host != "", byName: opts.Route,
			trail: []string{"server " + name}}
		if err := s.walk(cfg.Apps.HTTP.Servers[name].Routes); err != nil {
			return nil, err
		}
		if s.handler != nil || s.bypassed != "" {
			found = s
			break
		}
	}
	if found == nil {
		if opts.Route != "" {
			return nil, fmt.Errorf("no edge_guard route is named %q", opts.Route)
		}
		return nil, fmt.Errorf("no route handles %s %s", opts.Method, opts.Path)
	}
	if found.handler == nil {
		return &explanation{trail: found.trail, bypassed: found.bypassed}, nil
	}
	ex, err := runRoute(ctx, found, req, opts.Timeout)
	if ex != nil {
		ex.preflight = opts.Preflight != ""
	}
	return ex, err
}

func explainedRequest(opts explainOptions, token string) (*http.Request, error) {
	host := opts.Host
	if host == "" {
		host = "localhost"
	}
	req, err := http.NewRequest(opts.Method, "http://"+host+opts.Path, nil)
	if err != nil {
		return nil, fmt.Errorf("building the request: %v", strings.ReplaceAll(err.Error(), token, "<token>"))
	}
	if opts.Origin != "" {
		req.Header.Set("Origin", opts.Origin)
	}
	if opts.Preflight != "" {
		// what a browser sends before a request with a bearer token (Fetch,
		// "CORS-preflight request"); the preflight itself carries no token
		req.Header.Set("Access-Control-Request-Method", opts.Preflight)
		req.Header.Set("Access-Control-Request-Headers", "authorization")
	} else {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	repl := caddy.NewReplacer()
	// a bare server: no handle_errors, so refusals are written as the
	// client would see them
	return caddyhttp.PrepareRequest(req, repl, httptest.NewRecorder(), new(caddyhttp.Server)), nil
}

// routeSearch walks a server's routes the way Caddy would run them.
type routeSearch struct {
	ctx       caddy.Context
	req       *http.Request
	hostGiven bool
	byName    string
	trail     []string
	handler   json.RawMessage // the edge_guard handler found
	bypassed  string          // a terminal handler reached first
}

// terminalHandlers answer requests themselves: reaching one before any
// edge_guard means the request is not guarded at all.
var terminalHandlers = map[string]bool{
	"reverse_proxy": true, "static_response": true, "file_server": true,
	"php_fastcgi": true,
}

func (s *routeSearch) walk(routes []json.RawMessage) error {
	for _, raw := range routes {
		var route struct {
			Match    []map[string]json.RawMessage `json:"match"`
			Handle   []json.RawMessage            `json:"handle"`
			Terminal bool                         `json:"terminal"`
		}
		if err := json.Unmarshal(raw, &route); err != nil {
			return fmt.Errorf("decoding a route: %w", err)
		}
		matched, how, err := s.matches(route.Match)
		if err != nil {
			return err
		}
		if !matched && s.byName == "" {
			continue
		}
		depth := len(s.trail)
		if how != "" {
			s.trail = append(s.trail, how)
		}
		for _, h := range route.Handle {
			var head struct {
				Handler string            `json:"handler"`
				Name    string            `json:"name"`
				Routes  []json.RawMessage `json:"routes"`
			}
			if err := json.Unmarshal(h, &head); err != nil {
				return fmt.Errorf("decoding a handler: %w", err)
			}
			switch {
			case head.Handler == "edge_guard" && (s.byName == "" || s.byName == nameOr(head.Name)):
				s.handler = h
				return nil
			case head.Handler == "subroute":
				if err := s.walk(head.Routes); err != nil || s.handler != nil || s.bypassed != "" {
					return err
				}
			case terminalHandlers[head.Handler] && s.byName == "":
				s.bypassed = head.Handler
				return nil
			}
		}
		s.trail = s.trail[:depth]
		if route.Terminal && s.byName == "" {
			return nil
		}
	}
	return nil
}

func nameOr(name string) string {
	if name == "" {
		return defaultName
	}
	return name
}

// matches reports whether any matcher set of a route matches the request,
// loading the matchers as Caddy does. Host matchers match when no --host
// was given.
func (s *routeSearch) matches(sets []map[string]json.RawMessage) (bool, string, error) {
	if len(sets) == 0 {
		return true, "", nil
	}
	for _, set := range sets {
		ok := true
		var described []string
		for name, raw := range set {
			described = append(described, name+" "+compactJSON(raw))
			if name == "host" && !s.hostGiven {
				continue
			}
			mod, err := s.ctx.LoadModuleByID("http.matchers."+name, raw)
			if err != nil {
				return false, "", fmt.Errorf("loading matcher %s: %w", name, err)
			}
			var hit bool
			switch m := mod.(type) {
			case caddyhttp.RequestMatcherWithError:
				if hit, err = m.MatchWithError(s.req); err != nil {
					return false, "", fmt.Errorf("matcher %s: %w", name, err)
				}
			case caddyhttp.RequestMatcher:
				hit = m.Match(s.req)
			default:
				return false, "", fmt.Errorf("matcher %s: not a request matcher", name)
			}
			if !hit {
				ok = false
				break
			}
		}
		if ok {
			slices.Sort(described)
			return true, "match " + strings.Join(described, ", "), nil
		}
	}
	return false, "", nil
}

func compactJSON(raw json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

// runRoute provisions the route with its key sets and sends the request
// through it, with an upstream that only records.
func runRoute(ctx caddy.Context, found *routeSearch, req *http.Request, timeout time.Duration) (*explanation, error) {
	h := new(Handler)
	if err := json.Unmarshal(found.handler, h); err != nil {
		return nil, fmt.Errorf("decoding the edge_guard handler: %w", err)
	}
	if err := h.Provision(ctx); err != nil {
		h.Cleanup()
		return nil, err
	}
	defer h.Cleanup()

	// the route's refusals are read from its own debug log, which holds
	// the reason code and never the token
	var logged bytes.Buffer
	h.logger = zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(&logged), zapcore.DebugLevel))

	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	reqCtx, cancel := context.WithTimeout(req.Context(), timeout)
	defer cancel()
	req = req.WithContext(reqCtx)

	ex := &explanation{route: h.Name, trail: found.trail}
	rec := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		ex.forwarded = true
		for _, ch := range h.claimHeaders {
			if r.Header.Get(ch.header) != "" {
				ex.headers = append(ex.headers, ch.header)
			}
		}
		w.WriteHeader(http.StatusOK)
		return nil
	})
	err := h.ServeHTTP(rec, req, next)
	var handlerErr caddyhttp.HandlerError
	switch {
	case errors.As(err, &handlerErr):
		ex.status = handlerErr.StatusCode
	case err != nil:
		return nil, err
	default:
		ex.status = rec.Code
	}
	if ex.forwarded {
		return ex, nil
	}

	var entry struct {
		Reason string `json:"reason"`
	}
	for line := range strings.SplitSeq(logged.String(), "\n") {
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Reason != "" {
			ex.reason = entry.Reason
		}
	}
	var body struct {
		Description string `json:"error_description"`
	}
	if json.Unmarshal(rec.Body.Bytes(), &body) == nil {
		ex.description = body.Description
	}
	if errors.As(err, &handlerErr) {
		var ref *refusal
		if errors.As(handlerErr.Err, &ref) {
			ex.description = ref.description
		}
	}
	return ex, nil
}

func (ex *explanation) print(w io.Writer, opts explainOptions) {
	if opts.Preflight != "" {
		fmt.Fprintf(w, "preflight: OPTIONS %s from origin %s for %s with Authorization\n",
			opts.Path, opts.Origin, opts.Preflight)
	} else {
		fmt.Fprintf(w, "request: %s %s", opts.Method, opts.Path)
		if opts.Origin != "" {
			fmt.Fprintf(w, " from origin %s", opts.Origin)
		}
		fmt.Fprintln(w, " with the given bearer token")
	}
	fmt.Fprintf(w, "reached by: %s\n", strings.Join(ex.trail, " > "))
	if ex.bypassed != "" {
		fmt.Fprintf(w, "result: NOT GUARDED: %s answers this request itself, before any edge_guard route\n", ex.bypassed)
		return
	}
	fmt.Fprintf(w, "route: %s\n", ex.route)
	if ex.preflight && ex.status == http.StatusNoContent {
		fmt.Fprintln(w, "result: PASS: the preflight would be answered at the edge with 204 (never forwarded)")
		return
	}
	if ex.forwarded {
		fmt.Fprint(w, "result: PASS: the request would be forwarded")
		if len(ex.headers) > 0 {
			fmt.Fprintf(w, " with %s set from the token's claims", strings.Join(ex.headers, ", "))
		}
		fmt.Fprintln(w)
		return
	}
	fmt.Fprintf(w, "result: REFUSED with %d %s\n", ex.status, http.StatusText(ex.status))
	fmt.Fprintf(w, "reason: %s\n", ex.reason)
	if ex.description != "" {
		fmt.Fprintf(w, "detail: %s\n", ex.description)
	}
	if help := reasonHelp[ex.reason]; help != "" {
		fmt.Fprintf(w, "why: %s\n", help)
	}
}

// reasonHelp explains each reason code for people reading the explain
// command's output, logs or metrics.
var reasonHelp = map[string]string{
	"allowed":                   "the request was forwarded",
	"preflight_allowed":         "the CORS preflight was answered with 204",
	"preflight_origin_refused":  "the preflight's Origin is not on the route's allow_origins",
	"preflight_method_refused":  "the preflight asked for a method not in allow_methods",
	"preflight_headers_refused": "the preflight asked for a header not in allow_headers",
	"origin_not_allowed":        "the Origin is not on the route's allow_origins (and is not the request's own origin)",
	"bad_origin":                "the Origin header is malformed or given more than once",
	"missing_token":             "no bearer token was sent and the route is not anonymous",
	"bad_authorization":         "the Authorization header is not a Bearer credential",
	"multiple_authorization":    "more than one Authorization header was sent",
	"multiple_tokens":           "different tokens came from more than one source (header, cookie, query)",
	"token_too_large":           "the token is longer than max_token_bytes",
	"token_encrypted":           "the token is a JWE; only signed compact JWS tokens are accepted",
	"token_malformed":           "the token is not a well-formed compact JWS with JSON header and claims",
	"duplicate_member":          "the token's header or claims repeat a member name",
	"crit_unsupported":          "the token's header lists a crit extension the gateway does not understand",
	"alg_none":                  "the token is unsigned (alg none)",
	"alg_not_allowed":           "the token's alg is not in the route's or issuer's algorithms",
	"wrong_issuer":              "the token's iss is missing or not one of the route's issuers",
	"unknown_kid":               "the token's kid is not in the issuer's key set, even after a refetch",
	"no_fitting_key":            "no key in the issuer's key set fits the token's alg (kty, alg or use mismatch)",
	"bad_signature":             "the signature does not verify with the issuer's keys",
	"bad_claim":                 "a registered claim (exp, nbf, iat, aud, sub) has the wrong type",
	"missing_exp":               "the token has no exp and allow_missing_exp is off",
	"expired":                   "the token's exp is in the past (beyond the leeway)",
	"not_yet_valid":             "the token's nbf is in the future (beyond the leeway)",
	"issued_in_future":          "the token's iat is in the future (beyond the leeway)",
	"wrong_audience":            "the token's aud names none of the issuer's audiences",
	"missing_claim":             "a require_claim claim is absent",
	"insufficient_scope":        "a require_scope scope is not granted",
	"missing_role":              "none of the require_role roles is in the roles claim",
	"claim_mismatch":            "a require_claim claim does not have an accepted value",
	"keys_unavailable":          "the issuer's key set could not be loaded (check its URL, file and the gateway's logs)",
}
