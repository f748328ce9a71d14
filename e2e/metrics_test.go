package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// An operator scrapes the running dispenser: alive at once, ready only once the files are there,
// and the counters follow the changes.
func TestMetricsAndHealth(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	e.Bridge.Down() // etcd unreachable when the dispenser starts
	addr := freeAddr(t)
	d := start(t, e, "reader", "--prefix=/p", "--listen="+addr)
	base := "http://" + addr

	etcdtest.Eventually(t, 30*time.Second, func() error {
		return expectStatus(base+"/healthz", 200)
	})
	if err := expectStatus(base+"/readyz", 503); err != nil {
		t.Fatalf("before etcd is reachable: %v", err)
	}
	if len(d.events()) != 0 {
		t.Fatal("the child started without etcd")
	}

	e.Bridge.Up()
	d.waitEvent("start", func(ev event) bool { return ev.What == "start" })
	etcdtest.Eventually(t, 30*time.Second, func() error { return expectStatus(base+"/readyz", 200) })
	before := scrape(t, base)

	rev := txn(t, e.Client(), "/p/a", "2", "/p/b", "3")
	d.waitEvent("the change", func(ev event) bool { return ev.What == "hangup" && ev.Files["b"] == "3" })
	var after map[string]float64
	etcdtest.Eventually(t, 30*time.Second, func() error {
		after = scrape(t, base)
		if got := after["etcd_config_dispenser_applied_revision"]; got < float64(rev) {
			return fmt.Errorf("applied_revision %v, want ≥ %d", got, rev)
		}
		return nil
	})
	for name, delta := range map[string]float64{
		"etcd_config_dispenser_batches_applied_total": 1,
		"etcd_config_dispenser_files_written_total":   2,
		"etcd_config_dispenser_signals_sent_total":    1,
	} {
		if got := after[name] - before[name]; got != delta {
			t.Errorf("%s moved by %v, want %v", name, got, delta)
		}
	}
	if after["etcd_config_dispenser_last_batch_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("last_batch_timestamp_seconds = %v", after["etcd_config_dispenser_last_batch_timestamp_seconds"])
	}
	for _, name := range []string{"etcd_config_dispenser_watch_lag_revisions", "etcd_config_dispenser_keys_skipped_total",
		"etcd_config_dispenser_resyncs_total", "etcd_config_dispenser_etcd_errors_total", "etcd_config_dispenser_ready", "process_resident_memory_bytes"} {
		if _, ok := after[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
}

// --version prints the version stamped at build time.
func TestVersionIsStamped(t *testing.T) {
	bin := t.TempDir() + "/stamped"
	build := exec.Command("go", "build", "-ldflags", "-X main.version=v9.8.7-test", "-o", bin,
		"github.com/etcd-config-dispenser/etcd-config-dispenser")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "etcd-config-dispenser v9.8.7-test" {
		t.Fatalf("--version printed %q", got)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func expectStatus(url string, want int) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		return fmt.Errorf("GET %s: %d %q, want %d", url, resp.StatusCode, body, want)
	}
	return nil
}

var sample = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$`)

// scrape reads /metrics in the text format: name (without labels) -> value.
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if m := sample.FindStringSubmatch(line); m != nil {
			v, err := strconv.ParseFloat(m[3], 64)
			if err == nil {
				out[m[1]] = v
			}
		}
	}
	return out
}
