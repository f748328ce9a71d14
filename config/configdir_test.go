package config

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeBindings(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestConfigDirBindingsBecomeTemplates(t *testing.T) {
	dir := writeBindings(t, map[string]string{
		"db.json": `{"key": "/app/db/", "source": "db.tmpl", "target": "/etc/db.conf", "mode": "0640",
			"reloadcmd": "pkill -HUP db", "keys": ["/app/common"]}`,
		"notes.txt": "not a binding",
	})
	c, err := Parse([]string{"-p", "/app", "-t", "/config", "--config-dir", dir}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Templates) != 1 {
		t.Fatalf("templates %+v", c.Templates)
	}
	s := c.Templates[0]
	if s.Src != "db.tmpl" || s.Dest != "/etc/db.conf" || s.Mode != 0o640 || !s.Watch("db/host") || s.Watch("common") || s.Watch("db") {
		t.Fatalf("spec %+v", s)
	}
	if h := c.Hooks["/etc/db.conf"]; strings.Join(h.Reload.Argv, " ") != "pkill -HUP db" || len(h.Check.Argv) != 0 {
		t.Fatalf("hooks %+v", h)
	}
}

func TestConfigDirRefusesTwoBindingsOfOneKey(t *testing.T) {
	dir := writeBindings(t, map[string]string{
		"a.json": `{"key": "db/host", "source": "a.tmpl", "target": "/etc/a.conf"}`,
		"b.json": `{"key": "db/host", "source": "b.tmpl", "target": "/etc/b.conf"}`,
	})
	_, err := LoadDir(dir)
	if err == nil || !strings.Contains(err.Error(), "a.json") || !strings.Contains(err.Error(), "b.json") ||
		!strings.Contains(err.Error(), `the key "db/host"`) {
		t.Fatalf("error %v, want one naming a.json, b.json and the key", err)
	}
}

func TestConfigDirRefusesTwoBindingsOfOneTarget(t *testing.T) {
	dir := writeBindings(t, map[string]string{
		"a.json": `{"key": "a", "source": "a.tmpl", "target": "/etc/app.conf"}`,
		"b.json": `{"key": "b", "source": "b.tmpl", "target": "/etc/app.conf"}`,
	})
	_, err := Parse([]string{"-p", "/app", "-t", "/config", "--config-dir", dir}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "a.json and "+filepath.Join(dir, "b.json")) ||
		!strings.Contains(err.Error(), "both render into /etc/app.conf") || !strings.Contains(err.Error(), "--config-dir") {
		t.Fatalf("error %v, want one naming the flag, both files and the target", err)
	}
}

func TestConfigDirParseErrorNamesFileAndLine(t *testing.T) {
	dir := writeBindings(t, map[string]string{
		"bad.json": "{\n  \"key\": \"a\",\n  \"source\": \"a.tmpl\"\n  \"target\": \"/etc/a\"\n}\n",
		"typ.json": "{\n\n  \"key\": 3\n}\n",
	})
	_, err := LoadDir(dir)
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{filepath.Join(dir, "bad.json") + ":4: invalid character", filepath.Join(dir, "typ.json") + ":3: "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want it to contain %q", err, want)
		}
	}
}

func TestConfigDirMissingFieldsAndBadMode(t *testing.T) {
	for file, want := range map[string]string{
		`{"key": "a", "source": "a.tmpl"}`:                                   "a.json: target missing",
		`{"key": "b", "source": "b.tmpl", "target": "/etc/b", "mode": "rw"}`: `a.json: mode "rw"`,
		`{"key": "b", "source": "b.tmpl", "target": "/etc/b", "user": "x"}`:  `a.json: json: unknown field "user"`,
	} {
		dir := writeBindings(t, map[string]string{"a.json": file})
		_, err := Parse([]string{"-p", "/app", "-t", "/config", "--config-dir", dir}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", file, err, want)
		}
	}
}
