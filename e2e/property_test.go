package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/internal/etcdtest"
)

// visibleTree is what the target must show for the keys in etcd: a key that
// is also a directory of other keys is hidden (the directory wins).
func visibleTree(keys map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range keys {
		dir := false
		for other := range keys {
			dir = dir || strings.HasPrefix(other, k+"/")
		}
		if !dir {
			out[k] = v
		}
	}
	return out
}

// Random sequences of puts, deletes, transactions, range deletes,
// compactions and dropped connections: once etcd is quiet, the target equals
// etcd's prefix.
func TestRandomOperationsConverge(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, seed))
			e := etcdtest.Start(t)
			c := e.Client()
			d := start(t, e, "", "--prefix=/p")
			names := []string{"a", "b", "a/x", "a/y", "c/d/e", "c/d", "c", "f.conf", "g/h"}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var log []string
			for range 150 {
				k := "/p/" + names[rng.IntN(len(names))]
				v := fmt.Sprint(rng.IntN(4)) // few values, so identical puts happen
				switch op := rng.IntN(100); {
				case op < 45:
					log = append(log, "put "+k)
					c.Put(ctx, k, v)
				case op < 65:
					log = append(log, "delete "+k)
					c.Delete(ctx, k)
				case op < 80:
					var ops []clientv3.Op
					used := map[string]bool{}
					for range 1 + rng.IntN(4) {
						n := "/p/" + names[rng.IntN(len(names))]
						if used[n] {
							continue
						}
						used[n] = true
						if rng.IntN(3) == 0 {
							ops = append(ops, clientv3.OpDelete(n))
						} else {
							ops = append(ops, clientv3.OpPut(n, fmt.Sprint(rng.IntN(4))))
						}
					}
					log = append(log, fmt.Sprintf("txn of %d", len(ops)))
					if _, err := c.Txn(ctx).Then(ops...).Commit(); err != nil {
						t.Fatal(err)
					}
				case op < 85:
					log = append(log, "delete range "+k)
					c.Delete(ctx, k, clientv3.WithPrefix())
				case op < 90:
					log = append(log, "compact")
					e.Compact(ctx)
				case op < 95:
					log = append(log, "drop connections")
					e.Bridge.Drop()
				default:
					log = append(log, "disconnect, write, compact, reconnect")
					e.Bridge.Down()
					c.Put(ctx, k, v)
					c.Delete(ctx, "/p/"+names[rng.IntN(len(names))])
					e.Compact(ctx)
					e.Bridge.Up()
				}
			}
			want := visibleTree(inEtcd(t, c, "/p/"))
			etcdtest.Eventually(t, 30*time.Second, func() error {
				err := equalTree(t, d.target, want)()
				if err != nil {
					return fmt.Errorf("%w\noperations: %s", err, strings.Join(log, "; "))
				}
				return nil
			})
		})
	}
}
