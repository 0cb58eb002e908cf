package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/kbs-dev/kbs/kbs/audit/monitor"
	"github.com/kbs-dev/kbs/tlog"
)

func cmdMonitor(ctx context.Context, e *env, args []string) error {
	fs := e.newFlags("monitor", "[--rules FILE] [--note-key KEY] [--webhook URL] [--interval D] [--once] [--db FILE]",
		`Follows the broker's log: every --interval it fetches the latest checkpoint,
verifies it and its consistency with the stored one, verifies and replays the
new entries as 'kbsctl audit' does, and raises alerts: for the rules of
--rules (see docs/auditor.md and docs/monitor-rules.txt), and always for a
fork or rollback of the log (with both checkpoints) and for inconsistencies.
Alerts are JSON lines on stdout and, with --webhook, POSTs retried with
back-off until the webhook takes them. The state (checkpoint, replay, rules,
undelivered alerts) is one file, committed at every step: a monitor killed
at any point goes on where it stopped, and raises no alert twice. An alert
delivered in the instant before a kill may be delivered again with the same
"seq". Runs until SIGINT or SIGTERM; with --once, polls once, delivers, and
exits 1 if the log forked or did not verify.`)
	rulesFile := fs.String("rules", "", "alert rules file")
	noteKey := fs.String("note-key", "", "the log's note key (default: learned by 'kbsctl verify')")
	webhook := fs.String("webhook", "", "POST every alert (JSON) to this http(s) URL")
	interval := fs.Duration("interval", 30*time.Second, "time between polls")
	once := fs.Bool("once", false, "poll once, deliver the alerts, and exit")
	db := fs.String("db", "", "state file (default: monitor/<log origin>.db in the --state directory)")
	skipHistory := fs.Bool("skip-history", false, "on a new state file, replay the log's past without raising rule alerts")
	retryMin := fs.Duration("webhook-retry-min", time.Second, "first wait before retrying the webhook (doubles per attempt)")
	retryMax := fs.Duration("webhook-retry-max", 5*time.Minute, "longest wait between webhook retries")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if *interval <= 0 || *retryMin <= 0 || *retryMax < *retryMin {
		return usageErr("monitor: --interval and --webhook-retry-min must be positive, --webhook-retry-max at least --webhook-retry-min")
	}
	var rules []monitor.Rule
	if *rulesFile != "" {
		b, err := os.ReadFile(*rulesFile)
		if err != nil {
			return fmt.Errorf("--rules: %w", err)
		}
		if rules, err = monitor.ParseRules(b); err != nil {
			return usageErr("%s: %v", *rulesFile, err)
		}
	}
	c, st, err := e.client(true)
	if err != nil {
		return err
	}
	lv, err := e.logVerifier(c, st, *noteKey)
	if err != nil {
		return err
	}
	if *db == "" {
		dir := filepath.Join(e.g.state, "monitor")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("couldn't create the monitor's state directory: %w", err)
		}
		*db = filepath.Join(dir, url.QueryEscape(lv.Origin())+".db")
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "kbsctl monitor", Output: e.stderr, Level: hclog.Info, JSONFormat: e.g.json})
	m, err := monitor.Open(monitor.Config{
		Client: c, NoteKey: lv.NoteKey(), State: *db, Rules: rules, Out: e.stdout,
		Webhook: *webhook, RetryMin: *retryMin, RetryMax: *retryMax,
		Interval: *interval, SkipHistory: *skipHistory, Logger: logger,
	})
	if errors.Is(err, monitor.ErrStateLocked) {
		return usageErr("%v (is another 'kbsctl monitor' running? pass --db to run a second one)", err)
	}
	if err != nil {
		return err
	}
	defer m.Close()
	if *once {
		_, perr := m.Poll(ctx)
		if werr := m.FlushWebhook(ctx); werr != nil && perr == nil {
			perr = werr
		}
		var fe *tlog.ForkError
		if errors.As(perr, &fe) {
			return failErr("%v (the fork alert carries both checkpoints)", fe)
		}
		return perr
	}
	logger.Info("monitoring", "log", m.Origin(), "state", *db, "rules", len(rules), "interval", *interval)
	err = m.Run(ctx)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
