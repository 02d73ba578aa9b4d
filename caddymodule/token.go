package caddymodule

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"strings"
)

// supportedAlgorithms are the JWS algorithms (RFC 7518 section 3.1 and
// RFC 8037) the gateway can verify. "none" is never among them.
var supportedAlgorithms = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true,
	"HS256": true, "HS384": true, "HS512": true,
}

// defaultAlgorithms are allowed when a route names none: every asymmetric
// algorithm. HMAC needs a shared secret and must be named explicitly.
var defaultAlgorithms = []string{
	"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
	"ES256", "ES384", "ES512", "EdDSA",
}

func isHMAC(alg string) bool { return strings.HasPrefix(alg, "HS") }

// maxKeysWithoutKid bounds how many keys a token without kid is tried
// against, so that a large key set cannot multiply the cost of a forgery.
const maxKeysWithoutKid = 4

// Token shape failures. Each is wrapped into a refusal with its reason.
var (
	errTokenTooLarge   = errors.New("token is larger than allowed")
	errTokenEncrypted  = errors.New("encrypted tokens (JWE) are not accepted")
	errTokenMalformed  = errors.New("token is not a compact JWS")
	errHeaderMalformed = errors.New("token header is malformed")
	errClaimsMalformed = errors.New("token claims are malformed")
	errDuplicateMember = errors.New("token has a duplicate member name")
	errCritUnsupported = errors.New("token header names critical extensions")
	errAlgNotAllowed   = errors.New("token algorithm is not allowed")
	errBadSignature    = errors.New("token signature is invalid")
)

// jwsHeader holds the members of a JOSE header the gateway reads. jku,
// x5u, jwk and x5c are deliberately not read: keys come only from the
// configured key set, never from the token that wants to be trusted.
type jwsHeader struct {
	Alg string
	Kid string
}

// compactToken is a JWS split into its parts (RFC 7515 section 7.1).
type compactToken struct {
	header       jwsHeader
	claims       map[string]any
	signingInput string
	signature    []byte
}

var b64 = base64.RawURLEncoding.Strict()

// parseCompact splits and decodes a token, refusing anything but the
// three-part compact serialisation with strict base64url and one JSON
// object per part.
func parseCompact(raw string, maxBytes int) (*compactToken, error) {
	if len(raw) > maxBytes {
		return nil, errTokenTooLarge
	}

	// shape: only the base64url alphabet and the two separating dots
	// (RFC 7515 section 2 and 7.1); this also refuses padding, spaces and
	// line breaks, which Go's base64 decoder would otherwise skip
	dots := 0
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c == '.':
			dots++
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return nil, errTokenMalformed
		}
	}
	if dots == 4 {
		return nil, errTokenEncrypted
	}
	if dots != 2 {
		return nil, errTokenMalformed
	}
	first := strings.IndexByte(raw, '.')
	last := strings.LastIndexByte(raw, '.')
	encodedHeader, encodedClaims, encodedSig := raw[:first], raw[first+1:last], raw[last+1:]
	if encodedHeader == "" || encodedClaims == "" || encodedSig == "" {
		return nil, errTokenMalformed
	}

	tok := &compactToken{signingInput: raw[:last]}
	headerJSON, err := b64.DecodeString(encodedHeader)
	if err != nil {
		return nil, errHeaderMalformed
	}
	if tok.header, err = decodeHeader(headerJSON); err != nil {
		return nil, err
	}
	claimsJSON, err := b64.DecodeString(encodedClaims)
	if err != nil {
		return nil, errClaimsMalformed
	}
	if tok.claims, err = decodeClaims(claimsJSON); err != nil {
		return nil, err
	}
	if tok.signature, err = b64.DecodeString(encodedSig); err != nil {
		return nil, errTokenMalformed
	}
	return tok, nil
}

// decodeHeader reads a JOSE header. Member names are matched exactly, as
// RFC 7515 section 4 requires (encoding/json would also take "ALG" for
// "alg"), and a name given twice is refused rather than resolved.
func decodeHeader(data []byte) (jwsHeader, error) {
	var h jwsHeader
	members, err := decodeObject(data, errHeaderMalformed)
	if err != nil {
		return h, err
	}
	alg, ok := members["alg"].(string)
	if !ok || alg == "" {
		return h, errHeaderMalformed
	}
	h.Alg = alg
	if kid, present := members["kid"]; present {
		if h.Kid, ok = kid.(string); !ok {
			return h, errHeaderMalformed
		}
	}
	if _, present := members["crit"]; present {
		// no extension is understood here, so any crit must be refused
		// (RFC 7515 section 4.1.11); an empty or null list is invalid too
		return h, errCritUnsupported
	}
	return h, nil
}

// decodeClaims reads a JWT claims set (RFC 7519 section 7.2, step 10).
func decodeClaims(data []byte) (map[string]any, error) {
	return decodeObject(data, errClaimsMalformed)
}

// decodeObject decodes exactly one JSON object, numbers kept as
// json.Number. Trailing data is refused, and so is a member name given
// twice in any object at any depth, escaped spellings included: parsers
// disagree on which copy wins (RFC 7515 section 4, RFC 7519 section 4),
// and the upstream may parse the token too.
func decodeObject(data []byte, malformed error) (map[string]any, error) {
	if !json.Valid(data) {
		return nil, malformed
	}
	var out map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil || out == nil {
		return nil, malformed
	}
	if hasDuplicateNames(data) {
		return nil, errDuplicateMember
	}
	return out, nil
}

// hasDuplicateNames reports whether any object in data names a member
// twice. data must already be known to be valid JSON. Names are compared
// after unescaping, the way encoding/json decodes them, so "\u0061lg"
// and "alg" are the same name.
func hasDuplicateNames(data []byte) bool {
	// the names of every open object sit in one list, each object's from
	// its first index on; tokens of the usual size need no allocation
	var stackSpace [8]jsonContainer
	var nameSpace [32][]byte
	stack, names := stackSpace[:0], nameSpace[:0]
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '{', '[':
			stack = append(stack, jsonContainer{object: c == '{', expectKey: c == '{', first: len(names)})
		case '}', ']':
			names = names[:stack[len(stack)-1].first]
			stack = stack[:len(stack)-1]
		case ',':
			if top := len(stack) - 1; top >= 0 && stack[top].object {
				stack[top].expectKey = true
			}
		case '"':
			start := i
			plain := true
			for i++; data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
					plain = false
				} else if data[i] >= 0x80 {
					plain = false
				}
			}
			top := len(stack) - 1
			if top < 0 || !stack[top].expectKey {
				continue
			}
			obj := &stack[top]
			obj.expectKey = false
			name := data[start+1 : i]
			if !plain {
				// unescape, and replace invalid UTF-8 as encoding/json does
				var unquoted string
				_ = json.Unmarshal(data[start:i+1], &unquoted)
				name = []byte(unquoted)
			}
			if obj.set != nil {
				if _, dup := obj.set[string(name)]; dup {
					return true
				}
				obj.set[string(name)] = struct{}{}
				continue
			}
			for _, n := range names[obj.first:] {
				if bytes.Equal(n, name) {
					return true
				}
			}
			names = append(names, name)
			if len(names)-obj.first > 32 {
				// only a hostile token has objects this large: a map keeps
				// the check linear
				obj.set = make(map[string]struct{}, 2*(len(names)-obj.first))
				for _, n := range names[obj.first:] {
					obj.set[string(n)] = struct{}{}
				}
				names = names[:obj.first]
			}
		}
	}
	return false
}

// jsonContainer is an object or array open during hasDuplicateNames.
type jsonContainer struct {
	object    bool
	expectKey bool
	first     int                 // the object's first name in the list of names
	set       map[string]struct{} // the object's names, once there are many
}

// verifySignature checks the token's signature with one key.
func verifySignature(tok *compactToken, alg string, key *verificationKey) bool {
	input := tok.signingInput
	switch pub := key.public.(type) {
	case *rsa.PublicKey:
		hash, digest := digestFor(alg, input)
		if strings.HasPrefix(alg, "PS") {
			// RFC 7518 section 3.5: the salt is as long as the hash
			opts := rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: hash}
			return rsa.VerifyPSS(pub, hash, digest, tok.signature, &opts) == nil
		}
		return rsa.VerifyPKCS1v15(pub, hash, digest, tok.signature) == nil
	case *ecdsa.PublicKey:
		_, digest := digestFor(alg, input)
		size := (pub.Curve.Params().BitSize + 7) / 8
		if len(tok.signature) != 2*size {
			return false
		}
		r, s := tok.signature[:size], tok.signature[size:]
		if isZero(r) || isZero(s) {
			return false
		}
		return ecdsa.VerifyASN1(pub, digest, encodeECDSASignature(r, s))
	case ed25519.PublicKey:
		return len(tok.signature) == ed25519.SignatureSize &&
			ed25519.Verify(pub, []byte(input), tok.signature)
	case hmacSecret:
		mac := hmac.New(hashFor(alg).New, pub)
		mac.Write([]byte(input))
		return subtle.ConstantTimeCompare(mac.Sum(nil), tok.signature) == 1
	}
	return false
}

// hmacSecret is a shared secret configured for an issuer; it never comes
// from a key set.
type hmacSecret []byte

func hashFor(alg string) crypto.Hash {
	switch alg[len(alg)-3:] {
	case "384":
		return crypto.SHA384
	case "512":
		return crypto.SHA512
	}
	return crypto.SHA256
}

func digestFor(alg, input string) (crypto.Hash, []byte) {
	switch h := hashFor(alg); h {
	case crypto.SHA384:
		sum := sha512.Sum384([]byte(input))
		return h, sum[:]
	case crypto.SHA512:
		sum := sha512.Sum512([]byte(input))
		return h, sum[:]
	default:
		sum := sha256.Sum256([]byte(input))
		return h, sum[:]
	}
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// encodeECDSASignature turns the fixed-size r||s of RFC 7518 section 3.4
// into the ASN.1 form crypto/ecdsa verifies.
func encodeECDSASignature(r, s []byte) []byte {
	r, s = asn1Integer(r), asn1Integer(s)
	body := 2 + len(r) + 2 + len(s)
	out := make([]byte, 0, body+3)
	out = append(out, 0x30)
	if body >= 0x80 {
		out = append(out, 0x81)
	}
	out = append(out, byte(body), 0x02, byte(len(r)))
	out = append(out, r...)
	out = append(out, 0x02, byte(len(s)))
	return append(out, s...)
}

// asn1Integer returns the minimal unsigned big-endian encoding of b,
// prefixed with a zero byte when the top bit is set.
func asn1Integer(b []byte) []byte {
	for len(b) > 1 && b[0] == 0 && b[1] < 0x80 {
		b = b[1:]
	}
	if b[0] >= 0x80 {
		return append([]byte{0}, b...)
	}
	return b
}

// numericDate reads a NumericDate claim (RFC 7519 section 2): a JSON
// number of seconds, finite, not negative and before year 10000.
func numericDate(claims map[string]any, name string) (seconds float64, present bool, ok bool) {
	v, present := claims[name]
	if !present {
		return 0, false, true
	}
	n, isNumber := v.(json.Number)
	if !isNumber {
		return 0, true, false
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 253402300799 {
		return 0, true, false
	}
	return f, true, true
}

// audiences reads aud, a string or an array of strings (RFC 7519
// section 4.1.3).
func audiences(claims map[string]any) ([]string, bool) {
	switch v := claims["aud"].(type) {
	case nil:
		_, present := claims["aud"]
		return nil, !present
	case string:
		return []string{v}, true
	case []any:
		out := make([]string, 0, len(v))
		for _, a := range v {
			s, ok := a.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}
