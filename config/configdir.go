package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/hook"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
)

// ReadmeReconfig is where the README shows a reconfig (ERB) template beside its Go template.
const ReadmeReconfig = "README.md, section \"Coming from confd / consul-template / reconfig\""

// Binding is one JSON file of --config-dir, as reconfig reads them: the template Source
// rendered into Target whenever Key changes.
type Binding struct {
	File      string            `json:"-"`         // the JSON file it came from
	ID        string            `json:"id"`        // names the binding in logs; default File
	Key       string            `json:"key"`       // absolute etcd key; --prefix is prepended
	Recursive bool              `json:"recursive"` // the whole tree below Key, not only Key
	Source    string            `json:"source"`    // the template; relative to templates/
	Target    string            `json:"target"`    // the file rendered
	CheckCmd  string            `json:"checkcmd"`  // must pass before Target is kept
	ReloadCmd string            `json:"reloadcmd"` // run when Target was replaced
	AltKeys   map[string]string `json:"altkeys"`   // name -> absolute key: .AltData, read, not watched
	Splay     json.Number       `json:"splay"`     // seconds: at most this random delay before ReloadCmd
	Pattern   string            `json:"pattern"`   // ERB delimiters: refused
	Mode      string            `json:"mode"`      // octal; default: the target's own, or --mode
	Keys      []string          `json:"keys"`      // read but not watched (documentation only)
}

// fields are the names a binding may have.
var fields = []string{"id", "key", "recursive", "source", "target", "checkcmd", "reloadcmd", "altkeys", "splay",
	"pattern", "mode", "keys"}

// Hooks are a binding's own commands (no Argv: none), its splay and its name in logs.
type Hooks struct {
	Name          string
	Check, Reload hook.Command
	Splay         time.Duration
}

// LoadDir reads the bindings of dir: reconfig's layout (dir/conf.d/*.json, with sources in
// dir/templates/) or a directory of *.json files (sources relative to it). Every problem of
// every file is reported, each with file:line where it has one; two bindings of the same key
// or target are refused, naming both files.
func LoadDir(dir string) ([]Binding, error) {
	jsonDir, tmplDir := dir, dir
	if st, err := os.Stat(filepath.Join(dir, "conf.d")); err == nil && st.IsDir() {
		jsonDir, tmplDir = filepath.Join(dir, "conf.d"), filepath.Join(dir, "templates")
	} else if _, err := os.Stat(dir); err != nil {
		return nil, err
	}
	files, err := filepath.Glob(filepath.Join(jsonDir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no binding (*.json) in %s", jsonDir)
	}
	var bs []Binding
	var errs []error
	keys, targets := map[string]string{}, map[string]string{}
	for _, f := range files {
		b, err := loadBinding(f, tmplDir)
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

func loadBinding(file, tmplDir string) (Binding, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return Binding{}, err
	}
	b := Binding{File: file}
	var errs []error
	at := func(offset int64, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s:%d: "+format, append([]any{file, lineOf(data, offset)}, args...)...))
	}
	offsets, err := fieldOffsets(data)
	if err != nil {
		var syntax *json.SyntaxError
		if errors.As(err, &syntax) {
			return b, fmt.Errorf("%s:%d: %v", file, lineOf(data, syntax.Offset), err)
		}
		return b, fmt.Errorf("%s: %v", file, err)
	}
	for _, f := range offsets {
		if !slices.Contains(fields, f.name) {
			at(f.offset, "unknown field %q; a binding has %s", f.name, strings.Join(fields, ", "))
		}
	}
	if err := json.Unmarshal(data, &b); err != nil {
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			at(typ.Offset, "%v", err)
		} else {
			errs = append(errs, fmt.Errorf("%s: %v", file, err))
		}
		return b, errors.Join(errs...)
	}
	line := func(name string) int64 {
		for _, f := range offsets {
			if f.name == name {
				return f.offset
			}
		}
		return 0
	}
	var missing []string
	for _, f := range []struct{ name, v string }{{"key", b.Key}, {"source", b.Source}, {"target", b.Target}} {
		if f.v == "" {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("%s: %s missing: a binding needs key, source and target", file, strings.Join(missing, ", ")))
	}
	if b.Key != "" && !strings.HasPrefix(b.Key, "/") {
		at(line("key"), "key %q: must begin with / (an absolute etcd key; --prefix is prepended)", b.Key)
	}
	for name, k := range b.AltKeys {
		if !strings.HasPrefix(k, "/") {
			at(line("altkeys"), "altkeys %s %q: must begin with / (an absolute etcd key)", name, k)
		}
	}
	if b.Pattern != "" {
		at(line("pattern"), "pattern %q: ERB delimiters cannot apply here, templates are Go templates ({{ }}); see %s", b.Pattern, ReadmeReconfig)
	}
	if b.Source != "" {
		if !filepath.IsAbs(b.Source) {
			b.Source = filepath.Join(tmplDir, b.Source)
		}
		if strings.HasSuffix(b.Source, ".erb") {
			at(line("source"), "source %s is an ERB template, which cannot run here: rewrite it as a Go template; %s shows one beside its Go equivalent", b.Source, ReadmeReconfig)
		} else if _, err := os.Stat(b.Source); err != nil {
			at(line("source"), "source: %v", err)
		}
	}
	if b.Splay != "" {
		if s, err := strconv.ParseFloat(string(b.Splay), 64); err != nil || s < 0 {
			at(line("splay"), "splay %q: a number of seconds, 0 or more", b.Splay)
		}
	}
	if b.ID == "" {
		b.ID = file
	}
	return b, errors.Join(errs...)
}

// field is a top-level name of a JSON object and the offset where it is.
type field struct {
	name   string
	offset int64
}

// fieldOffsets lists the top-level names of the object in data, with their offsets.
func fieldOffsets(data []byte) ([]field, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("a binding is a JSON object: { \"key\": ..., \"source\": ..., \"target\": ... }")
	}
	var fs []field
	for dec.More() {
		off := dec.InputOffset()
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, _ := tok.(string)
		// The offset is before the blanks that precede the name; count from the name itself.
		off += int64(len(data[off:]) - len(bytes.TrimLeft(data[off:], " \t\r\n,")))
		fs = append(fs, field{name, off})
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
	}
	return fs, nil
}

// lineOf is the 1-based line of the byte at offset.
func lineOf(data []byte, offset int64) int {
	offset = min(max(offset, 0), int64(len(data)))
	return 1 + bytes.Count(data[:offset], []byte("\n"))
}

// fullKey is the binding's key with the prefix prepended, as reconfig does, without doubled
// or trailing slashes.
func fullKey(prefix, key string) string {
	k := strings.TrimRight(prefix, "/") + "/" + strings.TrimLeft(key, "/")
	for strings.Contains(k, "//") {
		k = strings.ReplaceAll(k, "//", "/")
	}
	if k != "/" {
		k = strings.TrimSuffix(k, "/")
	}
	return k
}

// relKey is an absolute key relative to the source's prefix (normalized, with its trailing
// slash; "" for the whole keyspace), or false when it is outside.
func relKey(srcPrefix, key string) (string, bool) {
	if srcPrefix == "" {
		return key, true
	}
	if key+"/" == srcPrefix {
		return "", true
	}
	return strings.CutPrefix(key, srcPrefix)
}

// below returns the matcher of rel and, with tree, every key below it.
func below(rel string, tree bool) func(string) bool {
	if tree {
		return func(k string) bool { return rel == "" || k == rel || strings.HasPrefix(k, rel+"/") }
	}
	return func(k string) bool { return k == rel }
}

// spec maps the binding onto a template. prefix is --prefix (prepended to the keys but not to
// altkeys, as reconfig does); srcPrefix is what the source reads; mode is --mode when given.
func (b Binding) spec(prefix, srcPrefix string, mode os.FileMode) (render.Spec, error) {
	full := fullKey(prefix, b.Key)
	rel, ok := relKey(srcPrefix, full)
	if !ok {
		return render.Spec{}, fmt.Errorf("%s: key %s is outside the prefix %s that is read", b.File, full, srcPrefix)
	}
	tree := b.Recursive || strings.HasSuffix(b.Key, "/") || full == "/"
	s := render.Spec{Src: b.Source, Dest: b.Target, Name: b.ID, Mode: mode, Watch: below(rel, tree), Data: below(rel, tree),
		Watched: full}
	if tree && full == "/" {
		s.Watch, s.Data = below("", true), below("", true)
	}
	for name, k := range b.AltKeys {
		r, ok := relKey(srcPrefix, fullKey("", k))
		if !ok {
			return s, fmt.Errorf("%s: altkeys %s %s is outside --prefix %s, and only the prefix is read: put it below the prefix, or drop --prefix and give the bindings' keys in full",
				b.File, name, k, prefix)
		}
		if s.AltKeys == nil {
			s.AltKeys = map[string]string{}
		}
		s.AltKeys[name] = r
	}
	if b.Mode != "" {
		m, err := parseMode(b.Mode)
		if err != nil {
			return s, fmt.Errorf("%s: mode %w", b.File, err)
		}
		s.Mode = os.FileMode(m)
	}
	s.CheckLive = b.CheckCmd != "" && !names(b.CheckCmd, "{{staged}}", "{{.src}}", "DISPENSER_STAGED")
	return s, nil
}

func names(s string, words ...string) bool {
	return slices.ContainsFunc(words, func(w string) bool { return strings.Contains(s, w) })
}

func (b Binding) hooks(timeout time.Duration) (Hooks, error) {
	h := Hooks{Name: b.ID}
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
	if b.Splay != "" {
		s, _ := strconv.ParseFloat(string(b.Splay), 64)
		h.Splay = time.Duration(s * float64(time.Second))
	}
	return h, nil
}
