package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kbs-dev/kbs/internal/testbin"
)

// TestDocs runs the documentation. Every fenced ```sh block in README.md and
// docs/*.md is a list of commands that must work, as written, against a
// development broker:
//
//   - The blocks of one file run in order, in one fresh directory with
//     bin/kbsctl and bin/kbsd (also on $PATH), $HOME and the user config
//     directory inside it, and EDITOR=true. Shell state (variables, the
//     current directory) carries from block to block; every command must
//     succeed (bash -e). Background jobs (&) end with the file.
//   - A file that starts no broker itself gets one, 'kbsd --dev' in
//     ./kbs-dev, before its first block. A command that starts one
//     ('make run', 'kbsd --dev ...') is run by the test in the background
//     (it waits until kbsd serves), with its TCP listener moved to a free
//     port; one the document itself sends to the background ('kbsd ... &')
//     runs as written, and lives until the file's next broker start or
//     its end. 'make build' is a no-op: the binaries are built.
//   - <!-- docs-test: setup ... --> holds commands the reader is assumed to
//     have run (files the prose takes for granted); they run where the
//     comment stands, unseen by readers.
//   - <!-- docs-test: skip REASON --> before a block keeps it from running:
//     production-only commands, real hardware, tools CI lacks. Its commands
//     are still checked: each kbsctl and kbsd command must exist and use
//     only flags it defines (from its -h), each make target must exist in
//     the Makefile, each scripts/ file must exist.
//   - A block without a language whose first word is a command (kbsctl,
//     kbsd, make, ...) fails the test: tag it sh, and run or skip it.
//
// Other languages (json, go, untagged output) are not run.
func TestDocs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every documented command")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	files = append([]string{filepath.Join(root, "README.md")}, files...)
	kbsctlBin := kbsctlBinary(t)
	h := &docHelp{kbsctl: kbsctlBin, kbsd: kbsdBin, root: root}
	for _, f := range files {
		rel, _ := filepath.Rel(root, f)
		t.Run(rel, func(t *testing.T) {
			doc, err := parseDoc(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range doc.blocks {
				if b.skip != "" {
					for _, l := range b.lines {
						if err := h.check(l); err != nil {
							t.Errorf("%s:%d (a skipped block): %q: %v", rel, b.line, l, err)
						}
					}
				}
			}
			doc.run(t, rel, kbsctlBin)
		})
	}
}

var kbsctlLazy = testbin.Lazy{Pkg: "github.com/kbs-dev/kbs/tools/kbsctl"}

// kbsctlBinary builds kbsctl once for the tests that run it as a process
// (in the directory TestMain removes at the end).
func kbsctlBinary(t testing.TB) string {
	t.Helper()
	return kbsctlLazy.Path(t, filepath.Dir(kbsdBin))
}

// A docBlock is a fenced sh block or a setup comment of a document.
type docBlock struct {
	line  int      // where it starts in the file
	lines []string // logical command lines: continuations joined, comments dropped
	skip  string   // why it does not run ("": it runs)
	setup bool     // a docs-test setup comment
}

type document struct {
	blocks []docBlock
}

// commandWords are first words that make an untagged block a command block.
var commandWords = regexp.MustCompile(`^(\$ )?((bin/)?(kbsctl|kbsd) +-|(bin/)?kbsctl +[a-z]+( |$)|make [a-z]|(openssl|cosign|go) [a-z]|scripts/\S+\.sh|export [A-Z])`)

// parseDoc reads the sh blocks and docs-test directives of a Markdown file.
func parseDoc(file string) (*document, error) {
	raw, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(raw), "\n")
	d := &document{}
	skip := ""
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if rest, ok := strings.CutPrefix(strings.TrimSpace(l), "<!-- docs-test:"); ok {
			body := rest
			start := i
			for !strings.Contains(body, "-->") {
				i++
				if i == len(lines) {
					return nil, fmt.Errorf("%s:%d: unterminated docs-test comment", file, start+1)
				}
				body += "\n" + lines[i]
			}
			body = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(body), "-->"))
			switch word, arg, _ := strings.Cut(body, " "); {
			case word == "skip" && strings.TrimSpace(arg) != "":
				skip = strings.TrimSpace(arg)
			case strings.HasPrefix(body, "setup\n"):
				d.blocks = append(d.blocks, docBlock{line: start + 1, lines: shellLines(strings.Split(strings.TrimPrefix(body, "setup\n"), "\n")), setup: true})
			default:
				return nil, fmt.Errorf("%s:%d: unknown docs-test directive %q (want 'skip REASON' or 'setup' and commands)", file, start+1, body)
			}
			continue
		}
		info, fence := strings.CutPrefix(l, "```")
		if !fence {
			continue
		}
		start := i
		var body []string
		for i++; i < len(lines) && !strings.HasPrefix(lines[i], "```"); i++ {
			body = append(body, lines[i])
		}
		switch info = strings.TrimSpace(info); {
		case info == "sh":
			d.blocks = append(d.blocks, docBlock{line: start + 1, lines: shellLines(body), skip: skip})
		case skip != "":
			return nil, fmt.Errorf("%s:%d: docs-test skip before a %q block: only sh blocks run", file, start+1, info)
		case info == "" && len(body) > 0 && commandWords.MatchString(strings.TrimSpace(body[0])):
			return nil, fmt.Errorf("%s:%d: a block of commands without a language: tag it sh (and mark it <!-- docs-test: skip REASON --> if it must not run)", file, start+1)
		}
		skip = ""
	}
	return d, nil
}

// shellLines joins continued lines (a trailing backslash, pipe, && or ||)
// and drops comments and blank lines.
func shellLines(lines []string) []string {
	var out []string
	cur := ""
	for _, l := range lines {
		l = strings.TrimRight(stripComment(l), " \t")
		if c, ok := strings.CutSuffix(l, `\`); ok {
			cur += c + " "
			continue
		}
		if strings.HasSuffix(l, "|") || strings.HasSuffix(l, "&&") {
			cur += l + " "
			continue
		}
		cur += l
		if s := strings.TrimSpace(cur); s != "" {
			out = append(out, s)
		}
		cur = ""
	}
	if s := strings.TrimSpace(cur); s != "" {
		out = append(out, s)
	}
	return out
}

// stripComment removes a shell comment: # at the start of a word, outside
// quotes.
func stripComment(l string) string {
	var q rune
	for i, r := range l {
		switch {
		case q != 0:
			if r == q {
				q = 0
			}
		case r == '\'' || r == '"':
			q = r
		case r == '#' && (i == 0 || l[i-1] == ' ' || l[i-1] == '\t'):
			return l[:i]
		}
	}
	return l
}

// words splits a command line into words, honouring quotes (no
// expansion).
func words(l string) []string {
	var out []string
	var cur strings.Builder
	var q rune
	in := false
	for _, r := range l {
		switch {
		case q != 0:
			if r == q {
				q = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			q, in = r, true
		case r == ' ' || r == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	if in {
		out = append(out, cur.String())
	}
	return out
}

// brokerStart returns the kbsd arguments (without --data) and the data
// directory when l starts a broker in the foreground: 'make run' or
// '[bin/]kbsd --dev ...'. A command sent to the background ('... &') is
// the reader's own job: it runs in the script, as written.
func brokerStart(l string) (args []string, data string, ok bool) {
	if strings.HasSuffix(strings.TrimSpace(l), "&") {
		return nil, "", false
	}
	w := words(l)
	switch {
	case len(w) == 2 && w[0] == "make" && w[1] == "run":
		return []string{"--dev", "--listen-tcp", "127.0.0.1:0"}, "kbs-dev", true // a free port, not 8443
	case len(w) > 0 && (w[0] == "kbsd" || w[0] == "bin/kbsd") && contains1(w, "--dev"):
	default:
		return nil, "", false
	}
	data = "kbs-dev"
	for i := 1; i < len(w); i++ {
		switch a := w[i]; {
		case a == "--data" && i+1 < len(w):
			data = w[i+1]
			i++
		case a == "--listen-tcp" && i+1 < len(w):
			i++ // a free port instead
		default:
			args = append(args, a)
		}
	}
	return append(args, "--listen-tcp", "127.0.0.1:0"), data, true
}

func contains1(w []string, s string) bool {
	for _, x := range w {
		if x == s {
			return true
		}
	}
	return false
}

// run runs the document's setup comments and sh blocks (see TestDocs).
func (d *document) run(t *testing.T, name, kbsctlBin string) {
	work := t.TempDir()
	bin := filepath.Join(work, "bin")
	os.Mkdir(bin, 0o755)
	for _, b := range [][2]string{{kbsctlBin, "kbsctl"}, {kbsdBin, "kbsd"}} {
		if err := os.Symlink(b[0], filepath.Join(bin, b[1])); err != nil {
			t.Fatal(err)
		}
	}
	starts := false
	for _, b := range d.blocks {
		for _, l := range b.lines {
			if _, _, ok := brokerStart(l); ok && b.skip == "" {
				starts = true
			}
		}
	}
	if !starts && len(d.blocks) > 0 {
		startDocKbsd(t, filepath.Join(work, "kbs-dev"), []string{"--dev", "--listen-tcp", "127.0.0.1:0"})
	}
	env := []string{"PATH=" + bin + ":" + os.Getenv("PATH"), "HOME=" + filepath.Join(work, "home"),
		"XDG_CONFIG_HOME=" + filepath.Join(work, "config"), "EDITOR=true"}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if (!strings.HasPrefix(k, "KBS_") || strings.HasPrefix(k, "KBS_TEST_")) && k != "PATH" && k != "HOME" && k != "XDG_CONFIG_HOME" && k != "EDITOR" {
			env = append(env, kv)
		}
	}
	var script []string
	var where []int
	flush := func() {
		if len(script) == 0 {
			return
		}
		runDocScript(t, name, work, env, script, where)
		script, where = nil, nil
	}
	for _, b := range d.blocks {
		if b.skip != "" {
			continue
		}
		for _, l := range b.lines {
			if args, data, ok := brokerStart(l); ok {
				flush()
				if !filepath.IsAbs(data) {
					data = filepath.Join(work, data)
				}
				startDocKbsd(t, data, args)
				continue
			}
			if l == "make build" {
				continue
			}
			if w := words(l); len(w) > 0 && w[0] == "make" {
				t.Fatalf("%s:%d: %q cannot run inside the docs test: mark its block <!-- docs-test: skip REASON -->", name, b.line, l)
			}
			script, where = append(script, l), append(where, b.line)
		}
	}
	flush()
}

func startDocKbsd(t *testing.T, data string, args []string) {
	k := testbin.StartKbsd(t, kbsdBin, data, args...)
	t.Cleanup(func() { k.Stop() })
}

// runDocScript runs lines with bash -e in work, carrying shell variables
// over from the script before through .docs-env. Background jobs are killed
// when it ends.
func runDocScript(t *testing.T, name, work string, env, lines []string, where []int) {
	t.Helper()
	var b strings.Builder
	b.WriteString("set -ea\n[ -f .docs-env ] && . ./.docs-env\nset -x\n")
	for i, l := range lines {
		fmt.Fprintf(&b, ": %s:%d\n%s\n", name, where[i], l)
	}
	b.WriteString("set +x\ncd \"$DOCS_WORK\"\nexport -p | grep -v -e ' PWD=' -e ' OLDPWD=' -e ' SHLVL=' -e ' _=' > .docs-env\n")
	cmd := testbin.Command(t, "bash", "-c", b.String())
	cmd.Dir = work
	cmd.Env = append(env, "DOCS_WORK="+work)
	// A file, not a pipe: background jobs keep their output open after
	// bash exits, and Wait would wait for them.
	out, err := os.CreateTemp(t.TempDir(), "out")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	kill := time.AfterFunc(3*time.Minute, func() { testbin.KillGroup(cmd) })
	err = cmd.Run()
	kill.Stop()
	testbin.KillGroup(cmd)
	if err != nil {
		b, _ := os.ReadFile(out.Name())
		t.Fatalf("%s: a documented command failed: %v\n%s", name, err, b)
	}
}

// docHelp checks commands against the binaries' help and the repository.
type docHelp struct {
	kbsctl, kbsd, root string
	cache              map[string]map[string]bool // flags by help command, true: takes a value
}

var helpFlag = regexp.MustCompile(`(?m)^  --?([a-z0-9-]+)( [a-zA-Z]+)?$`)

// flags returns the flags the help of bin args... lists.
func (h *docHelp) flags(bin string, args ...string) (map[string]bool, error) {
	key := bin + " " + strings.Join(args, " ")
	if f, ok := h.cache[key]; ok {
		return f, nil
	}
	out, err := exec.Command(bin, append(args, "-h")...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s -h: %v\n%s", key, err, out)
	}
	f := map[string]bool{}
	for _, m := range helpFlag.FindAllStringSubmatch(string(out), -1) {
		f[m[1]] = m[2] != ""
	}
	if len(f) == 0 && !strings.Contains(string(out), "Usage") {
		return nil, fmt.Errorf("%s -h lists no flags:\n%s", key, out)
	}
	if h.cache == nil {
		h.cache = map[string]map[string]bool{}
	}
	h.cache[key] = f
	return f, nil
}

// subcommands are kbsctl's commands that take a subcommand.
var subcommands = map[string]bool{"key": true, "manifest": true, "log": true, "receipt": true, "prompt": true, "worker": true}

// check checks a command line of a skipped block.
func (h *docHelp) check(l string) error {
	var w []string
	for _, x := range words(l) {
		x = strings.Trim(x, "[]()|")
		if x != "" && x != "..." {
			w = append(w, x)
		}
	}
	if len(w) == 0 {
		return nil
	}
	switch w[0] {
	case "kbsctl", "bin/kbsctl":
		return h.checkKbsctl(w[1:])
	case "kbsd", "bin/kbsd":
		f, err := h.flags(h.kbsd)
		if err != nil {
			return err
		}
		return checkFlags("kbsd", w[1:], f)
	case "make":
		mk, err := os.ReadFile(filepath.Join(h.root, "Makefile"))
		if err != nil {
			return err
		}
		for _, target := range w[1:] {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(target) + `:`).Match(mk) {
				return fmt.Errorf("the Makefile has no target %q", target)
			}
		}
	default:
		if strings.HasPrefix(w[0], "scripts/") {
			if _, err := os.Stat(filepath.Join(h.root, w[0])); err != nil {
				return err
			}
		}
	}
	return nil
}

func (h *docHelp) checkKbsctl(w []string) error {
	global, err := h.flags(h.kbsctl)
	if err != nil {
		return err
	}
	i := 0
	for ; i < len(w) && strings.HasPrefix(w[i], "-"); i++ {
		name, _, hasValue := strings.Cut(strings.TrimLeft(w[i], "-"), "=")
		takes, ok := global[name]
		if !ok {
			return fmt.Errorf("kbsctl has no global flag --%s", name)
		}
		if takes && !hasValue {
			i++
		}
	}
	if i == len(w) {
		return nil
	}
	cmd := []string{w[i]}
	if subcommands[w[i]] && i+1 < len(w) {
		cmd = append(cmd, w[i+1])
	}
	f, err := h.flags(h.kbsctl, cmd...)
	if err != nil {
		return err
	}
	return checkFlags("kbsctl "+strings.Join(cmd, " "), w[i+len(cmd):], f)
}

// checkFlags checks that every flag in args is one of flags.
func checkFlags(what string, args []string, flags map[string]bool) error {
	for _, a := range args {
		if !strings.HasPrefix(a, "-") || a == "-" || strings.HasPrefix(a, "$") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if _, ok := flags[name]; !ok {
			return fmt.Errorf("%s has no flag --%s", what, name)
		}
	}
	return nil
}

// TestDocsConventions checks the parts of TestDocs that decide what runs
// and what a skipped block must still satisfy.
func TestDocsConventions(t *testing.T) {
	dir := t.TempDir()
	md := filepath.Join(dir, "doc.md")
	os.WriteFile(md, []byte("# t\n\n<!-- docs-test: setup\ncp a b\n-->\n```sh\nkbsctl verify \\\n  --manifest m.json   # verify\n"+
		"x=$(kbsctl --json key ls |\n  wc -l)\n```\n<!-- docs-test: skip production -->\n```sh\nkbsd --data /d --tee snp\n```\n```json\n{}\n```\n"), 0o644)
	d, err := parseDoc(md)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.blocks) != 3 || !d.blocks[0].setup || d.blocks[2].skip != "production" ||
		strings.Join(d.blocks[1].lines, "|") != "kbsctl verify    --manifest m.json|x=$(kbsctl --json key ls |   wc -l)" {
		t.Fatalf("parseDoc = %+v", d.blocks)
	}
	for _, bad := range []string{
		"```\nkbsctl verify --manifest m.json\n```\n",
		"<!-- docs-test: skip -->\n```sh\nls\n```\n",
		"<!-- docs-test: run fast -->\n",
		"<!-- docs-test: skip x -->\n```json\n{}\n```\n",
	} {
		os.WriteFile(md, []byte(bad), 0o644)
		if _, err := parseDoc(md); err == nil {
			t.Errorf("parseDoc accepted %q", bad)
		}
	}
	if args, data, ok := brokerStart("bin/kbsd --dev --data kbs-tdx --listen-tcp 127.0.0.1:8443 --tee tdx"); !ok || data != "kbs-tdx" ||
		strings.Join(args, " ") != "--dev --tee tdx --listen-tcp 127.0.0.1:0" {
		t.Errorf("brokerStart = %q, %q, %v", args, data, ok)
	}
	if args, data, ok := brokerStart("make run"); !ok || data != "kbs-dev" || strings.Join(args, " ") != "--dev --listen-tcp 127.0.0.1:0" {
		t.Errorf("brokerStart(make run) = %q, %q, %v: want a free port, not make run's 8443", args, data, ok)
	}
	if _, _, ok := brokerStart("kbsd --data /var/lib/kbs --tee snp"); ok {
		t.Error("a production kbsd counts as a dev broker start")
	}

	root, _ := filepath.Abs("../..")
	h := &docHelp{kbsctl: kbsctlBinary(t), kbsd: kbsdBin, root: root}
	for _, tt := range []struct {
		line string
		ok   bool
	}{
		{"kbsctl --addr https://x:1 --state ~/s audit --note-key K --csv", true},
		{"kbsctl key get --manifest m --tee snp --id a --out /run/keys", true},
		{"kbsctl key get --manifest m --tee snp --id a --dir /run/keys", false},
		{"kbsctl --adr x key ls", false},
		{"kbsd --data /d --manifest m --tee snp [--manifest-sig a.sig] --log-format json", true},
		{"kbsd --data /d --tea snp", false},
		{"make test-witness", true},
		{"make test-withess", false},
		{"scripts/witness.sh up dir", true},
		{"scripts/nothing.sh", false},
		{"cosign sign-blob --key k f", true},
	} {
		if err := h.check(tt.line); (err == nil) != tt.ok {
			t.Errorf("check(%q) = %v, want ok %v", tt.line, err, tt.ok)
		}
	}
}
