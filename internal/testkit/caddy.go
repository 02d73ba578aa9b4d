package testkit

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter
)

// Gateway is Caddy running in this process on a loopback port.
type Gateway struct {
	// URL is the gateway's base URL, http://127.0.0.1:<port>.
	URL string
	// Addr is host:port.
	Addr string
	// Config is the JSON config Caddy runs.
	Config []byte

	state string
}

// AdaptCaddyfile turns a Caddyfile into Caddy's JSON config. Environment
// placeholders ({$NAME}) are read from env first, then the process.
func AdaptCaddyfile(caddyfile []byte, filename string, env map[string]string) ([]byte, error) {
	// the adapter reads {$NAME} from the process environment; what is set
	// for one adapt is put back afterwards, so that a later test's
	// defaults ({$NAME:default}) are not another test's leftovers
	for name, value := range env {
		old, had := os.LookupEnv(name)
		os.Setenv(name, value)
		if had {
			defer os.Setenv(name, old)
		} else {
			defer os.Unsetenv(name)
		}
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		return nil, errors.New("testkit: the caddyfile adapter is not registered")
	}
	raw, _, err := adapter.Adapt(caddyfile, map[string]any{"filename": filename})
	return raw, err
}

// StartGateway loads a Caddyfile into Caddy in this process. The site must
// listen on {$EDGEGUARD_BIND}:{$EDGEGUARD_PORT}; both are set here, to
// 127.0.0.1 and a port the kernel picked, and env adds the rest. Caddy
// keeps one config per process: stop the gateway before starting another.
func StartGateway(caddyfile []byte, filename string, env map[string]string) (*Gateway, error) {
	state, err := os.MkdirTemp("", "edgeguard-gateway-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		vars := map[string]string{
			"EDGEGUARD_BIND":  "127.0.0.1",
			"EDGEGUARD_PORT":  strconv.Itoa(port),
			"XDG_DATA_HOME":   filepath.Join(state, "data"),
			"XDG_CONFIG_HOME": filepath.Join(state, "config"),
		}
		for k, v := range env {
			vars[k] = v
		}
		raw, err := AdaptCaddyfile(caddyfile, filename, vars)
		if err != nil {
			os.RemoveAll(state)
			return nil, err
		}
		cfg, err := quiet(raw, state)
		if err != nil {
			os.RemoveAll(state)
			return nil, err
		}
		if lastErr = caddy.Load(cfg, true); lastErr == nil {
			addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
			if err := waitListening(addr); err != nil {
				_ = caddy.Stop()
				os.RemoveAll(state)
				return nil, err
			}
			return &Gateway{URL: "http://" + addr, Addr: addr, Config: cfg, state: state}, nil
		}
		// the port may have been taken between picking and binding
		if !strings.Contains(lastErr.Error(), "address already in use") {
			break
		}
	}
	os.RemoveAll(state)
	return nil, fmt.Errorf("testkit: starting caddy: %w", lastErr)
}

// Reload loads a new Caddyfile into the running gateway, on the same port.
func (g *Gateway) Reload(caddyfile []byte, filename string, env map[string]string) error {
	_, port, _ := net.SplitHostPort(g.Addr)
	vars := map[string]string{"EDGEGUARD_BIND": "127.0.0.1", "EDGEGUARD_PORT": port}
	for k, v := range env {
		vars[k] = v
	}
	raw, err := AdaptCaddyfile(caddyfile, filename, vars)
	if err != nil {
		return err
	}
	cfg, err := quiet(raw, g.state)
	if err != nil {
		return err
	}
	if err := caddy.Load(cfg, true); err != nil {
		return err
	}
	g.Config = cfg
	return nil
}

// Stop unloads Caddy's config.
func (g *Gateway) Stop() {
	_ = caddy.Stop()
	os.RemoveAll(g.state)
}

// quiet keeps Caddy from persisting its config or writing outside state,
// and logs errors only unless EDGEGUARD_TEST_DEBUG is set.
func quiet(raw []byte, state string) ([]byte, error) {
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, err
	}
	admin, _ := cfg["admin"].(map[string]any)
	if admin == nil {
		admin = map[string]any{"disabled": true}
		cfg["admin"] = admin
	}
	admin["config"] = map[string]any{"persist": false}
	cfg["storage"] = map[string]any{"module": "file_system", "root": filepath.Join(state, "storage")}
	loopbackListeners(cfg)
	if _, set := cfg["logging"]; !set {
		level := "ERROR"
		if os.Getenv("EDGEGUARD_TEST_DEBUG") != "" {
			level = "DEBUG"
		}
		cfg["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{"level": level}}}
	}
	return json.Marshal(cfg)
}

// loopbackListeners puts every server that would listen on all
// interfaces (":8080", the form a site address without a host or with a
// placeholder host adapts to) on 127.0.0.1 instead: tests and the demo
// listen on loopback only.
func loopbackListeners(cfg map[string]any) {
	apps, _ := cfg["apps"].(map[string]any)
	httpApp, _ := apps["http"].(map[string]any)
	servers, _ := httpApp["servers"].(map[string]any)
	for _, srv := range servers {
		server, _ := srv.(map[string]any)
		listen, _ := server["listen"].([]any)
		for i, l := range listen {
			addr, _ := l.(string)
			network, hostport, found := strings.Cut(addr, "/")
			if !found {
				network, hostport = "", addr
			}
			if strings.HasPrefix(hostport, ":") {
				hostport = "127.0.0.1" + hostport
				if network != "" {
					hostport = network + "/" + hostport
				}
				listen[i] = hostport
			}
		}
	}
}

func waitListening(addr string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testkit: caddy does not listen on %s: %w", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
