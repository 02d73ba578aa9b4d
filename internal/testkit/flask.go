// Package testkit starts the pieces that edge_guard is tested against: the
// example Flask API, a JWKS endpoint with failure controls, signing keys and
// tokens. Everything listens on 127.0.0.1 with kernel-picked ports.
//
// The core API returns errors and knows nothing about the testing package,
// so the demo command can use it too. Helpers that take a testing.TB are in
// tb.go.
package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Python is the interpreter the Flask app runs with. Debian's own
// interpreter is used on purpose: python3-flask and python3-flask-cors
// are installed for it, not for whatever python3 comes first on PATH.
const Python = "/usr/bin/python3"

// FlaskStartTimeout bounds how long StartFlask waits for the LISTENING
// line when the context has no earlier deadline.
const FlaskStartTimeout = 15 * time.Second

// ErrFlaskMissing reports that the interpreter, Flask or flask-cors is not
// installed. Test for it with errors.Is.
var ErrFlaskMissing = errors.New(
	"flask is not available: install Debian's python3-flask and python3-flask-cors")

// Flask is a running instance of the example API.
type Flask struct {
	// URL is the base URL, like http://127.0.0.1:41234, without a
	// trailing slash.
	URL string

	// Addr is the host:port the app listens on, the form reverse_proxy
	// takes as an upstream.
	Addr string

	cmd       *exec.Cmd
	stdin     io.WriteCloser
	stderr    *tailBuffer
	client    *http.Client
	exited    chan struct{}
	closeOnce sync.Once
}

// UpstreamRequest is one request as the Flask app received it.
type UpstreamRequest struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Query  string `json:"query"`

	// Headers are the request headers in the order and spelling WSGI
	// delivered them. WSGI folds "_" into "-" and merges repeated
	// headers into one comma-separated value, so this is what an
	// application behind the gateway actually sees.
	Headers [][2]string `json:"headers"`
}

// Header returns the values of every header called name. Names match
// case-insensitively and "_" matches "-", as they would in WSGI.
func (r UpstreamRequest) Header(name string) []string {
	want := headerKey(name)
	var values []string
	for _, h := range r.Headers {
		if headerKey(h[0]) == want {
			values = append(values, h[1])
		}
	}
	return values
}

func headerKey(name string) string {
	return strings.ReplaceAll(strings.ToLower(name), "_", "-")
}

// CheckFlask reports whether Python can import flask and flask_cors. The
// error wraps ErrFlaskMissing when it cannot.
func CheckFlask(ctx context.Context) error {
	if _, err := os.Stat(Python); err != nil {
		return fmt.Errorf("%s: %w", Python, ErrFlaskMissing)
	}
	cmd := exec.CommandContext(ctx, Python, "-c", "import flask, flask_cors")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w (%s)", ErrFlaskMissing, lastLine(out))
	}
	return nil
}

// StartFlask runs the Flask app at appPath on 127.0.0.1 with a port the
// kernel picks, and returns once it listens. ctx bounds the start only:
// the app keeps running until Close. If the app has not announced its
// address within FlaskStartTimeout (or the ctx deadline), it is killed and
// an error with its last output is returned.
func StartFlask(ctx context.Context, appPath string) (*Flask, error) {
	if _, err := os.Stat(Python); err != nil {
		return nil, fmt.Errorf("%s: %w", Python, ErrFlaskMissing)
	}
	if _, err := os.Stat(appPath); err != nil {
		return nil, fmt.Errorf("flask app: %w", err)
	}

	cmd := exec.Command(Python, appPath,
		"--host", "127.0.0.1", "--port", "0", "--exit-with-stdin")
	cmd.Dir = filepath.Dir(appPath)
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	// own process group, so Close also ends anything the app spawned
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	f := &Flask{
		cmd:    cmd,
		stderr: &tailBuffer{max: 64 << 10},
		client: loopbackClient(),
		exited: make(chan struct{}),
	}
	// the app exits when this pipe closes, which also happens when this
	// process dies without calling Close: its own process group shields
	// it from the terminal's signals
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("flask app: %w", err)
	}
	f.stdin = stdin

	// the first stdout line is the address; later output is dropped
	listening := &lineWatcher{prefix: "LISTENING ", found: make(chan string, 1)}
	cmd.Stdout = listening
	cmd.Stderr = f.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("flask app: %w", err)
	}
	go func() {
		_ = cmd.Wait()
		close(f.exited)
	}()

	timeout := time.NewTimer(FlaskStartTimeout)
	defer timeout.Stop()
	select {
	case line := <-listening.found:
		raw := strings.TrimSpace(strings.TrimPrefix(line, "LISTENING "))
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			f.Close()
			return nil, fmt.Errorf("flask app: bad address line %q", line)
		}
		f.URL = strings.TrimSuffix(raw, "/")
		f.Addr = u.Host
		return f, nil
	case <-f.exited:
		out := f.stderr.String()
		if missingModule(out) {
			return nil, fmt.Errorf("%w (%s)", ErrFlaskMissing, lastLine([]byte(out)))
		}
		return nil, fmt.Errorf("flask app exited before listening: %s", lastLines(out, 10))
	case <-timeout.C:
		f.Close()
		return nil, fmt.Errorf("flask app: no LISTENING line after %s: %s",
			FlaskStartTimeout, lastLines(f.stderr.String(), 10))
	case <-ctx.Done():
		f.Close()
		return nil, fmt.Errorf("flask app: %w", ctx.Err())
	}
}

// Requests returns every request the app received since it started or
// since the last Reset, oldest first. The record endpoints themselves are
// not included.
func (f *Flask) Requests() ([]UpstreamRequest, error) {
	resp, err := f.client.Get(f.URL + "/_edgeguard/requests")
	if err != nil {
		return nil, fmt.Errorf("reading flask request record: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading flask request record: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading flask request record: status %d", resp.StatusCode)
	}
	var reqs []UpstreamRequest
	if err := json.Unmarshal(body, &reqs); err != nil {
		return nil, fmt.Errorf("reading flask request record: %w", err)
	}
	return reqs, nil
}

// Reset empties the app's request record.
func (f *Flask) Reset() error {
	resp, err := f.client.Post(f.URL+"/_edgeguard/reset", "", nil)
	if err != nil {
		return fmt.Errorf("resetting flask request record: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("resetting flask request record: status %d", resp.StatusCode)
	}
	return nil
}

// Log returns the tail of the app's stderr: the access log and any
// traceback. Handy in a failure message.
func (f *Flask) Log() string {
	return f.stderr.String()
}

// Close stops the app and its process group and waits for it to exit. It
// is safe to call more than once.
func (f *Flask) Close() {
	f.closeOnce.Do(func() {
		defer f.client.CloseIdleConnections()
		select {
		case <-f.exited:
			return // the group is gone; its id may belong to someone else
		default:
		}
		pid := f.cmd.Process.Pid
		_ = f.stdin.Close()
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		select {
		case <-f.exited:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-f.exited
		}
	})
}

// RepoRoot returns the root of the edgeguard checkout: the nearest parent
// of the working directory, or else of this source file, whose go.mod
// declares the edgeguard module.
func RepoRoot() (string, error) {
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	for _, dir := range starts {
		for {
			mod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
			if err == nil && bytes.HasPrefix(bytes.TrimSpace(mod),
				[]byte("module github.com/edgeguard/edgeguard\n")) {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", errors.New("edgeguard checkout not found above the working directory")
}

// FlaskAppPath returns the path of examples/flask-api/app.py in the
// checkout.
func FlaskAppPath() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "examples", "flask-api", "app.py"), nil
}

// loopbackClient never uses a proxy: everything testkit talks to is on
// 127.0.0.1.
func loopbackClient() *http.Client {
	return &http.Client{
		Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 4},
		Timeout:   10 * time.Second,
	}
}

// missingModule reports whether a Python traceback says that Flask, its
// CORS extension or Werkzeug is not installed.
func missingModule(stderr string) bool {
	for _, m := range []string{"flask", "flask_cors", "werkzeug"} {
		if strings.Contains(stderr, "No module named '"+m+"'") {
			return true
		}
	}
	return false
}

// lineWatcher sends the first output line that starts with prefix.
type lineWatcher struct {
	prefix string
	found  chan string

	mu   sync.Mutex
	line []byte
	done bool
}

func (w *lineWatcher) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, c := range p {
		if w.done {
			break
		}
		if c != '\n' {
			if len(w.line) < 4096 {
				w.line = append(w.line, c)
			}
			continue
		}
		line := strings.TrimRight(string(w.line), "\r")
		w.line = w.line[:0]
		if strings.HasPrefix(line, w.prefix) {
			w.found <- line
			w.done = true
		}
	}
	return len(p), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

func lastLine(out []byte) string {
	return lastLines(string(out), 1)
}

func lastLines(out string, n int) string {
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
