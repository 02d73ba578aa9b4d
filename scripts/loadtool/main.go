// Command loadtool prepares and serves what scripts/load measures: a key
// set with many pre-minted RS256 tokens, a static upstream that also
// publishes the key set, and free loopback ports for Caddy.
//
//	loadtool port
//	loadtool mint -dir DIR -issuer ISS -audience AUD -n N
//	loadtool upstream -jwks FILE -addr-file FILE [-lifetime D]
//
// Everything listens on 127.0.0.1 only.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadtool port | mint | upstream [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "port":
		err = port()
	case "mint":
		err = mint(os.Args[2:])
	case "upstream":
		err = upstream(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtool:", err)
		os.Exit(1)
	}
}

// port prints a port the kernel picked on 127.0.0.1, for Caddy, which
// must be told its port.
func port() error {
	p, err := testkit.FreePort()
	if err != nil {
		return err
	}
	fmt.Println(p)
	return nil
}

// mint writes DIR/jwks.json (the public key set), DIR/token (one token)
// and DIR/tokens (n distinct tokens, one a line, each with its own
// subject), all RS256 with one 2048-bit key and valid for a day.
func mint(args []string) error {
	fs := flag.NewFlagSet("mint", flag.ExitOnError)
	dir := fs.String("dir", "", "output directory")
	issuer := fs.String("issuer", "", "iss of the tokens")
	audience := fs.String("audience", "items-api", "aud of the tokens")
	n := fs.Int("n", 100000, "how many distinct tokens")
	_ = fs.Parse(args)
	if *dir == "" || *issuer == "" || *n < 1 {
		return errors.New("mint: -dir, -issuer and a positive -n are required")
	}

	key, err := testkit.NewRSAKey("load-1")
	if err != nil {
		return err
	}
	jwks, err := json.Marshal(map[string]any{"keys": []any{key.PublicJWK()}})
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*dir, "jwks.json"), jwks, 0o644); err != nil {
		return err
	}
	sign := func(subject string) (string, error) {
		claims := testkit.Claims(*issuer, *audience, subject, 24*time.Hour)
		claims["roles"] = []string{"reader"}
		claims["scope"] = "items:read"
		return testkit.Sign(key, claims)
	}
	one, err := sign("load-user")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(*dir, "token"), []byte(one+"\n"), 0o644); err != nil {
		return err
	}

	// one RSA signature takes about a millisecond: use every core
	tokens := make([]string, *n)
	errs := make(chan error, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	workers := runtime.GOMAXPROCS(0)
	for w := range workers {
		wg.Go(func() {
			for i := w; i < *n; i += workers {
				t, err := sign("user-" + strconv.Itoa(i))
				if err != nil {
					errs <- err
					return
				}
				tokens[i] = t
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}

	f, err := os.Create(filepath.Join(*dir, "tokens"))
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, t := range tokens {
		w.WriteString(t)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// upstream serves the key set at /jwks.json and a small JSON answer, with
// the wildcard CORS headers a flask-cors API sends, everywhere else. It
// writes its address to -addr-file once it listens and stops on SIGINT,
// SIGTERM, or after -lifetime.
func upstream(args []string) error {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	jwksFile := fs.String("jwks", "", "key set to publish at /jwks.json")
	addrFile := fs.String("addr-file", "", "where to write host:port")
	lifetime := fs.Duration("lifetime", 30*time.Minute, "stop after this long")
	_ = fs.Parse(args)
	if *jwksFile == "" || *addrFile == "" {
		return errors.New("upstream: -jwks and -addr-file are required")
	}
	jwks, err := os.ReadFile(*jwksFile)
	if err != nil {
		return err
	}

	body := []byte(`{"items":[{"id":1,"name":"widget"}]}` + "\n")
	length := strconv.Itoa(len(body))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /jwks.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwks)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		h["Access-Control-Allow-Origin"] = []string{"*"}
		_, _ = w.Write(body)
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	if err := os.WriteFile(*addrFile, []byte(ln.Addr().String()), 0o644); err != nil {
		ln.Close()
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *lifetime)
	defer cancel()
	go func() {
		<-ctx.Done()
		shutdown, done := context.WithTimeout(context.Background(), 2*time.Second)
		defer done()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
