package apply

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/config"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/hook"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/writer"
)

// fakeChild records what the pipeline does to the command, and runs check and reload
// commands with os/exec (no supervisor reaps here).
type fakeChild struct {
	mu    sync.Mutex
	calls []string
}

func (f *fakeChild) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
}

func (f *fakeChild) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeChild) Start(argv, env []string) error   { f.record("start"); return nil }
func (f *fakeChild) Restart(argv, env []string) error { f.record("restart"); return nil }
func (f *fakeChild) Signal(sig syscall.Signal) error  { f.record("signal " + sig.String()); return nil }
func (f *fakeChild) Output(ctx context.Context, argv, env []string) (int, []byte, error) {
	f.record("run " + filepath.Base(argv[0]))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out, nil
	}
	return 0, out, err
}

// setup returns a configuration with a target and one template rendering "a" (and its test
// directory); change adjusts it before the pipeline is made.
func setup(t *testing.T, change func(c *config.Config)) (*Pipeline, *fakeChild, config.Config) {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "t.tmpl")
	if err := os.WriteFile(src, []byte(`a={{get "a"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{Prefix: "/p", Target: filepath.Join(dir, "target"), Signal: syscall.SIGHUP, Mode: 0o600,
		UID: -1, GID: -1, OnChange: "signal", Command: []string{"server"}}
	cfg.Templates = []render.Spec{{Src: src, Dest: filepath.Join(dir, "out", "a.conf")}}
	if change != nil {
		change(&cfg)
	}
	var w *writer.Writer
	child := &fakeChild{}
	if cfg.Target != "" {
		var err error
		w, err = writer.Open(writer.Options{Dir: cfg.Target, Mode: 0o600, UID: -1, GID: -1, NoSync: true,
			Check: MirrorCheck(cfg, child)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
	}
	p, err := New(Options{Config: cfg, Writer: w, Child: child})
	if err != nil {
		t.Fatal(err)
	}
	return p, child, cfg
}

func batch(rev int64, full bool, kv ...string) source.Batch {
	b := source.Batch{Revision: rev, Full: full}
	for i := 0; i < len(kv); i += 2 {
		b.Changes = append(b.Changes, source.Change{Key: kv[i], Value: []byte(kv[i+1]), Delete: kv[i+1] == ""})
	}
	return b
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A batch becomes files and a rendered template, then the command starts once; the next
// batch that changes something signals it once; one that changes nothing sends nothing.
func TestBatchToFilesTemplatesThenOneNotification(t *testing.T) {
	p, child, cfg := setup(t, nil)
	ctx := context.Background()
	if err := p.Apply(ctx, batch(5, true, "a", "1", "b", "x")); err != nil {
		t.Fatal(err)
	}
	if err := <-p.Started(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(cfg.Target, "a")); got != "1" {
		t.Fatalf("target a = %q", got)
	}
	if got := read(t, cfg.Templates[0].Dest); got != "a=1" {
		t.Fatalf("rendered %q", got)
	}
	if err := p.Apply(ctx, batch(6, false, "a", "2")); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, batch(7, false, "a", "2")); err != nil { // the same value again
		t.Fatal(err)
	}
	if got := strings.Join(child.Calls(), ","); got != "start,signal hangup" {
		t.Fatalf("calls %s, want start, then one signal", got)
	}
	if got := read(t, cfg.Templates[0].Dest); got != "a=2" {
		t.Fatalf("rendered %q", got)
	}
}

// A check that refuses the new version keeps the old one live and sends nothing.
func TestRefusedCheckKeepsTheOldVersionAndNotifiesNothing(t *testing.T) {
	p, child, cfg := setup(t, func(c *config.Config) {
		var err error
		c.Check, err = hook.Parse(`sh -c '! grep -rq broken "$DISPENSER_STAGED"'`, 0)
		if err != nil {
			t.Fatal(err)
		}
		c.MirrorCheck = c.Check
	})
	ctx := context.Background()
	if err := p.Apply(ctx, batch(5, true, "a", "good")); err != nil {
		t.Fatal(err)
	}
	<-p.Started()
	if err := p.Apply(ctx, batch(6, false, "a", "broken")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(cfg.Target, "a")); got != "good" {
		t.Fatalf("target a = %q after a refused check", got)
	}
	for _, c := range child.Calls() {
		if strings.HasPrefix(c, "signal") {
			t.Fatalf("calls %v: a refused version was signalled", child.Calls())
		}
	}
}

// The command does not start while a template fails at the first sync.
func TestTemplateFailureHoldsTheStart(t *testing.T) {
	p, child, _ := setup(t, nil)
	if err := p.Apply(context.Background(), batch(5, true, "b", "1")); err == nil {
		t.Fatal("the first batch applied with a template that cannot render")
	}
	if len(child.Calls()) != 0 {
		t.Fatalf("calls %v before the templates rendered", child.Calls())
	}
}

// Without a target nothing is mirrored: only the template is rendered, and only its changes
// notify; a template refused by its check holds the notification back.
func TestTemplatesWithoutMirror(t *testing.T) {
	p, child, cfg := setup(t, func(c *config.Config) {
		c.Target = ""
		c.Check, _ = hook.Parse(`sh -c '! grep -q broken {{staged}}'`, 0)
	})
	ctx := context.Background()
	if err := p.Apply(ctx, batch(5, true, "a", "1", "b", "x")); err != nil {
		t.Fatal(err)
	}
	<-p.Started()
	for i, kv := range [][]string{{"b", "y"}, {"a", "broken"}, {"a", "1"}, {"a", "2"}} {
		if err := p.Apply(ctx, batch(int64(6+i), false, kv...)); err != nil {
			t.Fatal(err)
		}
	}
	// b is read by no template; a=broken is refused; a=1 is what the file holds; a=2 signals.
	var signals int
	for _, c := range child.Calls() {
		if strings.HasPrefix(c, "signal") {
			signals++
		}
	}
	if signals != 1 || read(t, cfg.Templates[0].Dest) != "a=2" {
		t.Fatalf("calls %v, rendered %q: want one signal, for a=2", child.Calls(), read(t, cfg.Templates[0].Dest))
	}
}

// With a mirror, a change whose template is refused is not signalled while the template
// fails; the signal is owed and sent with the next clean batch.
func TestRefusedTemplateHoldsTheSignalOfItsBatch(t *testing.T) {
	p, child, _ := setup(t, func(c *config.Config) {
		c.Check, _ = hook.Parse(`sh -c '! grep -q broken {{staged}}'`, 0)
	})
	ctx := context.Background()
	p.Apply(ctx, batch(5, true, "a", "1"))
	<-p.Started()
	p.Apply(ctx, batch(6, false, "a", "broken"))
	if got := strings.Join(child.Calls(), ","); strings.Contains(got, "signal") {
		t.Fatalf("calls %s: the refused configuration was signalled", got)
	}
	p.Apply(ctx, batch(7, false, "c", "unrelated")) // the template still fails
	if got := strings.Join(child.Calls(), ","); strings.Contains(got, "signal") {
		t.Fatalf("calls %s: signalled while the template is refused", got)
	}
	p.Apply(ctx, batch(8, false, "a", "1")) // renders what the file holds: the owed signal goes
	if got := child.Calls(); got[len(got)-1] != "signal hangup" {
		t.Fatalf("calls %v: the owed signal was not sent", got)
	}
}

// A template that fails at the first sync while its destination holds a previous good file
// lets the command start on that file.
func TestStartsOnThePreviousGoodFile(t *testing.T) {
	p, child, cfg := setup(t, nil)
	os.MkdirAll(filepath.Dir(cfg.Templates[0].Dest), 0o755)
	os.WriteFile(cfg.Templates[0].Dest, []byte("a=old"), 0o644)
	if err := p.Apply(context.Background(), batch(5, true, "b", "1")); err != nil {
		t.Fatal(err)
	}
	if err := <-p.Started(); err != nil || strings.Join(child.Calls(), ",") != "start" {
		t.Fatalf("calls %v, %v", child.Calls(), err)
	}
}

// Without a command (a sidecar, --once) the reload command runs after the first sync when it
// wrote something.
func TestReloadAfterTheFirstSyncWithoutACommand(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "reloaded")
	p, child, _ := setup(t, func(c *config.Config) {
		c.Command = nil
		c.Reload, _ = hook.Parse("touch "+marker, 0)
	})
	if err := p.Apply(context.Background(), batch(5, true, "a", "1")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("the reload command did not run after the first sync: %v (calls %v)", err, child.Calls())
	}
}

// --include and --exclude choose the mirrored keys; templates still read every key.
func TestIncludeExclude(t *testing.T) {
	p, _, cfg := setup(t, func(c *config.Config) {
		c.Include = []string{"*.pem", "sub/**"}
		c.Exclude = []string{"**/key.pem"}
	})
	if err := p.Apply(context.Background(), batch(5, true, "a", "1", "c.pem", "c", "account", "secret",
		"sub/x/key.pem", "k", "sub/x/y", "y")); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"c.pem": true, "account": false, "a": false, "sub/x/key.pem": false, "sub/x/y": true} {
		_, err := os.Stat(filepath.Join(cfg.Target, name))
		if (err == nil) != want {
			t.Errorf("%s mirrored: %v, want %v", name, err == nil, want)
		}
	}
	if read(t, cfg.Templates[0].Dest) != "a=1" {
		t.Fatal("the template did not see a key left out of the mirror")
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		glob, key string
		want      bool
	}{
		{"*.pem", "example.com-fullchain.pem", true},
		{"*.pem", "certs/a.pem", false},
		{"**/*.pem", "certs/a.pem", true},
		{"**/*.pem", "a.pem", true},
		{"certs/**", "certs/a/b", true},
		{"certs/**", "certs2/a", false},
		{"a/**/z", "a/z", true},
		{"a/**/z", "a/b/c/z", true},
		{"account", "account", true},
	} {
		if got := Match(tc.glob, tc.key); got != tc.want {
			t.Errorf("Match(%q, %q) = %v", tc.glob, tc.key, got)
		}
	}
}

// Templates read the environment the command gets: without the etcd credentials.
func TestTemplatesDoNotSeeTheEtcdPassword(t *testing.T) {
	t.Setenv("ETCD_PASSWORD", "hunter2")
	t.Setenv("APPLY_TEST_VAR", "visible")
	p, _, cfg := setup(t, nil)
	os.WriteFile(cfg.Templates[0].Src, []byte(`{{env "ETCD_PASSWORD"}}|{{getenv "ETCD_PASSWORD" "none"}}|{{env "APPLY_TEST_VAR"}}`), 0o644)
	p, _, cfg = setup(t, func(c *config.Config) { c.Templates[0].Src = cfg.Templates[0].Src })
	if err := p.Apply(context.Background(), batch(5, true, "a", "1")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, cfg.Templates[0].Dest); got != "|none|visible" {
		t.Fatalf("rendered %q", got)
	}
}

// A binding's own reload command runs after the first sync too when there is no command, and
// not when the command is about to start on the new file.
func TestBindingReloadAtTheFirstSync(t *testing.T) {
	for _, command := range [][]string{nil, {"server"}} {
		marker := filepath.Join(t.TempDir(), "reloaded")
		p, _, _ := setup(t, func(c *config.Config) {
			c.Command = command
			reload, _ := hook.Parse("touch "+marker, 0)
			c.Hooks = map[string]config.Hooks{c.Templates[0].Dest: {Name: "b", Reload: reload}}
		})
		if err := p.Apply(context.Background(), batch(5, true, "a", "1")); err != nil {
			t.Fatal(err)
		}
		_, err := os.Stat(marker)
		if ran := err == nil; ran != (command == nil) {
			t.Errorf("command %v: binding's reload ran: %v", command, ran)
		}
	}
}

// lineLog is a log that counts its lines, for a child that notes how many were written when
// it was signalled.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(string(p)))
	return len(p), nil
}

func (l *lineLog) since(n int) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines[n:]...)
}

type signalNotingChild struct {
	fakeChild
	log      *lineLog
	atSignal int // lines written before the last signal
}

func (c *signalNotingChild) Signal(sig syscall.Signal) error {
	c.atSignal = len(c.log.since(0))
	return c.fakeChild.Signal(sig)
}

// A change costs one log line, written after the signal: each line is a write to a pipe
// someone reads (a container's log), and the signal should not wait for it.
func TestAChangeIsLoggedOnceAfterItsSignal(t *testing.T) {
	logs := &lineLog{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	target := filepath.Join(t.TempDir(), "target")
	w, err := writer.Open(writer.Options{Dir: target, Mode: 0o600, UID: -1, GID: -1, NoSync: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	child := &signalNotingChild{log: logs}
	cfg := config.Config{Prefix: "/p", Target: target, Signal: syscall.SIGHUP, Mode: 0o600, UID: -1, GID: -1,
		OnChange: "signal", Command: []string{"server"}}
	p, err := New(Options{Config: cfg, Writer: w, Child: child, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := p.Apply(ctx, batch(5, true, "a", "1")); err != nil {
		t.Fatal(err)
	}
	if err := <-p.Started(); err != nil {
		t.Fatal(err)
	}
	before := len(logs.since(0))
	if err := p.Apply(ctx, batch(6, false, "a", "2", "b", "3")); err != nil {
		t.Fatal(err)
	}
	lines := logs.since(before)
	if len(lines) != 1 {
		t.Fatalf("a change logged %d lines, want 1: %q", len(lines), lines)
	}
	for _, want := range []string{"revision=6", "written=2", "removed=0", "signal=hangup"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line %q does not say %s", lines[0], want)
		}
	}
	if child.atSignal != before {
		t.Errorf("%d lines were written before the signal, want 0", child.atSignal-before)
	}
}

// Through the quiesce buffer (--settle): a batch that changes nothing notifies nothing and so
// starts no settle time; the change after it is signalled at once.
func TestANoOpBatchDoesNotHoldTheNextChange(t *testing.T) {
	const settle = 200 * time.Millisecond
	p, child, _ := setup(t, func(c *config.Config) { c.Settle = settle; c.Templates = nil })
	apply := p.Func()
	defer p.Stop()
	ctx := context.Background()
	if err := apply(ctx, batch(5, true, "a", "1")); err != nil {
		t.Fatal(err)
	}
	if err := <-p.Started(); err != nil {
		t.Fatal(err)
	}
	// The start's settle time has to pass (not a synchronisation), then the same value again.
	time.Sleep(settle)
	if err := apply(ctx, batch(6, false, "a", "1")); err != nil {
		t.Fatal(err)
	}
	if err := apply(ctx, batch(7, false, "a", "2")); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(child.Calls(), ","); got != "start,signal hangup" {
		t.Fatalf("calls %s right after the change, want start, then its signal at once", got)
	}
}
