package caddymodule

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile" // the caddyfile adapter
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of testdata/adapt/*.caddyfiletest")

// adaptSeparator divides a .caddyfiletest file: the Caddyfile above it, the
// JSON `caddy adapt` must produce below.
const adaptSeparator = "----------"

func adapt(t *testing.T, src, filename string) ([]byte, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	raw, _, err := adapter.Adapt([]byte(src), map[string]any{"filename": filename})
	return raw, err
}

func indentJSON(t *testing.T, raw []byte) string {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "\t"); err != nil {
		t.Fatalf("%v in %s", err, raw)
	}
	return out.String()
}

func TestAdaptGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "adapt", "*.caddyfiletest"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt tests found (%v)", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			src, want, ok := strings.Cut(string(data), "\n"+adaptSeparator+"\n")
			if !ok {
				t.Fatalf("no %q line", adaptSeparator)
			}
			raw, err := adapt(t, src, file)
			if err != nil {
				t.Fatalf("caddy adapt: %v", err)
			}
			got := indentJSON(t, raw)
			if *update {
				out := src + "\n" + adaptSeparator + "\n" + got + "\n"
				if err := os.WriteFile(file, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != strings.TrimSpace(want) {
				t.Errorf("caddy adapt %s:\n%s\nwant:\n%s", file, got, want)
			}
		})
	}
}

// subdirectives lists every name the README's Caddyfile reference tables
// document, in the order they appear.
func readmeSubdirectives(t *testing.T) []string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, reference, ok := strings.Cut(string(readme), "## Caddyfile reference")
	if !ok {
		t.Fatal("README.md has no Caddyfile reference")
	}
	reference, _, _ = strings.Cut(reference, "\n## ")
	var names []string
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-z_]+)[ `]").FindAllStringSubmatch(reference, -1) {
		if !slices.Contains(names, m[1]) {
			names = append(names, m[1])
		}
	}
	// `refresh_min <d>`, `refresh_max <d>` share a row
	for _, m := range regexp.MustCompile("(?m)^\\| .*?, `([a-z_]+) ").FindAllStringSubmatch(reference, -1) {
		if !slices.Contains(names, m[1]) {
			names = append(names, m[1])
		}
	}
	if len(names) < 30 {
		t.Fatalf("found only %d subdirectives in the README reference: %q", len(names), names)
	}
	return names
}

// parserSubdirectives lists the names UnmarshalCaddyfile's doc comment
// gives.
func parserSubdirectives(t *testing.T) []string {
	t.Helper()
	src, err := os.ReadFile("caddyfile.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, _, _ := strings.Cut(string(src), "func (h *Handler) UnmarshalCaddyfile")
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^//\t\s+([a-z_]+)\b`).FindAllStringSubmatch(doc, -1) {
		names = append(names, m[1])
	}
	return names
}

func TestEverySubdirectiveIsDocumentedAndCovered(t *testing.T) {
	documented := readmeSubdirectives(t)
	var golden strings.Builder
	files, _ := filepath.Glob(filepath.Join("testdata", "adapt", "*.caddyfiletest"))
	for _, file := range files {
		data, _ := os.ReadFile(file)
		src, _, _ := strings.Cut(string(data), "\n"+adaptSeparator+"\n")
		golden.WriteString(src)
	}
	for _, name := range parserSubdirectives(t) {
		if !slices.Contains(documented, name) {
			t.Errorf("subdirective %s is parsed but not in the README reference", name)
		}
	}
	for _, name := range documented {
		// the parser knows it
		_, err := adapt(t, "http://:8080 {\n\tedge_guard {\n\t\t"+name+"\n\t}\n}\n", "Caddyfile")
		if err != nil && strings.Contains(err.Error(), "unrecognized") {
			t.Errorf("README documents %s, the parser refuses it: %v", name, err)
		}
		// a golden file uses it
		if !regexp.MustCompile(`(?m)^\s+` + name + `(\s|$)`).MatchString(golden.String()) {
			t.Errorf("subdirective %s appears in no testdata/adapt file", name)
		}
	}
}

// TestReadmeExamplesAdapt proves the README's examples: each Caddyfile
// block adapts, and a JSON block that follows one is exactly what it
// adapts to: the whole config when the block has "apps", otherwise the
// edge_guard handler (or handlers).
func TestReadmeExamplesAdapt(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?ms)^```(caddyfile|json)\n(.*?)^```").FindAllStringSubmatch(string(readme), -1)
	var handlers []any
	var adapted any
	examples, compared := 0, 0
	for _, b := range blocks {
		kind, body := b[1], b[2]
		switch {
		case kind == "caddyfile" && strings.HasPrefix(body, "edge_guard ["):
			// the syntax summary, not an example
		case kind == "caddyfile":
			examples++
			raw, err := adapt(t, body, "README.md")
			if err != nil {
				t.Errorf("README Caddyfile example does not adapt: %v\n%s", err, body)
				handlers = nil
				continue
			}
			_ = json.Unmarshal(raw, &adapted)
			handlers = nil
			collectHandlers(adapted, &handlers)
		case kind == "json":
			if handlers == nil {
				t.Errorf("README JSON block follows no Caddyfile example that adapts:\n%s", body)
				continue
			}
			compared++
			var want any
			if err := json.Unmarshal([]byte(body), &want); err != nil {
				t.Errorf("README JSON block: %v\n%s", err, body)
				continue
			}
			got := any(handlers)
			if len(handlers) == 1 {
				got = handlers[0]
			}
			if full, ok := want.(map[string]any); ok && full["apps"] != nil {
				got = adapted // a whole config
			}
			gotJSON, _ := json.MarshalIndent(got, "", "  ")
			wantJSON, _ := json.MarshalIndent(want, "", "  ")
			if !bytes.Equal(gotJSON, wantJSON) {
				t.Errorf("README JSON block differs from what its Caddyfile adapts to:\ngot\n%s\nREADME\n%s", gotJSON, wantJSON)
			}
		}
	}
	if examples == 0 || compared == 0 {
		t.Errorf("README: %d Caddyfile examples, %d JSON forms compared; want both", examples, compared)
	}
}

func collectHandlers(v any, out *[]any) {
	switch v := v.(type) {
	case map[string]any:
		if v["handler"] == "edge_guard" {
			*out = append(*out, v)
			return
		}
		for _, k := range sortedKeys(v) {
			collectHandlers(v[k], out)
		}
	case []any:
		for _, child := range v {
			collectHandlers(child, out)
		}
	}
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// validate runs what `caddy validate --config <file>` runs: load and adapt
// the file, then provision the config without starting it.
func validate(t *testing.T, caddyfile string) error {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o644); err != nil {
		t.Fatal(err)
	}
	input, _, _, err := caddycmd.LoadConfig(path, "caddyfile")
	if err != nil {
		return err
	}
	var cfg *caddy.Config
	if err := caddy.StrictUnmarshalJSON(caddy.RemoveMetaFields(input), &cfg); err != nil {
		t.Fatalf("decoding config: %v", err)
	}
	return caddy.Validate(cfg)
}

// faultLine is the number of the line marked "# fault" in a Caddyfile.
func faultLine(t *testing.T, caddyfile string) int {
	t.Helper()
	for i, line := range strings.Split(caddyfile, "\n") {
		if strings.Contains(line, "# fault") {
			return i + 1
		}
	}
	t.Fatal("no line is marked # fault")
	return 0
}

func TestValidateRefusesUnsafeConfig(t *testing.T) {
	const site = "{\n\tadmin off\n}\n\nhttp://127.0.0.1:0 {\n"
	tests := []struct {
		name  string
		block string // edge_guard and its block, one tab in
		want  []string
	}{
		{
			name: "no allowlist",
			block: `	edge_guard { # fault
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
	}`,
			want: []string{"no origin allowlist", "allow_origins"},
		},
		{
			name: "origin with a path",
			block: `	edge_guard {
		allow_origins https://app.example.com/app # fault
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
	}`,
			want: []string{"https://app.example.com/app", "path"},
		},
		{
			name: "origin with a trailing slash",
			block: `	edge_guard {
		allow_origins https://app.example.com
		allow_origins https://b.example.com/ # fault
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
	}`,
			want: []string{"https://b.example.com/"},
		},
		{
			name: "origin with a query",
			block: `	edge_guard {
		allow_origins https://app.example.com?x=1 # fault
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
	}`,
			want: []string{"https://app.example.com?x=1", "query"},
		},
		{
			name: "unanchored regular expression",
			block: `	edge_guard {
		allow_origins ~https://pr-[0-9]+\.example\.com # fault
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
	}`,
			want: []string{"anchored"},
		},
		{
			name: "any origin",
			block: `	edge_guard {
		allow_origins * # fault
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
	}`,
			want: []string{`"*"`, "list the origins"},
		},
		{
			name: "credentials with a near-wildcard",
			block: `	edge_guard {
		allow_origins ~^https://[a-z.]+\.attacker\.invalid$
		allow_credentials # fault
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
	}`,
			want: []string{"allow_credentials", "unrelated sites"},
		},
		{
			name: "max_age beyond a day",
			block: `	edge_guard {
		allow_origins https://app.example.com
		max_age 48h # fault
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
	}`,
			want: []string{"max_age", "longer than 24h"},
		},
		{
			name: "any header",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
		allow_headers * # fault
	}`,
			want: []string{"allow_headers", `"*" is not supported`},
		},
		{
			name: "no issuer",
			block: `	edge_guard { # fault
		allow_origins https://app.example.com
	}`,
			want: []string{"no issuer"},
		},
		{
			name: "no key set",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ { # fault
			audience items-api
		}
	}`,
			want: []string{"no key set", "https://login.example.com/"},
		},
		{
			name: "two key sets",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json # fault
			jwks_file /etc/jwks.json
			audience items-api
		}
	}`,
			want: []string{"give one key set"},
		},
		{
			name: "no audience",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ { # fault
			jwks_url https://login.example.com/jwks.json
		}
	}`,
			want: []string{"no audience", "any_audience"},
		},
		{
			name: "no audience, an issuer URL that holds a subdirective's name",
			block: `	edge_guard {
		name api
		allow_origins https://app.example.com
		issuer https://name.example.com/ { # fault
			jwks_url https://name.example.com/jwks.json
		}
	}`,
			want: []string{"no audience", `issuer "https://name.example.com/"`},
		},
		{
			name: "plain-http key set on another host",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ {
			audience items-api
			jwks_url http://login.example.com/jwks.json # fault
		}
	}`,
			want: []string{"http://login.example.com/jwks.json", "allow_http"},
		},
		{
			name: "plain-http key set, options outside the issuer block",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/
		jwks_url http://login.example.com/jwks.json # fault
		audience items-api
	}`,
			want: []string{"http://login.example.com/jwks.json", "loopback"},
		},
		{
			name: "short hmac secret",
			block: `	edge_guard {
		allow_origins https://app.example.com
		algorithms HS256
		issuer https://login.example.com/ {
			hmac_secret too-short-a-secret # fault
			audience items-api
		}
	}`,
			want: []string{"hmac_secret", "32 bytes"},
		},
		{
			name: "unknown subdirective",
			block: `	edge_guard {
		allow_origins https://app.example.com
		alow_methods GET # fault
	}`,
			want: []string{"unrecognized subdirective", "alow_methods"},
		},
		{
			name: "unknown issuer subdirective",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ {
			jwks_uri https://login.example.com/jwks.json # fault
		}
	}`,
			want: []string{"unrecognized issuer subdirective", "jwks_uri"},
		},
		{
			name: "repeated subdirective",
			block: `	edge_guard {
		allow_origins https://app.example.com
		max_age 10m
		max_age 1h # fault
	}`,
			want: []string{"max_age", "given twice"},
		},
		{
			name: "repeated issuer subdirective",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			jwks_url https://login.example.com/other.json # fault
		}
	}`,
			want: []string{"jwks_url", "given twice"},
		},
		{
			name: "option both inside and outside the issuer block",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
		audience other-api # fault
	}`,
			want: []string{"audience is set both inside and outside"},
		},
		{
			name: "alg none",
			block: `	edge_guard {
		allow_origins https://app.example.com
		algorithms RS256 none # fault
	}`,
			want: []string{`"none"`},
		},
		{
			name: "alg none for one issuer",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
			algorithms NONE # fault
		}
	}`,
			want: []string{`"none"`},
		},
		{
			name: "claim header that cannot carry a claim",
			block: `	edge_guard {
		allow_origins https://app.example.com
		issuer https://login.example.com/ {
			jwks_url https://login.example.com/jwks.json
			audience items-api
		}
		claim_header Authorization sub # fault
	}`,
			want: []string{`claim_header "Authorization"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			caddyfile := site + tt.block + "\n\trespond 204\n}\n"
			err := validate(t, caddyfile)
			if err == nil {
				t.Fatalf("caddy validate accepted:\n%s", caddyfile)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			line := faultLine(t, caddyfile)
			if !regexp.MustCompile(`Caddyfile:` + strconv.Itoa(line) + `\b`).MatchString(err.Error()) {
				t.Errorf("error %q does not name line %d", err, line)
			}
		})
	}
}

// TestValidateRefusesUnsafeJSON covers configs written in JSON, which
// skip the Caddyfile parser: Provision makes the same checks.
func TestValidateRefusesUnsafeJSON(t *testing.T) {
	tests := []struct {
		name    string
		handler string
		want    string
	}{
		{"alg none", `"cors":{"allow_origins":["https://app.example.com"]},
			"algorithms":["none"],
			"issuers":[{"issuer":"https://i/","jwks_url":"https://i/k","audiences":["a"]}]`, `"none" is not supported`},
		{"any origin", `"cors":{"allow_origins":["*"]},
			"issuers":[{"issuer":"https://i/","jwks_url":"https://i/k","audiences":["a"]}]`, `"*"`},
		{"no audience", `"cors":{"allow_origins":["https://app.example.com"]},
			"issuers":[{"issuer":"https://i/","jwks_url":"https://i/k"}]`, "no audience"},
		{"plain http", `"cors":{"allow_origins":["https://app.example.com"]},
			"issuers":[{"issuer":"https://i/","jwks_url":"http://i.example/k","audiences":["a"]}]`, "plain http"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := `{"admin":{"disabled":true},"apps":{"http":{"servers":{"s":{"listen":["127.0.0.1:0"],
				"routes":[{"handle":[{"handler":"edge_guard",` + tt.handler + `}]}]}}}}}`
			var cfg *caddy.Config
			if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
				t.Fatal(err)
			}
			err := caddy.Validate(cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("caddy validate: %v, want an error saying %q", err, tt.want)
			}
		})
	}
}
