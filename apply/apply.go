// Package apply is the path of one batch from etcd to the command: the keys the mirror keeps
// (--include, --exclude), the mirrored files (the writer), the templates (render) and their
// check commands, then one notification of the command. The first batch starts the command
// instead.
//
// Guarantees:
//   - The command starts only after the first batch is applied and every template's
//     destination exists: rendered now, or a previous good file (then with a warning naming
//     the template and its error).
//   - After that, each batch that changed a mirrored file or replaced a template's destination
//     notifies the command once: the reload command, then the signal or the restart that
//     --on-change asks for. A batch that changed nothing notifies nothing, and a template
//     that failed or was refused holds the notification back until a batch applies cleanly:
//     the command is never reloaded onto files whose configuration was refused.
//   - A version refused by the check command is not made live; the old one stays and the next
//     change tries again.
//   - An error says which stage failed (*Error): the disk, a template or a check, never etcd.
//
// It knows nothing about etcd: batches come from the source, through Func.
package apply

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/config"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/hook"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/quiesce"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/writer"
)

// Child is the command and the runner of check and reload commands: the supervisor.
type Child interface {
	Start(argv, env []string) error
	Restart(argv, env []string) error
	Signal(sig syscall.Signal) error
	hook.Runner
}

// Metrics counts what the pipeline does; a nil *metrics.Metrics counts nothing.
type Metrics interface {
	BatchApplied(written, removed, skipped int)
	Synced()
	SignalSent()
}

// Options configure a Pipeline.
type Options struct {
	Config  config.Config
	Writer  *writer.Writer
	Child   Child
	Metrics Metrics
	Logger  *slog.Logger
}

// Pipeline applies batches. Apply is not safe for concurrent use; the source calls it from
// one goroutine (and the quiesce buffer serialises its delayed applies).
type Pipeline struct {
	cfg   config.Config
	log   *slog.Logger
	child Child
	w     *writer.Writer
	r     *render.Renderer // nil without templates
	quiet *quiesce.Buffer  // nil without --wait and --settle
	// delayedFailed is told when a held-back apply failed (nil: the next Apply reports it)
	delayedFailed func(error)
	m             Metrics
	env           []string   // of the command and the check and reload commands
	started       chan error // receives once, when the first batch has been applied
	first         bool       // the first batch was applied
	owed          bool       // a change was not notified because a template failed
	notified      bool       // the last apply told the command (or a binding's) of a new version
	onFirst       func()
}

// Error is a failure of one stage of the apply path: "write" (the mirror on disk),
// "template" (rendering or writing a template) or "check" (a check command refused it).
type Error struct {
	Stage string
	Name  string // the template, or the target directory
	Err   error
}

func (e *Error) Error() string { return fmt.Sprintf("%s %s: %v", e.Stage, e.Name, e.Err) }

func (e *Error) Unwrap() error { return e.Err }

// New returns a Pipeline; an error is a template that cannot be read or parsed (a usage
// error: exit 2).
func New(opts Options) (*Pipeline, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	p := &Pipeline{cfg: opts.Config, log: opts.Logger, child: opts.Child, w: opts.Writer, m: opts.Metrics,
		env: ChildEnv(os.Environ(), opts.Config.PassSecrets), started: make(chan error, 1)}
	if p.m == nil {
		p.m = noMetrics{}
	}
	for _, w := range opts.Config.Warnings {
		p.log.Warn(w)
	}
	var err error
	if p.r, err = NewRenderer(opts.Config, opts.Child, opts.Logger); err != nil {
		return nil, err
	}
	return p, nil
}

// Started receives once, when the first batch has been applied: nil, or why the command
// could not start (a *supervisor.StartError).
func (p *Pipeline) Started() <-chan error { return p.started }

// FirstApplied sets a function called once, when the first batch has been applied.
func (p *Pipeline) FirstApplied(fn func()) { p.onFirst = fn }

// DelayedFailures sends a failure of an apply that was held back (--wait, --settle), after
// the source was told its batch was taken, to fn: the source's Failed, which resyncs.
func (p *Pipeline) DelayedFailures(fn func(error)) { p.delayedFailed = fn }

// Func is what the source calls: Apply, behind a quiesce buffer with --wait or --settle.
func (p *Pipeline) Func() source.ApplyFunc {
	if (p.cfg.Wait <= 0 && p.cfg.Settle <= 0) || p.cfg.Once {
		return p.Apply
	}
	p.quiet = quiesce.New(p.cfg.Wait, p.cfg.MaxWait, p.Apply)
	p.quiet.Settle = p.cfg.Settle
	p.quiet.Failed = p.delayedFailed
	p.quiet.Notified = func() bool { return p.notified }
	return p.quiet.Apply
}

// Stop ends delayed applies; call it before the writer is closed.
func (p *Pipeline) Stop() {
	if p.quiet != nil {
		p.quiet.Stop()
	}
}

// Apply applies one batch: files, templates, checks, then the start or one notification.
// A failure is a *source.ApplyError naming its stage (write, template, check), so that the
// source reports it as the target's, never as etcd's.
func (p *Pipeline) Apply(ctx context.Context, b source.Batch) error {
	err := p.apply(ctx, b)
	var e *Error
	if errors.As(err, &e) {
		return &source.ApplyError{Stage: e.Stage, Revision: b.Revision, Err: e}
	}
	return err
}

func (p *Pipeline) apply(ctx context.Context, b source.Batch) error {
	p.notified = false
	if b.Next != nil && p.w == nil {
		if err := b.Collect(ctx); err != nil {
			return err // etcd's
		}
	}
	if !p.first && b.Full && len(b.Changes) == 0 && p.cfg.Prefix != "" {
		p.log.Warn("the prefix matches no key in etcd: nothing to mirror yet", "prefix", p.cfg.Prefix)
	}
	var res writer.Result
	if p.w != nil {
		var err error
		if b.Next != nil {
			var etcdErr error
			if res, etcdErr, err = p.stream(ctx, b); etcdErr != nil {
				return etcdErr
			}
		} else {
			p.fold(b)
			res, err = p.w.Apply(p.mirrored(b))
		}
		if err != nil {
			if p.checkFailed(err, b.Revision) {
				if p.first {
					return nil
				}
				return &Error{Stage: "check", Name: p.cfg.Target, Err: err}
			}
			return &Error{Stage: "write", Name: p.cfg.Target, Err: err}
		}
	} else {
		p.fold(b)
	}
	rendered, failed, err := p.render(ctx)
	if err != nil {
		return err
	}
	p.m.BatchApplied(res.Written, res.Removed, res.Skipped)
	if !p.first {
		p.first = true
		p.m.Synced()
		if p.onFirst != nil {
			p.onFirst()
		}
		if len(p.cfg.Command) > 0 && !p.cfg.Once {
			p.notified = true
			p.started <- p.child.Start(p.cfg.Command, p.env)
			p.logApplied(b.Revision, res, "")
			return nil
		}
		// No command to start on the new files: run the reload commands, as confd does.
		signalled := ""
		if res.Changed || rendered {
			signalled = p.notify(ctx, b.Revision)
		}
		p.started <- nil
		p.logApplied(b.Revision, res, signalled)
		return nil
	}
	changed := res.Changed || rendered || p.owed
	if changed && failed {
		p.owed = true
		p.log.Warn("notification held back: a template failed or was refused; it is sent once a change applies cleanly",
			"revision", b.Revision)
		return nil
	}
	signalled := ""
	if changed {
		p.owed = false
		signalled = p.notify(ctx, b.Revision)
	}
	p.logApplied(b.Revision, res, signalled)
	return nil
}

// logApplied is the one line an applied batch costs, written after its notification: each
// line is a write to a pipe that someone (a container's log) reads, and the command should not
// wait for it. signalled names the signal sent, if one was.
func (p *Pipeline) logApplied(revision int64, res writer.Result, signalled string) {
	if !res.Changed && signalled == "" {
		return
	}
	attrs := []any{"revision", revision, "written", res.Written, "removed", res.Removed, "skipped", res.Skipped}
	if res.Version != "" {
		attrs = append(attrs, "version", res.Version)
	}
	if signalled != "" {
		attrs = append(attrs, "signal", signalled)
	}
	p.log.Info("batch applied", attrs...)
}

// mirrored is the batch for the writer: only the keys --include and --exclude keep.
func (p *Pipeline) mirrored(b source.Batch) writer.Batch {
	return writer.Batch{Revision: b.Revision, Full: b.Full, Changes: p.kept(b.Changes)}
}

// kept are the changes --include and --exclude keep, for the writer.
func (p *Pipeline) kept(changes []source.Change) []writer.Change {
	out := make([]writer.Change, 0, len(changes))
	for _, c := range changes {
		if Keep(c.Key, p.cfg.Include, p.cfg.Exclude) {
			out = append(out, writer.Change(c))
		}
	}
	return out
}

// stream hands a Full batch that arrives in pages to the writer page by page, so its values
// are never in memory together (the renderer, when there are templates, keeps its own copy
// of every value anyway). A page etcd failed to deliver is etcdErr: nothing was applied.
func (p *Pipeline) stream(ctx context.Context, b source.Batch) (res writer.Result, etcdErr, err error) {
	st, err := p.w.BeginFull(b.Revision)
	if err != nil {
		return res, nil, err
	}
	st.Expect(b.Keys)
	var all []render.Change
	for page := b.Changes; ; {
		if err := st.Add(p.kept(page)); err != nil {
			return res, nil, err
		}
		if p.r != nil {
			for _, c := range page {
				all = append(all, render.Change(c))
			}
		}
		if page, etcdErr = b.Next(ctx); etcdErr != nil {
			st.Abort()
			return res, etcdErr, nil
		}
		if page == nil {
			break
		}
	}
	if p.r != nil {
		p.r.Fold(all, true)
	}
	res, err = st.Commit()
	return res, nil, err
}

// fold gives the batch to the renderer, which keeps the values the templates read.
func (p *Pipeline) fold(b source.Batch) {
	if p.r == nil {
		return
	}
	cs := make([]render.Change, len(b.Changes))
	for i, c := range b.Changes {
		cs[i] = render.Change(c)
	}
	p.r.Fold(cs, b.Full)
}

// checkFailed reports, and logs, an Apply error that is the check command's refusal: the old
// version stays live and the next change tries again.
func (p *Pipeline) checkFailed(err error, revision int64) bool {
	var f *hook.Failure
	if !errors.As(err, &f) {
		return false
	}
	p.log.Error("check command failed; the previous version stays live", "revision", revision,
		"command", f.Name, "code", f.Code, "output", f.Output)
	return true
}

// render renders the templates and reports whether a destination without a reload command
// of its own changed, and whether one failed. Before the command started, a template that
// fails is an error when its destination does not exist, so that the command never starts
// without its file; a previous good file is used, with a warning.
func (p *Pipeline) render(ctx context.Context) (changed, failed bool, err error) {
	if p.r == nil {
		return false, false, nil
	}
	o := p.r.Render()
	if !p.first {
		for _, f := range o.Failed {
			if render.Missing(f.Dest) {
				return false, true, &Error{Stage: f.Stage, Name: f.Name, Err: fmt.Errorf("%s does not exist yet: %w", f.Dest, f.Err)}
			}
			p.log.Warn("starting on the previous file: the template failed", "template", f.Name, "dest", f.Dest,
				"stage", f.Stage, "err", f.Err)
		}
	}
	return p.reloadBindings(ctx, o.Replaced), len(o.Failed) > 0, nil
}

// reloadBindings runs the reload command of each replaced destination that has its own (a
// --config-dir binding's), after its splay, and reports whether one without its own was
// replaced: that one is for the signal or --reload-cmd. At the first sync they run only when
// there is no command to start.
func (p *Pipeline) reloadBindings(ctx context.Context, replaced []string) bool {
	changed := false
	for _, dest := range replaced {
		h := p.cfg.Hooks[dest]
		if len(h.Reload.Argv) == 0 {
			changed = true
			continue
		}
		if !p.first && len(p.cfg.Command) > 0 && !p.cfg.Once {
			continue
		}
		if h.Splay > 0 {
			d := time.Duration(rand.Int64N(int64(h.Splay))) + 1
			p.log.Info("reload command of a binding waits its splay", "binding", h.Name, "delay", d)
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return changed
			}
		}
		p.notified = true
		if err := h.Reload.Run(ctx, p.child, p.env, dest, dest); err != nil {
			p.log.Error("reload command of a binding failed", "binding", h.Name, "dest", dest, "err", err)
		} else {
			p.log.Info("reload command of a binding ran", "binding", h.Name, "dest", dest, "command", h.Reload.Argv[0])
		}
	}
	return changed
}

// notify tells the command that a new version is live: the reload command if there is one,
// then what --on-change says (a reload command replaces the default signal unless --signal
// is also given). It returns the name of the signal it sent, if it sent one.
func (p *Pipeline) notify(ctx context.Context, revision int64) (signalled string) {
	if r := p.cfg.Reload; len(r.Argv) > 0 {
		p.notified = true
		if err := r.Run(ctx, p.child, p.env, p.cfg.Target, p.cfg.Target); err != nil {
			p.log.Error("reload command failed", "revision", revision, "err", err)
		} else {
			p.log.Info("reload command ran", "revision", revision, "command", r.Argv[0])
		}
		if p.cfg.OnChange == "signal" && !p.cfg.SignalOnReload {
			return ""
		}
	}
	if len(p.cfg.Command) == 0 {
		return ""
	}
	switch p.cfg.OnChange {
	case "restart":
		p.notified = true
		if err := p.child.Restart(p.cfg.Command, p.env); err != nil {
			p.log.Warn("could not restart the command", "revision", revision, "err", err)
		} else {
			p.log.Info("command restarted", "revision", revision)
		}
		return ""
	case "none":
		return ""
	}
	if err := p.child.Signal(p.cfg.Signal); err != nil {
		p.log.Warn("could not signal the command", "signal", p.cfg.Signal.String(), "err", err)
		return ""
	}
	p.notified = true
	p.m.SignalSent()
	return p.cfg.Signal.String()
}

// MirrorCheck is the writer's Check: the mirror's check command on the staged version
// directory.
func MirrorCheck(cfg config.Config, run hook.Runner) func(staged string) error {
	if len(cfg.MirrorCheck.Argv) == 0 {
		return nil
	}
	env := ChildEnv(os.Environ(), cfg.PassSecrets)
	return func(staged string) error {
		return cfg.MirrorCheck.Run(context.Background(), run, env, staged, cfg.Target)
	}
}

// NewRenderer returns the renderer of the configured templates, nil without templates. run
// runs the check commands; it may be nil for a renderer that only previews.
func NewRenderer(cfg config.Config, run hook.Runner, log *slog.Logger) (*render.Renderer, error) {
	if len(cfg.Templates) == 0 {
		return nil, nil
	}
	opts := render.Options{Templates: cfg.Templates, Prefix: source.NormalizePrefix(cfg.Prefix), Mode: os.FileMode(cfg.Mode),
		UID: cfg.UID, GID: cfg.GID, NoSync: !cfg.Fsync, Logger: log, Env: ChildEnv(os.Environ(), cfg.PassSecrets)}
	if len(cfg.Check.Argv) > 0 || len(cfg.Hooks) > 0 {
		env := ChildEnv(os.Environ(), cfg.PassSecrets)
		opts.Check = func(dest, staged string) error {
			check := cfg.Check
			if h := cfg.Hooks[dest]; len(h.Check.Argv) > 0 { // a --config-dir binding's own
				check = h.Check
			}
			if len(check.Argv) == 0 {
				return nil
			}
			return check.Run(context.Background(), run, env, staged, dest)
		}
	}
	return render.New(opts)
}

// secretEnv are the variables that hold credentials themselves; the child
// does not get them unless asked (their _FILE variants only name a path).
var secretEnv = []string{"ETCD_PASSWORD", "ETCD_USERNAME_AND_PASSWORD", "ETCD_CLIENT_KEY"}

// ChildEnv is env without the etcd credentials, unless passSecrets.
func ChildEnv(env []string, passSecrets bool) []string {
	if passSecrets {
		return env
	}
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		secret := false
		for _, s := range secretEnv {
			secret = secret || name == s
		}
		if !secret {
			out = append(out, kv)
		}
	}
	return out
}

type noMetrics struct{}

func (noMetrics) BatchApplied(int, int, int) {}
func (noMetrics) Synced()                    {}
func (noMetrics) SignalSent()                {}
