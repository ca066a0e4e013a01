package testenv

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPackageDocs checks the project's rule that every package has exactly
// one package doc comment, saying what the package is for.
func TestPackageDocs(t *testing.T) {
	for _, top := range []string{"../../internal", "../../cmd"} {
		err := filepath.WalkDir(top, func(dir string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() || d.Name() == "testdata" {
				if d != nil && d.IsDir() && d.Name() == "testdata" {
					return filepath.SkipDir
				}
				return err
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				return err
			}
			var docs []string
			sources := 0
			for _, e := range entries {
				name := e.Name()
				if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
					continue
				}
				sources++
				f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, name), nil, parser.PackageClauseOnly|parser.ParseComments)
				if err != nil {
					return err
				}
				if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package ") || f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Command ") {
					docs = append(docs, name)
				}
			}
			if sources > 0 && len(docs) != 1 {
				t.Errorf("%s: package doc comments in %v, want exactly one", dir, docs)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
