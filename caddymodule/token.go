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
// x5u, jwk and x5c are deliberately absent: keys come only from the
// configured key set, never from the token that wants to be trusted.
type jwsHeader struct {
	Alg  string           `json:"alg"`
	Kid  string           `json:"kid"`
	Crit *json.RawMessage `json:"crit"`
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
	dots := strings.Count(raw, ".")
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
	if err := decodeObject(headerJSON, &tok.header); err != nil {
		return nil, err
	}
	if tok.header.Crit != nil {
		// no extension is understood here, so any crit must be refused
		// (RFC 7515 section 4.1.11); an empty list is invalid too
		return nil, errCritUnsupported
	}
	claimsJSON, err := b64.DecodeString(encodedClaims)
	if err != nil {
		return nil, errClaimsMalformed
	}
	if err := decodeClaims(claimsJSON, &tok.claims); err != nil {
		return nil, err
	}
	if tok.signature, err = b64.DecodeString(encodedSig); err != nil {
		return nil, errTokenMalformed
	}
	return tok, nil
}

// decodeObject decodes a JOSE header and refuses duplicate member names,
// which RFC 7515 section 4 requires of a parser or must be rejected.
func decodeObject(data []byte, v *jwsHeader) error {
	if err := json.Unmarshal(data, v); err != nil {
		return errHeaderMalformed
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(data, &members); err != nil {
		return errHeaderMalformed
	}
	if n, ok := countMembers(data); !ok || n != len(members) {
		return errDuplicateMember
	}
	return nil
}

func decodeClaims(data []byte, claims *map[string]any) error {
	// Valid also refuses trailing data after the object
	if !json.Valid(data) {
		return errClaimsMalformed
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(claims); err != nil || *claims == nil {
		return errClaimsMalformed
	}
	if n, ok := countMembers(data); !ok || n != len(*claims) {
		return errDuplicateMember
	}
	return nil
}

// countMembers counts the members of the top-level JSON object in data,
// which must already be known to be valid JSON. Compared with the size of
// the decoded map it reveals duplicate names, escaped spellings included.
func countMembers(data []byte) (int, bool) {
	depth, count := 0, 0
	expectKey := false
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '{', '[':
			depth++
			expectKey = depth == 1 && c == '{'
		case '}', ']':
			depth--
		case ',':
			expectKey = depth == 1
		case '"':
			if expectKey {
				count++
				expectKey = false
			}
			for i++; i < len(data) && data[i] != '"'; i++ {
				if data[i] == '\\' {
					i++
				}
			}
		}
	}
	return count, depth == 0
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
