package render

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"reflect"
	"slices"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig/v3"
)

// funcs are the functions a template can call: Sprig's, then ours, which win where the names
// are the same. Keys are relative to the mirrored prefix, as the files are named
// ("backends/web1"). A path argument is a directory: "backends" and "backends/" both mean the
// keys below backends/, never "backends2/x"; "" means every key. Every function that takes a
// string to work on takes it last, so that it works in a pipeline: {{get "k" | split ","}}.
func (r *Renderer) funcs(name string) template.FuncMap {
	fm := sprig.TxtFuncMap()
	maps.Copy(fm, template.FuncMap{
		"get": func(key string) (string, error) {
			v, ok := r.values[key]
			if !ok {
				return "", fmt.Errorf("key %q does not exist (template %s); use getdefault or exists for optional keys", key, name)
			}
			return v, nil
		},
		"getdefault": func(key, def string) string {
			if v, ok := r.values[key]; ok {
				return v
			}
			return def
		},
		"exists": func(key string) bool { _, ok := r.values[key]; return ok },
		"keys":   r.keys,
		"values": func(dir string) []string {
			var vs []string
			for _, k := range r.keys(dir) {
				vs = append(vs, r.values[k])
			}
			return vs
		},
		"entries": func(dir string) []Entry {
			var es []Entry
			for _, k := range r.keys(dir) {
				es = append(es, Entry{Key: k, Value: r.values[k]})
			}
			return es
		},
		"json": func(s string) (any, error) {
			var v any
			if err := json.Unmarshal([]byte(s), &v); err != nil {
				return nil, fmt.Errorf("json: %w (template %s)", err, name)
			}
			return v, nil
		},
		"tojson": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
		"base64encode": func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) },
		"base64decode": func(s string) (string, error) {
			b, err := base64.StdEncoding.DecodeString(s)
			if err != nil {
				return "", fmt.Errorf("base64decode: %w (template %s)", err, name)
			}
			return string(b), nil
		},
		"split":      func(sep, s string) []string { return strings.Split(s, sep) },
		"join":       joinAny,
		"sort":       sortAny,
		"trimprefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
		"trimsuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
		"trimspace":  strings.TrimSpace,
		"hasprefix":  func(prefix, s string) bool { return strings.HasPrefix(s, prefix) },
		"hassuffix":  func(suffix, s string) bool { return strings.HasSuffix(s, suffix) },
		"contains":   func(sub, s string) bool { return strings.Contains(s, sub) },
		"replace":    func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
		"lower":      strings.ToLower,
		"upper":      strings.ToUpper,
		"base":       path.Base,
		"dir":        path.Dir,
		"index":      index,
		"getenv": func(name string, def ...string) string {
			if v, ok := r.env[name]; ok || len(def) == 0 {
				return v
			}
			return def[0]
		},
		"env": func(name string) string { return r.env[name] },
	})
	return fm
}

// index is text/template's index, except that a missing map key is an error naming the key,
// never an empty value.
func index(item any, keys ...any) (any, error) {
	v := reflect.ValueOf(item)
	for _, k := range keys {
		for v.Kind() == reflect.Interface || v.Kind() == reflect.Pointer {
			v = v.Elem()
		}
		switch v.Kind() {
		case reflect.Map:
			kv := reflect.ValueOf(k)
			if !kv.IsValid() || !kv.Type().AssignableTo(v.Type().Key()) {
				return nil, fmt.Errorf("index: key %v of type %T does not fit a %s", k, k, v.Type())
			}
			e := v.MapIndex(kv)
			if !e.IsValid() {
				return nil, fmt.Errorf("index: key %q does not exist; use getdefault, exists or a with block for optional keys", fmt.Sprint(k))
			}
			v = e
		case reflect.Slice, reflect.Array, reflect.String:
			i, ok := toInt(k)
			if !ok || i < 0 || i >= v.Len() {
				return nil, fmt.Errorf("index: %v out of range (length %d)", k, v.Len())
			}
			v = v.Index(i)
		case reflect.Invalid:
			return nil, fmt.Errorf("index of a missing value with %v", k)
		default:
			return nil, fmt.Errorf("index: cannot index a %s with %v", v.Type(), k)
		}
	}
	if !v.IsValid() {
		return nil, nil
	}
	return v.Interface(), nil
}

func toInt(k any) (int, bool) {
	v := reflect.ValueOf(k)
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return int(v.Int()), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return int(v.Uint()), true
	case reflect.Float64:
		return int(v.Float()), v.Float() == float64(int(v.Float()))
	}
	return 0, false
}

// Entry is one key and its value, as entries returns them.
type Entry struct {
	Key, Value string
}

// keys returns the keys below dir, sorted.
func (r *Renderer) keys(dir string) []string {
	if dir != "" {
		dir = strings.TrimRight(dir, "/") + "/"
	}
	var ks []string
	for k := range r.values {
		if strings.HasPrefix(k, dir) {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	return ks
}

// toStrings converts what templates pass around as lists: []string, or []any from json.
func toStrings(v any) ([]string, error) {
	switch l := v.(type) {
	case []string:
		return l, nil
	case []any:
		out := make([]string, len(l))
		for i, e := range l {
			out[i] = fmt.Sprint(e)
		}
		return out, nil
	}
	return nil, fmt.Errorf("%T is not a list", v)
}

// joinAny is join, with the separator first so it reads well in a pipeline:
// {{values "hosts" | join ","}}.
func joinAny(sep string, v any) (string, error) {
	l, err := toStrings(v)
	if err != nil {
		return "", fmt.Errorf("join: %w", err)
	}
	return strings.Join(l, sep), nil
}

func sortAny(v any) ([]string, error) {
	l, err := toStrings(v)
	if err != nil {
		return nil, fmt.Errorf("sort: %w", err)
	}
	return slices.Sorted(slices.Values(l)), nil
}
