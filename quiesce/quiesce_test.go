package quiesce

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/etcd-config-dispenser/etcd-config-dispenser/source"
)

func change(k, v string) source.Change { return source.Change{Key: k, Value: []byte(v)} }

func TestMergeKeepsOrderAndFullResets(t *testing.T) {
	m := Merge(nil, source.Batch{Revision: 2, Changes: []source.Change{change("a", "1")}})
	m = Merge(m, source.Batch{Revision: 3, Changes: []source.Change{change("a", "2"), {Key: "b", Delete: true}}})
	if m.Revision != 3 || m.Full || fmt.Sprint(m.Changes) != fmt.Sprint([]source.Change{change("a", "1"), change("a", "2"), {Key: "b", Delete: true}}) {
		t.Fatalf("merged %+v", m)
	}
	m = Merge(m, source.Batch{Revision: 9, Full: true, Changes: []source.Change{change("c", "3")}})
	if !m.Full || m.Revision != 9 || len(m.Changes) != 1 {
		t.Fatalf("a full batch did not replace what was pending: %+v", m)
	}
	m = Merge(m, source.Batch{Revision: 10, Changes: []source.Change{{Key: "c", Delete: true}}})
	if !m.Full || m.Revision != 10 || len(m.Changes) != 2 {
		t.Fatalf("a change after a full batch: %+v", m)
	}
}

// recorder is the apply function behind the buffer.
type recorder chan source.Batch

func (r recorder) apply(_ context.Context, b source.Batch) error { r <- b; return nil }

func TestFirstBatchAtOnceThenABurstBecomesOne(t *testing.T) {
	r := make(recorder, 200)
	q := New(300*time.Millisecond, time.Minute, r.apply)
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	select {
	case <-r:
	default:
		t.Fatal("the first batch was delayed")
	}
	for i := 2; i <= 101; i++ {
		q.Apply(ctx, source.Batch{Revision: int64(i), Changes: []source.Change{change("k", fmt.Sprint(i))}})
	}
	b := <-r
	if b.Revision != 101 || len(b.Changes) != 100 {
		t.Fatalf("applied revision %d with %d changes, want 101 with all 100", b.Revision, len(b.Changes))
	}
	select {
	case b := <-r:
		t.Fatalf("a second batch %+v", b)
	case <-time.After(600 * time.Millisecond):
	}
}

// A prefix that never goes quiet is applied after max anyway.
func TestNeverLaterThanMax(t *testing.T) {
	r := make(recorder, 200)
	q := New(200*time.Millisecond, 600*time.Millisecond, r.apply)
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	<-r
	tick := time.NewTicker(20 * time.Millisecond) // changes 10 times faster than min
	defer tick.Stop()
	give := time.After(30 * time.Second)
	for rev := int64(2); ; rev++ {
		select {
		case <-r:
			return
		case <-give:
			t.Fatal("nothing applied while changes kept coming")
		case <-tick.C:
			q.Apply(ctx, source.Batch{Revision: rev, Changes: []source.Change{change("k", "v")}})
		}
	}
}

func TestDelayedErrorIsReportedAtTheNextApply(t *testing.T) {
	failed := make(chan struct{})
	var once sync.Once
	q := New(time.Millisecond, time.Millisecond, func(_ context.Context, b source.Batch) error {
		if b.Revision == 2 {
			once.Do(func() { close(failed) })
			return errors.New("disk full")
		}
		return nil
	})
	defer q.Stop()
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	q.Apply(ctx, source.Batch{Revision: 2})
	<-failed
	q.mu.Lock() // the flush that failed has returned once the lock is free
	q.mu.Unlock()
	if err := q.Apply(ctx, source.Batch{Revision: 3}); err == nil || err.Error() != "disk full" {
		t.Fatalf("next Apply returned %v, want the delayed error", err)
	}
}

// With no next change to report it to, a failed delayed apply is tried again.
func TestDelayedErrorIsRetriedWhenNothingElseComes(t *testing.T) {
	tries := make(chan source.Batch, 10)
	q := New(time.Millisecond, time.Millisecond, func(_ context.Context, b source.Batch) error {
		tries <- b
		if b.Revision >= 2 && len(tries) <= 3 { // the first batch applies; the delayed one fails twice
			return errors.New("disk full")
		}
		return nil
	})
	defer q.Stop()
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	q.Apply(ctx, source.Batch{Revision: 2, Changes: []source.Change{change("a", "1")}})
	deadline := time.After(10 * time.Second)
	for len(tries) < 4 {
		select {
		case <-deadline:
			t.Fatalf("%d tries, want the failed apply tried again", len(tries))
		case <-time.After(10 * time.Millisecond):
		}
	}
	q.mu.Lock()
	err := q.err
	q.mu.Unlock()
	if err != nil {
		t.Fatalf("the error %v is still pending after a successful retry", err)
	}
}

// After Stop nothing is applied, not even what was pending.
func TestStopCancelsWhatIsPending(t *testing.T) {
	r := make(recorder, 10)
	q := New(50*time.Millisecond, time.Minute, r.apply)
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	<-r
	q.Apply(ctx, source.Batch{Revision: 2, Changes: []source.Change{change("a", "1")}})
	q.Stop()
	select {
	case b := <-r:
		t.Fatalf("applied %+v after Stop", b)
	case <-time.After(200 * time.Millisecond):
	}
	if err := q.Apply(ctx, source.Batch{Revision: 3}); err == nil {
		t.Fatal("Apply after Stop succeeded")
	}
}

// A change that finds the last version settled is applied at once, inside Apply.
func TestSettleAppliesALoneChangeAtOnce(t *testing.T) {
	r := make(recorder, 10)
	q := New(0, 0, r.apply)
	q.Settle = 50 * time.Millisecond
	defer q.Stop()
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	<-r
	time.Sleep(q.Settle) // the time that has to pass, not a synchronisation
	if err := q.Apply(ctx, source.Batch{Revision: 2, Changes: []source.Change{change("a", "1")}}); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-r:
		if b.Revision != 2 {
			t.Fatalf("applied %+v", b)
		}
	default:
		t.Fatal("a lone change after the settle time was held")
	}
}

// Changes within the settle time of the last apply are merged and applied once it ends, never
// sooner: the version just applied stays live for the whole settle time.
func TestSettleKeepsEachVersionLiveThatLong(t *testing.T) {
	const settle = 200 * time.Millisecond
	type applied struct {
		b  source.Batch
		at time.Time
	}
	r := make(chan applied, 200)
	q := New(0, 0, func(_ context.Context, b source.Batch) error {
		r <- applied{b, time.Now()}
		return nil
	})
	q.Settle = settle
	defer q.Stop()
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	tick := time.NewTicker(5 * time.Millisecond) // paces the changes
	defer tick.Stop()
	begin := time.Now()
	for rev := int64(2); rev <= 150; rev++ { // about 750ms of changes
		<-tick.C
		if err := q.Apply(ctx, source.Batch{Revision: rev, Changes: []source.Change{change("k", fmt.Sprint(rev))}}); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(begin)
	var got []applied
	for len(got) == 0 || got[len(got)-1].b.Revision != 150 {
		select {
		case a := <-r:
			got = append(got, a)
		case <-time.After(10 * time.Second):
			t.Fatalf("revision 150 never applied; applied %d batches", len(got))
		}
	}
	changes := 0
	for i, a := range got {
		changes += len(a.b.Changes)
		if i > 0 && a.at.Sub(got[i-1].at) < settle {
			t.Errorf("batch %d (revision %d) applied %v after the previous one, want at least %v",
				i, a.b.Revision, a.at.Sub(got[i-1].at), settle)
		}
	}
	if changes != 149 {
		t.Errorf("%d changes applied, want all 149", changes)
	}
	// The first batch, then one per settle time while changes come, then the rest.
	if most := 2 + int(elapsed/settle) + 1; len(got) < 3 || len(got) > most {
		t.Errorf("%d applies for %v of changes with a %v settle time, want 3 to %d", len(got), elapsed, settle, most)
	}
}

// A delayed apply that fails is reported at the next Apply, as with Wait.
func TestSettleReportsAFailedDelayedApply(t *testing.T) {
	failed := make(chan struct{})
	var once sync.Once
	q := New(0, 0, func(_ context.Context, b source.Batch) error {
		if b.Revision == 3 {
			once.Do(func() { close(failed) })
			return errors.New("disk full")
		}
		return nil
	})
	q.Settle = 20 * time.Millisecond
	defer q.Stop()
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	q.Apply(ctx, source.Batch{Revision: 2}) // within the settle time: held
	q.Apply(ctx, source.Batch{Revision: 3}) // merged with 2
	<-failed
	q.mu.Lock()
	q.mu.Unlock()
	if err := q.Apply(ctx, source.Batch{Revision: 4}); err == nil || err.Error() != "disk full" {
		t.Fatalf("next Apply returned %v, want the delayed error", err)
	}
}

// Changes that never pause must not keep postponing a batch that is due: it is applied once
// its settle time (or Max) is over, however fast changes come.
func TestADueBatchIsAppliedUnderAStreamOfChanges(t *testing.T) {
	for _, tc := range []struct {
		name              string
		wait, max, settle time.Duration
	}{{"settle", 0, 0, 50 * time.Millisecond}, {"wait", 20 * time.Millisecond, 50 * time.Millisecond, 0}} {
		t.Run(tc.name, func(t *testing.T) {
			r := make(recorder, 1000)
			q := New(tc.wait, tc.max, r.apply)
			q.Settle = tc.settle
			defer q.Stop()
			ctx := context.Background()
			q.Apply(ctx, source.Batch{Revision: 1, Full: true})
			<-r
			begin := time.Now()
			for rev := int64(2); time.Since(begin) < time.Second; rev++ { // no pause at all
				if err := q.Apply(ctx, source.Batch{Revision: rev, Changes: []source.Change{change("k", "v")}}); err != nil {
					t.Fatal(err)
				}
			}
			t.Logf("%d batches", len(r))
			if n := len(r); n < 5 {
				t.Fatalf("%d batches applied during 1s of changes with a 50ms bound, want about 20", n)
			}
		})
	}
}

// With Failed set, a delayed apply that fails is handed to it at once (the source resyncs),
// and is not hidden by a later apply that succeeds: a held batch that failed must never
// count as applied.
func TestAFailedDelayedApplyGoesToFailed(t *testing.T) {
	applied := make(chan int64, 10)
	q := New(0, 0, func(_ context.Context, b source.Batch) error {
		if b.Revision == 3 {
			return errors.New("target removed")
		}
		applied <- b.Revision
		return nil
	})
	q.Settle = 20 * time.Millisecond
	reported := make(chan error, 1)
	q.Failed = func(err error) { reported <- err }
	defer q.Stop()
	ctx := context.Background()
	q.Apply(ctx, source.Batch{Revision: 1, Full: true})
	q.Apply(ctx, source.Batch{Revision: 2}) // within the settle time: held
	q.Apply(ctx, source.Batch{Revision: 3}) // merged with 2, fails when flushed
	select {
	case err := <-reported:
		if err.Error() != "target removed" {
			t.Fatalf("Failed got %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the failed delayed apply was not reported to Failed")
	}
	if err := q.Apply(ctx, source.Batch{Revision: 4}); err != nil {
		t.Fatalf("the next Apply returned %v: the failure was already reported", err)
	}
}

// A first batch that fails is not "seen": the retry (the source's resync) is applied at once
// and its error returned, never held for the settle time and reported as taken, or the
// command would never start.
func TestAFailedFirstBatchIsRetriedAtOnce(t *testing.T) {
	fail := true
	q := New(0, 0, func(_ context.Context, b source.Batch) error {
		if fail {
			return errors.New("check refused")
		}
		return nil
	})
	q.Settle = time.Hour
	defer q.Stop()
	ctx := context.Background()
	if err := q.Apply(ctx, source.Batch{Revision: 2, Full: true}); err == nil {
		t.Fatal("the failed first apply returned nil")
	}
	if err := q.Apply(ctx, source.Batch{Revision: 2, Full: true}); err == nil {
		t.Fatal("the retry of a failed first batch was held instead of applied")
	}
	fail = false
	if err := q.Apply(ctx, source.Batch{Revision: 2, Full: true}); err != nil {
		t.Fatal(err)
	}
}

// An apply that notified nothing (the same value put again, a key the filters drop) put no
// new version in front of the command: it starts no settle time, and the next real change is
// applied at once.
func TestAnApplyThatNotifiedNothingStartsNoSettleTime(t *testing.T) {
	r := make(recorder, 10)
	q := New(0, 0, r.apply)
	q.Settle = time.Hour
	notified := false
	q.Notified = func() bool { return notified }
	defer q.Stop()
	ctx := context.Background()
	for rev := int64(1); rev <= 3; rev++ {
		if err := q.Apply(ctx, source.Batch{Revision: rev, Changes: []source.Change{change("a", "1")}}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-r:
		default:
			t.Fatalf("revision %d was held, after applies that notified nothing", rev)
		}
	}
	notified = true
	q.Apply(ctx, source.Batch{Revision: 4, Changes: []source.Change{change("a", "2")}})
	<-r
	q.Apply(ctx, source.Batch{Revision: 5, Changes: []source.Change{change("a", "3")}})
	select {
	case b := <-r:
		t.Fatalf("revision %d was applied within the settle time of a notified one", b.Revision)
	default:
	}
}
