package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/hook"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
)

// Binding is one file of --config-dir, in the style of reconfig: a template rendered into a
// target when its key changes.
type Binding struct {
	File      string   `json:"-"`         // the JSON file it came from
	Key       string   `json:"key"`       // relative to --prefix; ending in "/": every key below
	Source    string   `json:"source"`    // the template file
	Target    string   `json:"target"`    // the file rendered
	CheckCmd  string   `json:"checkcmd"`  // instead of --check-cmd for this target
	ReloadCmd string   `json:"reloadcmd"` // run when this target was replaced
	Mode      string   `json:"mode"`      // octal; default --mode
	Keys      []string `json:"keys"`      // read by the template but not watched (documentation only)
}

// Hooks are a binding's own check and reload commands (no Argv: none).
type Hooks struct {
	Check, Reload hook.Command
}

// LoadDir reads every *.json file of dir, in name order. A file that does not parse is named
// with the line of the problem; two bindings of the same key or target are refused, naming
// both files.
func LoadDir(dir string) ([]Binding, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		if _, err := os.Stat(dir); err != nil {
			return nil, err
		}
	}
	var bs []Binding
	var errs []error
	keys, targets := map[string]string{}, map[string]string{}
	for _, f := range files {
		b, err := loadBinding(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if other, ok := keys[b.Key]; ok {
			errs = append(errs, fmt.Errorf("%s and %s: both bind the key %q", other, f, b.Key))
		}
		abs, _ := filepath.Abs(b.Target)
		if other, ok := targets[abs]; ok {
			errs = append(errs, fmt.Errorf("%s and %s: both render into %s", other, f, b.Target))
		}
		keys[b.Key], targets[abs] = f, f
		bs = append(bs, b)
	}
	return bs, errors.Join(errs...)
}

func loadBinding(file string) (Binding, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return Binding{}, err
	}
	b := Binding{File: file}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		var syntax *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syntax):
			return b, fmt.Errorf("%s:%d: %v", file, lineOf(data, syntax.Offset), err)
		case errors.As(err, &typ):
			return b, fmt.Errorf("%s:%d: %v", file, lineOf(data, typ.Offset), err)
		}
		return b, fmt.Errorf("%s: %v", file, err)
	}
	var missing []string
	for name, v := range map[string]string{"key": b.Key, "source": b.Source, "target": b.Target} {
		if v == "" {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return b, fmt.Errorf("%s: %s missing: a binding needs key, source and target", file, strings.Join(missing, ", "))
	}
	return b, nil
}

// lineOf is the 1-based line of the byte at offset.
func lineOf(data []byte, offset int64) int {
	offset = min(max(offset, 0), int64(len(data)))
	return 1 + bytes.Count(data[:offset], []byte("\n"))
}

// spec maps the binding onto a template: its key (relative to prefix) is what it watches.
func (b Binding) spec(prefix string, mode uint32) (render.Spec, error) {
	key := strings.TrimPrefix(strings.TrimPrefix(b.Key, strings.TrimSuffix(prefix, "/")+"/"), "/")
	s := render.Spec{Src: b.Source, Dest: b.Target, Mode: os.FileMode(mode)}
	if dir, ok := strings.CutSuffix(key, "/"); ok {
		s.Watch = func(k string) bool { return dir == "" || strings.HasPrefix(k, dir+"/") }
	} else {
		s.Watch = func(k string) bool { return k == key }
	}
	if b.Mode != "" {
		m, err := parseMode(b.Mode)
		if err != nil {
			return s, fmt.Errorf("%s: mode %w", b.File, err)
		}
		s.Mode = os.FileMode(m)
	}
	return s, nil
}

func (b Binding) hooks(timeout time.Duration) (Hooks, error) {
	var h Hooks
	var err error
	if b.CheckCmd != "" {
		if h.Check, err = hook.Parse(b.CheckCmd, timeout); err != nil {
			return h, fmt.Errorf("%s: checkcmd %q: %w", b.File, b.CheckCmd, err)
		}
	}
	if b.ReloadCmd != "" {
		if h.Reload, err = hook.Parse(b.ReloadCmd, timeout); err != nil {
			return h, fmt.Errorf("%s: reloadcmd %q: %w", b.File, b.ReloadCmd, err)
		}
	}
	return h, nil
}
