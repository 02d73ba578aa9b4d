package caddymodule

import "sync"

// defaultTokenCacheSize is how many verified tokens a route remembers.
// With tokens capped at MaxTokenBytes this bounds the cache's memory.
const defaultTokenCacheSize = 10000

// tokenCache remembers verified tokens, so that the usual browser session,
// which sends the same token again and again, costs one signature check.
// An entry is used no longer than its token's exp and is ignored once its
// issuer's key set changes (identity.stillValid).
type tokenCache struct {
	mu      sync.RWMutex
	entries map[string]*identity
	size    int
}

func newTokenCache(size int) *tokenCache {
	return &tokenCache{entries: make(map[string]*identity, min(size, 1024)), size: size}
}

func (c *tokenCache) get(token string) *identity {
	if c.size <= 0 {
		return nil
	}
	c.mu.RLock()
	id := c.entries[token]
	c.mu.RUnlock()
	return id
}

// put stores an identity, first making room when the cache is full:
// expired entries go, then an arbitrary eighth of the rest (Go's map
// order is random enough that no token can count on staying).
func (c *tokenCache) put(token string, id *identity, now float64) {
	if c.size <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.size {
		for k, e := range c.entries {
			if e.expires != 0 && e.expires <= now {
				delete(c.entries, k)
			}
		}
	}
	if len(c.entries) >= c.size {
		drop := max(c.size/8, 1)
		for k := range c.entries {
			if drop == 0 {
				break
			}
			delete(c.entries, k)
			drop--
		}
	}
	c.entries[token] = id
}

func (c *tokenCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.entries)
}
