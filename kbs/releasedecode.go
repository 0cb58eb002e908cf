package kbs

import (
	"bytes"
	"encoding/base64"

	"github.com/kbs-dev/kbs/kbs/api"
)

// decodeReleaseRequest decodes a release request body exactly as decodeJSON
// does. Release requests are the hot path and almost all of their 7-8 KB
// is base64, which encoding/json scans twice byte by byte through
// reflection; so a plain request (see fastReleaseRequest) is decoded
// directly, and anything else goes to decodeJSON, which gives the answer
// and the precise error. FuzzReleaseFastDecode checks that every body the
// fast path accepts decodes to the same request under decodeJSON.
func decodeReleaseRequest(body []byte, req *api.ReleaseRequest) error {
	if fastReleaseRequest(body, req) {
		return nil
	}
	*req = api.ReleaseRequest{}
	return decodeJSON(body, req)
}

// fastReleaseRequest decodes body into req if it is a release request in
// the plain form encoding/json produces: one object, JSON whitespace only,
// each member at most once with its exact name, string values of
// printable ASCII without escapes, byte fields in valid padded standard
// base64, key_ids an array of such strings. It reports false, leaving req
// in an unspecified state, for anything else, including every input
// decodeJSON rejects; it never rejects on its own.
func fastReleaseRequest(body []byte, req *api.ReleaseRequest) bool {
	*req = api.ReleaseRequest{}
	p := fastParser{b: body}
	p.ws()
	if !p.byte('{') {
		return false
	}
	var seen [5]bool
	p.ws()
	if !p.byte('}') {
		for {
			p.ws()
			name, ok := p.str()
			if !ok {
				return false
			}
			p.ws()
			if !p.byte(':') {
				return false
			}
			p.ws()
			var f int
			switch string(name) {
			case "platform":
				f = 0
				s, ok := p.str()
				if !ok {
					return false
				}
				req.Platform = string(s)
			case "nonce":
				f = 1
				req.Nonce, ok = p.b64()
			case "evidence":
				f = 2
				req.Evidence, ok = p.b64()
			case "hpke_public_key":
				f = 3
				req.HPKEPublicKey, ok = p.b64()
			case "key_ids":
				f = 4
				req.KeyIDs, ok = p.strs()
			default:
				return false
			}
			if !ok || seen[f] {
				return false
			}
			seen[f] = true
			p.ws()
			if p.byte('}') {
				break
			}
			if !p.byte(',') {
				return false
			}
		}
	}
	p.ws()
	return p.i == len(p.b)
}

// fastParser reads the plain JSON subset fastReleaseRequest accepts.
type fastParser struct {
	b []byte
	i int
}

func (p *fastParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *fastParser) byte(c byte) bool {
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str reads a string of printable ASCII other than '"' and '\\', and
// returns its contents (a subslice of the body).
func (p *fastParser) str() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	start := p.i
	for p.i < len(p.b) {
		c := p.b[p.i]
		if c == '"' {
			s := p.b[start:p.i]
			p.i++
			return s, true
		}
		if c < 0x20 || c > 0x7e || c == '\\' {
			return nil, false
		}
		p.i++
	}
	return nil, false
}

// b64 reads a string in padded standard base64 and decodes it as
// encoding/json does for a []byte field (an empty string gives an empty,
// non-nil slice).
func (p *fastParser) b64() ([]byte, bool) {
	if !p.byte('"') {
		return nil, false
	}
	n := bytes.IndexByte(p.b[p.i:], '"')
	if n < 0 {
		return nil, false
	}
	s := p.b[p.i : p.i+n]
	p.i += n + 1
	// The decoder fails on every byte outside the alphabet (a backslash,
	// a control or non-ASCII byte included) except '\r' and '\n', which it
	// skips and JSON forbids unescaped.
	if bytes.IndexByte(s, '\r') >= 0 || bytes.IndexByte(s, '\n') >= 0 {
		return nil, false
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	m, err := base64.StdEncoding.Decode(out, s)
	if err != nil {
		return nil, false
	}
	return out[:m], true
}

// strs reads an array of strings (an empty array gives an empty, non-nil
// slice, as encoding/json does).
func (p *fastParser) strs() ([]string, bool) {
	if !p.byte('[') {
		return nil, false
	}
	out := []string{}
	p.ws()
	if p.byte(']') {
		return out, true
	}
	for {
		p.ws()
		s, ok := p.str()
		if !ok {
			return nil, false
		}
		out = append(out, string(s))
		p.ws()
		if p.byte(']') {
			return out, true
		}
		if !p.byte(',') {
			return nil, false
		}
	}
}
