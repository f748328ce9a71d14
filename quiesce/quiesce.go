// Package quiesce delays batches in front of the apply function, for two reasons.
//
// Wait, like consul-template's: a burst of changes becomes one applied batch, so the program
// is reloaded once rather than once per change. The merged batch is applied Min after the last
// change, but never later than Max after the first pending one, so a prefix that never goes
// quiet is still applied.
//
// Settle: a version that was applied (and signalled) stays live for at least Settle before
// the next apply. A program that reads several files after the signal, each through its own
// lookup (nginx: certificate, then key), reads them all from the version it was told about
// as long as it reads within Settle. A change that comes after the settle time is applied at
// once; changes that come within it are merged and applied when it ends.
//
// Pending batches are merged whole (a revision is never split); a Full batch replaces
// everything pending, since it lists every key. A held batch lives only in memory: the source
// counts it as applied, and a dispenser killed meanwhile starts again from a full snapshot.
package quiesce

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
)

// Buffer sits between the source and the real apply function.
type Buffer struct {
	min, max time.Duration
	apply    source.ApplyFunc
	// Settle is the least time from the end of one apply (the signal is sent within it)
	// to the start of the next. 0: none. Set it before the first Apply.
	Settle time.Duration
	// Failed, if set, is told when a delayed apply failed (after Apply returned nil for its
	// batch), so that the source resyncs at once: source.Source.Failed. Without it the error is
	// returned by the next Apply. Set it before the first Apply.
	Failed func(error)
	// Notified, if set, reports whether the apply that just ended notified the command (a
	// start, a signal, a reload): one that did not (the same value put again, a key the
	// filters drop) put no new version in front of it, and starts no settle time.
	Notified func() bool

	mu      sync.Mutex // held while applying, so applies never overlap
	seen    bool       // the first batch was applied
	pending *source.Batch
	first   time.Time // when the first pending change arrived
	last    time.Time // when the last apply ended
	gen     int       // which scheduled flush is current
	timer   *time.Timer
	err     error // of a delayed apply, reported at the next Apply
	stopped bool
}

// New returns a Buffer that applies through apply, quiet for wait, at most maxWait after the
// first pending change. maxWait < wait is taken as wait.
func New(wait, maxWait time.Duration, apply source.ApplyFunc) *Buffer {
	return &Buffer{min: wait, max: max(wait, maxWait), apply: apply}
}

// Apply is a source.ApplyFunc. The first batch is applied at once (the program waits for it
// to start); later ones are merged and applied once the keys are quiet (Wait) and the last
// version has been live for Settle; without Wait, a change that finds nothing pending and the
// last version settled is applied at once. An error of a delayed apply is returned by the
// next call, so the source resyncs and nothing is lost.
func (q *Buffer) Apply(ctx context.Context, b source.Batch) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped {
		return errStopped
	}
	if !q.seen {
		// Until the first batch went through, every try is applied at once and its error
		// returned: the command waits for it, and the source retries it.
		err := q.applyNow(ctx, b)
		q.seen = err == nil
		return err
	}
	if err := q.err; err != nil {
		q.err, q.pending = nil, nil
		return err
	}
	now := time.Now()
	settled := q.last.Add(q.Settle)
	if q.pending == nil && q.min <= 0 && !now.Before(settled) {
		return q.applyNow(ctx, b)
	}
	if q.pending == nil {
		q.first = now
	}
	if err := b.Collect(ctx); err != nil { // a resync's pages, to be held
		return err
	}
	q.pending = Merge(q.pending, b)
	var delay time.Duration
	if q.min > 0 {
		delay = min(q.min, q.first.Add(q.max).Sub(now))
	}
	delay = max(delay, settled.Sub(now))
	q.gen++ // the scheduled flush, if any, is superseded
	gen := q.gen
	if q.timer != nil {
		q.timer.Stop()
	}
	if delay <= 0 {
		// Due already: apply here. Left to a timer, a stream of changes could keep
		// superseding it before it gets the lock.
		b, q.pending = *q.pending, nil
		return q.applyNow(ctx, b)
	}
	q.timer = time.AfterFunc(delay, func() { q.flush(ctx, gen) })
	return nil
}

var errStopped = errors.New("quiesce: Apply after Stop")

// applyNow applies b and starts the settle time. q.mu is held.
func (q *Buffer) applyNow(ctx context.Context, b source.Batch) error {
	err := q.apply(ctx, b)
	// A failed apply put nothing live, one that notified nothing told the command of nothing:
	// neither has anything to settle.
	if err == nil && (q.Notified == nil || q.Notified()) {
		q.last = time.Now()
	}
	return err
}

// retryAfter is the least time before a failed delayed apply is tried again.
const retryAfter = time.Second

// flush applies what is pending, unless a later change rescheduled it.
func (q *Buffer) flush(ctx context.Context, gen int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.stopped || gen != q.gen || q.pending == nil || ctx.Err() != nil {
		return
	}
	b := *q.pending
	q.pending = nil
	err := q.applyNow(ctx, b)
	if err == nil || ctx.Err() != nil {
		q.err = nil
		return
	}
	if q.Failed != nil {
		// The source resyncs everything: what failed is then written whole.
		q.Failed(err)
		return
	}
	// The next Apply reports the error, so the source resyncs. A quiet prefix
	// may bring no next Apply: meanwhile, try again with an empty batch, which
	// publishes what the failed one left in the writer's model.
	q.err = err
	q.pending = &source.Batch{Revision: b.Revision}
	q.gen++
	next := q.gen
	q.timer = time.AfterFunc(max(q.max, q.Settle, retryAfter), func() { q.flush(ctx, next) })
}

// Stop cancels a pending apply and waits for one in progress; nothing is
// applied after Stop returns, so the caller may close what apply uses.
func (q *Buffer) Stop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stopped, q.pending = true, nil
	if q.timer != nil {
		q.timer.Stop()
	}
}

// Merge returns the batch that has the effect of a followed by b. a may be nil.
func Merge(a *source.Batch, b source.Batch) *source.Batch {
	if a == nil || b.Full {
		return &b
	}
	m := source.Batch{Revision: b.Revision, Full: a.Full,
		Changes: append(append(make([]source.Change, 0, len(a.Changes)+len(b.Changes)), a.Changes...), b.Changes...)}
	return &m
}
