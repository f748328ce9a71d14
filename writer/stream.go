package writer

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// Stream is a Full batch that arrives in pages, as a snapshot is read from etcd: BeginFull,
// Add for each page, then Commit (or Abort). It has the effect of one Apply of the whole
// batch, but the values never sit in memory together: each page's new or changed values are
// written at once, on every core, into a spool directory inside the target while the next
// page is read, and Commit hard-links them into the new version. So memory does not grow with
// the values' total size, only with the number of keys (a sha256 each). The first holdMax
// bytes of new values are kept in memory instead, so a small snapshot costs what one Apply
// does and makes no spool.
//
// Guarantees, beyond Apply's:
//   - Nothing of the stream is visible before Commit: the spool is a hidden directory that
//     no version reaches, and the model the writer publishes from is swapped in only at
//     Commit. Abort, a failed Add, or a crash leaves the old version live and the writer as
//     it was before BeginFull; Open removes a spool a crash left.
//   - A Commit that fails (a check refused the version, the disk) keeps the new model, like
//     a failed Apply, so the next Apply publishes it; the values it still needs are then
//     read back into memory and the spool removed.
//
// While a Stream is open, the writer accepts nothing else.
type Stream struct {
	w        *Writer
	revision int64
	name     string   // the spool directory, at the top of the target; "" until it starts
	dir      *os.File // open on it
	skipped  int
	held     int // bytes of new values kept in memory, before the spool starts
	holdMax  int // the most held before the spool starts (holdMax; tests lower it)
	n        int // spool files so far

	// The model before BeginFull, restored by Abort.
	keys  map[string]*entry
	below map[string]int
	dirty map[string]struct{}

	jobs chan spoolJob
	wg   sync.WaitGroup
	mu   sync.Mutex
	err  error // the first failed spool write
	done bool
}

type spoolJob struct {
	name  string
	value []byte
}

// BeginFull starts a Full batch at the given revision that arrives in pages.
func (w *Writer) BeginFull(revision int64) (*Stream, error) {
	if w.closed {
		return nil, errors.New("writer: BeginFull after Close")
	}
	if w.stream != nil {
		return nil, errors.New("writer: BeginFull while a streamed full batch is open")
	}
	w.waitSweep()
	if err := w.ensureTarget(revision, true); err != nil {
		return nil, err
	}
	s := &Stream{w: w, revision: revision, keys: w.keys, below: w.below, dirty: w.dirty, holdMax: holdMax}
	// Like fold for a Full batch: every live path is compared at Commit, and the new model
	// starts empty.
	w.dirty = make(map[string]struct{}, len(s.dirty)+len(w.live))
	for p := range s.dirty {
		w.dirty[p] = struct{}{}
	}
	for p := range w.live {
		w.dirty[p] = struct{}{}
	}
	w.keys, w.below = make(map[string]*entry, len(w.live)), make(map[string]int)
	w.obstructed = w.obstructed[:0]
	w.stream = s
	return s, nil
}

// holdMax is how many bytes of new values a Stream keeps in memory, as Apply would, before it
// starts the spool: a small snapshot costs no more than one Apply.
const holdMax = 256 << 10

// startSpool creates the spool directory and its writers, one per core.
func (s *Stream) startSpool() error {
	w := s.w
	var err error
	if w.opts.Layout == Atomic {
		// Named like a directory object, so Open prunes it after a crash: nothing reaches it.
		s.name, err = w.newVersionDir()
	} else {
		// A ..tmp name at the top, which Open removes after a crash.
		s.name = randomName(tmpPrefix + "spool")
		err = w.makeDir(s.name)
	}
	if err != nil {
		s.name = ""
		return fmt.Errorf("creating the spool: %w", noSpace(err, w.absDir))
	}
	if s.dir, err = w.root.Open(s.name); err != nil {
		return fmt.Errorf("opening the spool: %w", err)
	}
	s.jobs = make(chan spoolJob, 64)
	for range runtime.GOMAXPROCS(0) {
		s.wg.Add(1)
		go s.spool()
	}
	return nil
}

// spool writes the queued values into the spool. After a failure it only drains the queue,
// so Add never blocks; Add and Commit report the failure.
func (s *Stream) spool() {
	defer s.wg.Done()
	for j := range s.jobs {
		if s.failed() != nil {
			continue
		}
		err := s.w.createFileAt(s.dir, s.name, j.name, j.value)
		s.w.marked("spooled")
		if err != nil {
			s.mu.Lock()
			if s.err == nil {
				s.err = noSpace(err, s.w.absDir)
			}
			s.mu.Unlock()
		}
	}
}

// fail aborts the stream after a spool error. On a full disk it also removes the previous
// version, kept only for readers still inside it, so that the next full batch has room: the
// values already spooled are gone, so this one cannot be tried again at once, as Apply is.
func (s *Stream) fail(err error) error {
	s.Abort()
	if w := s.w; isNoSpace(err) && len(w.retired) > 0 {
		w.log.Warn("no space left on the target's file system; removing the previous version so the next full sync fits",
			"directories", len(w.retired))
		w.removeObjects(w.retired)
		w.retired = nil
	}
	return fmt.Errorf("applying revision %d: spooling: %w", s.revision, err)
}

func (s *Stream) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Add folds one page of the batch into the new model and queues its new or changed values
// for the spool. A later change of the same key wins, as in a Batch. It may keep the Values
// until they are written; the caller must not modify them. An error aborts the stream.
func (s *Stream) Add(changes []Change) error {
	if s.done {
		return errors.New("writer: Add after Commit or Abort")
	}
	if err := s.failed(); err != nil {
		return s.fail(err)
	}
	w := s.w
	for _, c := range changes {
		p, err := KeyPath(c.Key)
		if err != nil {
			w.log.Warn("key skipped", "revision", s.revision, "reason", err.Error())
			s.skipped++
			continue
		}
		w.dirty[p] = struct{}{}
		if c.Delete {
			w.remove(p)
			continue
		}
		sum := sha256.Sum256(c.Value)
		if old, ok := w.live[p]; ok && old == sum {
			w.put(p, sum, nil, false) // the live file holds it
			continue
		}
		if s.jobs == nil && s.held+len(c.Value) <= s.holdMax {
			s.held += len(c.Value)
			w.put(p, sum, c.Value, true)
			continue
		}
		if s.jobs == nil {
			if err := s.startSpool(); err != nil {
				return s.fail(err)
			}
		}
		w.put(p, sum, nil, false)
		s.n++
		name := strconv.Itoa(s.n)
		w.keys[p].spool = name
		s.jobs <- spoolJob{name, c.Value}
	}
	return nil
}

// Commit waits for the spool, then publishes the new model as Apply does, and reports what
// changed.
func (s *Stream) Commit() (Result, error) {
	var res Result
	if s.done {
		return res, errors.New("writer: Commit after Commit or Abort")
	}
	if s.jobs != nil {
		close(s.jobs)
		s.wg.Wait()
		s.jobs = nil
	}
	if err := s.failed(); err != nil {
		return res, s.fail(err)
	}
	w := s.w
	res.Skipped = s.skipped
	var shadowed []string
	for p := range w.keys {
		if w.below[p] > 0 {
			shadowed = append(shadowed, p)
		}
	}
	for _, p := range slices.Sorted(slices.Values(shadowed)) {
		w.log.Warn("key skipped", "revision", s.revision,
			"reason", fmt.Sprintf("key %q: keys below it exist, so it is a directory; it returns as a file when they are gone", p))
		res.Skipped++
	}
	err := w.finish(s.revision, &res)
	// What still needs the spool (shadowed keys; after a failure, every unpublished value)
	// goes into memory, as Apply keeps it.
	if uerr := s.unspool(); uerr != nil {
		w.log.Error("cannot read back a spooled value; the writer forgets this full batch", "error", uerr)
		if err == nil {
			// Published: the model matches the live version except for the values lost,
			// which only the next full sync brings back.
			s.drop()
		} else {
			s.Abort()
			return res, err
		}
	}
	s.done = true
	w.stream = nil
	if s.name == "" {
		return res, err
	}
	s.dir.Close()
	if err != nil {
		w.discard(s.name)
		return res, err
	}
	// The new version holds its own links to the spooled files (the Plain layout copied
	// them). The spool goes in the background, so neither the start nor the next change waits
	// for it; the next BeginFull, Close, reopen or full disk waits for the end.
	done := make(chan struct{})
	w.sweeping = done
	go func() {
		defer close(done)
		w.discard(s.name)
	}()
	return res, nil
}

// unspool reads the values that are still only in the spool into memory.
func (s *Stream) unspool() error {
	var errs []error
	for p, e := range s.w.keys {
		if e.spool == "" {
			continue
		}
		data, err := s.w.readFile(s.name + "/" + e.spool)
		if err != nil {
			errs = append(errs, fmt.Errorf("key %s: %w", p, err))
			continue
		}
		e.value, e.held, e.spool = data, true, ""
	}
	return errors.Join(errs...)
}

// drop removes from the model the keys whose value is lost, so the model never claims a
// content it cannot produce.
func (s *Stream) drop() {
	for p, e := range s.w.keys {
		if e.spool != "" {
			s.w.remove(p)
		}
	}
}

// Abort ends the stream without publishing anything: the old version stays live and the
// writer is as it was before BeginFull. It is safe to call after Commit (it does nothing).
func (s *Stream) Abort() {
	if s.done {
		return
	}
	s.done = true
	if s.jobs != nil {
		close(s.jobs)
		s.wg.Wait()
	}
	w := s.w
	w.keys, w.below, w.dirty = s.keys, s.below, s.dirty
	w.obstructed = w.obstructed[:0]
	w.stream = nil
	if s.dir != nil {
		s.dir.Close()
	}
	if s.name != "" {
		w.discard(s.name)
	}
}

// linkSpooled hard-links the spooled content of path p as name in the directory open as to,
// and reports whether it did; otherwise the caller writes the content itself.
func (w *Writer) linkSpooled(p string, to int, name string) bool {
	if w.stream == nil {
		return false
	}
	e := w.keys[p]
	if e == nil || e.spool == "" {
		return false
	}
	return unix.Linkat(int(w.stream.dir.Fd()), e.spool, to, name, 0) == nil
}

// waitSweep waits for the removal of the last stream's spool, if it still runs.
func (w *Writer) waitSweep() {
	if w.sweeping != nil {
		<-w.sweeping
		w.sweeping = nil
	}
}
