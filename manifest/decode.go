package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"unicode/utf8"
)

// FieldError reports a manifest field that is missing, malformed or not
// allowed. Field is a path such as `workers["gpu"].snp[0].measurement[1]`;
// the empty path means the document as a whole.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return "manifest: " + e.Reason
	}
	return "manifest: " + e.Field + ": " + e.Reason
}

func fieldErr(path, format string, args ...any) error {
	return &FieldError{Field: path, Reason: fmt.Sprintf(format, args...)}
}

// jkind is the JSON type of a node.
type jkind int

const (
	jNull jkind = iota
	jBool
	jNumber
	jString
	jArray
	jObject
)

func (k jkind) String() string {
	return [...]string{"null", "boolean", "number", "string", "array", "object"}[k]
}

// node is one JSON value, with object members in document order.
type node struct {
	kind  jkind
	b     bool
	s     string // string value, or the literal text of a number
	keys  []string
	vals  []*node
	elems []*node
}

// maxDepth bounds nesting; the deepest valid manifest nests 5 levels.
const maxDepth = 16

// parseTree decodes exactly one JSON value from b, rejecting invalid UTF-8,
// duplicate object keys, excessive nesting and anything but whitespace after
// the value.
func parseTree(b []byte) (*node, error) {
	if !utf8.Valid(b) {
		return nil, fieldErr("", "document is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	n, err := readValue(dec, "", 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			return nil, fieldErr("", "trailing data after the JSON document at byte %d", dec.InputOffset())
		}
		return nil, fieldErr("", "trailing data after the JSON document: %v", syntaxReason(err))
	}
	return n, nil
}

func syntaxReason(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d: %v", se.Offset, se.Error())
	}
	if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
		return "invalid JSON: unexpected end of document"
	}
	return "invalid JSON: " + err.Error()
}

func readValue(dec *json.Decoder, path string, depth int) (*node, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fieldErr(path, "%s", syntaxReason(err))
	}
	return readFrom(dec, tok, path, depth)
}

func readFrom(dec *json.Decoder, tok json.Token, path string, depth int) (*node, error) {
	switch t := tok.(type) {
	case nil:
		return &node{kind: jNull}, nil
	case bool:
		return &node{kind: jBool, b: t}, nil
	case json.Number:
		return &node{kind: jNumber, s: string(t)}, nil
	case string:
		return &node{kind: jString, s: t}, nil
	case json.Delim:
		if depth >= maxDepth {
			return nil, fieldErr(path, "nested deeper than %d levels", maxDepth)
		}
		switch t {
		case '{':
			n := &node{kind: jObject}
			seen := map[string]bool{}
			for {
				kt, err := dec.Token()
				if err != nil {
					return nil, fieldErr(path, "%s", syntaxReason(err))
				}
				if kt == json.Delim('}') {
					return n, nil
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fieldErr(path, "invalid JSON: object key is not a string")
				}
				if seen[k] {
					return nil, fieldErr(memberPath(path, k), "duplicate key %q", k)
				}
				seen[k] = true
				v, err := readValue(dec, memberPath(path, k), depth+1)
				if err != nil {
					return nil, err
				}
				n.keys = append(n.keys, k)
				n.vals = append(n.vals, v)
			}
		case '[':
			n := &node{kind: jArray}
			for {
				et, err := dec.Token()
				if err != nil {
					return nil, fieldErr(path, "%s", syntaxReason(err))
				}
				if et == json.Delim(']') {
					return n, nil
				}
				v, err := readFrom(dec, et, indexPath(path, len(n.elems)), depth+1)
				if err != nil {
					return nil, err
				}
				n.elems = append(n.elems, v)
			}
		}
	}
	return nil, fieldErr(path, "invalid JSON: unexpected %v", tok)
}

// memberPath names an object member: plain names for schema fields, quoted
// names for map keys (see keyPath).
func memberPath(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

func keyPath(path, k string) string { return path + "[" + strconv.Quote(k) + "]" }

func indexPath(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// obj reads the members of a JSON object whose member names are fixed by the
// schema. Every member must be consumed: done reports the first unknown one.
type obj struct {
	n    *node
	path string
	used []bool
	err  error
}

func asObject(n *node, path string) (*obj, error) {
	if n.kind != jObject {
		return nil, fieldErr(path, "want an object, got %v", n.kind)
	}
	return &obj{n: n, path: path, used: make([]bool, len(n.keys))}, nil
}

// get returns the member named k, or records an error if it is missing.
func (o *obj) get(k string) (*node, string) {
	for i, key := range o.n.keys {
		if key == k {
			o.used[i] = true
			return o.n.vals[i], memberPath(o.path, k)
		}
	}
	o.fail(fieldErr(memberPath(o.path, k), "required field is missing"))
	return nil, ""
}

// optional returns the member named k, or nil.
func (o *obj) optional(k string) (*node, string) {
	for i, key := range o.n.keys {
		if key == k {
			o.used[i] = true
			return o.n.vals[i], memberPath(o.path, k)
		}
	}
	return nil, memberPath(o.path, k)
}

func (o *obj) fail(err error) {
	if o.err == nil && err != nil {
		o.err = err
	}
}

// done returns the first error recorded, or the first unknown member.
func (o *obj) done() error {
	if o.err != nil {
		return o.err
	}
	for i, u := range o.used {
		if !u {
			return fieldErr(memberPath(o.path, o.n.keys[i]), "unknown field")
		}
	}
	return nil
}

func asString(n *node, path string) (string, error) {
	if n.kind != jString {
		return "", fieldErr(path, "want a string, got %v", n.kind)
	}
	return n.s, nil
}

func asBool(n *node, path string) (bool, error) {
	if n.kind != jBool {
		return false, fieldErr(path, "want true or false, got %v", n.kind)
	}
	return n.b, nil
}

func asArray(n *node, path string) ([]*node, error) {
	if n.kind != jArray {
		return nil, fieldErr(path, "want an array, got %v", n.kind)
	}
	return n.elems, nil
}

// asUint reads a non-negative decimal integer no larger than max. Fractions,
// exponents, signs and leading zeros are rejected.
func asUint(n *node, path string, max uint64) (uint64, error) {
	if n.kind != jNumber {
		return 0, fieldErr(path, "want an integer, got %v", n.kind)
	}
	s := n.s
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fieldErr(path, "want a non-negative integer without fraction or exponent, got %s", s)
		}
	}
	if len(s) > 1 && s[0] == '0' {
		return 0, fieldErr(path, "integer %s has a leading zero", s)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > max {
		return 0, fieldErr(path, "%s is out of range (maximum %d)", s, max)
	}
	return v, nil
}

// isAny reports whether n is the string "any".
func isAny(n *node) bool { return n.kind == jString && n.s == Any }
