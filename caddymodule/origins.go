package caddymodule

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
)

// ErrInvalidOrigin is wrapped by every error about an allowlist entry.
var ErrInvalidOrigin = errors.New("invalid origin entry")

// maxOriginLength bounds the Origin values the gateway will look at. A
// serialised origin (RFC 6454 section 6.2) is scheme, host and port; real
// ones are far shorter than this.
const maxOriginLength = 1024

// originAllowlist decides whether a request's Origin is on a route's
// allowlist. Entries are normalised once, when the config loads; request
// origins are then compared byte for byte, because browsers always send the
// serialised, lowercase form (RFC 6454 section 6.2, Fetch "byte-serializing
// a request origin").
type originAllowlist struct {
	exact     map[string][]string // origin -> ready-made header value
	wildcards []wildcardOrigin
	patterns  []*regexp.Regexp
	null      bool
	any       bool
}

// wildcardOrigin is an entry such as https://*.example.com:8443. It matches
// exactly one DNS label in place of the star: a.example.com, but neither
// example.com nor a.b.example.com.
type wildcardOrigin struct {
	prefix string // "https://"
	suffix string // ".example.com:8443"
}

// isRegexpEntry reports whether an allowlist entry is a regular expression.
// Regular expressions are written with a leading tilde.
func isRegexpEntry(entry string) bool { return strings.HasPrefix(entry, "~") }

// newOriginAllowlist normalises and compiles allowlist entries.
func newOriginAllowlist(entries []string) (*originAllowlist, error) {
	list := &originAllowlist{exact: make(map[string][]string)}
	for _, entry := range entries {
		if err := list.add(entry); err != nil {
			return nil, err
		}
	}
	return list, nil
}

func (l *originAllowlist) add(entry string) error {
	switch {
	case entry == "*":
		l.any = true
		return nil
	case entry == "null":
		l.null = true
		return nil
	case isRegexpEntry(entry):
		re, err := compileOriginPattern(entry)
		if err != nil {
			return err
		}
		l.patterns = append(l.patterns, re)
		return nil
	}

	origin, err := NormalizeOrigin(entry)
	if err != nil {
		return err
	}
	if prefix, rest, ok := strings.Cut(origin, "://*."); ok {
		l.wildcards = append(l.wildcards, wildcardOrigin{
			prefix: prefix + "://",
			suffix: "." + rest,
		})
		return nil
	}
	l.exact[origin] = []string{origin}
	return nil
}

// compileOriginPattern compiles a "~" entry. The expression must be written
// anchored, with ^ and $, so that the reader sees what it matches; it is
// then wrapped in a non-capturing group so that an alternation such as
// ^a|b$ cannot escape the anchors.
func compileOriginPattern(entry string) (*regexp.Regexp, error) {
	expr := strings.TrimPrefix(entry, "~")
	if !strings.HasPrefix(expr, "^") || !strings.HasSuffix(expr, "$") ||
		strings.HasSuffix(expr, `\$`) {
		return nil, fmt.Errorf("%w: %q: a regular expression must be anchored with ^ and $",
			ErrInvalidOrigin, entry)
	}
	inner := expr[1 : len(expr)-1]
	re, err := regexp.Compile(`^(?:` + inner + `)$`)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrInvalidOrigin, entry, err)
	}
	return re, nil
}

// NormalizeOrigin returns the serialised form of an allowlist entry:
// lowercase scheme and host, default port dropped. An entry with a path
// (a trailing slash included), query, fragment or user info is an error
// rather than an entry that can never match.
func NormalizeOrigin(entry string) (string, error) {
	fail := func(why string) (string, error) {
		return "", fmt.Errorf("%w: %q: %s", ErrInvalidOrigin, entry, why)
	}
	if entry == "" {
		return fail("empty")
	}
	if len(entry) > maxOriginLength {
		return fail("too long")
	}
	for i := 0; i < len(entry); i++ {
		if c := entry[i]; c <= ' ' || c >= 0x7f {
			return fail("contains a space, control or non-ASCII character (write hosts in punycode)")
		}
	}
	scheme, rest, ok := strings.Cut(entry, "://")
	if !ok || scheme == "" {
		return fail("must be scheme://host[:port]")
	}
	if strings.ContainsAny(rest, "/?#") {
		return fail("an origin has no path, query or fragment (remove any trailing slash)")
	}
	if strings.Contains(rest, "@") {
		return fail("an origin has no user info")
	}
	scheme = strings.ToLower(scheme)
	if !validScheme(scheme) {
		return fail("invalid scheme")
	}

	host, port := rest, ""
	if h, p, err := net.SplitHostPort(rest); err == nil {
		host, port = h, p
		if p == "" {
			return fail("empty port")
		}
	} else if strings.HasPrefix(rest, "[") {
		host = strings.TrimSuffix(strings.TrimPrefix(rest, "["), "]")
	} else if strings.Contains(rest, ":") {
		return fail("invalid host or port")
	}
	host = strings.ToLower(host)
	if host == "" {
		return fail("missing host")
	}
	if port != "" && !validPort(port) {
		return fail("invalid port")
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}

	// a wildcard stands for exactly one leading label
	wild := strings.HasPrefix(host, "*.")
	name := strings.TrimPrefix(host, "*.")
	if strings.Contains(name, "*") {
		return fail("a wildcard may only replace the first label, as in https://*.example.com")
	}
	if ip := net.ParseIP(name); ip != nil {
		if wild {
			return fail("a wildcard cannot stand before an IP address")
		}
		if ip.To4() == nil {
			name = "[" + ip.String() + "]"
		} else {
			name = ip.String()
		}
	} else if !validHostname(name) {
		return fail("invalid host name")
	} else if wild && !strings.Contains(name, ".") {
		return fail("a wildcard needs at least two labels after it, as in https://*.example.com")
	}

	out := scheme + "://"
	if wild {
		out += "*."
	}
	out += name
	if port != "" {
		out += ":" + port
	}
	return out, nil
}

func validScheme(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

func validPort(p string) bool {
	if len(p) > 5 || p[0] == '0' {
		return false
	}
	n := 0
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return false
		}
		n = n*10 + int(p[i]-'0')
	}
	return n > 0 && n <= 65535
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if !validLabel(label) {
			return false
		}
	}
	return true
}

func validLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// allows reports whether a request Origin value is on the allowlist.
func (l *originAllowlist) allows(origin string) bool {
	if _, ok := l.exact[origin]; ok {
		return true
	}
	if origin == "null" {
		return l.null
	}
	if l.any {
		return true
	}
	for _, w := range l.wildcards {
		if len(origin) > len(w.prefix)+len(w.suffix) &&
			strings.HasPrefix(origin, w.prefix) && strings.HasSuffix(origin, w.suffix) &&
			validLabel(origin[len(w.prefix):len(origin)-len(w.suffix)]) {
			return true
		}
	}
	for _, re := range l.patterns {
		if re.MatchString(origin) {
			return true
		}
	}
	return false
}

// headerValue returns the Access-Control-Allow-Origin value for an allowed
// origin, reusing a prebuilt slice for exact entries.
func (l *originAllowlist) headerValue(origin string) []string {
	if v, ok := l.exact[origin]; ok {
		return v[:1:1]
	}
	return []string{origin}
}

// wildcardProbes are origins no allowlist should ever match by accident;
// an entry that accepts them is treated as "*".
var wildcardProbes = []string{
	"https://attacker.invalid",
	"http://attacker.invalid",
	"https://example.com.attacker.invalid",
	"https://a.b.c.d.attacker.invalid:8443",
}

// nearWildcard reports whether the allowlist is "*" or behaves like it for
// unrelated sites, such as a regular expression ^https://.*$.
func (l *originAllowlist) nearWildcard() bool {
	if l.any {
		return true
	}
	for _, probe := range wildcardProbes {
		if l.allows(probe) {
			return true
		}
	}
	return false
}

// validRequestOrigin reports whether a request's Origin value has the shape
// of a serialised origin, so that nothing odd is ever echoed back.
func validRequestOrigin(origin string) bool {
	if origin == "" || len(origin) > maxOriginLength {
		return false
	}
	for i := 0; i < len(origin); i++ {
		if c := origin[i]; c <= ' ' || c >= 0x7f || c == ',' {
			return false
		}
	}
	return true
}

// requestOrigin is the origin the request itself was made to, used to let
// same-origin requests through: browsers send Origin on same-origin POSTs.
func requestOrigin(scheme, host string) string {
	host = strings.ToLower(host)
	if h, p, err := net.SplitHostPort(host); err == nil &&
		(scheme == "http" && p == "80" || scheme == "https" && p == "443") {
		host = h
		if strings.Contains(h, ":") {
			host = "[" + h + "]"
		}
	}
	return scheme + "://" + host
}
