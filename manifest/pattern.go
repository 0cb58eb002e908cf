package manifest

// CheckPattern reports whether p is a valid key id pattern, as the
// manifest's "keys" rules and clients' key lists write them: a key id; a
// prefix of key id characters followed by a final '*' ("demo/*"); or "*"
// alone. Tools that select key ids the way manifests do (monitor rules,
// audit filters) use it with MatchPattern, so that one syntax means one
// thing everywhere.
func CheckPattern(p string) error { return checkPattern(p) }

// MatchPattern reports whether key id matches the pattern p (see
// CheckPattern): "demo/*" matches "demo/a" but not "demo/" itself.
func MatchPattern(p, id string) bool { return matchPattern(p, id) }
