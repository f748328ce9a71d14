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
	Mode      os.FileMode // of Dest; 0: Options.Mode
	// Watch, if set, says which keys the template follows: it is rendered again only after a
	// change of one of them (or a full batch). Nil follows every key.
	Watch func(key string) bool
}

// ParseSpec reads SRC:DEST, the form of --template.
func ParseSpec(s string) (Spec, error) {
	src, dest, ok := strings.Cut(s, ":")
	if !ok || src == "" || dest == "" {
		return Spec{}, fmt.Errorf("%q: use SRC:DEST, the template file and the file to render it into", s)
	}
	return Spec{Src: src, Dest: dest}, nil
}

// Options configure a Renderer. UID and GID: -1 leaves the owner as created.
type Options struct {
	Templates []Spec
	Mode      os.FileMode // mode of the destinations; 0 means 0600
	UID, GID  int
	NoSync    bool // skip fsync (tmpfs, tests)
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
	Replaced []string // destinations replaced, in the order of Options.Templates
	Failed   []string // destinations kept because rendering, writing or the check failed
}

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
	r := &Renderer{opts: opts, log: opts.Logger, values: map[string]string{}}
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
	if s.Mode == 0 {
		s.Mode = r.opts.Mode
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

// Output renders one template over the current values, in memory.
func (r *Renderer) output(t *tmpl) ([]byte, error) {
	var buf bytes.Buffer
	if err := t.t.Execute(&buf, r.values); err != nil {
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
		if err == nil {
			var changed bool
			changed, err = r.replace(t, out)
			if err == nil && changed {
				o.Replaced = append(o.Replaced, t.Dest)
				r.log.Info("template rendered", "template", t.Src, "dest", t.Dest, "bytes", len(out))
			}
		}
		t.dirty = err != nil // a failure is tried again at the next Render
		if err != nil {
			o.Failed = append(o.Failed, t.Dest)
			r.log.Error("template not rendered; the old file stays", "template", t.Src, "dest", t.Dest, "err", err)
		}
	}
	return o
}

// replace writes out to t.Dest unless it already holds exactly that:
//
//  1. Compare with what the destination holds (read once, then remembered as a sum).
//  2. Write a temporary file beside the destination, with Mode and owner, and fsync it.
//  3. Call Options.Check on it; an error removes it and keeps the destination.
//  4. Rename it over the destination and fsync the directory, so the rename survives a crash.
func (r *Renderer) replace(t *tmpl, out []byte) (bool, error) {
	sum := sha256.Sum256(out)
	if !t.known {
		if old, err := os.ReadFile(t.Dest); err == nil {
			t.sum, t.known = sha256.Sum256(old), true
		}
	}
	if t.known && t.sum == sum {
		return false, nil
	}
	staged, err := r.stage(t.Dest, out, t.Mode)
	if err != nil {
		return false, err
	}
	if r.opts.Check != nil {
		if err := r.opts.Check(t.Dest, staged); err != nil {
			os.Remove(staged)
			return false, err
		}
	}
	if err := os.Rename(staged, t.Dest); err != nil {
		os.Remove(staged)
		return false, err
	}
	t.sum, t.known = sum, true
	if !r.opts.NoSync {
		if err := syncDir(filepath.Dir(t.Dest)); err != nil {
			// The file is in place; only its durability across a crash is in doubt.
			r.log.Warn("cannot sync the directory of a rendered file", "dest", t.Dest, "err", err)
		}
	}
	return true, nil
}

// stage is step 2: the temporary file, hidden and named after the destination.
func (r *Renderer) stage(dest string, out []byte, mode os.FileMode) (string, error) {
	dir := filepath.Dir(dest)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(dest)+".tmp-*")
	if err != nil {
		return "", err
	}
	err = writeFile(f, out, mode, r.opts)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	return f.Name(), nil
}

func writeFile(f *os.File, out []byte, mode os.FileMode, opts Options) error {
	if _, err := f.Write(out); err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if opts.UID != -1 || opts.GID != -1 {
		if err := f.Chown(opts.UID, opts.GID); err != nil {
			return err
		}
	}
	if opts.NoSync {
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
	Dest     string
	Old, New []byte // Old is nil when Dest does not exist
	Err      error  // the template failed to render
}

// Previews renders every template in memory over the current values.
func (r *Renderer) Previews() []Preview {
	var ps []Preview
	for _, t := range r.templates {
		p := Preview{Dest: t.Dest}
		if old, err := os.ReadFile(t.Dest); err == nil {
			p.Old = old
		}
		p.New, p.Err = r.output(t)
		ps = append(ps, p)
	}
	return ps
}
