package render

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// newRenderer writes the template text to a file and returns a Renderer for it, rendering into
// dest in a fresh directory.
func newRenderer(t *testing.T, text string, check func(dest, staged string) error) (*Renderer, string) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "t.tmpl")
	if err := os.WriteFile(src, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "out", "haproxy.cfg")
	r, err := New(Options{Templates: []Spec{{Src: src, Dest: dest}}, Mode: 0o640, UID: -1, GID: -1,
		NoSync: true, Check: check, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return r, dest
}

func put(kv ...string) []Change {
	var cs []Change
	for i := 0; i < len(kv); i += 2 {
		cs = append(cs, Change{Key: kv[i], Value: []byte(kv[i+1]), Delete: kv[i+1] == ""})
	}
	return cs
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const backends = `{{range keys "backends"}}server {{base .}} {{get .}}
{{end}}`

func TestRendersBackendsAndReplacesOnlyOnChange(t *testing.T) {
	r, dest := newRenderer(t, backends, nil)
	r.Fold(put("backends/web1", "10.0.0.1:80", "backends2/x", "not below backends/"), true)
	if o := r.Render(); !o.Changed() || len(o.Failed) > 0 {
		t.Fatalf("first render: %+v", o)
	}
	if got := read(t, dest); got != "server web1 10.0.0.1:80\n" {
		t.Fatalf("rendered %q", got)
	}
	if st, _ := os.Stat(dest); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v, want 0640", st.Mode())
	}
	r.Fold(put("other", "x"), false)
	if o := r.Render(); o.Changed() {
		t.Fatalf("a key the template does not read changed the output: %+v", o)
	}
	r.Fold(put("backends/web0", "10.0.0.0:80", "backends/web1", ""), false)
	if o := r.Render(); !o.Changed() {
		t.Fatal("a new backend did not change the output")
	}
	if got := read(t, dest); got != "server web0 10.0.0.0:80\n" {
		t.Fatalf("rendered %q", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(dest))
	if len(entries) != 1 {
		t.Fatalf("temporary files left beside the destination: %v", entries)
	}
}

func TestExistingIdenticalDestinationIsNotRewritten(t *testing.T) {
	r, dest := newRenderer(t, `{{get "a"}}`, nil)
	os.MkdirAll(filepath.Dir(dest), 0o755)
	os.WriteFile(dest, []byte("1"), 0o600)
	r.Fold(put("a", "1"), true)
	if o := r.Render(); o.Changed() {
		t.Fatalf("an identical destination was replaced: %+v", o)
	}
}

func TestMissingKeyKeepsTheOldFileAndNamesKeyAndTemplate(t *testing.T) {
	var logs strings.Builder
	r, dest := newRenderer(t, `{{get "a"}}`, nil)
	r.log = slog.New(slog.NewTextHandler(&logs, nil))
	r.Fold(put("a", "1"), true)
	r.Render()
	r.Fold(put("a", ""), false)
	o := r.Render()
	if o.Changed() || len(o.Failed) != 1 {
		t.Fatalf("outcome %+v, want one failure", o)
	}
	if got := read(t, dest); got != "1" {
		t.Fatalf("destination %q, want the old output", got)
	}
	if !strings.Contains(logs.String(), `key \"a\" does not exist (template `) {
		t.Fatalf("the log does not name the key and the template:\n%s", logs.String())
	}
}

func TestCheckFailureKeepsTheOldFileAndRetries(t *testing.T) {
	fail := true
	var checked string
	r, dest := newRenderer(t, `{{get "a"}}`, func(dest, staged string) error {
		checked = read(t, staged)
		if fail {
			return errors.New("nope")
		}
		return nil
	})
	r.Fold(put("a", "1"), true)
	if o := r.Render(); o.Changed() || len(o.Failed) != 1 {
		t.Fatalf("outcome %+v", o)
	}
	if checked != "1" {
		t.Fatalf("the check saw %q, want the new output", checked)
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Fatalf("destination written despite the failed check: %v", err)
	}
	fail = false
	if o := r.Render(); !o.Changed() {
		t.Fatalf("retry: %+v", o)
	}
	if got := read(t, dest); got != "1" {
		t.Fatalf("destination %q", got)
	}
}

func TestFunctions(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{`{{getdefault "nope" "d"}} {{getdefault "a" "d"}}`, "d 1"},
		{`{{exists "a"}} {{exists "nope"}}`, "true false"},
		{`{{values "hosts/" | join ","}}`, "h1,h2"},
		{`{{keys "" | join ","}}`, "a,cfg,enc,hosts/x,hosts/y,list"},
		{`{{range entries "hosts"}}{{.Key}}={{.Value}};{{end}}`, "hosts/x=h1;hosts/y=h2;"},
		{`{{with json (get "cfg")}}{{.port}} {{index .tags 1}}{{end}}`, "8080 b"},
		{`{{get "enc" | base64decode}} {{"hi" | base64encode}}`, "secret aGk="},
		{`{{get "list" | split "," | sort | join " "}}`, "a b c"},
		{`{{trimprefix "hosts/" "hosts/x"}} {{dir "a/b/c"}} {{base "a/b/c"}} {{upper "x"}}`, "x a/b c X"},
		{`{{index . "hosts/x"}}`, "h1"},
	} {
		r, dest := newRenderer(t, tc.text, nil)
		r.Fold(put("a", "1", "hosts/x", "h1", "hosts/y", "h2", "cfg", `{"port":8080,"tags":["a","b"]}`,
			"enc", "c2VjcmV0", "list", "c,a,b"), true)
		if o := r.Render(); len(o.Failed) > 0 {
			t.Fatalf("%s: failed", tc.text)
		}
		if got := read(t, dest); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.text, got, tc.want)
		}
	}
}

func TestParseErrorNamesTheFile(t *testing.T) {
	src := filepath.Join(t.TempDir(), "bad.tmpl")
	os.WriteFile(src, []byte("{{range}"), 0o644)
	_, err := New(Options{Templates: []Spec{{Src: src, Dest: "/nonexistent/x"}}})
	if err == nil || !strings.Contains(err.Error(), src) {
		t.Fatalf("error %v does not name %s", err, src)
	}
}

func TestParseSpec(t *testing.T) {
	if s, err := ParseSpec("a.tmpl:/etc/a.conf"); err != nil || s.Src != "a.tmpl" || s.Dest != "/etc/a.conf" {
		t.Fatalf("%v %v", s, err)
	}
	for _, bad := range []string{"a.tmpl", ":x", "x:"} {
		if _, err := ParseSpec(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// A template with Watch is rendered again only after a change of a key it follows; its own
// Mode wins over Options.Mode.
func TestWatchedKeysOnlyAndOwnMode(t *testing.T) {
	dir := t.TempDir()
	src, dest := filepath.Join(dir, "t.tmpl"), filepath.Join(dir, "out")
	if err := os.WriteFile(src, []byte(`{{get "db/host"}} {{getdefault "extra" "-"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{NoSync: true, UID: -1, GID: -1, Templates: []Spec{{Src: src, Dest: dest, Mode: 0o640,
		Watch: func(k string) bool { return strings.HasPrefix(k, "db/") }}}})
	if err != nil {
		t.Fatal(err)
	}
	r.Fold([]Change{{Key: "db/host", Value: []byte("h1")}}, true)
	if o := r.Render(); !o.Changed() {
		t.Fatalf("first render changed nothing: %+v", o)
	}
	if st, err := os.Stat(dest); err != nil || st.Mode().Perm() != 0o640 {
		t.Fatalf("dest %v %v, want mode 0640", st, err)
	}
	r.Fold([]Change{{Key: "extra", Value: []byte("x")}}, false)
	if o := r.Render(); o.Changed() {
		t.Fatalf("an unwatched key rendered the template again: %+v", o)
	}
	r.Fold([]Change{{Key: "db/host", Value: []byte("h2")}}, false)
	r.Render()
	if b, _ := os.ReadFile(dest); string(b) != "h2 x" {
		t.Fatalf("dest %q, want %q (extra read, not watched)", b, "h2 x")
	}
}

// Missing data is an error everywhere, never an empty string or "<no value>".
func TestMissingDataFailsTheRender(t *testing.T) {
	for _, text := range []string{
		`{{index . "missing"}}`,
		`{{.missing}}`,
		`{{with json (get "cfg")}}{{.nope}}{{end}}`,
		`{{index (json (get "cfg")) "nope"}}`,
		`{{index .Data "/p/missing"}}`,
	} {
		r, dest := newRenderer(t, text, nil)
		r.Fold(put("cfg", `{"port":1}`), true)
		o := r.Render()
		if len(o.Failed) != 1 || o.Failed[0].Stage != "template" {
			b, _ := os.ReadFile(dest)
			t.Errorf("%s: rendered %q, outcome %+v; want a failure", text, b, o)
		}
	}
}

// Sprig's functions, getenv, and the reconfig data: .Data (full keys of what the template
// covers), .AltData and .Watched.
func TestSprigEnvAndReconfigData(t *testing.T) {
	t.Setenv("RENDER_TEST_VAR", "v")
	dir := t.TempDir()
	src, dest := filepath.Join(dir, "t.tmpl"), filepath.Join(dir, "out")
	text := `{{"ab" | upper | repeat 2}} {{getenv "RENDER_TEST_VAR"}} {{getenv "RENDER_TEST_UNSET" "d"}} {{env "RENDER_TEST_VAR"}}
{{range $k, $v := .Data}}{{$k}}={{$v}};{{end}} {{range $k, $v := .AltData.other}}{{$k}}={{$v}};{{end}} {{.Watched}}`
	if err := os.WriteFile(src, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Prefix: "/p/", NoSync: true, UID: -1, GID: -1, Templates: []Spec{{Src: src, Dest: dest,
		Data:    func(k string) bool { return strings.HasPrefix(k, "db/") },
		AltKeys: map[string]string{"other": "alt"}, Watched: "/p/db"}}})
	if err != nil {
		t.Fatal(err)
	}
	r.Fold(put("db/b", "2", "db/a", "1", "alt/x", "3", "zzz", "4"), true)
	if o := r.Render(); len(o.Failed) > 0 {
		t.Fatalf("%+v", o.Failed)
	}
	want := "ABAB v d v\n/p/db/a=1;/p/db/b=2; /p/alt/x=3; /p/db"
	if got := read(t, dest); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// An existing destination keeps its mode when the template gives none; a check that names
// the destination itself (CheckLive) sees the new content there, and a refusal puts the old
// content back.
func TestKeepsModeAndChecksInPlace(t *testing.T) {
	dir := t.TempDir()
	src, dest := filepath.Join(dir, "t.tmpl"), filepath.Join(dir, "out")
	os.WriteFile(src, []byte(`{{get "a"}}`), 0o644)
	if err := os.WriteFile(dest, []byte("old"), 0o604); err != nil {
		t.Fatal(err)
	}
	var seen []string
	r, err := New(Options{NoSync: true, UID: -1, GID: -1, Templates: []Spec{{Src: src, Dest: dest, CheckLive: true}},
		Check: func(d, staged string) error {
			b, _ := os.ReadFile(staged)
			seen = append(seen, string(b))
			if string(b) == "bad" {
				return errors.New("refused")
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	r.Fold(put("a", "good"), true)
	if o := r.Render(); !o.Changed() {
		t.Fatalf("%+v", o)
	}
	if st, _ := os.Stat(dest); st.Mode().Perm() != 0o604 {
		t.Fatalf("mode %v, want the old 0604 kept", st.Mode())
	}
	r.Fold(put("a", "bad"), false)
	if o := r.Render(); len(o.Failed) != 1 || o.Failed[0].Stage != "check" {
		t.Fatalf("%+v", o)
	}
	if got := read(t, dest); got != "good" {
		t.Fatalf("dest %q after a refused check, want the old content back", got)
	}
	if strings.Join(seen, ",") != "good,bad" {
		t.Fatalf("the check saw %v at the destination, want the new content each time", seen)
	}
}

// A bind-mounted destination cannot be renamed over: it is written in place.
func TestBindMountedDestinationWrittenInPlace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mount --bind needs root")
	}
	dir := t.TempDir()
	src, dest, host := filepath.Join(dir, "t.tmpl"), filepath.Join(dir, "dest"), filepath.Join(dir, "host")
	os.WriteFile(src, []byte(`{{get "a"}}`), 0o644)
	os.WriteFile(host, []byte("old"), 0o644)
	os.WriteFile(dest, nil, 0o644)
	if err := syscall.Mount(host, dest, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount here: %v", err)
	}
	defer syscall.Unmount(dest, 0)
	r, err := New(Options{NoSync: true, UID: -1, GID: -1, Templates: []Spec{{Src: src, Dest: dest}}})
	if err != nil {
		t.Fatal(err)
	}
	r.Fold(put("a", "new"), true)
	if o := r.Render(); !o.Changed() {
		t.Fatalf("%+v", o)
	}
	if got := read(t, host); got != "new" {
		t.Fatalf("the mounted file holds %q", got)
	}
	if st, _ := os.Stat(host); st.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, want 0644 kept", st.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".dest.tmp-*")); len(left) > 0 {
		t.Fatalf("left behind: %v", left)
	}
}

// The README's Go equivalent of reconfig's test4.conf.erb renders what the ERB did.
func TestReadmeReconfigExample(t *testing.T) {
	dir := t.TempDir()
	src, dest := filepath.Join(dir, "t.tmpl"), filepath.Join(dir, "out")
	text := `{{range $k, $v := .Data}}KEY {{$k}} has VALUE {{$v}}
{{end}}The main key we watched for was "{{.Watched}}".
{{range $k, $v := .AltData}}Altkey={{$k}}
{{toPrettyJson $v}}
{{end}}`
	os.WriteFile(src, []byte(text), 0o644)
	r, err := New(Options{Prefix: "", NoSync: true, UID: -1, GID: -1, Templates: []Spec{{Src: src, Dest: dest,
		Data: func(k string) bool { return k == "/test4" }, AltKeys: map[string]string{"akey1": "/altkey1"}, Watched: "/test4"}}})
	if err != nil {
		t.Fatal(err)
	}
	r.Fold(put("/test4", "v", "/altkey1/x", "1", "/other", "o"), true)
	if o := r.Render(); len(o.Failed) > 0 {
		t.Fatalf("%+v", o.Failed)
	}
	want := "KEY /test4 has VALUE v\nThe main key we watched for was \"/test4\".\nAltkey=akey1\n{\n  \"/altkey1/x\": \"1\"\n}\n"
	if got := read(t, dest); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
