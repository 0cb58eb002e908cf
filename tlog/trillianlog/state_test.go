package trillianlog

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	b, err := os.ReadFile("testdata/state.json")
	if err != nil {
		t.Fatal(err)
	}
	st, err := parseState(b)
	if err != nil {
		t.Fatalf("parseState(testdata/state.json): %v", err)
	}
	path := filepath.Join(t.TempDir(), "state")
	if err := writeState(path, st); err != nil {
		t.Fatal(err)
	}
	got, err := readState(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("readState(writeState(st)) = %+v, want %+v", got, st)
	}
	if out, _ := os.ReadFile(path); !bytes.Equal(out, b) {
		t.Errorf("writeState wrote\n%s\nwant the canonical encoding\n%s", out, b)
	}
	if _, err := readState(filepath.Join(t.TempDir(), "none")); err != errNoState {
		t.Errorf("readState(missing) = %v, want errNoState", err)
	}
}

func TestParseStateRejects(t *testing.T) {
	good, err := os.ReadFile("testdata/state.json")
	if err != nil {
		t.Fatal(err)
	}
	hash := `"` + strings.Repeat("A", 43) + `="`
	for _, tc := range []struct{ name, in, want string }{
		{"empty", ``, "malformed"},
		{"not an object", `[]`, "malformed"},
		{"unknown field", `{"tree_id":1,"checkpoint":"x","range":[],"extra":1}`, "unknown field"},
		{"trailing data", string(good) + `{}`, "after the JSON object"},
		{"zero tree", `{"tree_id":0,"checkpoint":"x","range":[]}`, "tree id"},
		{"negative tree", `{"tree_id":-5,"checkpoint":"x","range":[]}`, "tree id"},
		{"no checkpoint", `{"tree_id":1,"range":[]}`, "no checkpoint"},
		{"short hash", `{"tree_id":1,"checkpoint":"x","range":["AAAA"]}`, "3-byte"},
		{"too many hashes", `{"tree_id":1,"checkpoint":"x","range":[` + strings.Repeat(hash+",", 63) + hash + `]}`, "64 range hashes"},
		{"oversized", `{"tree_id":1,"checkpoint":"` + strings.Repeat("x", maxStateSize) + `"}`, "more than"},
	} {
		_, err := parseState([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseState(%s) = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// FuzzParseState checks that every accepted state file round-trips through
// its canonical encoding.
func FuzzParseState(f *testing.F) {
	good, err := os.ReadFile("testdata/state.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"tree_id":1,"checkpoint":"x","range":[]}`))
	f.Add([]byte(`{"tree_id":1,"checkpoint":"x","range":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseState(b)
		if err != nil {
			return
		}
		enc, err := marshalState(st)
		if err != nil {
			t.Fatalf("marshalState of a parsed state: %v", err)
		}
		st2, err := parseState(enc)
		if err != nil {
			t.Fatalf("parseState(marshalState(st)): %v\n%s", err, enc)
		}
		enc2, _ := marshalState(st2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable:\n%s\n%s", enc, enc2)
		}
		if st2.TreeID != st.TreeID || !bytes.Equal(st2.Checkpoint, st.Checkpoint) || len(st2.Range) != len(st.Range) {
			t.Fatalf("round trip changed the state: %+v → %+v", st, st2)
		}
	})
}
