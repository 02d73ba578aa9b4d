package testkit

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// KeyTrap is a loopback server standing where a hostile token's jku or
// x5u points: it would hand out the attacker's key set, and a gateway
// that follows such a pointer shows up in Hits.
type KeyTrap struct {
	URL  string
	hits atomic.Int64
}

// Hits is how many requests the trap received.
func (k *KeyTrap) Hits() int64 { return k.hits.Load() }

// StartKeyTrap starts a trap that serves key's public JWK; it stops with
// the test.
func StartKeyTrap(tb testing.TB, key *Key) *KeyTrap {
	tb.Helper()
	trap := &KeyTrap{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trap.hits.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []any{key.PublicJWK()}})
	}))
	tb.Cleanup(srv.Close)
	trap.URL = srv.URL
	return trap
}

// MustSelfSignedDER returns a self-signed certificate for key, DER
// encoded, valid for an hour either side of now: what an x5c header
// would carry.
func MustSelfSignedDER(tb testing.TB, key *Key, commonName string) []byte {
	tb.Helper()
	template := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: commonName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, template, template, key.Public(), key.Private)
	if err != nil {
		tb.Fatal(err)
	}
	return der
}
