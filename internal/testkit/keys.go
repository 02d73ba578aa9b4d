package testkit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// ErrBadSignature is returned by VerifySignature when the signature does
// not match.
var ErrBadSignature = errors.New("signature does not verify")

// Key is a signing key with the identifiers a JWKS publishes for it.
type Key struct {
	// Kid is the key ID, published in the JWK and put in token headers.
	Kid string

	// Alg is the JWS algorithm the key signs with: RS256, RS384, RS512,
	// PS256, PS384 or PS512 for RSA keys, ES256 for P-256 keys, ES384
	// for P-384 keys, EdDSA for Ed25519 keys. It may be changed after
	// the key is made, to another algorithm of the same key type.
	Alg string

	// Private is a *rsa.PrivateKey, *ecdsa.PrivateKey or
	// ed25519.PrivateKey.
	Private crypto.Signer
}

// NewRSAKey returns a 2048-bit RSA key for RS256.
func NewRSAKey(kid string) (*Key, error) {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("rsa key %q: %w", kid, err)
	}
	return &Key{Kid: kid, Alg: "RS256", Private: priv}, nil
}

// NewECKey returns a P-256 key for ES256.
func NewECKey(kid string) (*Key, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ec key %q: %w", kid, err)
	}
	return &Key{Kid: kid, Alg: "ES256", Private: priv}, nil
}

// NewEdKey returns an Ed25519 key for EdDSA.
func NewEdKey(kid string) (*Key, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ed25519 key %q: %w", kid, err)
	}
	return &Key{Kid: kid, Alg: "EdDSA", Private: priv}, nil
}

// Public returns the public half of the key.
func (k *Key) Public() crypto.PublicKey {
	return k.Private.Public()
}

// PublicJWK returns the public key as a JWK (RFC 7517, RFC 7518 section 6,
// RFC 8037 for Ed25519) with kid, alg and "use": "sig". The map is fresh on
// every call, so a test may alter it to publish a hostile key.
func (k *Key) PublicJWK() map[string]any {
	jwk := map[string]any{"kid": k.Kid, "alg": k.Alg, "use": "sig"}
	switch pub := k.Public().(type) {
	case *rsa.PublicKey:
		jwk["kty"] = "RSA"
		jwk["n"] = encodeSegment(pub.N.Bytes())
		jwk["e"] = encodeSegment(big.NewInt(int64(pub.E)).Bytes())
	case *ecdsa.PublicKey:
		point, err := pub.ECDH()
		if err != nil {
			panic(fmt.Sprintf("testkit: key %q: %v", k.Kid, err))
		}
		// uncompressed point: 0x04 || X || Y, coordinates already padded
		raw := point.Bytes()[1:]
		size := len(raw) / 2
		jwk["kty"] = "EC"
		jwk["crv"] = pub.Curve.Params().Name
		jwk["x"] = encodeSegment(raw[:size])
		jwk["y"] = encodeSegment(raw[size:])
	case ed25519.PublicKey:
		jwk["kty"] = "OKP"
		jwk["crv"] = "Ed25519"
		jwk["x"] = encodeSegment(pub)
	default:
		panic(fmt.Sprintf("testkit: key %q: unsupported type %T", k.Kid, pub))
	}
	return jwk
}

// Claims returns the claims of an ordinary valid token: iss, aud, sub, iat
// now and exp ttl from now. Add or delete entries to shape a test case.
func Claims(issuer, audience, subject string, ttl time.Duration) map[string]any {
	now := time.Now()
	return map[string]any{
		"iss": issuer,
		"aud": audience,
		"sub": subject,
		"iat": now.Unix(),
		"exp": now.Add(ttl).Unix(),
	}
}

// Sign returns a compact JWS over claims with the header
// {"alg": key.Alg, "kid": key.Kid, "typ": "JWT"}.
func Sign(key *Key, claims map[string]any) (string, error) {
	header := map[string]any{"alg": key.Alg, "kid": key.Kid, "typ": "JWT"}
	return SignWithHeader(key, header, claims)
}

// SignWithHeader signs claims under a header the caller writes in full,
// which is how hostile tokens are made: a header alg that disagrees with
// the key, a jku or jwk pointing elsewhere, an unknown crit. The signature
// is always made with key.Alg. A nil key leaves the signature empty, as
// for "alg": "none".
func SignWithHeader(key *Key, header, claims map[string]any) (string, error) {
	h, err := json.Marshal(header)
	if err != nil {
		return "", fmt.Errorf("token header: %w", err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("token claims: %w", err)
	}
	return SignRaw(key, h, c)
}

// SignRaw signs header and payload bytes as given, for tokens whose JSON
// cannot be written as a map: duplicate members, a payload that is not an
// object, odd whitespace. A nil key leaves the signature empty.
func SignRaw(key *Key, header, payload []byte) (string, error) {
	input := encodeSegment(header) + "." + encodeSegment(payload)
	if key == nil {
		return input + ".", nil
	}
	sig, err := signInput(key, []byte(input))
	if err != nil {
		return "", err
	}
	return input + "." + encodeSegment(sig), nil
}

// SignHMAC returns a compact JWS made with a shared secret. The algorithm
// is header["alg"]: HS256, HS384 or HS512. With the bytes of a public key
// as the secret, this makes the classic algorithm-confusion token.
func SignHMAC(secret []byte, header, claims map[string]any) (string, error) {
	alg, _ := header["alg"].(string)
	hash, ok := hmacHashes[alg]
	if !ok {
		return "", fmt.Errorf("hmac: unsupported alg %q", alg)
	}
	h, err := json.Marshal(header)
	if err != nil {
		return "", fmt.Errorf("token header: %w", err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("token claims: %w", err)
	}
	input := encodeSegment(h) + "." + encodeSegment(c)
	mac := hmac.New(hash.New, secret)
	mac.Write([]byte(input))
	return input + "." + encodeSegment(mac.Sum(nil)), nil
}

var hmacHashes = map[string]crypto.Hash{
	"HS256": crypto.SHA256,
	"HS384": crypto.SHA384,
	"HS512": crypto.SHA512,
}

// signatureHashes maps the RSA and ECDSA algorithms to their digests
// (RFC 7518 section 3.1).
var signatureHashes = map[string]crypto.Hash{
	"RS256": crypto.SHA256, "RS384": crypto.SHA384, "RS512": crypto.SHA512,
	"PS256": crypto.SHA256, "PS384": crypto.SHA384, "PS512": crypto.SHA512,
	"ES256": crypto.SHA256, "ES384": crypto.SHA384, "ES512": crypto.SHA512,
}

func signInput(key *Key, input []byte) ([]byte, error) {
	switch priv := key.Private.(type) {
	case *rsa.PrivateKey:
		hash, ok := signatureHashes[key.Alg]
		if !ok || key.Alg[0] == 'E' {
			return nil, fmt.Errorf("key %q: alg %q is not an RSA algorithm", key.Kid, key.Alg)
		}
		digest := digest(hash, input)
		if strings.HasPrefix(key.Alg, "PS") {
			// RFC 7518 section 3.5: the salt is as long as the hash
			opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: hash}
			return rsa.SignPSS(rand.Reader, priv, hash, digest, opts)
		}
		return rsa.SignPKCS1v15(rand.Reader, priv, hash, digest)

	case *ecdsa.PrivateKey:
		hash, ok := signatureHashes[key.Alg]
		size := (priv.Curve.Params().BitSize + 7) / 8
		if !ok || key.Alg[0] != 'E' || hash.Size()*8 != curveHashBits(size) {
			return nil, fmt.Errorf("key %q: alg %q does not fit curve %s",
				key.Kid, key.Alg, priv.Curve.Params().Name)
		}
		r, s, err := ecdsa.Sign(rand.Reader, priv, digest(hash, input))
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", key.Kid, err)
		}
		// RFC 7518 section 3.4: R || S, each big-endian and left-padded
		// to the size of the curve order, not ASN.1
		sig := make([]byte, 2*size)
		r.FillBytes(sig[:size])
		s.FillBytes(sig[size:])
		return sig, nil

	case ed25519.PrivateKey:
		if key.Alg != "EdDSA" {
			return nil, fmt.Errorf("key %q: alg %q is not EdDSA", key.Kid, key.Alg)
		}
		return ed25519.Sign(priv, input), nil

	default:
		return nil, fmt.Errorf("key %q: unsupported private key type %T", key.Kid, priv)
	}
}

// curveHashBits is the digest size that goes with a curve whose order is
// size bytes long: P-256 with SHA-256, P-384 with SHA-384, P-521 with
// SHA-512.
func curveHashBits(size int) int {
	if size == 66 {
		return 512
	}
	return size * 8
}

// VerifySignature checks a JWS signature with the public key alone: no
// header, no claims. It is the reference the gateway's own checks are
// measured against, in tests and benchmarks. signingInput is the
// "header.payload" part of a compact token and signature the decoded third
// part.
func VerifySignature(alg string, pub crypto.PublicKey, signingInput, signature []byte) error {
	switch pub := pub.(type) {
	case *rsa.PublicKey:
		hash, ok := signatureHashes[alg]
		if !ok || alg[0] == 'E' {
			return fmt.Errorf("alg %q is not an RSA algorithm", alg)
		}
		var err error
		if strings.HasPrefix(alg, "PS") {
			opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: hash}
			err = rsa.VerifyPSS(pub, hash, digest(hash, signingInput), signature, opts)
		} else {
			err = rsa.VerifyPKCS1v15(pub, hash, digest(hash, signingInput), signature)
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		return nil

	case *ecdsa.PublicKey:
		hash, ok := signatureHashes[alg]
		size := (pub.Curve.Params().BitSize + 7) / 8
		if !ok || alg[0] != 'E' || hash.Size()*8 != curveHashBits(size) {
			return fmt.Errorf("alg %q does not fit curve %s", alg, pub.Curve.Params().Name)
		}
		if len(signature) != 2*size {
			return fmt.Errorf("%w: length %d, want %d", ErrBadSignature, len(signature), 2*size)
		}
		r := new(big.Int).SetBytes(signature[:size])
		s := new(big.Int).SetBytes(signature[size:])
		if !ecdsa.Verify(pub, digest(hash, signingInput), r, s) {
			return ErrBadSignature
		}
		return nil

	case ed25519.PublicKey:
		if alg != "EdDSA" {
			return fmt.Errorf("alg %q is not EdDSA", alg)
		}
		if !ed25519.Verify(pub, signingInput, signature) {
			return ErrBadSignature
		}
		return nil

	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
}

// VerifyToken checks the signature of a compact token with key, using
// key.Alg. It does not look at the header or the claims.
func VerifyToken(key *Key, token string) error {
	i := strings.LastIndexByte(token, '.')
	if i < 0 || strings.Count(token, ".") != 2 {
		return errors.New("not a compact JWS")
	}
	sig, err := DecodeSegment(token[i+1:])
	if err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	return VerifySignature(key.Alg, key.Public(), []byte(token[:i]), sig)
}

// DecodeSegment decodes one part of a compact token: base64url without
// padding (RFC 7515 section 2).
func DecodeSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(s)
}

func encodeSegment(b []byte) string {
	return base64.RawURLEncoding.EncodeToString(b)
}

func digest(hash crypto.Hash, data []byte) []byte {
	switch hash {
	case crypto.SHA256:
		sum := sha256.Sum256(data)
		return sum[:]
	case crypto.SHA384:
		sum := sha512.Sum384(data)
		return sum[:]
	default:
		sum := sha512.Sum512(data)
		return sum[:]
	}
}
