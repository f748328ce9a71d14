package etcdtest

import (
	"context"
	"testing"
	"time"
)

func TestRestartKeepsDataWipeLosesIt(t *testing.T) {
	s := Start(t)
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
	s.Wipe()
	resp, err = c.Get(ctx, "/k")
	if err != nil || len(resp.Kvs) != 0 || resp.Header.Revision >= before {
		t.Fatalf("after wipe: kvs=%d rev=%d (before %d) err=%v", len(resp.Kvs), resp.Header.Revision, before, err)
	}
}
