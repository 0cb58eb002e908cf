package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func parse(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("kbsd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return parseFlags(fs, args)
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "kbsd.json")
	os.WriteFile(file, []byte(`{"data": "/var/lib/kbs", "tee": "snp", "manifest": "m.json",
		"manifest-sig": ["a.sig", "b.sig"], "log-format": "json", "challenge-ttl": "30s", "offline": true}`), 0o600)
	c, err := parse(t, "--config", file, "--log-format", "text")
	if err != nil {
		t.Fatal(err)
	}
	if c.Data != "/var/lib/kbs" || c.TEE != "snp" || c.LogFormat != "text" || c.NonceTTL != 30*time.Second ||
		!c.Offline || !reflect.DeepEqual(c.ManifestSigs, []string{"a.sig", "b.sig"}) {
		t.Fatalf("config = %+v", c)
	}
	for _, bad := range []string{`{"nope": 1}`, `{"config": "x"}`, `[1]`, `{"tee": {"a": 1}}`, `{"max-challenges": "many"}`} {
		os.WriteFile(file, []byte(bad), 0o600)
		if _, err := parse(t, "--config", file, "--dev"); err == nil {
			t.Errorf("config file %s accepted", bad)
		}
	}
}

func TestFlagChecks(t *testing.T) {
	c, err := parse(t, "--dev")
	if err != nil || c.Data != "kbs-dev" || c.TEE != "snp" || c.ListenTCP != "127.0.0.1:8443" || !c.Offline {
		t.Fatalf("--dev defaults: %+v, %v", c, err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--data", "d", "--tee", "sim"}, "development only"},
		{[]string{"--data", "d"}, "--tee"},
		{[]string{"--dev", "--listen-unix", "none", "--listen-tcp", "none"}, "nothing to listen on"},
		{[]string{"--dev", "--log-format", "xml"}, "log-format"},
		{[]string{"--dev", "extra"}, "unexpected arguments"},
		{[]string{"--dev", "--tee", "sgx"}, "want snp or tdx"},
	} {
		if _, err := parse(t, tt.args...); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: %v, want an error mentioning %q", tt.args, err, tt.want)
		}
	}
}
