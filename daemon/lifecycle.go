package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"

	"github.com/kbs-dev/kbs/kbs"
	"github.com/kbs-dev/kbs/kbs/attest"
	kbsclient "github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/manifest"
	"github.com/kbs-dev/kbs/tlog"
)

// frontend serves kbsd's listeners with a handler and a TLS certificate
// that can change while it serves: a recovering broker's first, then the
// broker's once its master key is back.
type frontend struct {
	c       *Config
	logger  hclog.Logger
	handler atomic.Pointer[http.Handler]
	cert    atomic.Pointer[tls.Certificate]
	servers []*http.Server
	addrs   []string
	errc    chan error
	// tcpLimits and unixLimits bound the listeners' connections
	// (kbs.LimitListener); limited are the listeners so bounded, by name.
	tcpLimits, unixLimits kbs.ConnLimits
	limited               map[string]*kbs.LimitedListener
}

func newFrontend(c *Config, logger hclog.Logger) *frontend {
	return &frontend{c: c, logger: logger, errc: make(chan error, 2)}
}

func (f *frontend) set(h http.Handler, cert *tls.Certificate) {
	f.handler.Store(&h)
	f.cert.Store(cert)
}

func (f *frontend) started() bool { return f.servers != nil }

// start serves unixLn and tcpLn (either may be nil) with the current
// handler and certificate.
func (f *frontend) start(unixLn, tcpLn net.Listener) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { (*f.handler.Load()).ServeHTTP(w, r) })
	// newServer serves ln with its connections bounded by lim.
	f.limited = map[string]*kbs.LimitedListener{}
	newServer := func(ln net.Listener, lim kbs.ConnLimits) (*http.Server, net.Listener) {
		lln := kbs.LimitListener(ln, lim)
		f.limited[ln.Addr().Network()] = lln
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       f.c.IdleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
			ConnContext:       kbs.ConnContext,
			ConnState:         lln.ConnState,
			ErrorLog:          f.logger.Named("http").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
		}, lln
	}
	f.servers = []*http.Server{}
	if unixLn != nil {
		srv, ln := newServer(unixLn, f.unixLimits)
		f.servers = append(f.servers, srv)
		go func() { f.errc <- srv.Serve(ln) }()
		f.addrs = append(f.addrs, "unix://"+f.c.ListenUnix)
	}
	if tcpLn != nil {
		srv, ln := newServer(tcpLn, f.tcpLimits)
		srv.TLSConfig = &tls.Config{
			MinVersion:     tls.VersionTLS13,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return f.cert.Load(), nil },
		}
		f.servers = append(f.servers, srv)
		go func() { f.errc <- srv.ServeTLS(ln, "", "") }()
		f.addrs = append(f.addrs, "https://"+ln.Addr().String())
	}
}

// shutdown stops accepting and lets in-flight requests finish until ctx
// is done.
func (f *frontend) shutdown(ctx context.Context) {
	for _, srv := range f.servers {
		if err := srv.Shutdown(ctx); err != nil {
			f.logger.Warn("in-flight requests did not finish in time", "error", err)
			srv.Close()
		}
	}
}

// joinByHandover takes over from the running broker at c.HandoverFrom:
// it verifies that broker against the manifest the operator trusts
// (c.Manifest, following the signed chain to the active version), has it
// hand its master key over to this process (which attests with issuer),
// and writes the broker's database snapshot to DATA/kbs.db. The caller
// opens the store with the master key, checks the log it holds against the
// receipt's checkpoint (checkJoined) and records the takeover.
//
// The data directory must not hold a database: a newcomer starts from the
// running broker's, and an existing one would be another log.
func joinByHandover(ctx context.Context, c *Config, issuer attest.Issuer, verifier attest.Verifier, logger hclog.Logger) (*kbsclient.Handover, *kbsclient.Broker, error) {
	dbFile := filepath.Join(c.Data, "kbs.db")
	if _, err := os.Stat(dbFile); err == nil {
		return nil, nil, fmt.Errorf("--handover-from: %s exists: a newcomer takes over the running broker's database, so start it on an empty data directory (a database here would be another log)", dbFile)
	}
	body, err := os.ReadFile(c.Manifest)
	if err != nil {
		return nil, nil, fmt.Errorf("couldn't read the manifest: %w", err)
	}
	mine, err := manifest.Parse(body)
	if err != nil {
		return nil, nil, fmt.Errorf("--manifest %s: %w", c.Manifest, err)
	}
	cl, err := kbsclient.New(kbsclient.Config{Addr: c.HandoverFrom, Verifier: verifier})
	if err != nil {
		return nil, nil, fmt.Errorf("--handover-from: %w", err)
	}
	b, err := cl.VerifyBroker(ctx, mine, kbsclient.VerifyOptions{Follow: true})
	if err != nil {
		return nil, nil, fmt.Errorf("--handover-from %s: the running broker does not verify against %s: %w", c.HandoverFrom, c.Manifest, err)
	}
	switch {
	case b.Recovering:
		return nil, nil, fmt.Errorf("--handover-from %s: that broker is recovering its master key and cannot hand it over", c.HandoverFrom)
	case b.HandedOver:
		return nil, nil, fmt.Errorf("--handover-from %s: that broker has handed over already; take over from its successor", c.HandoverFrom)
	}
	logger.Info("verified the running broker; asking for its master key", "addr", c.HandoverFrom, "manifest_version", b.Manifest.Version(), "checkpoint_size", b.Checkpoint.Size)
	tmp := dbFile + ".handover"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, err
	}
	defer os.Remove(tmp)
	h, err := b.Handover(ctx, issuer, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if h != nil {
			clear(h.Master)
		}
		return nil, nil, fmt.Errorf("handover from %s: %w", c.HandoverFrom, err)
	}
	if err := os.Rename(tmp, dbFile); err != nil {
		clear(h.Master)
		return nil, nil, err
	}
	if d, err := os.Open(c.Data); err == nil {
		d.Sync()
		d.Close()
	}
	logger.Info("received the master key and the database", "handover_index", h.Receipt.Index, "from_platform", h.From.Platform)
	return h, b, nil
}

// checkJoined checks what a handover brought against what the running
// broker attested and logged: the identity in the database carries the
// note key of the log that broker attested, and the log in the database is
// exactly the tree of the handover receipt's checkpoint (so it ends with
// the handover entry, and is the log clients followed).
func checkJoined(ctx context.Context, h *kbsclient.Handover, from *kbsclient.Broker, id *kbs.Identity, tl tlog.Backend) error {
	if id.NoteKey != from.NoteKey {
		return fmt.Errorf("the database's identity has note key %s, the running broker attested %s", id.NoteKey, from.NoteKey)
	}
	cp, err := tl.Checkpoint(ctx)
	if err != nil {
		return err
	}
	want := h.Receipt.Checkpoint
	if cp.Size != want.Size || cp.Hash != want.Hash {
		return fmt.Errorf("the database's log is the tree of size %d (%x), the handover entry's checkpoint is size %d (%x): the snapshot is not the log that handed over", cp.Size, cp.Hash[:8], want.Size, want.Hash[:8])
	}
	return nil
}

// recoverMaster serves a recovering broker on the listeners until the
// holders' shares restore the master key (or ctx ends: then it returns
// ctx's error).
func recoverMaster(ctx context.Context, c *Config, db *bbolt.DB, issuer attest.Issuer, fe *frontend, unixLn, tcpLn net.Listener, logger hclog.Logger) (*kbs.RecoveryResult, string, error) {
	vkey, err := kbs.LoggedNoteKey(db)
	if err != nil {
		return nil, "", err
	}
	if vkey == "" {
		return nil, "", errors.New("the database records no log key: it was never a broker's, or it predates recovery")
	}
	signer, err := kbs.ReadOnlySigner(vkey)
	if err != nil {
		return nil, "", err
	}
	tl, err := openLog(ctx, c, db, signer, logger)
	if err != nil {
		return nil, "", fmt.Errorf("couldn't open the transparency log: %w", err)
	}
	defer tl.Close()
	rec, err := kbs.NewRecovery(ctx, kbs.RecoveryConfig{
		DB: db, Log: tl, NoteKey: vkey, Issuer: issuer, Simulated: c.Dev,
		Logger: logger.Named("recovery"), AttestationRate: c.AttestationRate, AttestationBurst: int(2 * c.AttestationRate),
		Witnesses: witnessOptions(c),
	})
	if errors.Is(err, kbs.ErrNoShares) {
		return nil, "", fmt.Errorf("%w: with no peer to take over from, its keys are lost. A broker whose manifest names recovery holders can be recovered; one that runs can hand over (--handover-from)", err)
	}
	if err != nil {
		return nil, "", err
	}
	defer rec.Close()
	fe.set(rec.Handler(), rec.TLSCertificate())
	fe.start(unixLn, tcpLn)
	k, holders := rec.Threshold()
	logger.Warn("kbsd recovering: the master key cannot be unsealed here; waiting for the recovery holders' shares (kbsctl recover)",
		"listen", strings.Join(fe.addrs, " "), "threshold", k, "holders", strings.Join(holders, ","), "note_key", vkey)
	select {
	case err := <-fe.errc:
		return nil, "", fmt.Errorf("listener failed: %w", err)
	default:
	}
	res, err := rec.Wait(ctx)
	if err != nil {
		return nil, "", err
	}
	logger.Info("the recovery holders' shares restored the master key", "holders", strings.Join(res.Recovered.Holders, ","))
	return res, vkey, nil
}
