package metrics

import (
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
)

func get(t *testing.T, m *Metrics, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func TestReadyOnlyAfterTheInitialSyncAndWhileWatching(t *testing.T) {
	m := New("test")
	if code, _ := get(t, m, "/healthz"); code != 200 {
		t.Fatalf("/healthz %d", code)
	}
	steps := []struct {
		do         func()
		code       int
		bodyHasAll string
	}{
		{func() {}, 503, "etcd not reached yet"},
		{func() { m.EtcdError(errors.New("refused")); m.Watching(false, "etcd snapshot failing: refused") }, 503, "refused"},
		{func() { m.Watching(true, "") }, 503, "initial sync not applied yet"},
		{func() { m.Synced() }, 200, "ok"},
		{func() { m.Watching(false, "resyncing: history compacted") }, 503, "compacted"},
		{func() { m.Watching(true, "") }, 200, "ok"},
	}
	for i, s := range steps {
		s.do()
		if code, body := get(t, m, "/readyz"); code != s.code || !strings.Contains(body, s.bodyHasAll) {
			t.Fatalf("step %d: /readyz %d %q, want %d with %q", i, code, body, s.code, s.bodyHasAll)
		}
	}
}

func TestWatchLagIsEtcdRevisionMinusApplied(t *testing.T) {
	m := New("test")
	m.Applied(10)
	m.EtcdRevision(15)
	if got := m.lag(); got != 5 {
		t.Fatalf("lag %v, want 5", got)
	}
	m.Applied(15) // a progress notification caught up
	if got := m.lag(); got != 0 {
		t.Fatalf("lag %v, want 0", got)
	}
	m.EtcdRevision(3) // a wiped etcd starts again low
	if got := m.lag(); got != 0 {
		t.Fatalf("lag %v after etcd went back, want 0", got)
	}
}

func TestNilMetricsIgnoresEvents(t *testing.T) {
	var m *Metrics
	m.Applied(1)
	m.EtcdRevision(1)
	m.EtcdError(nil)
	m.Watching(true, "")
	m.Resync("")
	m.BatchApplied(1, 2, 3)
	m.Synced()
	m.SignalSent()
}

func TestMetricNames(t *testing.T) {
	m := New("v1")
	m.BatchApplied(2, 1, 0)
	_, body := get(t, m, "/metrics")
	for _, name := range []string{"etcd_config_dispenser_files_written_total 2", "etcd_config_dispenser_files_removed_total 1",
		`etcd_config_dispenser_build_info{version="v1"} 1`, "etcd_config_dispenser_watch_lag_revisions 0"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
}

// A failure to apply is the target's: it is counted by stage, not as an etcd error, and /readyz
// names it without naming any key (the endpoint is unauthenticated).
func TestApplyFailureIsNamedAndCountedByStageWithoutKeys(t *testing.T) {
	m := New("test")
	m.Watching(true, "")
	m.Synced()
	m.Applied(5)
	err := &os.PathError{Op: "open", Path: "/config/..2026/secret-db-password", Err: syscall.ENOSPC}
	m.ApplyFailed("files", err)
	code, body := get(t, m, "/readyz")
	if code != 503 || !strings.Contains(body, "applying to the target failed") || !strings.Contains(body, "no space left on device") {
		t.Fatalf("/readyz %d %q, want 503 naming the apply failure and its cause", code, body)
	}
	if strings.Contains(body, "secret") || strings.Contains(body, "/config") {
		t.Fatalf("/readyz names a key or path: %q", body)
	}
	m.ApplyFailed("template", errors.New(`template "db.conf": key "secret-db-password" missing`))
	if _, body := get(t, m, "/readyz"); strings.Contains(body, "secret") || !strings.Contains(body, "template") {
		t.Fatalf("/readyz %q: want the stage, never the key", body)
	}
	_, metrics := get(t, m, "/metrics")
	for _, want := range []string{`etcd_config_dispenser_apply_errors_total{stage="files"} 1`,
		`etcd_config_dispenser_apply_errors_total{stage="template"} 1`, "etcd_config_dispenser_etcd_errors_total 0"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	m.Applied(6)
	if code, _ := get(t, m, "/readyz"); code != 200 {
		t.Fatalf("/readyz %d after a batch was applied again, want 200", code)
	}
}
