package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/kbs-dev/kbs/kbs"
	"github.com/kbs-dev/kbs/kbs/attest"
	"github.com/kbs-dev/kbs/kbs/attest/cvm"
	"github.com/kbs-dev/kbs/kbs/attest/verify"
	kbsclient "github.com/kbs-dev/kbs/kbs/client"
	"github.com/kbs-dev/kbs/kbs/keystore"
)

// HTTP server limits. Bodies are limited per endpoint by the broker.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second
	maxHeaderBytes    = 16 << 10
)

// File descriptors: what RLIMIT_NOFILE allows is shared out ahead of time.
// reservedFiles are kept for kbsd's own files (database, log, cache,
// vendor fetches, the Trillian connection); of the rest, the TCP listener
// gets at most half and the unix socket a quarter, so that a flood of TCP
// connections leaves local workers and kbsd's files their share.
const (
	reservedFiles      = 64
	defaultMaxTCP      = 4096
	defaultMaxUnix     = 1024
	defaultMaxPerPeer  = 128
	minUsableFileLimit = reservedFiles + 16
)

// connLimits returns the limits of the TCP and unix listeners: c's, or
// derived from the file limit nofile.
func connLimits(c *Config, nofile uint64) (tcp, unix kbs.ConnLimits, err error) {
	if nofile < minUsableFileLimit {
		return tcp, unix, fmt.Errorf("the open file limit (RLIMIT_NOFILE, ulimit -n) is %d: kbsd needs at least %d", nofile, minUsableFileLimit)
	}
	avail := int(min(nofile-reservedFiles, 1<<20))
	tcp.Max, unix.Max = c.MaxTCPConns, c.MaxUnixConns
	if tcp.Max == 0 {
		tcp.Max = min(defaultMaxTCP, avail/2)
	}
	if unix.Max == 0 {
		unix.Max = min(defaultMaxUnix, avail/4)
	}
	if tcp.Max+unix.Max > avail {
		return tcp, unix, fmt.Errorf("--max-tcp-conns %d and --max-unix-conns %d together exceed the %d file descriptors RLIMIT_NOFILE (%d) leaves kbsd beyond its own %d", tcp.Max, unix.Max, avail, nofile, reservedFiles)
	}
	for _, l := range []*kbs.ConnLimits{&tcp, &unix} {
		l.PerPeer = c.MaxConnsPerPeer
		if l.PerPeer == 0 {
			l.PerPeer = max(1, min(defaultMaxPerPeer, l.Max/4))
		}
	}
	return tcp, unix, nil
}

// fileLimit returns the soft RLIMIT_NOFILE (Go's runtime raised it to the
// hard limit at start-up).
func fileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, fmt.Errorf("couldn't read RLIMIT_NOFILE: %w", err)
	}
	return rl.Cur, nil
}

func newLogger(c *Config) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       "kbsd",
		Level:      hclog.LevelFromString(c.LogLevel),
		JSONFormat: c.LogFormat == "json",
		Output:     os.Stderr,
	})
}

// serve runs kbsd until ctx is done. Start-up order: listeners (bound, not
// yet serving: a busy address fails before anything is created or logged),
// data directory, database, key store (unsealing the master key), identity,
// log, broker (which rebuilds its state from the log and refuses a database
// that disagrees with it), then serving. Shutdown order is the reverse: stop
// accepting, drain, write the broker's state index, close the log, close the
// database.
func serve(ctx context.Context, c *Config) error {
	logger := newLogger(c)
	if c.ListenUnix == "" {
		c.ListenUnix = filepath.Join(c.Data, "kbs.sock")
	}
	nofile, err := fileLimit()
	if err != nil {
		return err
	}
	tcpLimits, unixLimits, err := connLimits(c, nofile)
	if err != nil {
		return err
	}
	unixLn, tcpLn, err := bindListeners(c)
	if err != nil {
		return err
	}
	defer func() {
		for _, ln := range []net.Listener{unixLn, tcpLn} {
			if ln != nil {
				ln.Close()
			}
		}
	}()
	if err := os.MkdirAll(c.Data, 0o700); err != nil {
		return fmt.Errorf("couldn't create the data directory: %w", err)
	}
	if c.CacheDir == "" {
		c.CacheDir = filepath.Join(c.Data, "cache")
	}

	var (
		sealer   keystore.Sealer
		issuer   attest.Issuer
		verifier attest.Verifier
		dev      *devSetup
	)
	if c.Dev {
		dev, err = prepareDev(ctx, c, logger)
		if err != nil {
			return err
		}
		sealer, issuer, verifier = dev.sealer, dev.issuer, dev.verifier
		if c.Manifest == "" && !dev.restore {
			c.Manifest = dev.manifestFile
		}
	} else {
		if sealer, err = keystore.NewSealer(c.TEE, ""); err != nil {
			return err
		}
		if issuer, err = hardwareIssuer(c.TEE); err != nil {
			return err
		}
		if verifier, err = verify.New(verify.Options{CacheDir: c.CacheDir, Offline: c.Offline, Collateral: c.Collateral}); err != nil {
			return fmt.Errorf("couldn't set up evidence verification: %w", err)
		}
	}

	var manifestBody []byte
	var manifestSigs []string
	if c.Manifest != "" {
		if manifestBody, manifestSigs, err = readManifest(c.Manifest, c.ManifestSigs); err != nil {
			return err
		}
	}

	// A newcomer takes over the running broker's master key and database
	// before anything else is opened (docs/operating.md, "Upgrade by
	// handover").
	var joined *kbsclient.Handover
	var from *kbsclient.Broker
	if c.HandoverFrom != "" {
		if joined, from, err = joinByHandover(ctx, c, issuer, verifier, logger); err != nil {
			return err
		}
		defer clear(joined.Master)
	}

	db, err := bbolt.Open(filepath.Join(c.Data, "kbs.db"), 0o600, &bbolt.Options{
		Timeout:      2 * time.Second,
		FreelistType: bbolt.FreelistMapType,
	})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return fmt.Errorf("couldn't open %s: another kbsd holds it", filepath.Join(c.Data, "kbs.db"))
		}
		return fmt.Errorf("couldn't open the database: %w", err)
	}
	defer func() {
		if err := db.Close(); err != nil {
			logger.Error("couldn't close the database", "error", err)
		}
	}()
	fe := newFrontend(c, logger)
	fe.tcpLimits, fe.unixLimits = tcpLimits, unixLimits
	logger.Debug("connection limits", "open_files", nofile, "tcp", tcpLimits.Max, "unix", unixLimits.Max,
		"tcp_per_peer", tcpLimits.PerPeer, "unix_per_peer", unixLimits.PerPeer)
	defer func() {
		if fe.started() {
			sctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
			defer cancel()
			fe.shutdown(sctx)
		}
	}()
	var (
		store     *keystore.Store
		recovered *kbs.Recovered
		recNoteKy string
	)
	switch {
	case joined != nil:
		store, err = keystore.OpenWithMaster(ctx, db, sealer, joined.Master)
	default:
		store, err = keystore.Open(ctx, db, sealer)
		if errors.Is(err, keystore.ErrSealer) {
			// The master key cannot be unsealed here: another
			// measurement or machine, or a TEE without a sealing key.
			logger.Warn("the key store's master key cannot be unsealed", "error", err)
			res, vkey, rerr := recoverMaster(ctx, c, db, issuer, fe, unixLn, tcpLn, logger)
			if rerr != nil {
				if ctx.Err() != nil {
					logger.Info("shutting down while recovering")
					return nil
				}
				return rerr
			}
			defer clear(res.Master)
			recovered, recNoteKy = &res.Recovered, vkey
			store, err = keystore.OpenWithMaster(ctx, db, sealer, res.Master)
		}
	}
	if err != nil {
		return fmt.Errorf("couldn't open the key store: %w", err)
	}
	id, created, err := kbs.LoadIdentity(ctx, store)
	if err != nil {
		return err
	}
	if created {
		logger.Info("created broker identity", "note_key", id.NoteKey, "tls_spki_sha256", id.TLSSPKISHA256)
	}
	if recovered != nil && id.NoteKey != recNoteKy {
		return fmt.Errorf("the recovered identity's note key %s is not the one the recovery attested (%s): the database was changed during the recovery", id.NoteKey, recNoteKy)
	}
	tl, err := openLog(ctx, c, db, id.Checkpoints, logger)
	if err != nil {
		return fmt.Errorf("couldn't open the transparency log: %w", err)
	}
	logClosed := false
	closeLog := func() {
		if logClosed {
			return
		}
		logClosed = true
		if err := tl.Close(); err != nil {
			logger.Error("couldn't close the log", "error", err)
		}
	}
	defer closeLog()
	if joined != nil {
		if err := checkJoined(ctx, joined, from, id, tl); err != nil {
			return fmt.Errorf("handover: %w; nothing was taken over (remove %s before trying again)", err, filepath.Join(c.Data, "kbs.db"))
		}
		if err := kbs.RecordTakeover(store, joined.Receipt.Index); err != nil {
			return err
		}
		logger.Info("took over from the running broker; stop it once this kbsd serves", "handover_index", joined.Receipt.Index, "from", c.HandoverFrom)
	}

	broker, err := kbs.New(ctx, kbs.Config{
		DB:                db,
		Log:               tl,
		Keys:              store,
		Identity:          id,
		Issuer:            issuer,
		Verifier:          verifier,
		Simulated:         c.Dev,
		InitialManifest:   initialManifest(manifestBody, joined != nil),
		InitialSignatures: manifestSigs,
		Recovered:         recovered,
		Logger:            logger.Named("broker"),
		NonceTTL:          c.NonceTTL,
		MaxNonces:         c.MaxChallenges,
		AttestationRate:   c.AttestationRate,
		AttestationBurst:  burst(c.AttestationRate),
		ChallengeRate:     c.ChallengeRate,
		ChallengeBurst:    burst(c.ChallengeRate),
		ManifestRate:      c.ManifestRate,
		ManifestBurst:     burst(c.ManifestRate),
		PeerShare:         c.PeerShare,
		Witnesses:         witnessOptions(c),
	})
	if errors.Is(err, kbs.ErrInitialSignatures) {
		return fmt.Errorf("%w\nsign it with enough owner keys, e.g.\n  kbsctl manifest sign --key OWNER.key %[2]s > %[2]s.sig\n  openssl dgst -sha256 -sign OWNER.key %[2]s | base64 -w0 > %[2]s.sig\nand pass each file with --manifest-sig (FILE.sig is read by default),\nor pass no signature at all to trust version 1 by your decision alone", err, c.Manifest)
	}
	var mismatch *kbs.InitialManifestError
	if errors.As(err, &mismatch) {
		return manifestMismatch(c, dev, mismatch)
	}
	var diff *kbs.StoreMismatchError
	if errors.As(err, &diff) {
		return fmt.Errorf("%w\nkbsd does not start on a database that disagrees with its log: a key it would hand out is not the one the log says. Restore %s from the copy that belongs with this log (one taken while kbsd was stopped, with the log in it); editing records by hand cannot make them match, since the log names each key's sealed record by its digest", err, filepath.Join(c.Data, "kbs.db"))
	}
	if err != nil {
		return err
	}
	if dev != nil {
		if err := dev.restoreManifest(broker, logger); err != nil {
			return err
		}
	}
	if sealer.Name() == (keystore.NoSealer{}).Name() && !broker.Recoverable() {
		logger.Warn("this TEE has no sealing key and the active manifest names no recovery holders: the master key lives in memory only, and an unplanned restart loses every key; hand over to a new instance before each restart (--handover-from), or publish a manifest version that names recovery holders")
	}
	fe.set(broker.Handler(), &id.TLS)
	if !fe.started() {
		fe.start(unixLn, tcpLn)
	}
	for name, l := range fe.limited {
		broker.ReportListener(name, l)
	}
	addrs := fe.addrs
	hash, version := broker.ActiveManifest()
	logger.Info("kbsd serving", "listen", strings.Join(addrs, " "), "manifest_version", version, "manifest_hash", hash,
		"note_key", id.NoteKey, "simulated", c.Dev)
	if dev != nil && c.HandoverFrom == "" {
		var steps strings.Builder
		dev.printNextSteps(&steps, c, addrs, id.NoteKey)
		if c.LogFormat == "json" {
			// Keep stderr one JSON object per line.
			logger.Info("development mode: next steps", "text", steps.String())
		} else {
			os.Stderr.WriteString(steps.String())
		}
	}

	var serveErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case serveErr = <-fe.errc:
		logger.Error("listener failed", "error", serveErr)
	case <-broker.Halted():
		// The broker's state may no longer be its log's; only a start
		// settles it. Exit non-zero so that a supervisor restarts kbsd.
		serveErr = fmt.Errorf("stopping: %w; the next start settles the broker's state against the log", broker.HaltCause())
		logger.Error("broker halted", "error", serveErr)
	}
	// 1. Stop accepting and fail health checks; 2. finish in-flight requests.
	broker.Close()
	sctx, cancel := context.WithTimeout(context.Background(), c.ShutdownTimeout)
	defer cancel()
	fe.shutdown(sctx)
	fe.servers = nil
	// 3. Write the broker's state index (the next start replays nothing),
	// 4. close the log: appends in flight complete durably or fail; the
	// latest checkpoint is durable with the last entry. 5. The deferred
	// db.Close runs last.
	if err := broker.Shutdown(sctx); err != nil {
		logger.Error("couldn't write the state index; the next start replays the log since the last one", "error", err)
	}
	if cp, err := tl.Checkpoint(context.Background()); err == nil {
		logger.Info("final checkpoint", "size", cp.Size)
	}
	closeLog()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// bindListeners binds the listeners c names (nil for "none") before
// anything else happens. The unix socket's directory is created only when
// it is the data directory (nobody can listen in a directory that does not
// exist yet). The unix socket file is removed when its listener closes.
func bindListeners(c *Config) (unixLn, tcpLn net.Listener, err error) {
	if c.ListenTCP != "none" {
		if tcpLn, err = net.Listen("tcp", c.ListenTCP); err != nil {
			return nil, nil, fmt.Errorf("couldn't listen on %s: %w", c.ListenTCP, err)
		}
	}
	if c.ListenUnix == "none" {
		return nil, tcpLn, nil
	}
	if filepath.Dir(c.ListenUnix) == filepath.Clean(c.Data) {
		if err = os.MkdirAll(c.Data, 0o700); err != nil {
			err = fmt.Errorf("couldn't create the data directory: %w", err)
		}
	}
	if err == nil {
		unixLn, err = listenUnix(c.ListenUnix)
	}
	if err != nil {
		if tcpLn != nil {
			tcpLn.Close()
		}
		return nil, nil, err
	}
	return unixLn, tcpLn, nil
}

// listenUnix listens on a unix socket readable and writable by the owner
// only, replacing a stale socket file left by a crash.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			return nil, fmt.Errorf("%s: another kbsd is listening", path)
		}
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("couldn't listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// burst is the bucket size of a budget of rate requests per second: twice
// the rate, at least 1.
func burst(rate float64) int { return max(1, int(2*rate)) }

// readManifest reads the manifest and its signature files (default
// FILE.sig when it exists).
func readManifest(file string, sigFiles []string) ([]byte, []string, error) {
	body, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("couldn't read the manifest: %w", err)
	}
	if len(sigFiles) == 0 {
		if _, err := os.Stat(file + ".sig"); err == nil {
			sigFiles = []string{file + ".sig"}
		}
	}
	var sigs []string
	for _, f := range sigFiles {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, fmt.Errorf("couldn't read manifest signature: %w", err)
		}
		sigs = append(sigs, strings.TrimSpace(string(raw)))
	}
	return body, sigs, nil
}

// hardwareIssuer returns the issuer of the broker's own evidence on real
// hardware: configfs-tsm, or /dev/sev-guest on older kernels. The platform
// it finds must be the one --tee names.
func hardwareIssuer(tee string) (attest.Issuer, error) {
	iss, err := cvm.Detect()
	if err != nil {
		return nil, fmt.Errorf("self-attestation: %w (kbsd must run inside a confidential VM; use --dev elsewhere)", err)
	}
	if string(iss.Platform()) != tee {
		return nil, fmt.Errorf("self-attestation: this machine is a %s guest, not --tee %s", iss.Platform(), tee)
	}
	return iss, nil
}

// initialManifest is the version 1 New gets: none for a newcomer, whose
// --manifest is the version it verified the running broker against, and
// whose database holds the chain.
func initialManifest(body []byte, joined bool) []byte {
	if joined {
		return nil
	}
	return body
}

// witnessOptions returns the --witness-* flags as kbs.WitnessOptions.
func witnessOptions(c *Config) kbs.WitnessOptions {
	return kbs.WitnessOptions{Timeout: c.WitnessTimeout, Wait: c.WitnessWait, Refresh: c.WitnessRefresh, Retry: c.WitnessRetry}
}
