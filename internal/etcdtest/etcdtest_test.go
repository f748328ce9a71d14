package etcdtest

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestRestartKeepsDataWipeLosesIt(t *testing.T) {
	EachVersion(t, testRestartKeepsDataWipeLosesIt)
}

func testRestartKeepsDataWipeLosesIt(t *testing.T, s *Server) {
	if v := s.Version(); !strings.HasPrefix(v, string(s.Line())+".") {
		t.Fatalf("etcd %s runs, want %s", v, s.Line())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := s.Client()
	if _, err := c.Put(ctx, "/k", "v"); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	resp, err := c.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("after restart: %v %v", resp, err)
	}
	before := resp.Header.Revision
	cluster := resp.Header.ClusterId
	s.Wipe()
	resp, err = c.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 0 || resp.Header.Revision >= before {
		t.Fatalf("after wipe: kvs=%d rev=%d (before %d) err=%v", len(resp.Kvs), resp.Header.Revision, before, err)
	}
	if resp.Header.ClusterId != cluster {
		t.Fatalf("cluster ID %x after the wipe, was %x: a restore keeps it", resp.Header.ClusterId, cluster)
	}
}

// The bridge cuts the bridged client off and lets it back, on every version.
func TestBridgeDownRefusesUpServes(t *testing.T) {
	EachVersion(t, func(t *testing.T, s *Server) {
		c := s.BridgedClient()
		get := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			_, err := c.Get(ctx, "/k")
			return err
		}
		if err := get(); err != nil {
			t.Fatal(err)
		}
		s.Bridge.Down()
		if err := get(); err == nil {
			t.Fatal("a read through a bridge that is down succeeded")
		}
		s.Bridge.Up()
		Eventually(t, 10*time.Second, get)
	})
}

// Authentication and TLS work the same on every version, across a restart.
func TestAuthAndTLSOnEveryVersion(t *testing.T) {
	EachVersion(t, func(t *testing.T, s *Server) {
		user, password := s.EnableAuth("/p/")
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, err := s.Client().Put(ctx, "/p/a", "1"); err != nil {
			t.Fatal(err)
		}
		s.Restart()
		c := s.newClient(s.Endpoint(), user, password)
		resp, err := c.Get(ctx, "/p/a")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("reading as %s after a restart: %v %v", user, resp, err)
		}
	}, WithTLS())
}
