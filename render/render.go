// Package render turns the mirrored keys into files through Go text/template, the confd and
// consul-template way: each template is rendered over every key of the prefix, and its
// destination is replaced only when the output changed.
//
// Guarantees:
//   - A destination is replaced atomically: the output is written to a temporary file in the
//     destination's directory, fsynced, checked (Options.Check), renamed over the destination,
//     and the directory is fsynced. A reader sees the complete old or new file.
//   - A template that fails to render, or whose output fails the check, keeps its old
//     destination; the failure is logged and the next Render tries again.
//   - An unchanged output touches nothing, so the caller signals its child only on a change.
//
// Unlike the writer, which keeps only hashes, a Renderer keeps every value of the prefix in
// memory: templates may read any key at any time. Create one only when templates are configured.
// It knows nothing about etcd or processes.
package render

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/template"
)

// Change is the new state of one key, relative to the mirrored prefix.
type Change struct {
	Key    string
	Value  []byte
	Delete bool
}

// Spec names one template: the file to read and the file to write.
type Spec struct {
	Src, Dest string
	Name      string      // in logs (a binding's id); "" is Src
	Mode      os.FileMode // of Dest; 0: the mode Dest already has, or Options.Mode for a new file
	// Watch, if set, says which keys the template follows: it is rendered again only after a
	// change of one of them (or a full batch). Nil follows every key.
	Watch func(key string) bool
	// Data, if set, says which keys .Data holds (a binding's key or tree); nil: every key.
	Data func(key string) bool
	// AltKeys are .AltData's names and the keys (relative, each with the keys below it) they
	// hold, reconfig's altkeys.
	AltKeys map[string]string
	Watched string // .Watched: the full etcd key of a binding
	// CheckLive says the check command names the destination itself, as reconfig's checkcmd
	// does: the new file is put in place, checked there, and the old one put back if it fails.
	CheckLive bool
}

func (s Spec) name() string {
	if s.Name != "" {
		return s.Name
	}
	return s.Src
}

// ParseSpec reads SRC:DEST, the form of --template.
func ParseSpec(s string) (Spec, error) {
	src, dest, ok := strings.Cut(s, ":")
	if !ok || src == "" || dest == "" {
		return Spec{}, fmt.Errorf("%q: use SRC:DEST, the template file and the file to render it into", s)
	}
	return Spec{Src: src, Dest: dest}, nil
}

// Options configure a Renderer. UID and GID: -1 keeps the owner a destination already has
// (a new one gets ours).
type Options struct {
	Templates []Spec
	Prefix    string      // the etcd prefix the keys are relative to, for the full keys of .Data
	Mode      os.FileMode // mode of new destinations; 0 means 0600
	UID, GID  int
	NoSync    bool     // skip fsync (tmpfs, tests)
	Env       []string // what env and getenv read ("NAME=value"); nil: the process's environment
	Logger    *slog.Logger
	// Check, if set, is called with the destination and the path of the temporary file
	// holding the new output, before it replaces the destination; an error keeps the old one.
	Check func(dest, staged string) error
}

// Renderer renders the templates over the current values. It is not safe for concurrent use.
type Renderer struct {
	opts      Options
	log       *slog.Logger
	values    map[string]string
	templates []*tmpl
	inPlace   map[string]bool   // destinations already warned about: written in place
	env       map[string]string // Options.Env
}

// tmpl is one parsed template and what its destination holds.
type tmpl struct {
	Spec
	t     *template.Template
	known bool     // sum is the destination's content
	dirty bool     // a watched key changed since the last successful render
	sum   [32]byte // sha256 of the destination's content
}

// Outcome is what one Render did.
type Outcome struct {
	Replaced []string  // destinations replaced, in the order of Options.Templates
	Failed   []Failure // destinations kept because rendering, writing or the check failed
}

// Failure is a template whose destination was kept, and why.
type Failure struct {
	Name, Dest string
	Stage      string // "template" (rendering), "check" (its check command) or "write"
	Err        error
}

func (f Failure) Error() string { return fmt.Sprintf("%s %s (%s): %v", f.Stage, f.Name, f.Dest, f.Err) }

func (f Failure) Unwrap() error { return f.Err }

// Changed reports whether any destination was replaced.
func (o Outcome) Changed() bool { return len(o.Replaced) > 0 }

// New reads and parses every template; an error names the file and the problem.
func New(opts Options) (*Renderer, error) {
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	r := &Renderer{opts: opts, log: opts.Logger, values: map[string]string{}, inPlace: map[string]bool{}, env: map[string]string{}}
	if opts.Env == nil {
		opts.Env = os.Environ()
	}
	for _, kv := range opts.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			r.env[k] = v
		}
	}
	for _, s := range opts.Templates {
		text, err := os.ReadFile(s.Src)
		if err != nil {
			return nil, fmt.Errorf("template %s: %w", s.Src, err)
		}
		t, err := r.parse(s, string(text))
		if err != nil {
			return nil, err
		}
		r.templates = append(r.templates, t)
	}
	return r, nil
}

func (r *Renderer) parse(s Spec, text string) (*tmpl, error) {
	name := filepath.Base(s.Src)
	t, err := template.New(name).Option("missingkey=error").Funcs(r.funcs(s.Src)).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", s.Src, err)
	}
	return &tmpl{Spec: s, t: t, dirty: true}, nil
}

// Fold applies changes to the values. A full batch replaces them all.
func (r *Renderer) Fold(changes []Change, full bool) {
	if full {
		r.values = make(map[string]string, len(changes))
	}
	for _, t := range r.templates {
		t.dirty = t.dirty || full || t.Watch == nil || slices.ContainsFunc(changes, func(c Change) bool { return t.Watch(c.Key) })
	}
	for _, c := range changes {
		if c.Delete {
			delete(r.values, c.Key)
		} else {
			r.values[c.Key] = string(c.Value)
		}
	}
}

// dot is what a template sees as ".": every key (relative to the prefix) to its value, and
// the reserved names Data (full key to value, of the keys the template covers), AltData and
// Watched, as reconfig's @reconfig holds them.
func (r *Renderer) dot(t *tmpl) map[string]any {
	d := make(map[string]any, len(r.values)+3)
	data := map[string]string{}
	for k, v := range r.values {
		d[k] = v
		if t.Data == nil || t.Data(k) {
			data[r.opts.Prefix+k] = v
		}
	}
	alt := map[string]map[string]string{}
	for name, key := range t.AltKeys {
		m := map[string]string{}
		for k, v := range r.values {
			if k == key || strings.HasPrefix(k, strings.TrimSuffix(key, "/")+"/") {
				m[r.opts.Prefix+k] = v
			}
		}
		alt[name] = m
	}
	d["Data"], d["AltData"], d["Watched"] = data, alt, t.Watched
	return d
}

// Output renders one template over the current values, in memory.
func (r *Renderer) output(t *tmpl) ([]byte, error) {
	var buf bytes.Buffer
	if err := t.t.Execute(&buf, r.dot(t)); err != nil {
		return nil, fmt.Errorf("rendering %s: %w", t.Src, err)
	}
	return buf.Bytes(), nil
}

// Render renders every template and replaces the destinations whose output changed. Failures
// are logged and reported in Outcome.Failed; the other templates still go ahead.
func (r *Renderer) Render() Outcome {
	var o Outcome
	for _, t := range r.templates {
		if !t.dirty {
			continue
		}
		out, err := r.output(t)
		stage := "template"
		if err == nil {
			var changed bool
			changed, stage, err = r.replace(t, out)
			if err == nil && changed {
				o.Replaced = append(o.Replaced, t.Dest)
				r.log.Info("template rendered", "template", t.name(), "dest", t.Dest, "bytes", len(out))
			}
		}
		t.dirty = err != nil // a failure is tried again at the next Render
		if err != nil {
			o.Failed = append(o.Failed, Failure{Name: t.name(), Dest: t.Dest, Stage: stage, Err: err})
			msg := "template not rendered; the old file stays"
			if stage == "check" {
				msg = "template refused by its check command; the old file stays"
			}
			r.log.Error(msg, "template", t.name(), "dest", t.Dest, "stage", stage, "err", err)
		}
	}
	return o
}

// replace writes out to t.Dest unless it already holds exactly that, and returns the stage
// that failed:
//
//  1. Compare with what the destination holds (read once, then remembered as a sum).
//  2. Write a temporary file beside the destination, with the mode and owner, and fsync it.
//  3. Call Options.Check on it; an error removes it and keeps the destination.
//  4. Rename it over the destination and fsync the directory, so the rename survives a crash.
//     A destination that cannot be renamed over (a bind-mounted file: EBUSY, EXDEV) is
//     written in place instead.
//
// With CheckLive, steps 3 and 4 swap: the new file is put in place, checked there, and the
// old content is put back if the check fails.
func (r *Renderer) replace(t *tmpl, out []byte) (bool, string, error) {
	sum := sha256.Sum256(out)
	old, oldErr := os.ReadFile(t.Dest)
	if !t.known && oldErr == nil {
		t.sum, t.known = sha256.Sum256(old), true
	}
	if t.known && t.sum == sum {
		return false, "", nil
	}
	prev, _ := os.Stat(t.Dest)
	staged, err := r.stage(t, out, prev)
	if err != nil {
		return false, "write", err
	}
	if r.opts.Check != nil && !t.CheckLive {
		if err := r.opts.Check(t.Dest, staged); err != nil {
			os.Remove(staged)
			return false, "check", err
		}
	}
	if err := r.place(t, staged, out); err != nil {
		return false, "write", err
	}
	t.known = false // unknown until the new content is known to stay
	if r.opts.Check != nil && t.CheckLive {
		if err := r.opts.Check(t.Dest, t.Dest); err != nil {
			if rerr := r.restore(t, old, oldErr, prev); rerr != nil {
				return false, "check", fmt.Errorf("%w; and putting the old file back failed: %v", err, rerr)
			}
			return false, "check", err
		}
	}
	t.sum, t.known = sum, true
	return true, "", nil
}

// restore puts the old content of t.Dest back after a failed CheckLive, or removes the new
// file when there was none.
func (r *Renderer) restore(t *tmpl, old []byte, oldErr error, prev os.FileInfo) error {
	if oldErr != nil {
		return os.Remove(t.Dest)
	}
	staged, err := r.stage(t, old, prev)
	if err != nil {
		return err
	}
	return r.place(t, staged, old)
}

// place renames staged over t.Dest, or writes out into it in place when it is a mount point.
func (r *Renderer) place(t *tmpl, staged string, out []byte) error {
	err := os.Rename(staged, t.Dest)
	if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EXDEV) {
		defer os.Remove(staged)
		if !r.inPlace[t.Dest] {
			r.inPlace[t.Dest] = true
			r.log.Warn("the destination cannot be replaced by a rename (a bind-mounted file?): it is written in place, so a reader may see it half written",
				"template", t.name(), "dest", t.Dest, "rename_error", err)
		}
		return r.writeInPlace(t, out)
	}
	if err != nil {
		os.Remove(staged)
		return err
	}
	if !r.opts.NoSync {
		if err := syncDir(filepath.Dir(t.Dest)); err != nil {
			// The file is in place; only its durability across a crash is in doubt.
			r.log.Warn("cannot sync the directory of a rendered file", "dest", t.Dest, "err", err)
		}
	}
	return nil
}

// writeInPlace overwrites t.Dest's content; its mode and owner stay unless given.
func (r *Renderer) writeInPlace(t *tmpl, out []byte) error {
	f, err := os.OpenFile(t.Dest, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(out)
	if err == nil && t.Mode != 0 {
		err = f.Chmod(t.Mode)
	}
	if err == nil && (r.opts.UID != -1 || r.opts.GID != -1) {
		err = f.Chown(r.opts.UID, r.opts.GID)
	}
	if err == nil && !r.opts.NoSync {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// stage is step 2: the temporary file, hidden and named after the destination. Its mode and
// owner are the template's, or those prev (the destination) has.
func (r *Renderer) stage(t *tmpl, out []byte, prev os.FileInfo) (string, error) {
	dir := filepath.Dir(t.Dest)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(t.Dest)+".tmp-*")
	if err != nil {
		return "", err
	}
	mode, uid, gid := t.Mode, r.opts.UID, r.opts.GID
	if prev != nil {
		st, _ := prev.Sys().(*syscall.Stat_t)
		if mode == 0 {
			mode = prev.Mode().Perm()
		}
		if st != nil && uid == -1 && int(st.Uid) != os.Geteuid() {
			uid = int(st.Uid)
		}
		if st != nil && gid == -1 && int(st.Gid) != os.Getegid() {
			gid = int(st.Gid)
		}
	}
	if mode == 0 {
		mode = r.opts.Mode
	}
	err = writeFile(f, out, mode, uid, gid, r.opts.NoSync)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	return f.Name(), nil
}

func writeFile(f *os.File, out []byte, mode os.FileMode, uid, gid int, noSync bool) error {
	if _, err := f.Write(out); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if uid != -1 || gid != -1 {
		if err := f.Chown(uid, gid); err != nil {
			return err
		}
	}
	if noSync {
		return nil
	}
	return f.Sync()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}

// Preview is what one template would render, for --dry-run; nothing is written.
type Preview struct {
	Name, Dest string
	Old, New   []byte // Old is nil when Dest does not exist
	Err        error  // the template failed to render
}

// Previews renders every template in memory over the current values.
func (r *Renderer) Previews() []Preview {
	var ps []Preview
	for _, t := range r.templates {
		p := Preview{Name: t.name(), Dest: t.Dest}
		if old, err := os.ReadFile(t.Dest); err == nil {
			p.Old = old
		}
		p.New, p.Err = r.output(t)
		ps = append(ps, p)
	}
	return ps
}

// Missing reports whether the destination of the template named dest does not exist yet.
func Missing(dest string) bool {
	_, err := os.Stat(dest)
	return errors.Is(err, os.ErrNotExist)
}
