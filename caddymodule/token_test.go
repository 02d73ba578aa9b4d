package caddymodule

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// keyring is the issuer's keys for the attack tests, all published in one
// key set: two RSA keys, an EC and an Ed25519 key, an RSA key whose JWK
// names no alg, and an RSA key published for encryption only.
type keyring struct {
	rs1, rs2, ec, ed, noAlg, enc, signOnly *testkit.Key
}

func newKeyring(t *testing.T) *keyring {
	t.Helper()
	return &keyring{
		rs1:   testkit.MustRSAKey(t, "k1"),
		rs2:   testkit.MustRSAKey(t, "k2"),
		ec:    testkit.MustECKey(t, "e1"),
		ed:    testkit.MustEdKey(t, "d1"),
		noAlg: testkit.MustRSAKey(t, "any"),
		enc:   testkit.MustRSAKey(t, "enc1"),
		// key_ops without "verify" (RFC 7517 section 4.3)
		signOnly: testkit.MustRSAKey(t, "ops1"),
	}
}

func (k *keyring) jwks() []map[string]any {
	noAlg := k.noAlg.PublicJWK()
	delete(noAlg, "alg")
	enc := k.enc.PublicJWK()
	enc["use"] = "enc"
	enc["alg"] = "RSA-OAEP-256"
	signOnly := k.signOnly.PublicJWK()
	delete(signOnly, "use")
	signOnly["key_ops"] = []string{"sign"}
	return []map[string]any{k.rs1.PublicJWK(), k.rs2.PublicJWK(), k.ec.PublicJWK(),
		k.ed.PublicJWK(), noAlg, enc, signOnly}
}

// guardWith provisions a handler whose issuer publishes jwks.
func guardWith(t *testing.T, jwks []map[string]any, edit func(h *Handler)) *fixture {
	t.Helper()
	server := testkit.StartJWKS(t)
	server.SetJWKs(jwks...)
	return newFixture(t, func(h *Handler) {
		h.Issuers[0].JWKSURL = server.URL
		if edit != nil {
			edit(h)
		}
	})
}

// as returns a copy of key that signs with another algorithm of its type.
func as(key *testkit.Key, alg string) *testkit.Key {
	c := *key
	c.Alg = alg
	return &c
}

func validClaims() map[string]any {
	return testkit.Claims(testIssuer, testAudience, "alice", time.Hour)
}

func with(claims map[string]any, name string, value any) map[string]any {
	claims[name] = value
	return claims
}

func without(claims map[string]any, name string) map[string]any {
	delete(claims, name)
	return claims
}

func header(alg, kid string, extra ...any) map[string]any {
	h := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		h["kid"] = kid
	}
	for i := 0; i+1 < len(extra); i += 2 {
		h[extra[i].(string)] = extra[i+1]
	}
	return h
}

func seg(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func mustSignRaw(t *testing.T, key *testkit.Key, header, payload string) string {
	t.Helper()
	token, err := testkit.SignRaw(key, []byte(header), []byte(payload))
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// assertOutcome checks one answer: the status, the RFC 6750 error code in
// WWW-Authenticate and the body, no token echoed, and whether the
// upstream was reached.
func assertOutcome(t *testing.T, f *fixture, before int, w *httptest.ResponseRecorder,
	token string, status int, code string) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status %d, want %d (body %s, WWW-Authenticate %q)", w.Code, status, w.Body,
			w.Header().Get("WWW-Authenticate"))
	}
	forwarded := f.upstream.count() > before
	if forwarded != (status == http.StatusOK) {
		t.Fatalf("forwarded = %v with status %d", forwarded, status)
	}
	if status == http.StatusOK {
		return
	}
	if code != "" {
		challenge := w.Header().Get("WWW-Authenticate")
		if !strings.Contains(challenge, `error="`+code+`"`) {
			t.Errorf("WWW-Authenticate %q, want error=%q", challenge, code)
		}
		if body := decodeBody(t, w); body["error"] != code || body["error_description"] == "" {
			t.Errorf("body %q, want error %q and a description", w.Body, code)
		}
	}
	if token != "" && (strings.Contains(w.Body.String(), token) ||
		strings.Contains(w.Header().Get("WWW-Authenticate"), token)) {
		t.Error("the answer echoes the token")
	}
}

// tokenCase is one token sent as a bearer token and what must happen.
type tokenCase struct {
	name   string
	token  string
	status int
	code   string
}

func runTokenCases(t *testing.T, f *fixture, cases []tokenCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := f.upstream.count()
			w := f.serve(t, request("GET", "/api/items", "Origin", appOrigin,
				"Authorization", "Bearer "+tc.token))
			assertOutcome(t, f, before, w, tc.token, tc.status, tc.code)
		})
	}
}

const (
	passes       = http.StatusOK
	unauthorized = http.StatusUnauthorized
	badRequest   = http.StatusBadRequest
	invalid      = "invalid_token"
)

func TestAlgorithmAttacksRefused(t *testing.T) {
	keys := newKeyring(t)
	f := guardWith(t, keys.jwks(), nil)
	claims := validClaims()
	signed := testkit.MustSign(t, keys.rs1, claims)
	sig := signed[strings.LastIndexByte(signed, '.')+1:]

	// the issuer's public key in every form an attacker might try as an
	// HMAC secret
	pub := keys.rs1.Public()
	pkix, _ := x509.MarshalPKIXPublicKey(pub)
	secrets := map[string][]byte{
		"PEM":  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkix}),
		"DER":  pkix,
		"JWK":  []byte(mustJSON(t, keys.rs1.PublicJWK())),
		"JWKS": []byte(mustJSON(t, map[string]any{"keys": keys.jwks()})),
	}

	cases := []tokenCase{
		{"control: RS256 by k1", signed, passes, ""},
		{"control: ES256 by e1", testkit.MustSign(t, keys.ec, claims), passes, ""},
		{"control: EdDSA by d1", testkit.MustSign(t, keys.ed, claims), passes, ""},
		{"control: PS256 by a key that names no alg", testkit.MustSign(t, as(keys.noAlg, "PS256"), claims), passes, ""},
		{"control: RS512 by a key that names no alg", testkit.MustSign(t, as(keys.noAlg, "RS512"), claims), passes, ""},
	}
	for _, alg := range []string{"none", "None", "NONE", "nOnE"} {
		h := seg(mustJSON(t, header(alg, "k1")))
		p := seg(mustJSON(t, claims))
		cases = append(cases,
			tokenCase{"alg " + alg + ", no signature", h + "." + p + ".", unauthorized, invalid},
			tokenCase{"alg " + alg + ", signature kept", h + "." + p + "." + sig, unauthorized, invalid})
	}
	for name, secret := range secrets {
		for _, alg := range []string{"HS256", "HS512"} {
			token, err := testkit.SignHMAC(secret, header(alg, "k1"), claims)
			if err != nil {
				t.Fatal(err)
			}
			cases = append(cases, tokenCase{alg + " with the public key " + name + " as secret", token, unauthorized, invalid})
		}
	}
	cases = append(cases, []tokenCase{
		{"RS256 key used for PS256", testkit.MustSignWithHeader(t, as(keys.rs1, "PS256"), header("PS256", "k1"), claims), unauthorized, invalid},
		{"RS256 key used for RS512", testkit.MustSignWithHeader(t, as(keys.rs1, "RS512"), header("RS512", "k1"), claims), unauthorized, invalid},
		{"ES256 token naming an RSA key", testkit.MustSignWithHeader(t, keys.ec, header("ES256", "k1"), claims), unauthorized, invalid},
		{"EdDSA token naming an EC key", testkit.MustSignWithHeader(t, keys.ed, header("EdDSA", "e1"), claims), unauthorized, invalid},
		{"ES384 token naming a P-256 key", testkit.MustSignWithHeader(t, keys.ec, header("ES384", "e1"), claims), unauthorized, invalid},
		{"RS256 token naming an Ed25519 key", testkit.MustSignWithHeader(t, keys.rs1, header("RS256", "d1"), claims), unauthorized, invalid},
		{"signed by a use=enc key", testkit.MustSign(t, keys.enc, claims), unauthorized, invalid},
		{"signed by a use=enc key, no kid", testkit.MustSignWithHeader(t, keys.enc, header("RS256", ""), claims), unauthorized, invalid},
		{"signed by a key whose key_ops lack verify", testkit.MustSign(t, keys.signOnly, claims), unauthorized, invalid},
		{"alg unknown", seg(`{"alg":"RS1","kid":"k1"}`) + "." + seg(mustJSON(t, claims)) + "." + sig, unauthorized, invalid},
		{"alg missing", seg(`{"kid":"k1"}`) + "." + seg(mustJSON(t, claims)) + "." + sig, unauthorized, invalid},
		{"alg not a string", seg(`{"alg":["RS256"],"kid":"k1"}`) + "." + seg(mustJSON(t, claims)) + "." + sig, unauthorized, invalid},
		{"alg in another case only", mustSignRaw(t, keys.rs1, `{"ALG":"RS256","kid":"k1"}`, mustJSON(t, claims)), unauthorized, invalid},
	}...)
	runTokenCases(t, f, cases)

	// a route that allows HS256 for another issuer with a real shared
	// secret still never checks this issuer's tokens with HMAC
	secret := "0123456789abcdef0123456789abcdef-shared"
	g := guardWith(t, keys.jwks(), func(h *Handler) {
		h.Algorithms = []string{"RS256", "HS256"}
		h.Issuers[0].Algorithms = []string{"RS256"}
		h.Issuers = append(h.Issuers, &Issuer{Issuer: "https://hmac.test", HMACSecret: secret,
			Audiences: []string{testAudience}, Algorithms: []string{"HS256"}})
	})
	hmacClaims := testkit.Claims("https://hmac.test", testAudience, "bob", time.Hour)
	var hmacCases []tokenCase
	mustHMAC := func(secret []byte, claims map[string]any) string {
		token, err := testkit.SignHMAC(secret, header("HS256", ""), claims)
		if err != nil {
			t.Fatal(err)
		}
		return token
	}
	hmacCases = append(hmacCases,
		tokenCase{"control: HS256 for the HMAC issuer", mustHMAC([]byte(secret), hmacClaims), passes, ""},
		tokenCase{"HS256 for the JWKS issuer, its public key as secret", mustHMAC(secrets["PEM"], claims), unauthorized, invalid},
		tokenCase{"HS256 for the JWKS issuer, the shared secret", mustHMAC([]byte(secret), claims), unauthorized, invalid},
		tokenCase{"HS256 for the HMAC issuer, a public key as secret", mustHMAC(secrets["PEM"], hmacClaims), unauthorized, invalid},
		tokenCase{"RS256 for the HMAC issuer", testkit.MustSign(t, keys.rs1, hmacClaims), unauthorized, invalid},
		tokenCase{"PS256, not on the route", testkit.MustSign(t, as(keys.noAlg, "PS256"), claims), unauthorized, invalid},
	)
	runTokenCases(t, g, hmacCases)
}

func TestKeysFromTheTokenAreNeverUsed(t *testing.T) {
	keys := newKeyring(t)
	f := guardWith(t, keys.jwks(), nil)
	attacker := testkit.MustRSAKey(t, "attacker")
	claims := validClaims()

	// a loopback server that would hand out the attacker's key set and
	// certificate; it must never be asked
	trap := testkit.StartKeyTrap(t, attacker)
	der := testkit.MustSelfSignedDER(t, attacker, "issuer.test")
	x5c := []string{base64.StdEncoding.EncodeToString(der)}
	embedded := attacker.PublicJWK()

	var cases []tokenCase
	for _, kid := range []string{"attacker", "k1", ""} {
		for _, param := range []struct {
			name  string
			value any
		}{
			{"jku", trap.URL + "/jwks.json"},
			{"x5u", trap.URL + "/cert.pem"},
			{"jwk", embedded},
			{"x5c", x5c},
		} {
			token := testkit.MustSignWithHeader(t, attacker, header("RS256", kid, param.name, param.value), claims)
			cases = append(cases, tokenCase{param.name + ", kid " + kid, token, unauthorized, invalid})
		}
	}
	all := testkit.MustSignWithHeader(t, attacker, header("RS256", "attacker", "jku", trap.URL,
		"x5u", trap.URL, "jwk", embedded, "x5c", x5c), claims)
	cases = append(cases, tokenCase{"all four", all, unauthorized, invalid})
	runTokenCases(t, f, cases)

	if n := trap.Hits(); n != 0 {
		t.Errorf("the URL in the token was fetched %d times", n)
	}
}

func TestTokenShapeAttacksRefused(t *testing.T) {
	keys := newKeyring(t)
	f := guardWith(t, keys.jwks(), nil)
	claims := validClaims()
	claimsJSON := mustJSON(t, claims)
	signed := testkit.MustSign(t, keys.rs1, claims)
	parts := strings.Split(signed, ".")
	ecSigned := testkit.MustSign(t, keys.ec, claims)
	ecInput := ecSigned[:strings.LastIndexByte(ecSigned, '.')]
	k1 := `{"alg":"RS256","kid":"k1"}`
	body := strings.TrimSuffix(claimsJSON, "}")

	zeroes := func(n int) string { return base64.RawURLEncoding.EncodeToString(make([]byte, n)) }
	ones := base64.RawURLEncoding.EncodeToString([]byte(strings.Repeat("\xff", 64)))
	half := base64.RawURLEncoding.EncodeToString(append(make([]byte, 32), []byte(strings.Repeat("\x01", 32))...))

	cases := []tokenCase{
		{"control: raw header and claims", mustSignRaw(t, keys.rs1, k1, claimsJSON), passes, ""},
		{"control: escaped but distinct names", mustSignRaw(t, keys.rs1, `{"\u0061lg":"RS256","kid":"k1"}`, claimsJSON), passes, ""},
		{"control: whitespace around the claims", mustSignRaw(t, keys.rs1, k1, " \n"+claimsJSON+"\t "), passes, ""},

		// critical extensions
		{"crit naming an unknown parameter", testkit.MustSignWithHeader(t, keys.rs1, header("RS256", "k1", "crit", []string{"exp"}, "exp", 1), claims), unauthorized, invalid},
		{"crit b64", testkit.MustSignWithHeader(t, keys.rs1, header("RS256", "k1", "crit", []string{"b64"}, "b64", false), claims), unauthorized, invalid},
		{"crit empty", testkit.MustSignWithHeader(t, keys.rs1, header("RS256", "k1", "crit", []string{}), claims), unauthorized, invalid},
		{"crit null", mustSignRaw(t, keys.rs1, `{"alg":"RS256","kid":"k1","crit":null}`, claimsJSON), unauthorized, invalid},

		// duplicate member names
		{"header alg twice, same value", mustSignRaw(t, keys.rs1, `{"alg":"RS256","kid":"k1","alg":"RS256"}`, claimsJSON), unauthorized, invalid},
		{"header alg twice, none first", mustSignRaw(t, keys.rs1, `{"alg":"none","kid":"k1","alg":"RS256"}`, claimsJSON), unauthorized, invalid},
		{"header alg twice, escaped", mustSignRaw(t, keys.rs1, `{"\u0061lg":"none","kid":"k1","alg":"RS256"}`, claimsJSON), unauthorized, invalid},
		{"header kid twice", mustSignRaw(t, keys.rs1, `{"alg":"RS256","kid":"k2","kid":"k1"}`, claimsJSON), unauthorized, invalid},
		{"claims sub twice", mustSignRaw(t, keys.rs1, k1, body+`,"sub":"admin"}`), unauthorized, invalid},
		{"claims sub twice, escaped", mustSignRaw(t, keys.rs1, k1, body+`,"s\u0075b":"admin"}`), unauthorized, invalid},
		{"claims sub twice, escaped slash", mustSignRaw(t, keys.rs1, k1, body+`,"\u0073\u0075\u0062":"admin"}`), unauthorized, invalid},
		{"claims iss twice", mustSignRaw(t, keys.rs1, k1, body+`,"iss":"https://evil.test"}`), unauthorized, invalid},
		{"claims duplicate in a nested object", mustSignRaw(t, keys.rs1, k1, body+`,"realm_access":{"roles":["user"],"roles":["admin"]}}`), unauthorized, invalid},
		{"claims duplicate in an object in an array", mustSignRaw(t, keys.rs1, k1, body+`,"orgs":[{"id":1},{"id":2,"id":3}]}`), unauthorized, invalid},
		{"claims names differing in invalid UTF-8", mustSignRaw(t, keys.rs1, k1, body+",\"r\xff\":1,\"r\xfe\":2}"), unauthorized, invalid},

		// signatures
		{"ECDSA signature of zeroes", ecInput + "." + zeroes(64), unauthorized, invalid},
		{"ECDSA r zero", ecInput + "." + half, unauthorized, invalid},
		{"ECDSA r and s past the order", ecInput + "." + ones, unauthorized, invalid},
		{"ECDSA signature in ASN.1", ecInput + "." + zeroes(72), unauthorized, invalid},
		{"empty signature", parts[0] + "." + parts[1] + ".", unauthorized, invalid},
		{"stripped signature", parts[0] + "." + parts[1], unauthorized, invalid},
		{"signature of another token", parts[0] + "." + seg(body+`,"roles":["admin"]}`) + "." + parts[2], unauthorized, invalid},
		{"signature one byte short", parts[0] + "." + parts[1] + "." + parts[2][:len(parts[2])-2], unauthorized, invalid},
		{"RSA signature of zeroes", parts[0] + "." + parts[1] + "." + zeroes(256), unauthorized, invalid},

		// serialisations
		{"JWE, five parts", seg(`{"alg":"RSA-OAEP","enc":"A256GCM"}`) + ".AAAA.AAAA.AAAA.AAAA", unauthorized, invalid},
		{"four parts", signed + ".AAAA", unauthorized, invalid},
		{"empty header", "." + parts[1] + "." + parts[2], unauthorized, invalid},
		{"empty claims", parts[0] + ".." + parts[2], unauthorized, invalid},
		{"unsecured JWT", seg(`{"alg":"none"}`) + "." + parts[1] + ".", unauthorized, invalid},
		{"claims not an object", mustSignRaw(t, keys.rs1, k1, `["sub","alice"]`), unauthorized, invalid},
		{"claims null", mustSignRaw(t, keys.rs1, k1, `null`), unauthorized, invalid},
		{"claims string", mustSignRaw(t, keys.rs1, k1, `"alice"`), unauthorized, invalid},
		{"header not an object", mustSignRaw(t, keys.rs1, `["RS256"]`, claimsJSON), unauthorized, invalid},
		{"trailing object after the claims", mustSignRaw(t, keys.rs1, k1, claimsJSON+`{}`), unauthorized, invalid},
		{"trailing data after the claims", mustSignRaw(t, keys.rs1, k1, claimsJSON+`x`), unauthorized, invalid},
		{"trailing data after the header", mustSignRaw(t, keys.rs1, k1+`[]`, claimsJSON), unauthorized, invalid},
		{"claims not UTF-8 JSON", mustSignRaw(t, keys.rs1, k1, "\xfe\xff"+claimsJSON), unauthorized, invalid},

		// encoding
		{"padded header", parts[0] + "=." + parts[1] + "." + parts[2], badRequest, "invalid_request"},
		{"padded signature", signed + "==", unauthorized, invalid},
		{"standard alphabet character", parts[0] + "." + parts[1] + ".+" + parts[2][1:], unauthorized, invalid},
		{"trailing bits set", parts[0] + "." + parts[1] + "." + flipLastBits(parts[2]), unauthorized, invalid},
	}
	runTokenCases(t, f, cases)

	// JSON serialisations and tokens with characters outside token68 are
	// malformed requests before they are bad tokens
	flat := mustJSON(t, map[string]any{"protected": parts[0], "payload": parts[1], "signature": parts[2]})
	general := mustJSON(t, map[string]any{"payload": parts[1],
		"signatures": []any{map[string]any{"protected": parts[0], "signature": parts[2]}}})
	runTokenCases(t, f, []tokenCase{
		{"flattened JSON serialisation", flat, badRequest, "invalid_request"},
		{"general JSON serialisation", general, badRequest, "invalid_request"},
		{"space inside", parts[0] + ". " + parts[1] + "." + parts[2], badRequest, "invalid_request"},
	})
}

// flipLastBits sets the unused low bits of the last base64url character,
// which a lax decoder ignores and a strict one refuses.
func flipLastBits(s string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, s[len(s)-1])
	return s[:len(s)-1] + string(alphabet[i^1])
}

func TestOversizedTokensRefusedBeforeParsing(t *testing.T) {
	keys := newKeyring(t)
	f := guardWith(t, keys.jwks(), func(h *Handler) { h.MaxTokenBytes = 2048 })
	fits := testkit.MustSign(t, keys.ed, with(validClaims(), "pad", strings.Repeat("a", 1200)))
	over := testkit.MustSign(t, keys.ed, with(validClaims(), "pad", strings.Repeat("a", 1400)))
	if len(fits) > 2048 || len(over) <= 2048 {
		t.Fatalf("token sizes %d and %d do not straddle the limit", len(fits), len(over))
	}
	runTokenCases(t, f, []tokenCase{
		{"control: just under the limit", fits, passes, ""},
		{"over the limit, validly signed", over, unauthorized, invalid},
		{"far over the limit, garbage", strings.Repeat("A", 1<<20), unauthorized, invalid},
	})
	if got := f.serve(t, request("GET", "/", "Authorization", "Bearer "+over)).Header().Get("WWW-Authenticate"); !strings.Contains(got, "larger") {
		t.Errorf("WWW-Authenticate %q does not say the token is too large", got)
	}
}

func TestRegisteredClaimAttacksRefused(t *testing.T) {
	keys := newKeyring(t)
	f := guardWith(t, keys.jwks(), nil)
	now := time.Now().Unix()
	sign := func(claims map[string]any) string { return testkit.MustSign(t, keys.ed, claims) }
	cases := []tokenCase{
		{"control", sign(validClaims()), passes, ""},
		{"control: fractional exp", sign(with(validClaims(), "exp", float64(now)+3600.5)), passes, ""},
		{"control: aud array", sign(with(validClaims(), "aud", []string{"other", testAudience})), passes, ""},
		{"control: expired within leeway", sign(with(validClaims(), "exp", now-10)), passes, ""},

		{"exp string", sign(with(validClaims(), "exp", "9999999999")), unauthorized, invalid},
		{"exp bool", sign(with(validClaims(), "exp", true)), unauthorized, invalid},
		{"exp null", sign(with(validClaims(), "exp", nil)), unauthorized, invalid},
		{"exp array", sign(with(validClaims(), "exp", []int64{now + 3600})), unauthorized, invalid},
		{"exp object", sign(with(validClaims(), "exp", map[string]any{"$date": now + 3600})), unauthorized, invalid},
		{"exp huge", mustSignRaw(t, keys.ed, `{"alg":"EdDSA","kid":"d1"}`, strings.Replace(mustJSON(t, validClaims()), `"exp":`, `"exp":1e400,"x":`, 1)), unauthorized, invalid},
		{"exp past year 9999", sign(with(validClaims(), "exp", int64(253402300800))), unauthorized, invalid},
		{"exp negative", sign(with(validClaims(), "exp", -1)), unauthorized, invalid},
		{"exp missing", sign(without(validClaims(), "exp")), unauthorized, invalid},
		{"expired", sign(with(validClaims(), "exp", now-3600)), unauthorized, invalid},
		{"nbf string", sign(with(validClaims(), "nbf", "0")), unauthorized, invalid},
		{"nbf in the future", sign(with(validClaims(), "nbf", now+3600)), unauthorized, invalid},
		{"nbf huge", sign(with(validClaims(), "nbf", 1e300)), unauthorized, invalid},
		{"iat string", sign(with(validClaims(), "iat", "now")), unauthorized, invalid},
		{"iat in the future", sign(with(validClaims(), "iat", now+3600)), unauthorized, invalid},
		{"iat negative", sign(with(validClaims(), "iat", -100)), unauthorized, invalid},

		{"aud other string", sign(with(validClaims(), "aud", "billing-api")), unauthorized, invalid},
		{"aud array without ours", sign(with(validClaims(), "aud", []string{"a", "b"})), unauthorized, invalid},
		{"aud empty array", sign(with(validClaims(), "aud", []string{})), unauthorized, invalid},
		{"aud array with a number", sign(with(validClaims(), "aud", []any{testAudience, 7})), unauthorized, invalid},
		{"aud nested array", sign(with(validClaims(), "aud", []any{[]string{testAudience}})), unauthorized, invalid},
		{"aud number", sign(with(validClaims(), "aud", 1)), unauthorized, invalid},
		{"aud null", sign(with(validClaims(), "aud", nil)), unauthorized, invalid},
		{"aud missing", sign(without(validClaims(), "aud")), unauthorized, invalid},
		{"aud prefix", sign(with(validClaims(), "aud", testAudience+"-admin")), unauthorized, invalid},

		{"iss other", sign(with(validClaims(), "iss", "https://evil.test")), unauthorized, invalid},
		{"iss with a trailing slash", sign(with(validClaims(), "iss", testIssuer+"/")), unauthorized, invalid},
		{"iss in upper case", sign(with(validClaims(), "iss", strings.ToUpper(testIssuer))), unauthorized, invalid},
		{"iss array", sign(with(validClaims(), "iss", []string{testIssuer})), unauthorized, invalid},
		{"iss missing", sign(without(validClaims(), "iss")), unauthorized, invalid},
		{"sub number", sign(with(validClaims(), "sub", 42)), unauthorized, invalid},
	}
	runTokenCases(t, f, cases)
}

func TestTokenWithoutKid(t *testing.T) {
	keys := newKeyring(t)
	claims := validClaims()
	noKid := func(key *testkit.Key) string {
		return testkit.MustSignWithHeader(t, key, header(key.Alg, ""), claims)
	}
	f := guardWith(t, keys.jwks(), nil)
	runTokenCases(t, f, []tokenCase{
		{"signed by the second RSA key", noKid(keys.rs2), passes, ""},
		{"signed by the EC key", noKid(keys.ec), passes, ""},
		{"signed by a key not in the set", noKid(testkit.MustRSAKey(t, "x")), unauthorized, invalid},
		{"signed by the use=enc key", noKid(keys.enc), unauthorized, invalid},
	})

	// with more fitting keys than the bound, only the first are tried
	var many []*testkit.Key
	var jwks []map[string]any
	for i := range maxKeysWithoutKid + 2 {
		many = append(many, testkit.MustEdKey(t, "ed"+string(rune('a'+i))))
		jwks = append(jwks, many[i].PublicJWK())
	}
	g := guardWith(t, jwks, nil)
	runTokenCases(t, g, []tokenCase{
		{"first key, no kid", noKid(many[0]), passes, ""},
		{"last key within the bound, no kid", noKid(many[maxKeysWithoutKid-1]), passes, ""},
		{"key past the bound, no kid", noKid(many[maxKeysWithoutKid+1]), unauthorized, invalid},
		{"key past the bound, with kid", testkit.MustSign(t, many[maxKeysWithoutKid+1], claims), passes, ""},
	})
}

func TestMultipleIssuersUseOnlyTheirOwnKeys(t *testing.T) {
	keyA, keyB := testkit.MustRSAKey(t, "a1"), testkit.MustEdKey(t, "b1")
	jwksA, jwksB := testkit.StartJWKS(t, keyA), testkit.StartJWKS(t, keyB)
	const issA, issB = "https://a.test", "https://b.test"
	f := newFixture(t, func(h *Handler) {
		h.Issuers = []*Issuer{
			{Issuer: issA, JWKSURL: jwksA.URL, Audiences: []string{"api-a"}},
			{Issuer: issB, JWKSURL: jwksB.URL, Audiences: []string{"api-b"}},
		}
	})
	claims := func(iss, aud string) map[string]any { return testkit.Claims(iss, aud, "alice", time.Hour) }
	// B's key under A's kid: the signature is B's, the kid A's
	bAsA := *keyB
	bAsA.Kid = "a1"
	runTokenCases(t, f, []tokenCase{
		{"A signed by A", testkit.MustSign(t, keyA, claims(issA, "api-a")), passes, ""},
		{"B signed by B", testkit.MustSign(t, keyB, claims(issB, "api-b")), passes, ""},
		{"A signed by B", testkit.MustSign(t, keyB, claims(issA, "api-a")), unauthorized, invalid},
		{"B signed by A", testkit.MustSign(t, keyA, claims(issB, "api-b")), unauthorized, invalid},
		{"A signed by B under A's kid", testkit.MustSign(t, &bAsA, claims(issA, "api-a")), unauthorized, invalid},
		{"A with B's audience", testkit.MustSign(t, keyA, claims(issA, "api-b")), unauthorized, invalid},
		{"B with A's audience", testkit.MustSign(t, keyB, claims(issB, "api-a")), unauthorized, invalid},
	})
}

func TestIssuerAlgorithmsFollowTheirKeys(t *testing.T) {
	keys := newKeyring(t)
	secret := "0123456789abcdef0123456789abcdef-shared"
	const hmacIssuer = "https://hmac.test"
	f := guardWith(t, keys.jwks(), func(h *Handler) {
		h.Algorithms = []string{"RS256", "ES256", "HS256"}
		h.Issuers = append(h.Issuers, &Issuer{Issuer: hmacIssuer, HMACSecret: secret,
			Audiences: []string{testAudience}})
	})
	mustHMAC := func(secret string, claims map[string]any) string {
		token, err := testkit.SignHMAC([]byte(secret), header("HS256", ""), claims)
		if err != nil {
			t.Fatal(err)
		}
		return token
	}
	hmacClaims := testkit.Claims(hmacIssuer, testAudience, "bob", time.Hour)
	runTokenCases(t, f, []tokenCase{
		{"key set issuer, RS256", testkit.MustSign(t, keys.rs1, validClaims()), passes, ""},
		{"key set issuer, HS256", mustHMAC(secret, validClaims()), unauthorized, invalid},
		{"secret issuer, HS256", mustHMAC(secret, hmacClaims), passes, ""},
		{"secret issuer, RS256", testkit.MustSign(t, keys.rs1, hmacClaims), unauthorized, invalid},
		{"secret issuer, EdDSA (not on the route)", testkit.MustSign(t, keys.ed, hmacClaims), unauthorized, invalid},
	})

	// an issuer left with no algorithm is a config error, not a route
	// that refuses everything
	h := &Handler{Name: "t", CORS: &CORS{AllowOrigins: []string{appOrigin}},
		Issuers: []*Issuer{{Issuer: hmacIssuer, HMACSecret: secret, Audiences: []string{testAudience}}}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err == nil || !strings.Contains(err.Error(), "algorithms") {
		t.Errorf("HMAC issuer on a route without HMAC algorithms: %v", err)
	}
	_ = h.Cleanup()
}

func TestHasDuplicateNames(t *testing.T) {
	many := func(n int, extra string) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			fmt.Fprintf(&b, `"k%d":{"k%d":[%d]},`, i, i, i)
		}
		return b.String() + extra + "}"
	}
	cases := []struct {
		json string
		dup  bool
	}{
		{`{}`, false},
		{`{"a":1,"b":2}`, false},
		{`{"a":1,"a":2}`, true},
		{`{"a":{"a":{"a":1}}}`, false},
		{`{"a":{"b":1},"c":{"b":2}}`, false},
		{`{"a":{"b":1,"b":2}}`, true},
		{`{"a":[{"b":1},{"b":2}]}`, false},
		{`{"a":[{"b":1,"b":2}]}`, true},
		{`{"a":[["a","a"]],"b":"a"}`, false},
		{`{"a\"b":1,"a\"b":2}`, true},
		{`{"a\"b":1,"ab":2}`, false},
		{`{"\u0061":1,"a":2}`, true},
		{`{"\/":1,"/":2}`, true},
		{`{"x":"\"a\":1,\"a\":2"}`, false},
		{"{\"\xff\":1,\"\xfe\":2}", true},
		{"{\"é\":1,\"\\u00e9\":2}", true},
		{many(40, `"z":0`), false},
		{many(40, `"k0":0`), true},
		{many(40, `"k39":0`), true},
		{many(40, `"z":{"z":1,"z":2}`), true},
		{many(40, `"z":`+many(40, `"k7":1`)), true},
		{many(40, `"z":`+many(40, `"zz":1`)), false},
	}
	for _, tc := range cases {
		if !json.Valid([]byte(tc.json)) {
			t.Fatalf("%.60s: not valid JSON", tc.json)
		}
		if got := hasDuplicateNames([]byte(tc.json)); got != tc.dup {
			t.Errorf("%.60s: duplicate = %t, want %t", tc.json, got, tc.dup)
		}
	}
}
