package config

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeFiles writes name -> text below a fresh directory (creating subdirectories).
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// reconfig's layout, as its README lays it out: conf.d/*.json and templates/, the key absolute
// with --prefix prepended, recursive choosing the tree, altkeys not prefixed.
func TestReconfigLayout(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"conf.d/test1.json": `{"id": "test1", "source": "test1.conf.tmpl", "target": "/tmp/test1.conf", "key": "/test1", "recursive": true}`,
		"conf.d/test4.json": `{"altkeys": {"akey1": "/app/altkey1"}, "id": "test4_altkey", "key": "/test4", "recursive": false,
			"source": "test4.conf.tmpl", "target": "/tmp/test4.conf", "splay": 2, "checkcmd": "nginx -t -c /tmp/test4.conf"}`,
		"templates/test1.conf.tmpl": "x",
		"templates/test4.conf.tmpl": "y",
	})
	c, err := Parse([]string{"-p", "/app", "--cfgdir", dir}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Templates) != 2 || c.Target != "" {
		t.Fatalf("templates %+v, target %q", c.Templates, c.Target)
	}
	t1, t4 := c.Templates[0], c.Templates[1]
	if t1.Src != filepath.Join(dir, "templates", "test1.conf.tmpl") || t1.Name != "test1" || t1.Watched != "/app/test1" ||
		!t1.Watch("test1/a/b") || !t1.Watch("test1") || t1.Watch("test10") || t1.Mode != 0 || t1.CheckLive {
		t.Fatalf("test1 %+v", t1)
	}
	if !t4.Watch("test4") || t4.Watch("test4/x") || t4.AltKeys["akey1"] != "altkey1" || !t4.CheckLive {
		t.Fatalf("test4 %+v", t4)
	}
	if h := c.Hooks["/tmp/test4.conf"]; h.Splay != 2*time.Second || h.Name != "test4_altkey" || len(h.Check.Argv) != 4 {
		t.Fatalf("hooks %+v", h)
	}
	// Without --prefix the keys are read in full.
	c, err = Parse([]string{"--config-dir", dir}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Templates[0].Watch("/test1/x") || c.Templates[0].Watch("test1/x") || c.Prefix != "" {
		t.Fatalf("without --prefix: %+v", c.Templates[0])
	}
}

func TestConfigDirRefusesTwoBindingsOfOneKeyOrTarget(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"a.json": `{"key": "/db/host", "source": "t", "target": "/etc/a.conf"}`,
		"b.json": `{"key": "/db/host", "source": "t", "target": "/etc/b.conf"}`,
		"c.json": `{"key": "/c", "source": "t", "target": "/etc/a.conf"}`,
		"t":      "",
	})
	_, err := LoadDir(dir)
	for _, want := range []string{"a.json and " + filepath.Join(dir, "b.json") + `: both bind the key "/db/host"`,
		"a.json and " + filepath.Join(dir, "c.json") + ": both render into /etc/a.conf"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v, want %q", err, want)
		}
	}
}

// Every problem of a file is reported, each with its line.
func TestConfigDirReportsEveryProblemWithItsLine(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"conf.d/a.json":        "{\n  \"key\": \"/a\",\n  \"source\": \"a.conf.erb\",\n  \"user\": \"x\",\n  \"target\": \"/etc/a\",\n  \"pattern\": \"#% %#\",\n  \"group\": 1\n}\n",
		"conf.d/bad.json":      "{\n  \"key\": \"/b\",\n  \"source\": \"b\"\n  \"target\": \"/etc/b\"\n}\n",
		"conf.d/typ.json":      "{\n\n  \"key\": 3\n}\n",
		"conf.d/rel.json":      `{"key": "rel", "source": "b", "target": "/etc/r", "mode": "rw"}`,
		"templates/a.conf.erb": "<%= x %>",
		"templates/b":          "",
	})
	_, err := Parse([]string{"--config-dir", dir}, io.Discard)
	if err == nil {
		t.Fatal("accepted")
	}
	conf := filepath.Join(dir, "conf.d")
	for _, want := range []string{
		filepath.Join(conf, "a.json") + `:4: unknown field "user"`,
		filepath.Join(conf, "a.json") + `:7: unknown field "group"`,
		filepath.Join(conf, "a.json") + `:6: pattern "#% %#"`,
		filepath.Join(conf, "a.json") + ":3: source " + filepath.Join(dir, "templates", "a.conf.erb") + " is an ERB template",
		"Coming from confd / consul-template / reconfig",
		filepath.Join(conf, "bad.json") + ":4: invalid character",
		filepath.Join(conf, "typ.json") + ":3: ",
		filepath.Join(conf, "rel.json") + `:1: key "rel": must begin with /`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %v\nwant it to contain %q", err, want)
		}
	}
}

func TestConfigDirMissingFieldsAndBadMode(t *testing.T) {
	for file, want := range map[string]string{
		`{"key": "/a", "source": "t"}`:                                                     "a.json: target missing",
		`{"key": "/b", "source": "t", "target": "/etc/b", "mode": "rw"}`:                   `a.json: mode "rw"`,
		`{"key": "/b", "source": "t", "target": "/etc/b", "splay": -1}`:                    `a.json:1: splay "-1"`,
		`{"key": "/b", "source": "t", "target": "/etc/b", "altkeys": {"x": "/elsewhere"}}`: "altkeys x /elsewhere is outside --prefix /app",
	} {
		dir := writeFiles(t, map[string]string{"a.json": file, "t": ""})
		_, err := Parse([]string{"-p", "/app", "-t", "/config", "--config-dir", dir}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", file, err, want)
		}
	}
}
