package caddymodule

import (
	"io"
	"net/http"

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
	rw.ResponseWriter.WriteHeader(status)
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
