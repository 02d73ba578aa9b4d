package caddymodule

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestReasonCodesAreKnown keeps the reason label bounded: every reason
// code the package can produce is in knownReasons, which has its series
// made up front. It reads the reason codes out of the source: reason
// fields, the refusal constructors' first arguments, and shapeReasons.
func TestReasonCodesAreKnown(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	found := make(map[string]string) // reason -> where
	fset := token.NewFileSet()
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		literal := func(e ast.Expr) {
			if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				s, _ := strconv.Unquote(lit.Value)
				found[s] = fset.Position(lit.Pos()).String()
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.KeyValueExpr:
				if key, ok := n.Key.(*ast.Ident); ok && key.Name == "reason" {
					literal(n.Value)
				}
			case *ast.CallExpr:
				var name string
				switch fn := n.Fun.(type) {
				case *ast.Ident:
					name = fn.Name
				case *ast.SelectorExpr:
					name = fn.Sel.Name
				}
				switch name {
				case "invalidToken", "invalidRequest", "deny", "decision":
					if len(n.Args) > 0 {
						literal(n.Args[0])
					}
				}
			case *ast.ValueSpec:
				for i, id := range n.Names {
					if id.Name != "shapeReasons" || i >= len(n.Values) {
						continue
					}
					for _, elt := range n.Values[i].(*ast.CompositeLit).Elts {
						literal(elt.(*ast.KeyValueExpr).Value)
					}
				}
			}
			return true
		})
	}
	if len(found) < 25 {
		t.Fatalf("found only %d reason codes in the source: %v", len(found), found)
	}
	for reason, where := range found {
		if !slices.Contains(knownReasons, reason) {
			t.Errorf("%s: reason %q is not in knownReasons", where, reason)
		}
	}
	for _, reason := range knownReasons {
		if _, ok := found[reason]; !ok {
			t.Errorf("knownReasons lists %q, which nothing produces", reason)
		}
	}
}
