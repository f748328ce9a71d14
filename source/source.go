// Package source mirrors one etcd key prefix as a stream of batches.
//
// It takes a snapshot of the prefix pinned at one revision R (a paginated Get),
// then watches from R+1 and hands over each etcd revision's events as one
// batch; revisions that arrive together are merged, a revision is never split.
// It owns everything that can go wrong on the etcd side: retries with backoff,
// re-watching from the last applied revision after a dropped stream or a lost
// leader, and a full resync after a compaction or when etcd's history is not
// the one applied (a wiped or restored server).
//
// Nothing is skipped that was not applied: the only events dropped are those at
// or below the applied revision, and that revision moves only when a batch was
// applied or when a keys-only listing of the prefix at a later revision equals
// what was applied. A progress notification never moves it: etcd before the fix
// of etcd-io/etcd#15220 (3.4.23, 3.5.7) reports its current revision to a watch
// that has just reconnected and not yet caught up.
//
// The applied keys with their create and mod revisions are the model. At every
// check (CheckInterval), every reconnect and every re-watch after a failure, a
// keys-only listing is compared with it; a difference that pending events cannot explain means another history (a
// wipe or restore whose revision passed ours) and a full resync. It knows
// nothing about files.
package source

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
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
	revs     []keyRevs // per change, what the model records once the batch is applied (not for a paged Full batch)
	// Next, if set, reads the next page of a Full batch read from etcd page by page, so the
	// values need not be in memory together: Changes hold the first page, each call returns
	// the next, and nil, nil after the last. The ApplyFunc must read every page before it
	// applies the batch (Collect reads them all into Changes); an error from Next is etcd's,
	// and the batch must not be applied.
	Next func(ctx context.Context) ([]Change, error)
	// Keys is, for a Full batch read page by page, how many keys the snapshot holds (etcd's
	// count at its revision), so that the consumer can size its tables once.
	Keys int
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

// keyRevs identifies one version of a key in one history: a wiped etcd that
// reaches the same revision again holds other keys at other revisions.
type keyRevs struct{ create, mod int64 }

// ApplyFunc applies one batch. An error means the batch was not applied; the
// source then backs off and resyncs fully, so nothing is lost. Such a failure is
// the target's, not etcd's: the source reports it as an ApplyError, with the
// stage an *ApplyError returned by the ApplyFunc names.
type ApplyFunc func(ctx context.Context, b Batch) error

// ApplyError is a batch that could not be applied: a local failure (the disk, a
// template, a check command), never reported as an etcd one.
type ApplyError struct {
	// Stage names the part that failed, for metrics: an ApplyFunc may set it;
	// otherwise it is "files" for a failed system call and "target" for the rest.
	Stage    string
	Revision int64
	Err      error
}

func (e *ApplyError) Error() string {
	return fmt.Sprintf("applying revision %d to the target (%s): %v", e.Revision, e.Stage, e.Err)
}

func (e *ApplyError) Unwrap() error { return e.Err }

// applyError wraps what the ApplyFunc returned.
func applyError(rev int64, err error) *ApplyError {
	var ae *ApplyError
	if errors.As(err, &ae) {
		return &ApplyError{Stage: cmp.Or(ae.Stage, stageOf(ae.Err)), Revision: rev, Err: ae.Err}
	}
	return &ApplyError{Stage: stageOf(err), Revision: rev, Err: err}
}

func stageOf(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return "files"
	}
	return "target"
}

// Options configure a Source. Zero values are sensible defaults.
type Options struct {
	// Client is the etcd client. If it is nil, Run creates one from Config, retrying with
	// backoff while that fails, and closes it when it returns: with a username, clientv3
	// authenticates when it creates a client, which fails while etcd is unreachable.
	Client *clientv3.Client
	Config clientv3.Config
	// Prefix is the etcd key prefix. It is a directory boundary: "/app" and
	// "/app/" both mirror the keys under "/app/", never "/app2".
	Prefix string
	// PageSize is the most keys per Get page (default 5000); a snapshot's pages hold about
	// 512 KiB, so with values over about 40 bytes they have fewer keys.
	PageSize int64
	// CheckInterval is how often a linearizable keys-only listing of the prefix
	// checks that etcd still holds the history that was applied (default 30s).
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
	// Applied reports the revision up to which everything has been applied (it also moves,
	// without a batch, when a check finds the prefix unchanged up to etcd's revision).
	Applied(rev int64)
	// EtcdRevision reports the revision of a response header or progress notification:
	// etcd's latest known revision.
	EtcdRevision(rev int64)
	// EtcdError reports a failed request or watch; the source retries.
	EtcdError(err error)
	// ApplyFailed reports a batch the ApplyFunc could not apply, and the stage that failed
	// (see ApplyError); the source retries. It is not an etcd error.
	ApplyFailed(stage string, err error)
	// Watching reports whether the source follows etcd live: true once a snapshot is applied
	// and while the watch works, false with the reason while it fails or resyncs.
	Watching(ok bool, reason string)
	// Resync reports a full resync after the initial snapshot, and why.
	Resync(reason string)
}

type noObserver struct{}

func (noObserver) Applied(int64)             {}
func (noObserver) EtcdRevision(int64)        {}
func (noObserver) EtcdError(error)           {}
func (noObserver) ApplyFailed(string, error) {}
func (noObserver) Watching(bool, string)     {}
func (noObserver) Resync(string)             {}

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
	client    *clientv3.Client
	model     map[string]keyRevs    // the applied keys, relative to the prefix
	etcdErr   atomic.Pointer[error] // set during an etcd outage
	applyErr  atomic.Pointer[error] // set while batches cannot be applied
	lastErr   atomic.Pointer[error] // the last failure of either kind, until a batch is applied
	synced    bool                  // the first snapshot was applied

	// A reconnect may lead to another server (wiped, restored, replaced): follow
	// counts them, and a count not yet known to a snapshot or check asks for one.
	reconnects  atomic.Int64
	reconnected chan struct{}
	failed      chan error // delayed apply failures (Failed)
	known       int64
}

// LastError is the last failure, of etcd or (an *ApplyError) of the target, or
// nil once a batch was applied after it.
func (s *Source) LastError() error {
	if p := s.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// New returns a Source for the given options.
func New(opts Options) *Source {
	if opts.PageSize <= 0 {
		// Big pages: etcd walks the rest of the range for each page (to count it), so small
		// pages make a big prefix cost a quadratic amount of work and many round trips.
		opts.PageSize = 5000
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
	return &Source{opts: opts, prefix: NormalizePrefix(opts.Prefix), log: opts.Logger, obs: obs, client: opts.Client,
		reconnected: make(chan struct{}, 1), failed: make(chan error, 1)}
}

// Failed reports that a batch the ApplyFunc took (returned nil for) could not be applied
// later: an apply held back by a buffer in front of the target. The source then resyncs
// fully, as after an ApplyFunc error. It does not block; it may be called from any goroutine.
func (s *Source) Failed(err error) {
	select {
	case s.failed <- err:
	default: // one is already pending: the resync covers both
	}
}

// Dial creates a client from cfg, retrying with backoff while etcd cannot be
// reached, until ctx ends; then it returns the last failure.
func Dial(ctx context.Context, cfg clientv3.Config, log *slog.Logger) (*clientv3.Client, error) {
	s := New(Options{Config: cfg, Logger: log})
	var bo backoff
	for {
		err := s.connect(ctx)
		if err == nil {
			return s.client, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		s.fail("connecting", err)
		bo.wait(ctx)
	}
}

// ctxWithout is a context for a diagnosis after ctx ended.
func ctxWithout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), time.Second)
}

// connect creates the client from Options.Config; the request timeout bounds
// the authentication, Run's context all the rest.
func (s *Source) connect(ctx context.Context) error {
	cfg := s.opts.Config
	cfg.Context = ctx
	cfg.DialTimeout = s.opts.RequestTimeout
	// Fixed flow-control windows. gRPC's default (a window grown by bandwidth probes) answers
	// each data frame that finds the connection idle with a window update and a ping, which
	// etcd must read and answer: for a lone watch event, a request back to etcd per dispenser.
	// A snapshot page (pageBytes) fits in the stream's window; what etcd may push ahead of a
	// slow apply stays bounded by it.
	cfg.DialOptions = append(slices.Clip(cfg.DialOptions),
		grpc.WithInitialWindowSize(streamWindow), grpc.WithInitialConnWindowSize(connWindow))
	c, err := clientv3.New(cfg)
	if err != nil {
		err = fmt.Errorf("connecting to %s: %w", strings.Join(cfg.Endpoints, ","), err)
		if timedOut(err) && cfg.Username != "" {
			// clientv3.New authenticates and reports only that time ran out; a client
			// without credentials, which does not wait for etcd, can say why.
			cfg.Username, cfg.Password = "", ""
			cfg.Context = context.WithoutCancel(ctx)
			if probe, perr := clientv3.New(cfg); perr == nil {
				err = withCause(ctx, probe, err)
				probe.Close()
			}
		}
		return err
	}
	s.client = c
	return nil
}

// The flow-control windows of the client's connection (see connect).
const (
	streamWindow = 1 << 20
	connWindow   = 2 << 20
)

// timedOut reports an error that says only that time ran out or etcd was
// unavailable, not why.
func timedOut(err error) bool {
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Unavailable, codes.Canceled:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// withCause adds to such an error the reason of grpc's last failed connection
// attempt (refused, TLS handshake, not an etcd server...), which a request that
// waits for a connection never reports: a request that does not wait for one
// fails with it.
func withCause(ctx context.Context, c *clientv3.Client, err error) error {
	var ce *causeError
	if c == nil || !timedOut(err) || errors.As(err, &ce) {
		return err
	}
	pctx, cancel := ctxWithout(ctx)
	defer cancel()
	_, perr := etcdserverpb.NewMaintenanceClient(c.ActiveConnection()).Status(pctx, &etcdserverpb.StatusRequest{},
		grpc.WaitForReady(false))
	if status.Code(perr) != codes.Unavailable {
		return err
	}
	cause := strings.TrimPrefix(status.Convert(perr).Message(), "connection error: desc = ")
	if u, uerr := strconv.Unquote(cause); uerr == nil {
		cause = u
	}
	return &causeError{err, cause}
}

// causeError is an error with grpc's last connection error.
type causeError struct {
	err   error
	cause string
}

func (e *causeError) Error() string {
	return fmt.Sprintf("%v (last connection error: %s)", e.err, e.cause)
}
func (e *causeError) Unwrap() error { return e.err }

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

// commit records in the model what an applied watch batch did. (A snapshot's model is
// built by its pager as the pages are read.)
func (s *Source) commit(b Batch) {
	for i, c := range b.Changes {
		if c.Delete {
			delete(s.model, c.Key)
		} else {
			s.model[c.Key] = b.revs[i]
		}
	}
	s.setApplied(b.Revision)
}

// Resyncs counts the full resyncs after the initial snapshot.
func (s *Source) Resyncs() int64 { return s.resyncs.Load() }

// errResync asks the run loop for a full resync.
type errResync struct{ reason string }

func (e errResync) Error() string { return "full resync needed: " + e.reason }

// Run takes the snapshot, applies it, then watches and applies every change
// until ctx is done. It returns nil when ctx ends (or, with Once, after the
// first snapshot was applied); failures of etcd and of the ApplyFunc are logged,
// each as what it is, and retried forever.
func (s *Source) Run(ctx context.Context, apply ApplyFunc) error {
	var bo backoff
	if s.client == nil {
		defer func() {
			if s.client != nil {
				s.client.Close()
			}
		}()
	}
	needSnapshot, verify := true, false
	following := false
	for ctx.Err() == nil {
		if s.client == nil {
			if err := s.connect(ctx); err != nil {
				if ctx.Err() != nil {
					s.cutShort(err)
					break
				}
				s.fail("connecting", err)
				bo.wait(ctx)
				continue
			}
		}
		if !following {
			following = true
			fctx, stop := context.WithCancel(ctx)
			defer stop()
			go s.follow(fctx, s.client.ActiveConnection())
		}
		if needSnapshot {
			if err := s.syncFull(ctx, apply); err != nil {
				var ae *ApplyError
				switch {
				case ctx.Err() != nil:
					s.cutShort(err)
				case errors.As(err, &ae):
					s.applyFailed(ae)
				default:
					s.fail("snapshot", err)
				}
				if ctx.Err() != nil {
					break
				}
				bo.wait(ctx)
				continue
			}
			needSnapshot, verify = false, false // the model was just read
			bo.reset()
			if s.opts.Once {
				return nil
			}
		}
		err := s.watch(ctx, apply, &bo, verify)
		if ctx.Err() != nil {
			break
		}
		// After any failure the server may be another one (restored, replaced): check
		// its keys before following it again.
		verify = true
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
// The error says why, when grpc knows more than that time ran out.
func (s *Source) fail(what string, err error) {
	ctx, cancel := ctxWithout(context.Background())
	defer cancel()
	err = withCause(ctx, s.client, err)
	s.obs.EtcdError(err)
	s.obs.Watching(false, fmt.Sprintf("etcd %s failing: %v", what, err))
	s.connected = false
	s.lastErr.Store(&err)
	if s.etcdErr.Swap(&err) == nil {
		s.log.Warn("etcd unreachable or failing, retrying with backoff", "during", what, "err", err)
		return
	}
	s.log.Debug("etcd still failing", "during", what, "err", err)
}

// applyFailed logs a batch the target could not take, at error level when the
// failure is new (or another stage fails), then at debug.
func (s *Source) applyFailed(ae *ApplyError) {
	var err error = ae
	s.obs.ApplyFailed(ae.Stage, ae.Err)
	s.lastErr.Store(&err)
	prev := s.applyErr.Swap(&err)
	if prev == nil || (*prev).(*ApplyError).Stage != ae.Stage {
		s.log.Error("applying to the target failed, retrying with backoff", "stage", ae.Stage,
			"revision", ae.Revision, "err", ae.Err)
		return
	}
	s.log.Debug("applying to the target still failing", "stage", ae.Stage, "err", ae.Err)
}

// cutShort keeps the cause of an attempt that ctx ended before the first sync,
// for the message that the first sync did not succeed.
func (s *Source) cutShort(err error) {
	var ae *ApplyError
	if s.synced || errors.As(err, &ae) || s.lastErr.Load() != nil {
		return
	}
	ctx, cancel := ctxWithout(context.Background())
	defer cancel()
	err = withCause(ctx, s.client, err)
	s.lastErr.Store(&err)
}

// reached ends an etcd outage, if there was one.
func (s *Source) reached() {
	if s.etcdErr.Swap(nil) != nil {
		s.log.Info("etcd reachable again", "applied_revision", s.Applied())
	}
}

// appliedOK ends a run of apply failures, if there was one.
func (s *Source) appliedOK() {
	s.lastErr.Store(nil)
	if s.applyErr.Swap(nil) != nil {
		s.log.Info("applying to the target works again", "applied_revision", s.Applied())
	}
}

// syncFull reads the whole prefix at one revision and applies it as a Full batch, page by
// page: the batch's Next reads the next page while the apply function writes this one.
func (s *Source) syncFull(ctx context.Context, apply ApplyFunc) error {
	start := time.Now()
	known := s.reconnects.Load()
	b, pg, err := s.snapshot(ctx)
	if err != nil {
		return err
	}
	s.reached()
	// Which member answered is read once the batch is applied and recorded: the command's
	// start waits for no request but the snapshot's.
	defer s.logConnected(ctx, pg.member)
	err = apply(ctx, b)
	if pg.err != nil {
		return pg.err // etcd failed while the batch was applied: nothing was applied
	}
	if err != nil {
		return applyError(b.Revision, err)
	}
	if pg.ahead != nil {
		return applyError(b.Revision, errors.New("the apply function did not read every page of the snapshot"))
	}
	s.model = pg.model
	s.setApplied(b.Revision)
	s.known = known
	s.synced = true
	s.appliedOK()
	s.obs.Watching(true, "")
	s.log.Info("snapshot applied", "keys", pg.keys, "revision", b.Revision,
		"ms", time.Since(start).Milliseconds())
	return nil
}

// Snapshot reads every key of the prefix at one revision: the first page
// fixes the revision R, every later page is read at R.
func (s *Source) Snapshot(ctx context.Context) (Batch, error) {
	b, pg, err := s.snapshot(ctx)
	if err == nil {
		s.logConnected(ctx, pg.member)
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
	from, end := s.keyRange()
	pg := &pager{s: s, end: end}
	resp, err := pg.get(ctx, from, min(s.opts.PageSize, firstPage))
	if err != nil {
		return Batch{}, nil, err
	}
	pg.model = make(map[string]keyRevs, max(resp.Count, 0))
	pg.rev = resp.Header.Revision
	s.noteHeader(resp.Header.ClusterId, resp.Header.RaftTerm)
	s.obs.EtcdRevision(resp.Header.Revision)
	pg.member = resp.Header.MemberId
	b := Batch{Revision: pg.rev, Full: true, Changes: pg.page(ctx, resp), Next: pg.next, Keys: int(resp.Count)}
	return b, pg, nil
}

// A snapshot's first page has at most firstPage keys; later pages are sized from the keys
// seen so far to about pageBytes (at most PageSize keys), so that the pages in flight hold
// about the same memory whatever the size of the values. Each key counts keyOverhead bytes
// besides its key and value: the structures that hold it (a page of tiny values is not free).
const (
	firstPage   = 100
	pageBytes   = 512 << 10
	keyOverhead = 64
)

// listPage is the most keys per page of a listing (list), as before snapshots had bigger pages.
const listPage = 500

// pager reads a snapshot one page ahead of its consumer, at one revision.
type pager struct {
	s      *Source
	rev    int64
	member uint64          // that answered the first page
	end    string          // of the prefix's key range
	ahead  chan pageResult // the next page, being read; nil once the last was handed out
	keys   int
	model  map[string]keyRevs // of the keys read so far: the source's model once applied
	bytes  int                // of the keys and values so far, keyOverhead each included
	err    error              // the read that failed
}

type pageResult struct {
	resp *clientv3.GetResponse
	err  error
}

// get reads one page of at most limit keys, from key from on.
func (pg *pager) get(ctx context.Context, from string, limit int64) (*clientv3.GetResponse, error) {
	resp, err := pg.s.readPage(ctx, from, pg.end, limit, pg.rev, false)
	if err != nil {
		return nil, withCause(ctx, pg.s.client, fmt.Errorf("reading prefix %q: %w", pg.s.prefix, err))
	}
	return resp, nil
}

// page turns a response into changes, and starts reading the next page if there is one.
func (pg *pager) page(ctx context.Context, resp *clientv3.GetResponse) []Change {
	changes := make([]Change, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		changes[i] = Change{Key: string(kv.Key[len(pg.s.prefix):]), Value: kv.Value}
		pg.model[changes[i].Key] = keyRevs{kv.CreateRevision, kv.ModRevision}
		pg.bytes += len(kv.Key) + len(kv.Value) + keyOverhead
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

// list reads every key of the prefix in pages at one revision: rev, or if 0 the
// revision of the first (linearizable) page. It returns the first page's header.
func (s *Source) list(ctx context.Context, rev int64, keysOnly bool, each func(*mvccpb.KeyValue)) (*etcdserverpb.ResponseHeader, error) {
	from, end := s.keyRange()
	var header *etcdserverpb.ResponseHeader
	for {
		resp, err := s.readPage(ctx, from, end, min(s.opts.PageSize, listPage), rev, keysOnly)
		if err != nil {
			return nil, err
		}
		if header == nil {
			header = resp.Header
			if rev == 0 {
				// The first page fixes the revision. (A read at a given revision answers
				// with etcd's current one in its header: never take that for rev.)
				rev = resp.Header.Revision
			}
		}
		for _, kv := range resp.Kvs {
			each(kv)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return header, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// keyRange is the range of keys the prefix covers: [from, end).
func (s *Source) keyRange() (from, end string) {
	if s.prefix == "" {
		return "\x00", "\x00" // the whole keyspace
	}
	return s.prefix, clientv3.GetPrefixRangeEnd(s.prefix)
}

// readPage reads at most limit keys of [from, end) in key order, at rev (0: the latest,
// linearizably), bounded by the request timeout.
func (s *Source) readPage(ctx context.Context, from, end string, limit, rev int64, keysOnly bool) (*clientv3.GetResponse, error) {
	opts := []clientv3.OpOption{
		clientv3.WithRange(end),
		clientv3.WithLimit(limit),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend),
	}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	if keysOnly {
		opts = append(opts, clientv3.WithKeysOnly())
	}
	rctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
	defer cancel()
	return s.client.Get(rctx, from, opts...)
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
	if ml, err := s.client.MemberList(rctx); err == nil {
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

// watch follows the prefix from the applied revision until an error. With
// verify, or when the connection came back since the last snapshot or check, it
// first checks that etcd holds the history that was applied.
func (s *Source) watch(ctx context.Context, apply ApplyFunc, bo *backoff, verify bool) error {
	s.gen++
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Each watch gets its own gRPC stream, so cancelling it tears down only
	// this watch and never races a stale stream.
	wctx = metadata.AppendToOutgoingContext(clientv3.WithRequireLeader(wctx),
		"etcd-config-dispenser-watch", strconv.Itoa(s.gen))
	from := s.Applied() + 1
	wch := s.client.Watch(wctx, s.prefix, clientv3.WithPrefix(), clientv3.WithRev(from),
		clientv3.WithProgressNotify(), clientv3.WithFragment())
	s.log.Debug("watching", "prefix", s.prefix, "from_revision", from)
	// After Watch returned: a connection lost while the watch was being set up
	// counts too.
	if verify || s.reconnects.Load() != s.known {
		if err := s.check(ctx); err != nil {
			return err
		}
	}

	check := time.NewTicker(s.opts.CheckInterval)
	defer check.Stop()
	var lastApply time.Time
	burst := false
	for {
		// A response already waiting as we come back to wait is a backlog (clientv3's channel
		// holds one): collect then lets clientv3 hand over the rest before it applies.
		backlog := len(wch) > 0
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-check.C:
			if err := s.check(ctx); err != nil {
				return err
			}
		case err := <-s.failed:
			s.applyFailed(applyError(s.Applied(), err))
			return errResync{"a held-back batch could not be applied"}
		case <-s.reconnected:
			// clientv3 resumed the watch by itself, maybe on a server that was wiped,
			// restored or replaced meanwhile.
			if s.reconnects.Load() == s.known {
				continue // a check since has covered it
			}
			s.log.Debug("connection to etcd back; checking its keys")
			if err := s.check(ctx); err != nil {
				return err
			}
		case resp, ok := <-wch:
			if !ok {
				return errors.New("watch channel closed")
			}
			var hold time.Time
			if burst {
				hold = lastApply.Add(s.opts.Coalesce)
			}
			b, merged, err := s.collect(ctx, resp, wch, hold, backlog)
			// Several responses at once mean changes came while the last batch was being
			// applied: a burst, whose next changes are held for Coalesce and merged. A
			// lone change is applied at once.
			burst = merged > 1 && s.opts.Coalesce > 0
			if err != nil {
				return err
			}
			s.reached()
			s.obs.Watching(true, "")
			bo.reset()
			if len(b.Changes) == 0 {
				continue // progress notifications or replays: nothing new is applied
			}
			if err := apply(ctx, b); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s.applyFailed(applyError(b.Revision, err))
				return errResync{"a batch could not be applied"}
			}
			s.commit(b)
			s.appliedOK()
			lastApply = time.Now()
		}
	}
}

// follow counts each time conn becomes ready again after it was ready and lost,
// and signals s.reconnected, until ctx ends. Becoming ready the first time is
// not a reconnect: nothing was read before it (the snapshot reads after it).
func (s *Source) follow(ctx context.Context, conn *grpc.ClientConn) {
	st := conn.GetState()
	lost := false
	for conn.WaitForStateChange(ctx, st) {
		// Leaving Ready is a lost connection, even when Ready is back by the time we look.
		lost = lost || st == connectivity.Ready
		st = conn.GetState()
		if st == connectivity.Ready && lost {
			lost = false
			s.reconnects.Add(1)
			select {
			case s.reconnected <- struct{}{}:
			default: // one pending signal covers it
			}
		}
	}
}

// maxMerge bounds how many responses one batch merges, so a long backlog is
// still applied in steps.
const maxMerge = 1024

// collect turns the response, and any further responses already waiting, into one batch of
// whole revisions. Until hold (if it is later than now) it also waits for more, so that a
// burst becomes few batches. backlog says that first was waiting already (see receiveNow).
// It returns how many responses it merged.
func (s *Source) collect(ctx context.Context, first clientv3.WatchResponse, wch clientv3.WatchChan,
	hold time.Time, backlog bool) (b Batch, merged int, err error) {
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
		next, ok, got := receiveNow(wch, backlog || merged > 1)
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
// responses one at a time from another goroutine, which needs to run between two of them: in
// a backlog, yielding lets it offer the next, so a backlog is merged instead of applied one by
// one (twice, as before a lone change stopped yielding). A lone change does not yield: it
// reaches the apply without waiting for other goroutines to run.
func receiveNow(wch clientv3.WatchChan, backlog bool) (resp clientv3.WatchResponse, ok, got bool) {
	for try := 0; ; try++ {
		select {
		case resp, ok = <-wch:
			return resp, ok, true
		default:
		}
		if !backlog || try == backlogYields {
			return resp, false, false
		}
		runtime.Gosched()
	}
}

// backlogYields is how many times receiveNow lets other goroutines run in a backlog.
const backlogYields = 2

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
		// Not proof that earlier events were delivered (etcd-io/etcd#15220): it moves
		// only what was seen, never what is skipped.
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
		b.revs = append(b.revs, keyRevs{ev.Kv.CreateRevision, ev.Kv.ModRevision})
		b.Revision = rev
	}
	return nil
}

// check is the watchdog: etcd must hold the history that was applied. A
// linearizable keys-only listing of the prefix at etcd's revision R must not
// come from another cluster or a lower revision, and must equal the model, or
// else the listing at the applied revision must (the difference is then events
// on their way). When the listing at R equals the model, nothing up to R is
// missing, and the applied revision moves to R: the watch lag returns to 0 and a
// later re-watch starts there. (Changes that a listing cannot see, a key created
// and deleted again in between, leave no trace to apply.)
func (s *Source) check(ctx context.Context) error {
	s.known = s.reconnects.Load()
	cur, same, err := s.fingerprint(ctx, 0)
	if err != nil {
		return fmt.Errorf("revision check: %w", err)
	}
	s.obs.EtcdRevision(cur.Revision)
	if cur.Revision < s.Applied() {
		return errResync{fmt.Sprintf("etcd revision %d is below the applied revision %d (etcd wiped or restored?)",
			cur.Revision, s.Applied())}
	}
	if err := s.checkHeader(cur.ClusterId, cur.RaftTerm); err != nil {
		return err
	}
	if same {
		if cur.Revision > s.Applied() {
			s.setApplied(cur.Revision)
		}
		return nil
	}
	_, same, err = s.fingerprint(ctx, s.Applied())
	if errors.Is(err, rpctypes.ErrCompacted) {
		return errResync{fmt.Sprintf("the prefix changed and the history at the applied revision %d is compacted", s.Applied())}
	}
	if err != nil {
		return fmt.Errorf("revision check at the applied revision %d: %w", s.Applied(), err)
	}
	if !same {
		return errResync{fmt.Sprintf("the keys in etcd at the applied revision %d are not those applied (etcd wiped or restored?)",
			s.Applied())}
	}
	return nil
}

// fingerprint lists the prefix, keys only, at rev (0: now) and reports whether
// every key and its create and mod revisions equal the model.
func (s *Source) fingerprint(ctx context.Context, rev int64) (*etcdserverpb.ResponseHeader, bool, error) {
	n, same := 0, true
	h, err := s.list(ctx, rev, true, func(kv *mvccpb.KeyValue) {
		n++
		if same {
			m, ok := s.model[string(kv.Key[len(s.prefix):])]
			same = ok && m == keyRevs{kv.CreateRevision, kv.ModRevision}
		}
	})
	return h, same && n == len(s.model), err
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
