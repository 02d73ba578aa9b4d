package caddymodule

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// minRSABits is the smallest RSA modulus accepted for verification
// (RFC 7518 section 3.3 asks for 2048 or more).
const minRSABits = 2048

// verificationKey is one public key from a key set, converted once so that
// checking a signature needs no further parsing.
type verificationKey struct {
	kid    string
	alg    string // from the JWK; "" when the JWK names none
	public any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// keySet is an immutable snapshot of an issuer's keys.
type keySet struct {
	byKid map[string][]*verificationKey
	all   []*verificationKey
}

// fits reports whether the key may verify a token signed with alg: the
// key type and curve must match the algorithm family, and a key that names
// its own algorithm is used for that algorithm only (RFC 7517 section 4.4).
func (k *verificationKey) fits(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch pub := k.public.(type) {
	case *rsa.PublicKey:
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return true
		}
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return pub.Curve == elliptic.P256()
		case "ES384":
			return pub.Curve == elliptic.P384()
		case "ES512":
			return pub.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// lookup returns the keys that may verify a token with this kid and alg.
// A token without kid may be checked against every fitting key; callers
// bound how many they try.
func (s *keySet) lookup(kid, alg string) []*verificationKey {
	candidates := s.all
	if kid != "" {
		candidates = s.byKid[kid]
	}
	n := 0
	for _, k := range candidates {
		if k.fits(alg) {
			n++
		}
	}
	if n == len(candidates) {
		return candidates
	}
	fitting := make([]*verificationKey, 0, n)
	for _, k := range candidates {
		if k.fits(alg) {
			fitting = append(fitting, k)
		}
	}
	return fitting
}

// hasKid reports whether the set holds a key with this kid.
func (s *keySet) hasKid(kid string) bool {
	_, ok := s.byKid[kid]
	return ok
}

// ErrNoUsableKeys is returned for a key set document that parses but holds
// no key that could verify a signature.
var ErrNoUsableKeys = errors.New("key set holds no usable signing key")

// parseKeySet converts a JWKS document. Keys that cannot verify
// signatures (use=enc, symmetric keys, unknown types, weak RSA) are
// skipped and reported in skipped; the set fails only when nothing usable
// remains or the document itself is malformed.
func parseKeySet(data []byte) (set *keySet, skipped []string, err error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("key set is not a JSON Web Key Set: %w", err)
	}
	if doc.Keys == nil {
		return nil, nil, errors.New(`key set has no "keys" member`)
	}

	set = &keySet{byKid: make(map[string][]*verificationKey)}
	for i, raw := range doc.Keys {
		key, why := convertKey(raw)
		if key == nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %s", i, why))
			continue
		}
		set.all = append(set.all, key)
		if key.kid != "" {
			set.byKid[key.kid] = append(set.byKid[key.kid], key)
		}
	}
	if len(set.all) == 0 {
		return nil, skipped, ErrNoUsableKeys
	}
	return set, skipped, nil
}

// convertKey turns one JWK into a verification key, or says why not.
func convertKey(raw json.RawMessage) (*verificationKey, string) {
	key, err := jwk.ParseKey(raw)
	if err != nil {
		return nil, "unparseable: " + err.Error()
	}
	if use := key.KeyUsage(); use != "" && use != string(jwk.ForSignature) {
		return nil, "use is " + use + ", not sig"
	}
	if ops := key.KeyOps(); len(ops) > 0 {
		verify := false
		for _, op := range ops {
			verify = verify || op == jwk.KeyOpVerify
		}
		if !verify {
			return nil, "key_ops does not include verify"
		}
	}

	var public any
	switch key.(type) {
	case jwk.RSAPublicKey, jwk.RSAPrivateKey, jwk.ECDSAPublicKey, jwk.ECDSAPrivateKey,
		jwk.OKPPublicKey, jwk.OKPPrivateKey:
		public, err = jwk.PublicRawKeyOf(key)
		if err != nil {
			return nil, "unusable: " + err.Error()
		}
	default:
		return nil, "key type " + key.KeyType().String() + " cannot verify signatures here"
	}

	vk := &verificationKey{kid: key.KeyID(), public: public}
	if alg := key.Algorithm(); alg != nil {
		vk.alg = alg.String()
	}
	switch pub := public.(type) {
	case *rsa.PublicKey:
		if pub.N.BitLen() < minRSABits {
			return nil, fmt.Sprintf("RSA key of %d bits is too small", pub.N.BitLen())
		}
	case *ecdsa.PublicKey:
	case ed25519.PublicKey:
	default:
		return nil, fmt.Sprintf("unsupported public key %T", public)
	}
	if vk.alg != "" && !supportedAlgorithms[vk.alg] {
		return nil, "alg " + vk.alg + " is not a signature algorithm this gateway verifies"
	}
	return vk, ""
}
