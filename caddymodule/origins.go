package caddymodule

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"regexp/syntax"
	"strings"

	"golang.org/x/net/publicsuffix"
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
	exact     map[string]struct{}
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
	list := &originAllowlist{exact: make(map[string]struct{})}
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
	l.exact[origin] = struct{}{}
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
	if err := checkPatternHost(inner); err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrInvalidOrigin, entry, err)
	}
	return re, nil
}

// checkPatternHost refuses a regular expression that could match a host
// outside the domain its author had in mind. Request origins reach the
// patterns only in serialised form (scheme://host[:port]), so it is enough
// that every branch ends, before an optional port, with either a literal
// that holds the whole host ("://app.example.com") or a literal domain of
// at least two labels that starts with an escaped dot ("\.example\.com").
// Variable parts before that literal, an unescaped dot included, can then
// only pick a subdomain of it. An unescaped dot inside the domain
// (app.example.com would also match appxexample.com), a trailing .* and a
// domain of one label (\.com) are refused.
func checkPatternHost(expr string) error {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return err
	}
	if !fixedDomain(re.Simplify(), true) {
		return errors.New("the host must end in a literal domain, such as " +
			`^https://[a-z0-9-]+\.example\.com$ (escape every dot)`)
	}
	return nil
}

// fixedDomain reports whether every string re matches ends in a fixed
// domain, as checkPatternHost describes. fixedBefore says that whatever
// precedes re is one of finitely many literal strings.
func fixedDomain(re *syntax.Regexp, fixedBefore bool) bool {
	switch re.Op {
	case syntax.OpLiteral:
		lit := string(re.Rune)
		if fixedBefore || strings.Contains(lit, "://") {
			return true
		}
		domain, _, _ := strings.Cut(strings.ToLower(lit), ":")
		return strings.HasPrefix(domain, ".") && strings.Count(domain, ".") >= 2 &&
			!isPublicSuffix(domain[1:])
	case syntax.OpCapture:
		return fixedDomain(re.Sub[0], fixedBefore)
	case syntax.OpAlternate:
		for _, sub := range re.Sub {
			if !fixedDomain(sub, fixedBefore) {
				return false
			}
		}
		return true
	case syntax.OpConcat:
		subs := re.Sub
		for len(subs) > 0 && isEnd(subs[len(subs)-1]) {
			subs = subs[:len(subs)-1]
		}
		// an optional or variable port after the host
		if n := len(subs); n > 1 && colonFirst(subs[n-1]) && digitsOnly(subs[n-1], true) {
			subs = subs[:n-1]
		} else {
			k := n
			for k > 0 && digitsOnly(subs[k-1], false) {
				k--
			}
			if k < n && k > 0 && subs[k-1].Op == syntax.OpLiteral &&
				strings.HasSuffix(string(subs[k-1].Rune), ":") {
				last := *subs[k-1]
				last.Rune = last.Rune[:len(last.Rune)-1]
				subs = append(subs[:k-1:k-1], &last)
			}
		}
		if len(subs) == 0 {
			return false
		}
		for _, sub := range subs[:len(subs)-1] {
			fixedBefore = fixedBefore && finite(sub)
		}
		return fixedDomain(subs[len(subs)-1], fixedBefore)
	}
	return false
}

func isEnd(re *syntax.Regexp) bool {
	return re.Op == syntax.OpEndText || re.Op == syntax.OpEndLine || re.Op == syntax.OpEmptyMatch
}

// finite reports whether re matches one of finitely many literal strings.
func finite(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpLiteral, syntax.OpBeginText, syntax.OpBeginLine, syntax.OpEmptyMatch:
		return true
	case syntax.OpCapture, syntax.OpQuest, syntax.OpConcat, syntax.OpAlternate:
		for _, sub := range re.Sub {
			if !finite(sub) {
				return false
			}
		}
		return true
	}
	return false
}

// colonFirst reports whether every non-empty string re matches starts
// with a colon.
func colonFirst(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpLiteral:
		return len(re.Rune) > 0 && re.Rune[0] == ':'
	case syntax.OpCapture, syntax.OpQuest:
		return colonFirst(re.Sub[0])
	case syntax.OpConcat:
		return len(re.Sub) > 0 && colonFirst(re.Sub[0])
	case syntax.OpAlternate:
		for _, sub := range re.Sub {
			if !colonFirst(sub) {
				return false
			}
		}
		return true
	}
	return false
}

// digitsOnly reports whether re matches only digits (and colons when
// colon is set): the shape of a port.
func digitsOnly(re *syntax.Regexp, colon bool) bool {
	switch re.Op {
	case syntax.OpLiteral:
		for _, r := range re.Rune {
			if !(r >= '0' && r <= '9' || colon && r == ':') {
				return false
			}
		}
		return true
	case syntax.OpCharClass:
		for i := 0; i+1 < len(re.Rune); i += 2 {
			if re.Rune[i] < '0' || re.Rune[i+1] > '9' {
				return false
			}
		}
		return true
	case syntax.OpEmptyMatch:
		return true
	case syntax.OpCapture, syntax.OpQuest, syntax.OpStar, syntax.OpPlus, syntax.OpRepeat,
		syntax.OpConcat, syntax.OpAlternate:
		for _, sub := range re.Sub {
			if !digitsOnly(sub, colon) {
				return false
			}
		}
		return true
	}
	return false
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
	bracketed := strings.HasPrefix(rest, "[")
	if h, p, err := net.SplitHostPort(rest); err == nil {
		host, port = h, p
		if p == "" {
			return fail("empty port")
		}
	} else if bracketed && strings.HasSuffix(rest, "]") {
		host = rest[1 : len(rest)-1]
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
		// browsers write IPv4-mapped IPv6 addresses in hex and refuse an
		// IPv4 address in brackets (URL Standard, "host serializing"), so
		// such entries could never match what they seem to say
		if (ip.To4() != nil) == bracketed {
			return fail("write an IPv4 address as a.b.c.d and an IPv6 address in brackets, without an IPv4 part")
		}
		if ip.To4() == nil {
			name = "[" + ip.String() + "]"
		} else {
			name = ip.String()
		}
	} else if bracketed || endsInNumber(name) {
		// the URL Standard reads 127.1 or 0x7f.1 as IPv4 and serialises it
		// as 127.0.0.1, so the entry as written would never match
		return fail("invalid IP address (write an IPv4 address as four decimal numbers)")
	} else if !validHostname(name) {
		return fail("invalid host name")
	} else if wild && name != "localhost" && (!strings.Contains(name, ".") || isPublicSuffix(name)) {
		// *.localhost is the exception: RFC 6761 section 6.3 keeps every
		// name under it on the local machine, so nobody else can hold one
		return fail("a wildcard needs a registrable domain after it, as in https://*.example.com")
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

// endsInNumber reports whether the last label of a host is a number, in
// which case the URL Standard parses the host as an IPv4 address ("ends in
// a number checker").
func endsInNumber(host string) bool {
	last := host[strings.LastIndexByte(host, '.')+1:]
	if last == "" {
		return false
	}
	if hex, ok := strings.CutPrefix(last, "0x"); ok {
		return strings.Trim(hex, "0123456789abcdef") == ""
	}
	return strings.Trim(last, "0123456789") == ""
}

// isPublicSuffix reports whether name is a suffix under which anybody may
// register a domain (com, co.uk, github.io): a wildcard or pattern over it
// would match unrelated sites.
func isPublicSuffix(name string) bool {
	suffix, _ := publicsuffix.PublicSuffix(name)
	return suffix == name
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
	// wildcards and patterns see only well-formed serialised origins, so
	// that the host they match is the whole host
	if (len(l.wildcards) > 0 || len(l.patterns) > 0) && !isSerializedOrigin(origin) {
		return false
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

// wildcardProbes are origins no allowlist should ever match by accident;
// an entry that accepts them is treated as "*".
var wildcardProbes = []string{
	"https://attacker.invalid",
	"http://attacker.invalid",
	"https://example.com.attacker.invalid",
	"https://a.b.c.d.attacker.invalid:8443",
}

// nearWildcard reports whether the allowlist is "*" or behaves like it for
// unrelated sites, such as a regular expression ^https://.*$. The null
// origin counts: any site can send it from a sandboxed iframe (HTML,
// "sandboxed origin browsing context flag").
func (l *originAllowlist) nearWildcard() bool {
	if l.any || l.null {
		return true
	}
	for _, probe := range wildcardProbes {
		if l.allows(probe) {
			return true
		}
	}
	return false
}

// isSerializedOrigin reports whether origin is already in the form a
// browser sends: scheme://host[:port], lowercase, no default port, no
// user info, path or wildcard (RFC 6454 section 6.2).
func isSerializedOrigin(origin string) bool {
	if strings.Contains(origin, "*") {
		return false
	}
	normal, err := NormalizeOrigin(origin)
	return err == nil && normal == origin
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
//
// TODO: the host comes from the request's Host header, which a client
// chooses; a DNS-rebinding page (evil.test resolving to the gateway) looks
// same-origin. Such a request gets no CORS headers and still needs a valid
// token, which the rebinding page does not have, so the token check keeps
// it out; a site matcher on the host (as Caddy sites have) closes it fully.
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
