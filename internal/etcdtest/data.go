package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Txn commits one transaction of key/value pairs (an empty value deletes the
// key) and returns its revision.
func Txn(t testing.TB, c *clientv3.Client, kv ...string) int64 {
	t.Helper()
	var ops []clientv3.Op
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == "" {
			ops = append(ops, clientv3.OpDelete(kv[i]))
		} else {
			ops = append(ops, clientv3.OpPut(kv[i], kv[i+1]))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		t.Fatalf("etcdtest: txn: %v", err)
	}
	return resp.Header.Revision
}

// Read returns the keys under prefix, relative to it, with their values.
func Read(t testing.TB, c *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("etcdtest: reading %s: %v", prefix, err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key[len(prefix):])] = string(kv.Value)
	}
	return out
}
