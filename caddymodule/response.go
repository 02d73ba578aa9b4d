package caddymodule

import (
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// responseWriter puts the gateway's CORS headers on the upstream's
// response: at the moment the status line is written, every
// Access-Control-* header the upstream set is removed and the route's own
// are added. Informational responses (1xx other than 101) are stripped
// too, since they reach the browser's network stack as well.
type responseWriter struct {
	caddyhttp.ResponseWriterWrapper
	cors        *CORS
	origin      string
	wroteHeader bool
}

func (rw *responseWriter) WriteHeader(status int) {
	if rw.wroteHeader {
		rw.ResponseWriter.WriteHeader(status)
		return
	}
	h := rw.Header()
	stripCORSHeaders(h)
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		rw.ResponseWriter.WriteHeader(status)
		return
	}
	rw.wroteHeader = true
	rw.cors.decorate(h, rw.origin, false)
	if _, ok := h["Trailer"]; ok {
		dropCORSTrailers(h)
	}
	rw.ResponseWriter.WriteHeader(status)
}

// finish removes Access-Control-* trailers the upstream added after the
// body (http.TrailerPrefix keys), which would otherwise be sent at the end
// of a chunked response. Browsers do not read trailers today (Fetch,
// "response trailer"), but the gateway promises that no upstream CORS
// field reaches them at all.
func (rw *responseWriter) finish() {
	if !rw.wroteHeader {
		return
	}
	h := rw.Header()
	for name := range h {
		if len(name) > len(http.TrailerPrefix) && name[:len(http.TrailerPrefix)] == http.TrailerPrefix &&
			isCORSHeader(name[len(http.TrailerPrefix):]) {
			delete(h, name)
		}
	}
}

// dropCORSTrailers removes Access-Control-* names from the Trailer
// header, so that values set after the body under those names are not
// sent (RFC 9110 section 6.6.2).
func dropCORSTrailers(h http.Header) {
	var kept []string
	changed := false
	for _, v := range h["Trailer"] {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.TrimSpace(name)
			if name == "" || isCORSHeader(name) {
				changed = true
				continue
			}
			kept = append(kept, name)
		}
	}
	if !changed {
		return
	}
	if len(kept) == 0 {
		delete(h, "Trailer")
		return
	}
	h["Trailer"] = []string{strings.Join(kept, ", ")}
}

func (rw *responseWriter) Write(p []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriter.Write(p)
}

// ReadFrom keeps the fast copy path of the underlying writer while making
// sure the headers were rewritten first.
func (rw *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError lets http.ResponseController flush streamed responses; a
// flush before any write commits the headers, so they are rewritten first.
func (rw *responseWriter) FlushError() error {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(rw.ResponseWriter).Flush()
}

// Flush is FlushError for callers that use http.Flusher.
func (rw *responseWriter) Flush() { _ = rw.FlushError() }

// Interface guards
var (
	_ http.Flusher  = (*responseWriter)(nil)
	_ io.ReaderFrom = (*responseWriter)(nil)
)
