// Package source mirrors one etcd key prefix as a stream of batches.
//
// It takes a snapshot of the prefix pinned at one revision R (a paginated Get),
// then watches from R+1 and hands over each etcd revision's events as one
// batch; revisions that arrive together are merged, a revision is never split.
// It owns everything that can go wrong on the etcd side: retries with backoff,
// re-watching from the last applied revision after a dropped stream or a lost
// leader, and a full resync after a compaction or when etcd's history went
// backwards (a wiped or restored server). It knows nothing about files.
package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// Change is the new state of one key, relative to the prefix.
type Change struct {
	Key    string
	Value  []byte
	Delete bool
}

// Batch holds the changes of one or more whole revisions, up to Revision.
// A Full batch lists every key of the prefix: keys it does not list are gone.
type Batch struct {
	Revision int64
	Full     bool
	Changes  []Change
	// Next, if set, reads the next page of a Full batch read from etcd page by page, so the
	// values need not be in memory together: Changes hold the first page, each call returns
	// the next, and nil, nil after the last. The ApplyFunc must read every page before it
	// applies the batch (Collect reads them all into Changes); an error from Next is etcd's,
	// and the batch must not be applied.
	Next func(ctx context.Context) ([]Change, error)
}

// Collect reads the remaining pages of b into Changes, for an ApplyFunc that needs the whole
// batch at once.
func (b *Batch) Collect(ctx context.Context) error {
	for b.Next != nil {
		page, err := b.Next(ctx)
		if err != nil {
			return err
		}
		if page == nil {
			b.Next = nil
		}
		b.Changes = append(b.Changes, page...)
	}
	return nil
}

// ApplyFunc applies one batch. An error means the batch was not applied; the
// source then backs off and resyncs fully, so nothing is lost.
type ApplyFunc func(ctx context.Context, b Batch) error

// Options configure a Source. Zero values are sensible defaults.
type Options struct {
	Client *clientv3.Client
	// Prefix is the etcd key prefix. It is a directory boundary: "/app" and
	// "/app/" both mirror the keys under "/app/", never "/app2".
	Prefix string
	// PageSize is the most keys per Get page of a snapshot (default 500); with big values a
	// page has fewer, about 512 KiB.
	PageSize int64
	// CheckInterval is how often a linearizable Get checks that etcd's
	// revision did not go backwards (default 30s).
	CheckInterval time.Duration
	// RequestTimeout bounds each Get (default 5s).
	RequestTimeout time.Duration
	// Coalesce is, during a burst, the least time from one applied batch to the next:
	// changes that arrive meanwhile are merged into one batch, so a burst causes few batches
	// (and signals). A burst is when changes arrived while the previous batch was being
	// applied; a change that finds the source idle is applied at once. 0 never holds.
	Coalesce time.Duration
	// Once stops Run after the first applied snapshot.
	Once   bool
	Logger *slog.Logger
	// Observer, if set, is told what the source sees (for metrics and health checks).
	Observer Observer
}

// Observer learns what the source sees. Its methods are called from Run's goroutine and must
// return quickly.
type Observer interface {
	// Applied reports the revision up to which everything has been applied (it also moves on
	// progress notifications, without a batch).
	Applied(rev int64)
	// EtcdRevision reports the revision of a response header: etcd's latest known revision.
	EtcdRevision(rev int64)
	// EtcdError reports a failed request or watch; the source retries.
	EtcdError(err error)
	// Watching reports whether the source follows etcd live: true once a snapshot is applied
	// and while the watch works, false with the reason while it fails or resyncs.
	Watching(ok bool, reason string)
	// Resync reports a full resync after the initial snapshot, and why.
	Resync(reason string)
}

type noObserver struct{}

func (noObserver) Applied(int64)         {}
func (noObserver) EtcdRevision(int64)    {}
func (noObserver) EtcdError(error)       {}
func (noObserver) Watching(bool, string) {}
func (noObserver) Resync(string)         {}

// Source is the etcd side of the dispenser.
type Source struct {
	opts    Options
	prefix  string
	log     *slog.Logger
	applied atomic.Int64
	resyncs atomic.Int64

	clusterID uint64
	term      uint64
	gen       int
	connected bool
	obs       Observer
	lastErr   atomic.Pointer[error] // set during an outage
}

// LastError is the last etcd error, or nil after a success.
func (s *Source) LastError() error {
	if p := s.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// New returns a Source for the given options.
func New(opts Options) *Source {
	if opts.PageSize <= 0 {
		opts.PageSize = 500
	}
	if opts.CheckInterval <= 0 {
		opts.CheckInterval = 30 * time.Second
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	obs := opts.Observer
	if obs == nil {
		obs = noObserver{}
	}
	return &Source{opts: opts, prefix: NormalizePrefix(opts.Prefix), log: opts.Logger, obs: obs}
}

// NormalizePrefix makes the prefix a directory boundary by giving it one
// trailing slash. The empty prefix mirrors the whole keyspace.
func NormalizePrefix(p string) string {
	if p == "" {
		return ""
	}
	return strings.TrimRight(p, "/") + "/"
}

// Applied is the revision up to which everything has been applied.
func (s *Source) Applied() int64 { return s.applied.Load() }

// setApplied records that everything up to rev has been applied.
func (s *Source) setApplied(rev int64) {
	s.applied.Store(rev)
	s.obs.Applied(rev)
}

// Resyncs counts the full resyncs after the initial snapshot.
func (s *Source) Resyncs() int64 { return s.resyncs.Load() }

// errResync asks the run loop for a full resync.
type errResync struct{ reason string }

func (e errResync) Error() string { return "full resync needed: " + e.reason }

// Run takes the snapshot, applies it, then watches and applies every change
// until ctx is done. It returns nil when ctx ends (or, with Once, after the
// first snapshot was applied); errors from etcd are logged and retried forever.
func (s *Source) Run(ctx context.Context, apply ApplyFunc) error {
	var bo backoff
	needSnapshot := true
	for ctx.Err() == nil {
		if needSnapshot {
			if err := s.syncFull(ctx, apply); err != nil {
				if ctx.Err() != nil {
					break
				}
				s.fail("snapshot", err)
				bo.wait(ctx)
				continue
			}
			needSnapshot = false
			bo.reset()
			if s.opts.Once {
				return nil
			}
		}
		err := s.watch(ctx, apply, &bo)
		if ctx.Err() != nil {
			break
		}
		var r errResync
		if errors.As(err, &r) {
			s.log.Warn("resyncing the whole prefix", "reason", r.reason, "applied_revision", s.Applied())
			s.resyncs.Add(1)
			s.obs.Resync(r.reason)
			s.obs.Watching(false, "resyncing: "+r.reason)
			needSnapshot = true
			continue
		}
		s.fail("watch", err)
		bo.wait(ctx)
	}
	if s.opts.Once {
		return ctx.Err()
	}
	return nil
}

// fail logs an etcd problem once per outage at warning level, then at debug.
func (s *Source) fail(what string, err error) {
	s.obs.EtcdError(err)
	s.obs.Watching(false, fmt.Sprintf("etcd %s failing: %v", what, err))
	s.connected = false
	if s.lastErr.Swap(&err) == nil {
		s.log.Warn("etcd unreachable or failing, retrying with backoff", "during", what, "err", err)
		return
	}
	s.log.Debug("etcd still failing", "during", what, "err", err)
}

// recovered ends an outage, if there was one.
func (s *Source) recovered() {
	if s.lastErr.Swap(nil) != nil {
		s.log.Info("etcd reachable again", "applied_revision", s.Applied())
	}
}

// syncFull reads the whole prefix at one revision and applies it as a Full batch, page by
// page: the batch's Next reads the next page while the apply function writes this one.
func (s *Source) syncFull(ctx context.Context, apply ApplyFunc) error {
	start := time.Now()
	b, pg, err := s.snapshot(ctx)
	if err != nil {
		return err
	}
	err = apply(ctx, b)
	if pg.err != nil {
		return pg.err // etcd failed while the batch was applied: nothing was applied
	}
	if err != nil {
		return fmt.Errorf("applying snapshot at revision %d: %w", b.Revision, err)
	}
	if pg.ahead != nil {
		return fmt.Errorf("applying snapshot at revision %d: the apply function did not read every page", b.Revision)
	}
	s.setApplied(b.Revision)
	s.recovered()
	s.obs.Watching(true, "")
	s.log.Info("snapshot applied", "keys", pg.keys, "revision", b.Revision,
		"ms", time.Since(start).Milliseconds())
	return nil
}

// Snapshot reads every key of the prefix at one revision: the first page
// fixes the revision R, every later page is read at R.
func (s *Source) Snapshot(ctx context.Context) (Batch, error) {
	b, _, err := s.snapshot(ctx)
	if err == nil {
		err = b.Collect(ctx)
	}
	if err != nil {
		return Batch{}, err
	}
	return b, nil
}

// snapshot reads the first page of the prefix, which fixes the revision R, and returns it as
// a Full batch whose Next reads the later pages at R.
func (s *Source) snapshot(ctx context.Context) (Batch, *pager, error) {
	pg := &pager{s: s, end: clientv3.GetPrefixRangeEnd(s.prefix), from: s.prefix}
	if s.prefix == "" {
		pg.end, pg.from = "\x00", "\x00"
	}
	resp, err := pg.get(ctx, pg.from, min(s.opts.PageSize, firstPage))
	if err != nil {
		return Batch{}, nil, err
	}
	pg.rev = resp.Header.Revision
	s.noteHeader(resp.Header.ClusterId, resp.Header.RaftTerm)
	s.obs.EtcdRevision(resp.Header.Revision)
	s.logConnected(ctx, resp.Header.MemberId)
	b := Batch{Revision: pg.rev, Full: true, Changes: pg.page(ctx, resp), Next: pg.next}
	return b, pg, nil
}

// A snapshot's first page has at most firstPage keys; later pages are sized from the keys
// seen so far to about pageBytes (at most PageSize keys), so that the pages in flight hold
// about the same memory whatever the size of the values.
const (
	firstPage = 100
	pageBytes = 512 << 10
)

// pager reads a snapshot one page ahead of its consumer, at one revision.
type pager struct {
	s         *Source
	rev       int64
	from, end string
	ahead     chan pageResult // the next page, being read; nil once the last was handed out
	keys      int
	bytes     int   // of the keys and values so far
	err       error // the read that failed
}

type pageResult struct {
	resp *clientv3.GetResponse
	err  error
}

// get reads one page of at most limit keys, from key from on.
func (pg *pager) get(ctx context.Context, from string, limit int64) (*clientv3.GetResponse, error) {
	opts := []clientv3.OpOption{
		clientv3.WithRange(pg.end),
		clientv3.WithLimit(limit),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend),
	}
	if pg.rev != 0 {
		opts = append(opts, clientv3.WithRev(pg.rev))
	}
	rctx, cancel := context.WithTimeout(ctx, pg.s.opts.RequestTimeout)
	defer cancel()
	resp, err := pg.s.opts.Client.Get(rctx, from, opts...)
	if err != nil {
		return nil, fmt.Errorf("reading prefix %q: %w", pg.s.prefix, err)
	}
	return resp, nil
}

// page turns a response into changes, and starts reading the next page if there is one.
func (pg *pager) page(ctx context.Context, resp *clientv3.GetResponse) []Change {
	changes := make([]Change, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		changes[i] = Change{Key: string(kv.Key[len(pg.s.prefix):]), Value: kv.Value}
		pg.bytes += len(kv.Key) + len(kv.Value)
	}
	pg.keys += len(changes)
	if !resp.More || len(resp.Kvs) == 0 {
		pg.ahead = nil
		return changes
	}
	from := string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	limit := min(pg.s.opts.PageSize, max(1, int64(pageBytes*pg.keys/max(pg.bytes, 1))))
	ahead := make(chan pageResult, 1) // never blocks: an abandoned read just ends
	go func() {
		resp, err := pg.get(ctx, from, limit)
		ahead <- pageResult{resp, err}
	}()
	pg.ahead = ahead
	return changes
}

// next is Batch.Next: the page read ahead, or nil after the last one.
func (pg *pager) next(ctx context.Context) ([]Change, error) {
	if pg.err != nil {
		return nil, pg.err
	}
	if pg.ahead == nil {
		return nil, nil
	}
	var r pageResult
	select {
	case r = <-pg.ahead:
	case <-ctx.Done():
		r.err = ctx.Err()
	}
	if r.err != nil {
		pg.err = r.err
		return nil, r.err
	}
	return pg.page(ctx, r.resp), nil
}

// logConnected says once per connection which etcd member answered, by its client URLs when
// the member list can be read.
func (s *Source) logConnected(ctx context.Context, member uint64) {
	if s.connected {
		return
	}
	s.connected = true
	var urls []string
	rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	if ml, err := s.opts.Client.MemberList(rctx); err == nil {
		for _, m := range ml.Members {
			if m.ID == member {
				urls = m.ClientURLs
			}
		}
	}
	s.log.Info("connected to etcd", "member", fmt.Sprintf("%x", member), "endpoint", strings.Join(urls, ","),
		"cluster", fmt.Sprintf("%x", s.clusterID))
}

// noteHeader remembers the cluster and the highest raft term seen.
func (s *Source) noteHeader(cluster, term uint64) {
	s.clusterID = cluster
	s.term = max(s.term, term)
}

// checkHeader reports a resync when the response comes from another cluster
// or from a history that restarted (raft terms never go down in one history).
func (s *Source) checkHeader(cluster, term uint64) error {
	if cluster != 0 && s.clusterID != 0 && cluster != s.clusterID {
		return errResync{fmt.Sprintf("cluster ID changed from %x to %x", s.clusterID, cluster)}
	}
	if term != 0 && term < s.term {
		return errResync{fmt.Sprintf("raft term went back from %d to %d (etcd wiped or restored?)", s.term, term)}
	}
	s.term = max(s.term, term)
	return nil
}

// watch follows the prefix from the applied revision until an error.
func (s *Source) watch(ctx context.Context, apply ApplyFunc, bo *backoff) error {
	s.gen++
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Each watch gets its own gRPC stream, so cancelling it tears down only
	// this watch and never races a stale stream.
	wctx = metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(wctx),
		"etcd-config-dispenser-watch", strconv.Itoa(s.gen))
	from := s.Applied() + 1
	wch := s.opts.Client.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(from),
		clientv3.WithProgressNotify(), clientv3.WithFragment())
	s.log.Debug("watching", "prefix", s.prefix, "from_revision", from)

	check := time.NewTicker(s.opts.CheckInterval)
	defer check.Stop()
	var lastApply time.Time
	burst := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-check.C:
			if err := s.checkRevision(ctx); err != nil {
				return err
			}
			// A progress notification moves the applied revision past writes outside the
			// prefix, so the watch lag (etcd's revision minus the applied one) returns to 0.
			if err := s.opts.Client.RequestProgress(wctx); err != nil {
				s.log.Debug("requesting watch progress", "err", err)
			}
		case resp, ok := <-wch:
			if !ok {
				return errors.New("watch channel closed")
			}
			var hold time.Time
			if burst {
				hold = lastApply.Add(s.opts.Coalesce)
			}
			b, merged, err := s.collect(ctx, resp, wch, hold)
			// Several responses at once mean changes came while the last batch was being
			// applied: a burst, whose next changes are held for Coalesce and merged. A
			// lone change is applied at once.
			burst = merged > 1 && s.opts.Coalesce > 0
			if err != nil {
				return err
			}
			s.recovered()
			s.obs.Watching(true, "")
			bo.reset()
			if len(b.Changes) == 0 {
				s.setApplied(max(s.Applied(), b.Revision))
				continue
			}
			if err := apply(ctx, b); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s.log.Error("applying batch failed", "revision", b.Revision, "err", err)
				return errResync{"a batch could not be applied"}
			}
			s.setApplied(b.Revision)
			lastApply = time.Now()
		}
	}
}

// maxMerge bounds how many responses one batch merges, so a long backlog is
// still applied in steps.
const maxMerge = 1024

// collect turns the response, and any further responses already waiting, into one batch of
// whole revisions. Until hold (if it is later than now) it also waits for more, so that a
// burst becomes few batches. It returns how many responses it merged.
func (s *Source) collect(ctx context.Context, first clientv3.WatchResponse, wch clientv3.WatchChan,
	hold time.Time) (b Batch, merged int, err error) {
	b = Batch{Revision: s.Applied()}
	var held <-chan time.Time
	if d := time.Until(hold); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		held = t.C
	}
	resp := first
	for merged = 1; ; merged++ {
		if err := s.absorb(&b, resp); err != nil {
			return b, merged, err
		}
		if merged == maxMerge {
			return b, merged, nil
		}
		next, ok, got := receiveNow(wch)
		if !got && held != nil {
			select {
			case next, ok = <-wch:
				got = true
			case <-held:
			case <-ctx.Done():
				return b, merged, ctx.Err()
			}
		}
		if !got || !ok {
			// Nothing more waiting, or the channel closed: apply what arrived; the next
			// receive sees the closed channel and re-watches.
			return b, merged, nil
		}
		resp = next
	}
}

// receiveNow receives a response if one is waiting. clientv3 hands over its buffered
// responses one at a time from another goroutine, which needs to run between two of them:
// yielding once lets it offer the next, so a backlog is merged instead of applied one by one.
func receiveNow(wch clientv3.WatchChan) (resp clientv3.WatchResponse, ok, got bool) {
	for try := 0; try < 2; try++ {
		select {
		case resp, ok = <-wch:
			return resp, ok, true
		default:
		}
		runtime.Gosched()
	}
	return resp, false, false
}

// absorb adds one watch response to the batch.
func (s *Source) absorb(b *Batch, resp clientv3.WatchResponse) error {
	if err := resp.Err(); err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) {
			return errResync{fmt.Sprintf("history compacted at revision %d", resp.CompactRevision)}
		}
		return err
	}
	if resp.Canceled {
		return errors.New("watch canceled by the server")
	}
	if err := s.checkHeader(resp.Header.ClusterId, resp.Header.RaftTerm); err != nil {
		return err
	}
	s.obs.EtcdRevision(resp.Header.Revision)
	if resp.IsProgressNotify() {
		b.Revision = max(b.Revision, resp.Header.Revision)
		return nil
	}
	for _, ev := range resp.Events {
		rev := ev.Kv.ModRevision
		if rev <= s.Applied() {
			continue // replayed after a reconnect: already applied
		}
		if rev < b.Revision {
			return errResync{fmt.Sprintf("event at revision %d arrived after revision %d", rev, b.Revision)}
		}
		key := string(ev.Kv.Key[len(s.prefix):])
		if ev.Type == mvccpb.DELETE {
			b.Changes = append(b.Changes, Change{Key: key, Delete: true})
		} else {
			b.Changes = append(b.Changes, Change{Key: key, Value: ev.Kv.Value})
		}
		b.Revision = rev
	}
	return nil
}

// checkRevision is the watchdog: a linearizable read must not see a revision
// below what was applied, nor another cluster. clientv3 would otherwise wait
// silently for a revision a wiped server will reach only with other data.
func (s *Source) checkRevision(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	resp, err := s.opts.Client.Get(rctx, s.prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return fmt.Errorf("revision check: %w", err)
	}
	s.obs.EtcdRevision(resp.Header.Revision)
	if resp.Header.Revision < s.Applied() {
		return errResync{fmt.Sprintf("etcd revision %d is below the applied revision %d (etcd wiped or restored?)",
			resp.Header.Revision, s.Applied())}
	}
	return s.checkHeader(resp.Header.ClusterId, resp.Header.RaftTerm)
}

// backoff is exponential from 100ms to 10s with full jitter.
type backoff struct{ n int }

func (b *backoff) reset() { b.n = 0 }

func (b *backoff) wait(ctx context.Context) {
	d := 100 * time.Millisecond << min(b.n, 7)
	d = min(d, 10*time.Second)
	b.n++
	t := time.NewTimer(d/2 + rand.N(d/2+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
