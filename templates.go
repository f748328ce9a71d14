package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/config"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/hook"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/preview"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/quiesce"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/supervisor"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/writer"
)

// The wiring of templates, check and reload commands into the apply path.

// versionCheck is the writer's Check: the check command on the staged version directory.
func versionCheck(cfg config.Config, sup *supervisor.Supervisor) func(staged string) error {
	if len(cfg.Check.Argv) == 0 {
		return nil
	}
	return func(staged string) error {
		return cfg.Check.Run(context.Background(), sup, childEnv(os.Environ(), cfg.PassSecrets), staged, cfg.Target)
	}
}

// applyFunc is what the source calls: d.apply, behind a quiesce buffer with --wait or --settle.
func (d *dispenser) applyFunc() source.ApplyFunc {
	if (d.cfg.Wait <= 0 && d.cfg.Settle <= 0) || d.cfg.Once {
		return d.apply
	}
	d.quiet = quiesce.New(d.cfg.Wait, d.cfg.MaxWait, d.apply)
	d.quiet.Settle = d.cfg.Settle
	return d.quiet.Apply
}

// stop ends delayed applies before the writer is closed.
func (d *dispenser) stop() {
	if d.quiet != nil {
		d.quiet.Stop()
	}
}

// newRenderer returns nil without templates.
func newRenderer(cfg config.Config, sup *supervisor.Supervisor, log *slog.Logger) (*render.Renderer, error) {
	if len(cfg.Templates) == 0 {
		return nil, nil
	}
	opts := render.Options{Templates: cfg.Templates, Mode: os.FileMode(cfg.Mode), UID: cfg.UID, GID: cfg.GID,
		NoSync: !cfg.Fsync, Logger: log}
	if len(cfg.Check.Argv) > 0 || len(cfg.Hooks) > 0 {
		opts.Check = func(dest, staged string) error {
			check := cfg.Check
			if h := cfg.Hooks[dest]; len(h.Check.Argv) > 0 { // a --config-dir binding's own
				check = h.Check
			}
			if len(check.Argv) == 0 {
				return nil
			}
			return check.Run(context.Background(), sup, childEnv(os.Environ(), cfg.PassSecrets), staged, dest)
		}
	}
	return render.New(opts)
}

// fold gives the batch to the renderer, which keeps the values the templates read.
func (d *dispenser) fold(b source.Batch) {
	if d.r == nil {
		return
	}
	cs := make([]render.Change, len(b.Changes))
	for i, c := range b.Changes {
		cs[i] = render.Change(c)
	}
	d.r.Fold(cs, b.Full)
}

// checkFailed reports, and logs, an Apply error that is the check command's refusal: the old
// version stays live and the next change tries again.
func (d *dispenser) checkFailed(err error, revision int64) bool {
	var f *hook.Failure
	if !errors.As(err, &f) {
		return false
	}
	d.log.Error("check command failed; the previous version stays live", "revision", revision,
		"command", f.Name, "code", f.Code, "output", f.Output)
	return true
}

// render renders the templates and reports whether a destination changed. Before the child
// started, a template that fails is an error, so that the child never starts without its file.
func (d *dispenser) render() (bool, error) {
	if d.r == nil {
		return false, nil
	}
	o := d.r.Render()
	if !d.first && len(o.Failed) > 0 {
		return o.Changed(), fmt.Errorf("templates not rendered: %v", o.Failed)
	}
	return d.reloadBindings(o.Replaced), nil
}

// reloadBindings runs the reload command of each replaced destination that has its own (a
// --config-dir binding's), and reports whether one without its own was replaced: that one
// is for the signal or --reload-cmd. At the first sync nothing runs yet.
func (d *dispenser) reloadBindings(replaced []string) bool {
	changed := false
	for _, dest := range replaced {
		h := d.cfg.Hooks[dest]
		if len(h.Reload.Argv) == 0 {
			changed = true
			continue
		}
		if !d.first {
			continue
		}
		if err := h.Reload.Run(context.Background(), d.sup, childEnv(os.Environ(), d.cfg.PassSecrets), dest, dest); err != nil {
			d.log.Error("reload command of a binding failed", "dest", dest, "err", err)
		} else {
			d.log.Info("reload command of a binding ran", "dest", dest, "command", h.Reload.Argv[0])
		}
	}
	return changed
}

// notify tells the command that a new version is live: the reload command if there is one,
// then what --on-change says (a reload command replaces the default signal unless --signal
// is also given).
func (d *dispenser) notify(ctx context.Context, revision int64) {
	if r := d.cfg.Reload; len(r.Argv) > 0 {
		if err := r.Run(ctx, d.sup, childEnv(os.Environ(), d.cfg.PassSecrets), d.cfg.Target, d.cfg.Target); err != nil {
			d.log.Error("reload command failed", "revision", revision, "err", err)
		} else {
			d.log.Info("reload command ran", "revision", revision, "command", r.Argv[0])
		}
		if d.cfg.OnChange == "signal" && !d.cfg.SignalOnReload {
			return
		}
	}
	if len(d.cfg.Command) == 0 {
		return
	}
	switch d.cfg.OnChange {
	case "restart":
		if err := d.sup.Restart(d.cfg.Command, childEnv(os.Environ(), d.cfg.PassSecrets)); err != nil {
			d.log.Warn("could not restart the command", "revision", revision, "err", err)
		} else {
			d.log.Info("command restarted", "revision", revision)
		}
		return
	case "none":
		return
	}
	if err := d.sup.Signal(d.cfg.Signal); err != nil {
		d.log.Warn("could not signal the command", "signal", d.cfg.Signal.String(), "err", err)
	} else {
		d.m.SignalSent()
		d.log.Info("signal sent", "signal", d.cfg.Signal.String(), "revision", revision)
	}
}

// dryRun prints what a sync would change, in the target and in the templates' destinations,
// and changes nothing.
func dryRun(cfg config.Config, client *clientv3.Client, log *slog.Logger, out io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(cfg.StartTimeout, time.Minute))
	defer cancel()
	snap, err := source.New(source.Options{Client: client, Prefix: cfg.Prefix, Logger: log}).Snapshot(ctx)
	if err != nil {
		log.Error("dry run: cannot read the prefix", "err", err)
		return 1
	}
	live, err := preview.Live(cfg.Target)
	if err != nil {
		log.Error("dry run: cannot read the target", "target", cfg.Target, "err", err)
		return 1
	}
	want := map[string][]byte{}
	for _, c := range snap.Changes {
		if p, err := writer.KeyPath(c.Key); err == nil {
			want[p] = c.Value
		}
	}
	changes := 0
	paths := slices.Collect(maps.Keys(want))
	for p := range live {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	for _, p := range paths {
		if d := preview.Diff(filepath.Join(cfg.Target, p), live[p], want[p], cfg.ShowValues); d != "" {
			fmt.Fprint(out, d)
			changes++
		}
	}
	r, err := newRenderer(cfg, nil, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: --%v\n", err)
		return 2
	}
	if r != nil {
		cs := make([]render.Change, len(snap.Changes))
		for i, c := range snap.Changes {
			cs[i] = render.Change(c)
		}
		r.Fold(cs, true)
		for _, p := range r.Previews() {
			if p.Err != nil {
				fmt.Fprintf(out, "%s: template fails: %v\n", p.Dest, p.Err)
				continue
			}
			if d := preview.Diff(p.Dest, p.Old, p.New, cfg.ShowValues); d != "" {
				fmt.Fprint(out, d)
				changes++
			}
		}
	}
	log.Info("dry run: nothing was changed", "revision", snap.Revision, "files_that_would_change", changes)
	return 0
}
