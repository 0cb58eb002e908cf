package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "f")
	for _, c := range []struct {
		data string
		perm os.FileMode
	}{{"first", 0o600}, {"second, longer", 0o644}, {"", 0o600}} {
		if err := WriteFile(name, []byte(c.data), c.perm); err != nil {
			t.Fatalf("WriteFile(%q) = %v", c.data, err)
		}
		got, err := os.ReadFile(name)
		if err != nil || string(got) != c.data {
			t.Fatalf("after WriteFile(%q): ReadFile = %q, %v", c.data, got, err)
		}
		fi, err := os.Stat(name)
		if err != nil || fi.Mode().Perm() != c.perm {
			t.Fatalf("mode = %v, %v, want %v", fi.Mode().Perm(), err, c.perm)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d files, want 1 (a temporary file was left)", len(ents))
	}
}

func TestWriteFileMissingDir(t *testing.T) {
	name := filepath.Join(t.TempDir(), "missing", "f")
	if err := WriteFile(name, []byte("x"), 0o600); err == nil {
		t.Fatal("WriteFile into a missing directory succeeded")
	}
}
