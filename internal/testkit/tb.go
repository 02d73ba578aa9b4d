package testkit

import (
	"context"
	"testing"
)

// MustStartFlask starts the example Flask app for a test and stops it when
// the test ends. A missing Flask fails the test with the install hint.
func MustStartFlask(tb testing.TB) *Flask {
	tb.Helper()
	path, err := FlaskAppPath()
	if err != nil {
		tb.Fatal(err)
	}
	f, err := StartFlask(context.Background(), path)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(f.Close)
	return f
}

// MustRequests returns the Flask app's request record or fails the test.
func MustRequests(tb testing.TB, f *Flask) []UpstreamRequest {
	tb.Helper()
	reqs, err := f.Requests()
	if err != nil {
		tb.Fatalf("%v\nflask log:\n%s", err, lastLines(f.Log(), 20))
	}
	return reqs
}

// MustReset empties the Flask app's request record or fails the test.
func MustReset(tb testing.TB, f *Flask) {
	tb.Helper()
	if err := f.Reset(); err != nil {
		tb.Fatal(err)
	}
}

// StartJWKS starts a key endpoint for a test and closes it when the test
// ends.
func StartJWKS(tb testing.TB, keys ...*Key) *JWKSServer {
	tb.Helper()
	s := NewJWKSServer(keys...)
	tb.Cleanup(s.Close)
	return s
}

// MustRSAKey returns NewRSAKey(kid) or fails the test.
func MustRSAKey(tb testing.TB, kid string) *Key {
	tb.Helper()
	return mustKey(tb)(NewRSAKey(kid))
}

// MustECKey returns NewECKey(kid) or fails the test.
func MustECKey(tb testing.TB, kid string) *Key {
	tb.Helper()
	return mustKey(tb)(NewECKey(kid))
}

// MustEdKey returns NewEdKey(kid) or fails the test.
func MustEdKey(tb testing.TB, kid string) *Key {
	tb.Helper()
	return mustKey(tb)(NewEdKey(kid))
}

func mustKey(tb testing.TB) func(*Key, error) *Key {
	return func(k *Key, err error) *Key {
		tb.Helper()
		if err != nil {
			tb.Fatal(err)
		}
		return k
	}
}

// MustSign returns Sign(key, claims) or fails the test.
func MustSign(tb testing.TB, key *Key, claims map[string]any) string {
	tb.Helper()
	token, err := Sign(key, claims)
	if err != nil {
		tb.Fatal(err)
	}
	return token
}

// MustSignWithHeader returns SignWithHeader(key, header, claims) or fails
// the test.
func MustSignWithHeader(tb testing.TB, key *Key, header, claims map[string]any) string {
	tb.Helper()
	token, err := SignWithHeader(key, header, claims)
	if err != nil {
		tb.Fatal(err)
	}
	return token
}

// MustFreePort returns FreePort() or fails the test.
func MustFreePort(tb testing.TB) int {
	tb.Helper()
	port, err := FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	return port
}
