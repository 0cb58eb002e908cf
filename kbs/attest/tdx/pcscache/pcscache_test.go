package pcscache

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/pcs"
)

func TestFileName(t *testing.T) {
	for _, tt := range []struct{ url, want string }{
		{pcs.TcbInfoURL("50806F000000"), "tcbinfo-50806f000000.json"},
		{pcs.QeIdentityURL(), "qeidentity.json"},
		{pcs.PckCrlURL("platform"), "pckcrl-platform.json"},
		{pcs.PckCrlURL("processor"), "pckcrl-processor.json"},
		{"https://certificates.trustedservices.intel.com/IntelSGXRootCA.der", "crl-719dd8c87977f63c.json"},
	} {
		if got := FileName(tt.url); got != tt.want {
			t.Errorf("FileName(%q) = %q, want %q", tt.url, got, tt.want)
		}
	}
	// Not an FMSPC: hashed like any other URL, never a path.
	if got := FileName(pcs.TcbInfoURL("../../etc/x")); filepath.Base(got) != got || got[:4] != "crl-" {
		t.Errorf("FileName(TCB info URL of a path) = %q, want a crl-<hash> file name", got)
	}
}

func TestReadWrite(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cache")
	u := pcs.QeIdentityURL()
	if _, err := Read(dir, u); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Read(empty cache) = %v, want os.ErrNotExist", err)
	}
	if _, err := Read("", u); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Read(no directory) = %v, want os.ErrNotExist", err)
	}
	r := &Response{URL: u, Header: map[string][]string{"Sgx-Enclave-Identity-Issuer-Chain": {"chain"}}, Body: []byte("{}"),
		Fetched: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	if err := Write(dir, r); err != nil {
		t.Fatal(err)
	}
	got, err := Read(dir, u)
	if err != nil || !reflect.DeepEqual(got, r) {
		t.Errorf("Read after Write = %+v, %v; want %+v", got, err, r)
	}
	// A file that holds another URL's response is refused.
	other := *r
	other.URL = pcs.PckCrlURL("platform")
	b, _ := os.ReadFile(filepath.Join(dir, FileName(u)))
	if err := os.WriteFile(filepath.Join(dir, FileName(other.URL)), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(dir, other.URL); err == nil {
		t.Error("Read accepted a file holding another URL's response")
	}
}

// FuzzRead: the cache is on the host's disk, so its files are untrusted.
// Reading one never panics, and what it accepts stores and reads back the
// same.
func FuzzRead(f *testing.F) {
	u := pcs.QeIdentityURL()
	f.Add([]byte(`{"url":"` + u + `","body":"e30=","fetched":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"url":"` + u + `","header":{"A":["b"]},"body":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, FileName(u)), data, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Read(dir, u)
		if err != nil {
			return
		}
		if r.URL != u {
			t.Fatalf("Read returned the response of %q", r.URL)
		}
		dir2 := t.TempDir()
		if err := Write(dir2, r); err != nil {
			t.Fatal(err)
		}
		back, err := Read(dir2, u)
		if err != nil || !reflect.DeepEqual(back.Header, r.Header) || string(back.Body) != string(r.Body) || !back.Fetched.Equal(r.Fetched) {
			t.Fatalf("round trip: %+v, %v; want %+v", back, err, r)
		}
	})
}
