package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/hook"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
)

// Templating is what the command line says about templates and the check and reload commands.
type Templating struct {
	Templates []render.Spec
	Check     hook.Command // of each template's staged file (no Argv: none)
	// MirrorCheck checks the staged mirror directory: --check-mirror-cmd, or --check-cmd
	// when there are no templates.
	MirrorCheck hook.Command
	Reload      hook.Command // no Argv: none
	// Include and Exclude (globs on the key relative to the prefix; ** crosses /) choose the
	// keys mirrored into --target.
	Include, Exclude []string
	// EtcdEnv are ETCD_* variables that reconfig's options (--host, --port, --ssl_*) set.
	EtcdEnv map[string]string
	// Warnings are for the log: accepted, but probably not what was meant.
	Warnings []string
	// SignalOnReload is set when --signal was given explicitly: with a reload command, the
	// signal is sent only then.
	SignalOnReload bool
	// Wait and MaxWait (--wait MIN[:MAX]): apply once the keys were quiet for Wait, at most
	// MaxWait after the first pending change. 0: apply at once.
	Wait, MaxWait time.Duration
	// Hooks are the own check and reload commands of --config-dir bindings, by destination.
	Hooks      map[string]Hooks
	DryRun     bool // print what would change and exit
	ShowValues bool // with DryRun: diffs of the content, not only sizes
}

// templatingFlags adds the flags of Templating to fs and returns the function that checks
// them once fs is parsed.
func templatingFlags(fs *pflag.FlagSet, t *Templating) func(c *Config) []error {
	var templates []string
	var check, checkMirror, reload, wait, configDir string
	var timeout time.Duration
	fs.StringArrayVar(&templates, "template", nil, "SRC:DEST: render the Go template SRC over the keys into the file DEST after each change (repeatable)")
	fs.StringVarP(&configDir, "config-dir", "c", "", "reconfig's config dir (conf.d/*.json bindings and templates/), or a directory of JSON bindings; each template is rendered when its key changes")
	fs.StringVar(&configDir, "cfgdir", "", "reconfig's name of --config-dir")
	fs.StringVar(&check, "check-cmd", "", "command that must exit 0 before a rendered template replaces its destination ({{staged}}: the new file); without templates, it checks the staged mirror directory")
	fs.StringVar(&checkMirror, "check-mirror-cmd", "", "command that must exit 0 before a new version of --target goes live ({{staged}}: the staged directory)")
	fs.StringArrayVar(&t.Include, "include", nil, "GLOB: mirror only keys (relative to the prefix) that match; * stays within a /-segment, ** crosses /; repeatable")
	fs.StringArrayVar(&t.Exclude, "exclude", nil, "GLOB: do not mirror keys that match (after --include); repeatable")
	reconfig := reconfigFlags(fs)
	fs.StringVar(&reload, "reload-cmd", "", "command run after a new version went live (then the signal is sent only if --signal is given)")
	fs.StringVar(&wait, "wait", "", "MIN[:MAX]: apply a change once the keys were quiet for MIN, at most MAX (default 4×MIN) after the first pending one")
	fs.BoolVar(&t.DryRun, "dry-run", false, "print what would change (a diff per file; sizes only without --show-values), touch nothing, exit")
	fs.BoolVar(&t.ShowValues, "show-values", false, "with --dry-run: show the values in the diffs (they may be secrets)")
	fs.DurationVar(&timeout, "command-timeout", time.Minute, "time limit of each check or reload command")
	return func(c *Config) []error {
		errs := reconfig(c)
		t.SignalOnReload = fs.Changed("signal")
		var mode os.FileMode // 0: a destination keeps its own mode
		if fs.Changed("mode") {
			mode = os.FileMode(c.Mode)
		}
		dests := map[string]string{}
		for _, s := range templates {
			spec, err := render.ParseSpec(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("--template %w", err))
				continue
			}
			spec.Mode = mode
			if inside(c.Target, spec.Dest) {
				errs = append(errs, fmt.Errorf("--template %q: the destination is inside --target %s, which mirrors the keys; render it elsewhere", s, c.Target))
			}
			abs, _ := filepath.Abs(spec.Dest)
			if other, ok := dests[abs]; ok {
				errs = append(errs, fmt.Errorf("--template %q and %q: both render into %s", other, s, spec.Dest))
			}
			dests[abs] = s
			t.Templates = append(t.Templates, spec)
		}
		if configDir != "" {
			errs = append(errs, t.addBindings(configDir, c, mode, timeout, dests)...)
		}
		if wait != "" {
			var err error
			if t.Wait, t.MaxWait, err = parseWait(wait); err != nil {
				errs = append(errs, fmt.Errorf("--wait %q: %w", wait, err))
			}
		}
		if t.DryRun && len(c.Command) > 0 {
			errs = append(errs, fmt.Errorf("--dry-run prints what would change and exits, so it takes no command (got %q)", c.Command[0]))
		}
		if timeout <= 0 {
			errs = append(errs, fmt.Errorf("--command-timeout %v: must be positive", timeout))
		}
		for _, f := range []struct {
			name, value string
			cmd         *hook.Command
		}{{"check-cmd", check, &t.Check}, {"check-mirror-cmd", checkMirror, &t.MirrorCheck}, {"reload-cmd", reload, &t.Reload}} {
			if f.value == "" {
				continue
			}
			cmd, err := hook.Parse(f.value, timeout)
			if err != nil {
				errs = append(errs, fmt.Errorf("--%s %q: %w; it is split into words like a shell does, without expansion (use sh -c '...' for a shell)", f.name, f.value, err))
			}
			*f.cmd = cmd
		}
		if len(t.Templates) == 0 && len(t.MirrorCheck.Argv) == 0 {
			t.MirrorCheck, t.Check = t.Check, hook.Command{}
		}
		for _, g := range append(slices.Clone(t.Include), t.Exclude...) {
			if err := CheckGlob(g); err != nil {
				errs = append(errs, fmt.Errorf("--include/--exclude %q: %w", g, err))
			}
		}
		if c.Prefix != "" && !strings.HasPrefix(c.Prefix, "/") {
			t.Warnings = append(t.Warnings, fmt.Sprintf("--prefix %q does not begin with /: etcd keys usually do, so it may match nothing", c.Prefix))
		}
		return errs
	}
}

// addBindings adds the templates of --config-dir; dests are the destinations already taken.
func (t *Templating) addBindings(dir string, c *Config, mode os.FileMode, timeout time.Duration, dests map[string]string) []error {
	bs, err := LoadDir(dir)
	if err != nil {
		return []error{fmt.Errorf("--config-dir %s: %w", dir, err)}
	}
	var errs []error
	for _, b := range bs {
		spec, err := b.spec(c.Prefix, normalizePrefix(c.Prefix), mode)
		if err != nil {
			errs = append(errs, fmt.Errorf("--config-dir %w", err))
			continue
		}
		h, err := b.hooks(timeout)
		if err != nil {
			errs = append(errs, fmt.Errorf("--config-dir %w", err))
			continue
		}
		if inside(c.Target, spec.Dest) {
			errs = append(errs, fmt.Errorf("--config-dir %s: the target %s is inside --target %s, which mirrors the keys; render it elsewhere", b.File, spec.Dest, c.Target))
		}
		abs, _ := filepath.Abs(spec.Dest)
		if other, ok := dests[abs]; ok {
			errs = append(errs, fmt.Errorf("--config-dir %s and --template %q: both render into %s", b.File, other, spec.Dest))
		}
		dests[abs] = b.File
		if t.Hooks == nil {
			t.Hooks = map[string]Hooks{}
		}
		t.Hooks[spec.Dest] = h
		t.Templates = append(t.Templates, spec)
	}
	return errs
}

// inside reports whether path is dir or below it.
func inside(dir, path string) bool {
	if dir == "" {
		return false
	}
	d, err1 := filepath.Abs(dir)
	p, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(d, p)
	return err == nil && (rel == "." || !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && rel != "..")
}

// parseWait reads MIN[:MAX]; MAX defaults to 4×MIN, as in consul-template.
func parseWait(s string) (lo, hi time.Duration, err error) {
	bad := errors.New("use MIN or MIN:MAX, durations like 2s or 500ms:10s, with 0 < MIN <= MAX")
	a, b, hasMax := strings.Cut(s, ":")
	if lo, err = time.ParseDuration(a); err != nil || lo <= 0 {
		return 0, 0, bad
	}
	hi = 4 * lo
	if hasMax {
		if hi, err = time.ParseDuration(b); err != nil || hi < lo {
			return 0, 0, bad
		}
	}
	return lo, hi, nil
}

// normalizePrefix is the prefix the source reads (source.NormalizePrefix).
func normalizePrefix(p string) string {
	if p == "" {
		return ""
	}
	return strings.TrimRight(p, "/") + "/"
}
