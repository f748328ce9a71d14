package e2e

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/dnstest"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// With ETCD_DISCOVERY_SRV and no ETCD_ENDPOINTS, the endpoints come from the SRV records of
// the domain; here a DNS server of the test's own (ETCD_DISCOVERY_DNS) names the test etcd.
func TestDiscoverySRVFindsEtcd(t *testing.T) {
	e := etcdtest.Start(t)
	txn(t, e.Client(), "/p/a", "1")
	_, port, err := net.SplitHostPort(strings.TrimPrefix(e.Endpoint(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	dns := dnstest.Start(t, dnstest.Records{SRV: map[string][]dnstest.SRV{
		"_etcd-client._tcp.cluster.test": {{Target: "localhost.", Port: uint16(p)}},
	}})
	d := startAs(t, e, runOpts{Env: []string{"ETCD_ENDPOINTS=", "ETCD_DISCOVERY_SRV=cluster.test",
		"ETCD_DISCOVERY_DNS=" + dns}}, "", "--prefix=/p")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"a": "1"}))
	if len(d.stderr.lines("etcd endpoints discovered", "http://localhost:"+port)) == 0 {
		t.Fatalf("no log line with the discovered endpoint:\n%s", d.stderr.String())
	}
	txn(t, e.Client(), "/p/a", "2")
	etcdtest.Eventually(t, 30*time.Second, equalTree(t, d.target, map[string]string{"a": "2"}))
}

func TestDiscoverySRVAndEndpointsTogetherExit2(t *testing.T) {
	e := etcdtest.Start(t)
	d := start(t, e, "", "--prefix=/p", "--discovery-srv=cluster.test")
	if code := d.wait(30 * time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	if len(d.stderr.lines("ETCD_ENDPOINTS", "--discovery-srv")) == 0 {
		t.Fatalf("the message does not name both:\n%s", d.stderr.String())
	}
}
