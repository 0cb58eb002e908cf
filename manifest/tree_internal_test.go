package manifest

import (
	"encoding/json"
	"testing"
)

// TestParseTreeRejectsWhatJSONRejects checks the token-level reader against
// encoding/json's own validator on tricky inputs.
func TestParseTreeRejectsWhatJSONRejects(t *testing.T) {
	for _, in := range []string{
		`[1,]`, `{"a":1,}`, `{"a" 1}`, `{"a":}`, `[,1]`, `{,}`, `{"a":1 "b":2}`, `[1 2]`, `{"a":1}}`,
		`01`, `[01]`, `1.`, `.5`, `-`, `+1`, `NaN`, `"\x"`, `"a` + "\x01" + `"`, `tru`, `nul`, `{"a":[}`,
		`[1]]`, `{} {}`, ` `, ``, `"\ud800"`, `{"a":1}`, `[]`, `"x"`, `1e5`, `{"":0}`,
	} {
		_, err := parseTree([]byte(in))
		if valid := json.Valid([]byte(in)); valid != (err == nil) {
			t.Errorf("parseTree(%q) error = %v, json.Valid = %v", in, err, valid)
		}
	}
}

func TestParseTreeDepth(t *testing.T) {
	deep := ""
	for i := 0; i < maxDepth+1; i++ {
		deep = "[" + deep + "]"
	}
	if _, err := parseTree([]byte(deep)); err == nil {
		t.Errorf("parseTree accepted %d levels of nesting", maxDepth+1)
	}
}

// FuzzParseTree checks that the JSON reader never accepts what
// encoding/json calls invalid, and that what it accepts has no duplicate
// keys.
func FuzzParseTree(f *testing.F) {
	for _, s := range []string{`{"a":[1,{"b":"c"}],"d":null}`, `[1,]`, `{"a":1,"a":2}`, `"\u00e9"`, `[[[]]]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseTree(b)
		if err != nil {
			return
		}
		if !json.Valid(b) {
			t.Fatalf("parseTree accepted invalid JSON %q", b)
		}
		var walk func(n *node)
		walk = func(n *node) {
			seen := map[string]bool{}
			for i, k := range n.keys {
				if seen[k] {
					t.Fatalf("duplicate key %q accepted", k)
				}
				seen[k] = true
				walk(n.vals[i])
			}
			for _, e := range n.elems {
				walk(e)
			}
		}
		walk(n)
	})
}
