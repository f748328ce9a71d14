package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
)

// key is the i-th key under prefix: flat, as the original cannot create subdirectories.
func key(prefix string, i int) string { return fmt.Sprintf("%sk%05d", prefix, i) }

// value is size bytes that differ for each i.
func value(i, size int) string {
	v := []byte(fmt.Sprintf("%d ", i))
	return string(append(v, bytes.Repeat([]byte("x"), max(0, size-len(v)))...))
}

// fresh is size bytes that no other call returns: a put of it is a real change.
func fresh(size int) string {
	v := []byte(fmt.Sprintf("change %d ", time.Now().UnixNano()))
	return string(append(v, bytes.Repeat([]byte("y"), max(0, size-len(v)))...))
}

// copyFile copies an executable.
func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o755)
}

// evict drops path's pages from the page cache, so that each binary's first run reads it
// from disk, as a container's first start does.
func evict(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// load puts n keys of size bytes under prefix, 128 to a transaction, unless they are there.
func (b *bench) load(prefix string, n, size int) (int64, error) {
	ctx := context.Background()
	resp, err := b.cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	if resp.Count == int64(n) {
		return resp.Header.Revision, nil
	}
	var rev int64
	for i := 0; i < n; i += 128 {
		var ops []clientv3.Op
		for j := i; j < min(n, i+128); j++ {
			ops = append(ops, clientv3.OpPut(key(prefix, j), value(j, size)))
		}
		resp, err := b.cli.Txn(ctx).Then(ops...).Commit()
		if err != nil {
			return 0, err
		}
		rev = resp.Header.Revision
	}
	return rev, nil
}

// storm puts n values of 1 KiB over keys keys from 8 writers, and returns when all were
// acknowledged.
func (b *bench) storm(prefix string, keys, n int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if _, err := b.cli.Put(context.Background(), key(prefix, i%keys), value(i, 1024)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// sameAsEtcd checks that every key under prefix has its file in target, with its value.
func (b *bench) sameAsEtcd(prefix, target string) error {
	resp, err := b.cli.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	for _, kv := range resp.Kvs {
		got, err := os.ReadFile(filepath.Join(target, strings.TrimPrefix(string(kv.Key), prefix)))
		if err != nil || !bytes.Equal(got, kv.Value) {
			return fmt.Errorf("%s in %s differs from etcd (%v)", kv.Key, target, err)
		}
	}
	return nil
}
