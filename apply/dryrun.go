package apply

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/config"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/preview"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/render"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
	"github.com/etcd-config-dispenser/etcd-config-dispenser/writer"
)

// DryRun prints to out what a sync would change, in the target and in the templates'
// destinations, changes nothing, and returns the exit code.
func DryRun(cfg config.Config, client *clientv3.Client, log *slog.Logger, out io.Writer) int {
	ctx, cancel := context.WithTimeout(context.Background(), cmp.Or(cfg.StartTimeout, time.Minute))
	defer cancel()
	snap, err := source.New(source.Options{Client: client, Prefix: cfg.Prefix, Logger: log}).Snapshot(ctx)
	if err != nil {
		log.Error("dry run: cannot read the prefix", "err", err)
		return 1
	}
	r, err := NewRenderer(cfg, nil, log)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd-config-dispenser: --%v\n", err)
		return 2
	}
	changes, failed, err := Preview(cfg, r, snap, out)
	if err != nil {
		log.Error("dry run: cannot read the target", "target", cfg.Target, "err", err)
		return 1
	}
	if failed > 0 {
		log.Error("dry run: templates fail; nothing was changed", "revision", snap.Revision, "templates_failing", failed,
			"files_that_would_change", changes)
		return 1
	}
	log.Info("dry run: nothing was changed", "revision", snap.Revision, "files_that_would_change", changes)
	return 0
}

// Preview writes the diffs of a snapshot against what the target and the destinations hold,
// and returns how many files would change and how many templates fail. r may be nil (no
// templates).
func Preview(cfg config.Config, r *render.Renderer, snap source.Batch, out io.Writer) (changes, failed int, err error) {
	live := map[string][]byte{}
	if cfg.Target != "" {
		if live, err = preview.Live(cfg.Target); err != nil {
			return 0, 0, err
		}
	}
	want := map[string][]byte{}
	for _, c := range snap.Changes {
		if p, err := writer.KeyPath(c.Key); err == nil && cfg.Target != "" && Keep(c.Key, cfg.Include, cfg.Exclude) {
			want[p] = c.Value
		}
	}
	paths := slices.Collect(maps.Keys(want))
	for p := range live {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	for _, p := range paths {
		if d := preview.Diff(filepath.Join(cfg.Target, p), live[p], want[p], cfg.ShowValues); d != "" {
			fmt.Fprint(out, d)
			changes++
		}
	}
	if r == nil {
		return changes, 0, nil
	}
	cs := make([]render.Change, len(snap.Changes))
	for i, c := range snap.Changes {
		cs[i] = render.Change(c)
	}
	r.Fold(cs, true)
	for _, p := range r.Previews() {
		if p.Err != nil {
			fmt.Fprintf(out, "%s: template %s fails: %v\n", p.Dest, p.Name, p.Err)
			failed++
			continue
		}
		if d := preview.Diff(p.Dest, p.Old, p.New, cfg.ShowValues); d != "" {
			fmt.Fprint(out, d)
			changes++
		}
	}
	return changes, failed, nil
}
