package edgeguard_test

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/edgeguard/edgeguard/internal/testkit"
)

// The compose file cannot be run here (no container engine), so these
// tests load it the way docker compose does and check its wiring against
// the gateway's Caddyfile, the Dockerfiles and the files it mounts.

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	root, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	details := types.ConfigDetails{
		WorkingDir:  root,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(root, "docker-compose.yml")}},
		Environment: types.Mapping{},
	}
	project, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName("edgeguard", true)
		o.ResolvePaths = true
	})
	if err != nil {
		t.Fatalf("loading docker-compose.yml: %v", err)
	}
	return project
}

func composeService(t *testing.T, project *types.Project, name string) types.ServiceConfig {
	t.Helper()
	service, err := project.GetService(name)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return service
}

// mountSource returns the host path bound at target in the container.
func mountSource(t *testing.T, service types.ServiceConfig, target string) string {
	t.Helper()
	for _, v := range service.Volumes {
		if v.Target == target {
			if v.Type != types.VolumeTypeBind {
				t.Fatalf("service %s: %s is a %s mount, want a bind mount of a repository file", service.Name, target, v.Type)
			}
			if !v.ReadOnly {
				t.Errorf("service %s: %s is mounted writable, want read_only", service.Name, target)
			}
			if _, err := os.Stat(v.Source); err != nil {
				t.Fatalf("service %s: mounted file for %s: %v", service.Name, target, err)
			}
			return v.Source
		}
	}
	t.Fatalf("service %s: nothing is mounted at %s", service.Name, target)
	return ""
}

// serviceEnv is the service's environment, as the container gets it.
func serviceEnv(service types.ServiceConfig) map[string]string {
	env := make(map[string]string)
	for k, v := range service.Environment {
		if v != nil {
			env[k] = *v
		}
	}
	return env
}

// dockerfileCommand returns the exec-form CMD of the last stage, with
// ENTRYPOINT in front, and the last USER.
func dockerfileCommand(t *testing.T, path string) (command []string, user string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var entrypoint, cmd []string
	for _, line := range strings.Split(string(data), "\n") {
		keyword, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		var target *[]string
		switch strings.ToUpper(keyword) {
		case "FROM":
			entrypoint, cmd, user = nil, nil, ""
			continue
		case "USER":
			user = strings.TrimSpace(rest)
			continue
		case "ENTRYPOINT":
			target = &entrypoint
		case "CMD":
			target = &cmd
		default:
			continue
		}
		if err := json.Unmarshal([]byte(rest), target); err != nil {
			t.Fatalf("%s: %s is not in exec form: %v", path, keyword, err)
		}
	}
	return append(entrypoint, cmd...), user
}

func flagValue(args []string, name string) string {
	i := slices.Index(args, name)
	if i < 0 || i+1 >= len(args) {
		return ""
	}
	return args[i+1]
}

func isRootUser(user string) bool {
	name, _, _ := strings.Cut(user, ":")
	return name == "" || name == "0" || name == "root"
}

// adaptedGateway adapts the gateway's Caddyfile with the container's
// environment and returns Caddy's JSON config, decoded.
func adaptedGateway(t *testing.T, caddyfile string, env map[string]string) map[string]any {
	t.Helper()
	src, err := os.ReadFile(caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := testkit.AdaptCaddyfile(src, caddyfile, env)
	if err != nil {
		t.Fatalf("adapting %s: %v", caddyfile, err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// walk calls fn on every JSON object in v whose key has the given name.
func walk(v any, key string, fn func(any)) {
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			if k == key {
				fn(child)
			}
			walk(child, key, fn)
		}
	case []any:
		for _, child := range v {
			walk(child, key, fn)
		}
	}
}

func TestComposeGatewayIsTheOnlyWayIn(t *testing.T) {
	project := loadCompose(t)
	gateway := composeService(t, project, "gateway")
	api := composeService(t, project, "api")

	// the gateway's image runs Caddy on the Caddyfile the compose file mounts
	if gateway.Build == nil {
		t.Fatal("gateway: no build section")
	}
	command, imageUser := dockerfileCommand(t, filepath.Join(gateway.Build.Context, gateway.Build.Dockerfile))
	configPath := flagValue(command, "--config")
	if configPath == "" || !slices.Contains(command, "run") {
		t.Fatalf("gateway image command %q: want caddy run --config <Caddyfile>", command)
	}
	caddyfile := mountSource(t, gateway, configPath)
	env := serviceEnv(gateway)
	cfg := adaptedGateway(t, caddyfile, env)

	// published: exactly one port, to a port the gateway listens on
	if len(gateway.Ports) != 1 {
		t.Fatalf("gateway publishes %d ports, want 1: %+v", len(gateway.Ports), gateway.Ports)
	}
	published := gateway.Ports[0]
	var listens []string
	walk(cfg, "listen", func(v any) {
		for _, addr := range v.([]any) {
			_, port, _ := net.SplitHostPort(addr.(string))
			listens = append(listens, port)
		}
	})
	if !slices.Contains(listens, strconv.FormatUint(uint64(published.Target), 10)) {
		t.Errorf("gateway publishes container port %d; the Caddyfile listens on %q", published.Target, listens)
	}
	if published.Published == "" {
		t.Error("gateway port is not published on the host")
	}
	if len(api.Ports) != 0 {
		t.Errorf("api publishes %+v: the API must be reachable only through the gateway", api.Ports)
	}

	// every upstream the gateway proxies to is the api service, on the
	// port the API listens on
	apiCommand, apiImageUser := dockerfileCommand(t, filepath.Join(api.Build.Context, api.Build.Dockerfile))
	apiPort := flagValue(apiCommand, "--port")
	if flagValue(apiCommand, "--host") != "0.0.0.0" {
		t.Errorf("api command %q: must listen on every interface of its container", apiCommand)
	}
	if !slices.Contains([]string(api.Expose), apiPort) {
		t.Errorf("api listens on %s but exposes %q", apiPort, api.Expose)
	}
	dials := 0
	walk(cfg, "upstreams", func(v any) {
		for _, u := range v.([]any) {
			dial, _ := u.(map[string]any)["dial"].(string)
			host, port, err := net.SplitHostPort(dial)
			if err != nil || host != api.Name || port != apiPort {
				t.Errorf("gateway proxies to %q, want %s:%s", dial, api.Name, apiPort)
			}
			dials++
		}
	})
	if dials == 0 {
		t.Error("the gateway's Caddyfile proxies nowhere")
	}

	// the API is up before the gateway sends it traffic
	if dep, ok := gateway.DependsOn[api.Name]; !ok || dep.Condition != types.ServiceConditionHealthy {
		t.Errorf("gateway depends_on %+v, want %s: service_healthy", gateway.DependsOn, api.Name)
	}
	if api.HealthCheck == nil || len(api.HealthCheck.Test) == 0 {
		t.Fatal("api has no healthcheck")
	}
	probe := strings.Join(api.HealthCheck.Test, " ")
	if !strings.Contains(probe, "127.0.0.1:"+apiPort+"/") {
		t.Errorf("api healthcheck %q does not probe port %s", probe, apiPort)
	}

	// nobody runs as root
	for _, c := range []struct{ what, user string }{
		{"gateway service user", gateway.User}, {"gateway image USER", imageUser},
		{"api service user", api.User}, {"api image USER", apiImageUser},
	} {
		if isRootUser(c.user) {
			t.Errorf("%s is %q, want a non-root user", c.what, c.user)
		}
	}
	if !gateway.ReadOnly {
		t.Error("gateway root filesystem is writable, want read_only")
	}
}

func TestComposeKeySetIsMountedAndMatchesTheDemoKey(t *testing.T) {
	project := loadCompose(t)
	gateway := composeService(t, project, "gateway")
	command, _ := dockerfileCommand(t, filepath.Join(gateway.Build.Context, gateway.Build.Dockerfile))
	env := serviceEnv(gateway)
	cfg := adaptedGateway(t, mountSource(t, gateway, flagValue(command, "--config")), env)

	// every route reads its keys from a file the compose file mounts
	var keyFiles []string
	walk(cfg, "jwks_file", func(v any) { keyFiles = append(keyFiles, v.(string)) })
	if len(keyFiles) == 0 {
		t.Fatal("no route of the gateway's Caddyfile reads a mounted key set")
	}
	var jwksPath string
	for _, target := range keyFiles {
		jwksPath = mountSource(t, gateway, target)
	}
	var issuers []string
	walk(cfg, "issuer", func(v any) {
		if s, ok := v.(string); ok {
			issuers = append(issuers, s)
		}
	})
	for _, iss := range issuers {
		if iss != env["EDGEGUARD_ISSUER"] {
			t.Errorf("a route trusts issuer %q, the compose file sets %q", iss, env["EDGEGUARD_ISSUER"])
		}
	}

	// the mounted key set holds the public half of the demo signing key
	var set struct {
		Keys []struct{ Kty, Kid, Use, Alg, N, E string }
	}
	data, err := os.ReadFile(jwksPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &set); err != nil || len(set.Keys) != 1 {
		t.Fatalf("%s: want a key set with one key (err %v)", jwksPath, err)
	}
	key := set.Keys[0]
	if key.Kty != "RSA" || key.Use != "sig" || key.Alg != "RS256" || key.Kid == "" {
		t.Errorf("demo key %+v: want an RS256 signing key with a kid", key)
	}
	pemData, err := os.ReadFile(filepath.Join("deploy", "demo-signing-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemData)
	if block == nil {
		t.Fatal("deploy/demo-signing-key.pem: no PEM block")
	}
	private, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := base64.RawURLEncoding.DecodeString(key.N)
	if private.(*rsa.PrivateKey).PublicKey.N.Cmp(new(big.Int).SetBytes(n)) != 0 {
		t.Error("deploy/jwks.json does not hold the public half of deploy/demo-signing-key.pem")
	}
	mint, err := os.ReadFile(filepath.Join("deploy", "mint-demo-token"))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`"kid":"` + regexp.QuoteMeta(key.Kid) + `"`).Match(mint) {
		t.Errorf("deploy/mint-demo-token does not sign with kid %q", key.Kid)
	}
}

// TestComposeGatewayConfigValidates loads the gateway's Caddyfile the way
// `caddy validate` does, with the container's environment and the mounted
// key set read from the repository.
func TestComposeGatewayConfigValidates(t *testing.T) {
	project := loadCompose(t)
	gateway := composeService(t, project, "gateway")
	command, _ := dockerfileCommand(t, filepath.Join(gateway.Build.Context, gateway.Build.Dockerfile))
	env := serviceEnv(gateway)
	env["EDGEGUARD_JWKS_FILE"] = mountSource(t, gateway, env["EDGEGUARD_JWKS_FILE"])
	caddyfile := mountSource(t, gateway, flagValue(command, "--config"))

	src, err := os.ReadFile(caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := testkit.AdaptCaddyfile(src, caddyfile, env)
	if err != nil {
		t.Fatal(err)
	}
	var cfg *caddy.Config
	if err := caddy.StrictUnmarshalJSON(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := caddy.Validate(cfg); err != nil {
		t.Fatalf("caddy validate %s: %v", caddyfile, err)
	}
}

// TestComposeSidecarServes runs the gateway's config from the compose file
// for real, on loopback: the container's environment, the mounted key set
// read from the repository, the example Flask app as the api service, and
// a token signed with the demo key, as deploy/mint-demo-token makes them.
func TestComposeSidecarServes(t *testing.T) {
	project := loadCompose(t)
	gateway := composeService(t, project, "gateway")
	command, _ := dockerfileCommand(t, filepath.Join(gateway.Build.Context, gateway.Build.Dockerfile))
	caddyfile := mountSource(t, gateway, flagValue(command, "--config"))
	env := serviceEnv(gateway)
	env["EDGEGUARD_JWKS_FILE"] = mountSource(t, gateway, env["EDGEGUARD_JWKS_FILE"])

	flask := testkit.MustStartFlask(t)
	env["EDGEGUARD_UPSTREAM"] = flask.Addr
	metricsAddr := "127.0.0.1:" + strconv.Itoa(testkit.MustFreePort(t))
	env["EDGEGUARD_METRICS_PORT"] = metricsAddr[len("127.0.0.1:"):]
	src, err := os.ReadFile(caddyfile)
	if err != nil {
		t.Fatal(err)
	}
	g, err := testkit.StartGateway(src, caddyfile, env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Stop)

	// the demo key, as the mint script uses it
	pemData, err := os.ReadFile(filepath.Join("deploy", "demo-signing-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemData)
	private, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	demo := &testkit.Key{Kid: "demo-1", Alg: "RS256", Private: private.(*rsa.PrivateKey)}
	mint := func(subject string, roles ...string) string {
		claims := testkit.Claims(env["EDGEGUARD_ISSUER"], env["EDGEGUARD_AUDIENCE"], subject, time.Hour)
		claims["roles"] = roles
		return testkit.MustSign(t, demo, claims)
	}

	client := &http.Client{Timeout: 10 * time.Second}
	tests := []struct {
		name    string
		path    string
		token   string
		status  int
		reaches string // the X-User-Id the app sees, "" when it sees nothing
	}{
		{"reader on the public API", "/api/public/items", mint("compose-alice", "reader"), 200, "compose-alice"},
		{"no token", "/api/public/items", "", 401, ""},
		{"reader on the admin API", "/api/admin/stats", mint("compose-bob", "reader"), 403, ""},
		{"admin on the admin API", "/api/admin/stats", mint("compose-carol", "admin"), 200, "compose-carol"},
		{"outside the API", "/_edgeguard/requests", mint("compose-dave", "admin"), 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testkit.MustReset(t, flask)
			req, _ := http.NewRequest("GET", g.URL+tt.path, nil)
			req.Header.Set("Origin", "https://app.example.com")
			if strings.HasPrefix(tt.path, "/api/admin/") {
				req.Header.Set("Origin", "https://admin.example.com")
			}
			req.Header.Set("X-User-Id", "forged")
			if tt.token != "" {
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.status)
			}
			seen := testkit.MustRequests(t, flask)
			switch {
			case tt.reaches == "" && len(seen) != 0:
				t.Errorf("the app saw %d requests, want none", len(seen))
			case tt.reaches != "" && (len(seen) != 1 || !slices.Equal(seen[0].Header("X-User-Id"), []string{tt.reaches})):
				t.Errorf("the app saw %+v, want one request with X-User-Id %s", seen, tt.reaches)
			}
		})
	}

	// the metrics site answers with the gateway's decisions
	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `edgeguard_decisions_total{reason="missing_role",route="admin"} 1`) {
		t.Errorf("the metrics site does not count the admin route's refusal:\n%.2000s", body)
	}
}
