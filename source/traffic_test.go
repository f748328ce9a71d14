package source

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// A lone change costs etcd nothing but the event: the client the source creates sends nothing
// back for it. gRPC's default flow control answers each data frame that finds it idle with a
// window update and a bandwidth-probe ping (30 bytes), which etcd must read and answer, and
// which in a fleet of dispensers is that many more requests per change.
func TestALoneChangeSendsNothingBackToEtcd(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client() // direct, not through the bridge whose bytes are counted
	put(t, c, "/p/a", "0")
	m := &mirror{}
	cfg := clientv3.Config{Endpoints: []string{e.Endpoint()}, Logger: zap.NewNop()}
	run(t, Options{Config: cfg, Prefix: "/p/"}, m)
	etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": "0"}) })

	const changes = 100
	var before int64
	for i := 0; i <= changes; i++ {
		v := fmt.Sprint(i + 1)
		put(t, c, "/p/a", v)
		etcdtest.Eventually(t, 10*time.Second, func() error { return m.equals(map[string]string{"a": v}) })
		if i == 0 {
			before = e.Bridge.Sent() // the watch is set up, and its first event came through it
		}
	}
	// One HTTP/2 frame header is 9 bytes, a ping 17: allow a few frames for the whole run (a
	// window update once a large part of the window is used, a keepalive answer), not one per
	// change.
	if sent := e.Bridge.Sent() - before; sent > 5*17 {
		t.Fatalf("the source sent %d bytes to etcd for %d lone changes (%.1f per change), want almost none",
			sent, changes, float64(sent)/changes)
	}
}

// A value larger than the connection's flow-control windows (etcd takes requests up to 1.5 MiB)
// arrives whole, in the snapshot and through the watch.
func TestAValueLargerThanTheWindowsArrives(t *testing.T) {
	e := etcdtest.Start(t)
	c := e.Client()
	big := func(b byte) string { return string(bytes.Repeat([]byte{b}, connWindow*7/10)) }
	if connWindow*7/10 <= streamWindow {
		t.Fatalf("the value (%d bytes) must exceed the stream window (%d)", connWindow*7/10, streamWindow)
	}
	put(t, c, "/p/a", big('a'))
	m := &mirror{}
	cfg := clientv3.Config{Endpoints: []string{e.Endpoint()}, Logger: zap.NewNop()}
	run(t, Options{Config: cfg, Prefix: "/p/"}, m)
	etcdtest.Eventually(t, 20*time.Second, func() error { return m.equals(map[string]string{"a": big('a')}) })
	put(t, c, "/p/a", big('b'))
	put(t, c, "/p/c", big('c'))
	etcdtest.Eventually(t, 20*time.Second, func() error {
		return m.equals(map[string]string{"a": big('b'), "c": big('c')})
	})
}
