package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Config is kbsd's configuration: command-line flags, optionally preset by
// a JSON config file whose keys are the flag names.
type Config struct {
	// Dev runs the development broker: simulated TEE, generated keys and
	// manifest in Data. Never in production.
	Dev bool
	// Data is the data directory. Required without Dev; default ./kbs-dev
	// with Dev.
	Data string
	// Manifest is the version-1 manifest file. Required on a first
	// production start; optional later (it must then be the version 1 the
	// broker started from).
	Manifest string
	// ManifestSigs are files holding base64 owner signatures over
	// Manifest (version 1). Optional; default Manifest + ".sig" when it
	// exists. Without any, version 1 is trusted by the operator's decision
	// (Manifest) alone.
	ManifestSigs []string
	// TEE is the platform kbsd runs on: "snp" or "tdx". TDX has no sealing
	// key: its master key comes from a peer (HandoverFrom) or from the
	// recovery holders at every start but the first. With Dev it picks the
	// simulated platform; default "snp".
	TEE string
	// ListenUnix is the unix socket path. Optional; default Data/kbs.sock.
	// "none" disables it.
	ListenUnix string
	// ListenTCP is the TLS listen address. Optional; default
	// 127.0.0.1:8443. "none" disables it.
	ListenTCP string
	// LogBackend selects the transparency log backend: "bolt" (embedded,
	// default) or "trillian" (a Trillian log tree; docs/scale-out.md).
	LogBackend string
	// TrillianAddr and TrillianTreeID name the Trillian log server (gRPC
	// host:port) and tree. Required with LogBackend "trillian".
	TrillianAddr   string
	TrillianTreeID int64
	// TrillianState is where kbsd keeps its last signed checkpoint over the
	// Trillian tree. Optional; default Data/trillian-state.json.
	TrillianState string
	// TrillianAdopt lets kbsd start without a state file on a tree that
	// already has leaves (it replays and trusts the tree).
	TrillianAdopt bool
	// TrillianTLSCA is a PEM file of CA certificates: with it kbsd speaks
	// TLS to Trillian and checks the server's certificate against them.
	// Optional; default plaintext gRPC (loopback or a private network).
	TrillianTLSCA string
	// LogFormat is "text" (default) or "json"; LogLevel is trace, debug,
	// info (default), warn, error or off (any other value is refused).
	LogFormat string
	LogLevel  string
	// CacheDir caches vendor certificates and collateral. Optional; default
	// Data/cache.
	CacheDir string
	// Offline forbids fetching certificates and revocation lists from the
	// vendors: evidence must carry its certificates. Always on with Dev.
	Offline bool
	// Collateral is a collateral bundle directory: Intel PCS responses as
	// served (docs/operating.md). Offline, TDX evidence verifies only with
	// it (or with collateral an earlier online run cached). Optional.
	Collateral string
	// NonceTTL and MaxChallenges tune the challenge table.
	NonceTTL      time.Duration
	MaxChallenges int
	// AttestationRate, ChallengeRate and ManifestRate are the admission
	// budgets (requests per second, bursts twice that) of GET
	// /v1/attestation, POST /v1/release/challenge and PUT /v1/manifest,
	// for all clients together; PeerShare is the part of each one client
	// (a process on the unix socket, a TCP source address) may use.
	AttestationRate float64
	ChallengeRate   float64
	ManifestRate    float64
	PeerShare       float64
	// MaxTCPConns and MaxUnixConns bound the open connections of each
	// listener, MaxConnsPerPeer those of one client on either; 0 derives
	// them from RLIMIT_NOFILE (connLimits). IdleTimeout closes keep-alive
	// connections idle that long.
	MaxTCPConns     int
	MaxUnixConns    int
	MaxConnsPerPeer int
	IdleTimeout     time.Duration
	// HandoverFrom is the address of a running broker (unix://PATH or
	// https://HOST:PORT) whose master key, log and database this kbsd takes
	// over (docs/operating.md, "Upgrade by handover"). Data must not hold a
	// database yet; Manifest is then the manifest the operator trusts (any
	// version of the running broker's chain), against which the running
	// broker is verified. Optional.
	HandoverFrom string
	// SimDir, SimMeasurement and SimDebug choose the simulated TEE with
	// Dev: its directory (default Data/sim; a second broker that takes over
	// from a dev broker uses the first one's), the launch measurement of
	// its evidence (SNP MEASUREMENT or TDX MRTD, 96 hex digits; default the
	// sim's), and a debug guest (which every verifier refuses). Optional.
	SimDir         string
	SimMeasurement string
	SimDebug       bool
	// ShutdownTimeout bounds how long in-flight requests may take to finish
	// on shutdown. Optional; default 10s.
	ShutdownTimeout time.Duration
	// WitnessTimeout, WitnessWait, WitnessRefresh and WitnessRetry tune the
	// work with the witnesses the active manifest names (kbs.WitnessOptions:
	// one add-checkpoint request; how long a receipt waits for the quorum;
	// how often the idle log is resubmitted; how soon a round without a
	// quorum, or the start-up check, is repeated).
	WitnessTimeout time.Duration
	WitnessWait    time.Duration
	WitnessRefresh time.Duration
	WitnessRetry   time.Duration
	// DevWitnesses are "URL,VKEY" pairs (a witness's submission prefix and
	// its cosignature/v1 verifier key) that the dev manifest names, all of
	// them required, when --dev creates it. Only with Dev.
	DevWitnesses []string
}

type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// parseFlags reads the config file (if --config is given) and then the
// flags, which win over the file.
func parseFlags(fs *flag.FlagSet, args []string) (*Config, error) {
	c := &Config{}
	var configFile string
	var sigs, devWitnesses stringList
	fs.StringVar(&configFile, "config", "", "JSON config file whose keys are flag names (flags win)")
	fs.BoolVar(&c.Dev, "dev", false, "development mode: simulated TEE, generated dev keys and manifest (never in production)")
	fs.StringVar(&c.Data, "data", "", "data directory (default ./kbs-dev with --dev)")
	fs.StringVar(&c.Manifest, "manifest", "", "version-1 manifest file (required on first start, except with --dev)")
	fs.Var(&sigs, "manifest-sig", "file with a base64 owner signature over the manifest (repeatable; default MANIFEST.sig)")
	fs.StringVar(&c.TEE, "tee", "", "platform: snp or tdx (with --dev: the simulated platform, default snp)")
	fs.StringVar(&c.ListenUnix, "listen-unix", "", `unix socket path (default DATA/kbs.sock; "none" to disable)`)
	fs.StringVar(&c.ListenTCP, "listen-tcp", "127.0.0.1:8443", `TLS listen address ("none" to disable)`)
	fs.StringVar(&c.LogBackend, "log-backend", "bolt", "transparency log backend: bolt or trillian")
	fs.StringVar(&c.TrillianAddr, "trillian-addr", "", "Trillian log server gRPC address HOST:PORT (with --log-backend trillian)")
	fs.Int64Var(&c.TrillianTreeID, "trillian-tree-id", 0, "Trillian log tree id (with --log-backend trillian)")
	fs.StringVar(&c.TrillianState, "trillian-state", "", "kbsd's last signed checkpoint over the Trillian tree (default DATA/trillian-state.json)")
	fs.StringVar(&c.TrillianTLSCA, "trillian-tls-ca", "", "PEM CA certificates: speak TLS to Trillian and verify its certificate (default plaintext)")
	fs.BoolVar(&c.TrillianAdopt, "trillian-adopt", false, "start without a state file on a non-empty Trillian tree, trusting it (see docs/scale-out.md)")
	fs.StringVar(&c.LogFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: trace, debug, info, warn, error or off")
	fs.StringVar(&c.CacheDir, "cache-dir", "", "cache for vendor certificates and collateral (default DATA/cache)")
	fs.BoolVar(&c.Offline, "offline", false, "never fetch certificates or revocation lists (evidence must carry its certificates)")
	fs.StringVar(&c.Collateral, "collateral", "", "collateral bundle: directory of Intel PCS responses (TDX TCB info, QE identity, CRLs) used offline")
	fs.DurationVar(&c.NonceTTL, "challenge-ttl", 60*time.Second, "lifetime of a release challenge nonce")
	fs.IntVar(&c.MaxChallenges, "max-challenges", 100000, "most pending release challenges")
	fs.Float64Var(&c.AttestationRate, "attestation-rate", 50, "attestation requests per second, all clients together (burst twice that)")
	fs.Float64Var(&c.ChallengeRate, "challenge-rate", 50, "release challenge requests per second, all clients together (burst twice that)")
	fs.Float64Var(&c.ManifestRate, "manifest-rate", 5, "manifest update requests per second, all clients together (burst twice that)")
	fs.IntVar(&c.MaxTCPConns, "max-tcp-conns", 0, "most open TCP connections (0: half of what RLIMIT_NOFILE leaves, at most 4096)")
	fs.IntVar(&c.MaxUnixConns, "max-unix-conns", 0, "most open unix socket connections (0: a quarter of what RLIMIT_NOFILE leaves, at most 1024)")
	fs.IntVar(&c.MaxConnsPerPeer, "max-conns-per-peer", 0, "most open connections of one client (0: a quarter of its listener's, at most 128)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 30*time.Second, "close keep-alive connections idle this long")
	fs.Float64Var(&c.PeerShare, "peer-share", 0.25, "share of each request budget one client (unix socket process, TCP address) may use, 0 to 1")
	fs.StringVar(&c.HandoverFrom, "handover-from", "", "take over from the running broker at ADDR (unix://PATH or https://HOST:PORT): its master key, log and database; needs --manifest and an empty --data")
	fs.StringVar(&c.SimDir, "sim-dir", "", "with --dev: the simulated TEE's directory (default DATA/sim)")
	fs.StringVar(&c.SimMeasurement, "sim-measurement", "", "with --dev: the simulated launch measurement (SNP MEASUREMENT or TDX MRTD, 96 hex digits)")
	fs.BoolVar(&c.SimDebug, "sim-debug", false, "with --dev: simulate a debug guest (every verifier refuses its evidence)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "time in-flight requests get to finish on shutdown")
	fs.DurationVar(&c.WitnessTimeout, "witness-timeout", 10*time.Second, "bound on one add-checkpoint request to a witness")
	fs.DurationVar(&c.WitnessWait, "witness-wait", 5*time.Second, "how long a release, upload or manifest change waits for the witness quorum to cosign its entry")
	fs.DurationVar(&c.WitnessRefresh, "witness-refresh", time.Minute, "how often the latest checkpoint is resubmitted to the witnesses when the log is idle")
	fs.DurationVar(&c.WitnessRetry, "witness-retry", 5*time.Second, "how soon a witness round without a quorum (and the start-up check) is repeated")
	fs.Var(&devWitnesses, "dev-witness", "with --dev, when it creates the dev manifest: a witness it names, as URL,VKEY (repeatable; all are required)")

	// A first pass finds --config; the file presets values, then the
	// command line is parsed again so that it wins.
	pre := flag.NewFlagSet("", flag.ContinueOnError)
	pre.SetOutput(discard{})
	pre.StringVar(&configFile, "config", "", "")
	if err := pre.Parse(filterConfig(args)); err != nil {
		return nil, err
	}
	if configFile != "" {
		if err := applyConfigFile(fs, configFile); err != nil {
			return nil, err
		}
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	c.ManifestSigs = sigs
	c.DevWitnesses = devWitnesses
	return c, c.check()
}

// filterConfig returns only the --config flag and its value from args.
func filterConfig(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "-config" || a == "--config" {
			out = append(out, a)
			if i+1 < len(args) {
				out = append(out, args[i+1])
			}
			i++
		} else if strings.HasPrefix(a, "-config=") || strings.HasPrefix(a, "--config=") {
			out = append(out, a)
		}
	}
	return out
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// applyConfigFile sets flags from a JSON object of flag names to values
// (strings, numbers, booleans, or lists of strings for repeatable flags).
func applyConfigFile(fs *flag.FlagSet, file string) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("couldn't read config file: %w", err)
	}
	var m map[string]any
	d := json.NewDecoder(strings.NewReader(string(raw)))
	d.UseNumber()
	if err := d.Decode(&m); err != nil {
		return fmt.Errorf("config file %s: not a JSON object: %w", file, err)
	}
	for k, v := range m {
		if k == "config" {
			return fmt.Errorf("config file %s: \"config\" cannot be set from a config file", file)
		}
		if fs.Lookup(k) == nil {
			return fmt.Errorf("config file %s: unknown setting %q", file, k)
		}
		var vals []string
		switch v := v.(type) {
		case string:
			vals = []string{v}
		case bool:
			vals = []string{fmt.Sprint(v)}
		case json.Number:
			vals = []string{v.String()}
		case []any:
			for _, e := range v {
				s, ok := e.(string)
				if !ok {
					return fmt.Errorf("config file %s: %q: list elements must be strings", file, k)
				}
				vals = append(vals, s)
			}
		default:
			return fmt.Errorf("config file %s: %q: unsupported value %v", file, k, v)
		}
		for _, s := range vals {
			if err := fs.Set(k, s); err != nil {
				return fmt.Errorf("config file %s: %q: %w", file, k, err)
			}
		}
	}
	return nil
}

func (c *Config) check() error {
	if c.Dev {
		if c.Data == "" {
			c.Data = "kbs-dev"
		}
		if c.TEE == "" {
			c.TEE = "snp"
		}
		c.Offline = true
	} else {
		if c.Data == "" {
			return errors.New("--data is required (or use --dev for a development broker)")
		}
		switch c.TEE {
		case "snp", "tdx":
		case "sim":
			return errors.New("the simulated TEE is for development only: use --dev")
		case "":
			return errors.New("--tee snp|tdx is required (or use --dev for a development broker)")
		default:
			return fmt.Errorf("--tee %q: want snp or tdx", c.TEE)
		}
	}
	if !c.Dev && (c.SimDir != "" || c.SimMeasurement != "" || c.SimDebug) {
		return errors.New("--sim-dir, --sim-measurement and --sim-debug choose the simulated TEE: they need --dev")
	}
	if c.SimMeasurement != "" {
		if b, err := hex.DecodeString(c.SimMeasurement); err != nil || len(b) != 48 {
			return fmt.Errorf("--sim-measurement: want 96 hex digits (48 bytes), got %q", c.SimMeasurement)
		}
	}
	if c.HandoverFrom != "" {
		if c.Manifest == "" {
			return errors.New("--handover-from needs --manifest: the manifest you trust, against which the running broker is verified")
		}
		if c.LogBackend != "bolt" {
			return errors.New("--handover-from needs --log-backend bolt: a handover moves the embedded log with the database")
		}
	}
	if c.TEE != "snp" && c.TEE != "tdx" {
		return fmt.Errorf("--tee %q: want snp or tdx", c.TEE)
	}
	switch c.LogBackend {
	case "bolt":
		if c.TrillianAddr != "" || c.TrillianTreeID != 0 || c.TrillianState != "" || c.TrillianAdopt || c.TrillianTLSCA != "" {
			return errors.New("--trillian-* flags need --log-backend trillian")
		}
	case "trillian":
		if c.TrillianAddr == "" || c.TrillianTreeID <= 0 {
			return errors.New("--log-backend trillian needs --trillian-addr HOST:PORT and --trillian-tree-id N")
		}
	default:
		return fmt.Errorf("--log-backend %q: want bolt or trillian", c.LogBackend)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("--log-format %q: want text or json", c.LogFormat)
	}
	if hclog.LevelFromString(c.LogLevel) == hclog.NoLevel {
		return fmt.Errorf("--log-level %q: want trace, debug, info, warn, error or off", c.LogLevel)
	}
	if c.ListenUnix == "none" && c.ListenTCP == "none" {
		return errors.New("nothing to listen on: both --listen-unix and --listen-tcp are \"none\"")
	}
	if c.NonceTTL <= 0 || c.MaxChallenges <= 0 || c.AttestationRate <= 0 || c.ChallengeRate <= 0 || c.ManifestRate <= 0 {
		return errors.New("--challenge-ttl, --max-challenges, --attestation-rate, --challenge-rate and --manifest-rate must be positive")
	}
	if c.MaxTCPConns < 0 || c.MaxUnixConns < 0 || c.MaxConnsPerPeer < 0 || c.IdleTimeout <= 0 {
		return errors.New("--max-tcp-conns, --max-unix-conns and --max-conns-per-peer must not be negative, --idle-timeout must be positive")
	}
	if c.PeerShare <= 0 || c.PeerShare > 1 {
		return fmt.Errorf("--peer-share %v: want more than 0 and at most 1", c.PeerShare)
	}
	if c.WitnessTimeout <= 0 || c.WitnessWait <= 0 || c.WitnessRefresh <= 0 || c.WitnessRetry <= 0 {
		return errors.New("--witness-timeout, --witness-wait, --witness-refresh and --witness-retry must be positive")
	}
	if len(c.DevWitnesses) > 0 {
		if !c.Dev {
			return errors.New("--dev-witness is for --dev only: in production the manifest names the witnesses")
		}
		if _, err := devWitnessPolicy(c.DevWitnesses); err != nil {
			return err
		}
	}
	return nil
}
