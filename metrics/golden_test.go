package metrics

import (
	"errors"
	"flag"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/metrics.golden from the current output")

// runtimeValue matches the value of a go_* or process_* sample, which differs from run to run.
var runtimeValue = regexp.MustCompile(`(?m)^((?:go|process)_\S+) \S+$`)

// The /metrics output keeps the names, types, help texts, labels and order it had with
// client_golang (testdata/metrics.golden was written by that version), so that dashboards,
// alerts and recording rules keep working. The Go runtime's and the process's values vary, so
// only their names are compared.
func TestMetricsOutputIsUnchanged(t *testing.T) {
	m := New("v1.2.3")
	m.Watching(true, "")
	m.Synced()
	m.EtcdRevision(12)
	m.Applied(10)
	m.BatchApplied(3, 1, 2)
	m.ApplyFailed("check", errors.New("exit status 1"))
	m.SignalSent()
	m.Resync("compacted")
	m.EtcdError(errors.New("refused"))
	_, body := get(t, m, "/metrics")
	var lines []string
	body = strings.ReplaceAll(body, `go_info{version="`+runtime.Version()+`"}`, `go_info{version="GOVERSION"}`)
	for line := range strings.Lines(runtimeValue.ReplaceAllString(body, "$1 _")) {
		switch {
		case strings.HasPrefix(line, "etcd_config_dispenser_last_batch_timestamp_seconds "):
			line = "etcd_config_dispenser_last_batch_timestamp_seconds _\n"
		case strings.HasPrefix(line, "# HELP go_"), strings.HasPrefix(line, "# HELP process_"):
			continue // the runtime's help texts are ours to word
		}
		lines = append(lines, line)
	}
	got := strings.Join(lines, "")
	if *update {
		if err := os.WriteFile("testdata/metrics.golden", []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("testdata/metrics.golden")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("/metrics changed; got:\n%s\nwant:\n%s", got, want)
	}
}
