package writer

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Stream is a Full batch that arrives in pages, as a snapshot is read from etcd: BeginFull,
// Add for each page, then Commit (or Abort). It has the effect of one Apply of the whole
// batch, but the values never sit in memory together: each page's new or changed values are
// written at once, on every core, while the next page is read. So memory does not grow with
// the values' total size, only with the number of keys (a sha256 each). With a spool, the
// first holdMax bytes of new values are kept in memory instead, so a small snapshot costs
// what one Apply does and makes no spool.
//
// Where the values go: with the Atomic layout (and no Check), straight into their final
// place, the new version's object of their directory (in the form the stage will use: with
// a bucketed top level, the object of ..X/..Y/..Z/... ; see chooseForm), created as the first
// value for it arrives and not reachable from ..data until the swap; a top-level key's link is made at
// once too, dangling until then, as linkNew makes them. Commit then has little left to do
// (the stage adopts these objects), and nothing is left to remove: for a first version whose
// every value was written in place, it takes the objects and the links as they are (no look
// at each key), and makes only the objects above them and, on the other core, the live tree. Otherwise (the Plain
// layout, or a Check, whose refusal must not lose the values) they go into a spool directory
// inside the target, and Commit hard-links (Plain: renames) them into place.
//
// Guarantees, beyond Apply's:
//   - Nothing of the stream is visible before Commit: the new objects and the spool are
//     hidden directories that no version reaches, a new top-level link dangles (its name is
//     no key of the live version), and the model the writer publishes from is swapped in only
//     at Commit. Abort, a failed Add, or a crash leaves the old version live and the writer as
//     it was before BeginFull; Abort removes the links the stream made, and Open removes
//     the directories a crash left (and the next Apply our dangling links).
//   - A Commit that fails (a check refused the version, the disk) keeps the new model, like
//     a failed Apply, so the next Apply publishes it; the values it still needs are then
//     read back into memory and the spool removed. When the values were written in place,
//     a failure after the stage has removed them with the staged version: the writer then
//     forgets the batch, as after Abort, and the next full sync writes it again.
//
// While a Stream is open, the writer accepts nothing else.
type Stream struct {
	w        *Writer
	revision int64
	direct   bool     // values are written into their final objects (objs), not a spool
	name     string   // the spool directory, at the top of the target; "" until it starts
	dir      *os.File // open on it
	skipped  int
	held     int // bytes of new values kept in memory, before the workers start
	holdMax  int // the most held before the workers start (holdMax; tests lower it)
	n        int // spool files so far

	// Direct writes: directory of the tree -> the new object its values are written into; the
	// target, open for the workers' top-level links; and files in the objects that no key
	// needs in place any more (a key given twice, or removed), unlinked before the stage.
	objs    map[string]*streamObject
	top     *os.File
	stale   []string
	relinks bool // a key whose link the stream made was removed: check every link at Commit
	// Values written in place, top-level keys among them (to be linked by the workers),
	// and the links the workers made.
	placedN, linkJobs int
	links             atomic.Int64
	// The form the values are placed in (bucket.go), decided at the first page: the live
	// form, or for a first version the one its estimated width asks for (Commit stages in
	// it, and switches after if the real width asks for the other).
	bucketed bool
	formSet  bool
	expect   int // the batch's key count (Expect), 0 if unknown

	// The model before BeginFull, restored by Abort.
	keys     map[string]*entry
	below    map[string]int
	dirty    map[string]struct{}
	dirtyAll bool

	jobs   chan []spoolJob // batches of writes, so that handing them over costs little
	batch  []spoolJob      // the writes Add has not queued yet
	wg     sync.WaitGroup
	mu     sync.Mutex
	err    error       // the first failed write
	broken atomic.Bool // err is set: the workers only drain the queue
	linked atomic.Bool // a worker made a top-level link
	done   bool
}

// streamObject is a directory object a Stream writes values into. It is not kept open: a
// snapshot may have thousands of directories, and a descriptor each would exceed a low limit
// of open files (ulimit -n 1024); each worker keeps a few open instead (dirCache).
type streamObject struct {
	name   string
	handed bool     // the stage took it as the new object of its directory
	names  []string // the values written into it, by their name there
}

// inPlace is entry.spool for a value written in the stream's object of its directory, under
// its own name (direct writes): the place follows from the path, so it costs no string.
const inPlace = "/"

type spoolJob struct {
	dir     int // where to create the file: the spool, open; -1 for an object, opened by dirName
	dirName string
	name    string
	value   []byte
	link    *entry // a top-level key written in place: link its name too, and mark the entry
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
	s := &Stream{w: w, revision: revision, keys: w.keys, below: w.below, dirty: w.dirty, dirtyAll: w.dirtyAll,
		holdMax: holdMax, direct: w.opts.Layout == Atomic && w.opts.Check == nil}
	// Like fold for a Full batch: every live path and every key is compared at Commit
	// (dirtyAll), and the new model starts empty. dirty is Abort's to restore: a copy.
	w.dirty, w.dirtyAll = maps.Clone(s.dirty), true
	w.keys, w.below = make(map[string]*entry, len(w.live)), make(map[string]int)
	w.obstructed = w.obstructed[:0]
	w.stream = s
	return s, nil
}

// Expect tells the stream how many keys the batch has, if known, so that the model's tables
// are made at their size once rather than grown page by page.
func (s *Stream) Expect(keys int) {
	w := s.w
	s.expect = max(keys, 0)
	if len(w.keys) > 0 || keys <= 0 {
		return
	}
	w.keys = make(map[string]*entry, keys)
}

// holdMax is how many bytes of new values a Stream with a spool keeps in memory, as Apply
// would, before it starts the spool: a small snapshot costs no more than one Apply. (Values
// written in place are never held: that costs nothing more, and holding them would leave
// their writing to Commit, after the last page.)
const holdMax = 256 << 10

// jobBatch is how many writes go to a worker at once.
const jobBatch = 32

// start starts the writers, one per core, and with a spool creates the spool directory.
func (s *Stream) start() error {
	w := s.w
	if s.direct {
		var err error
		if s.top, err = w.root.Open("."); err != nil {
			return fmt.Errorf("opening the target: %w", err)
		}
		s.objs = map[string]*streamObject{}
	} else {
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
	}
	s.startWorkers()
	return nil
}

func (s *Stream) startWorkers() {
	s.jobs = make(chan []spoolJob, 4)
	for range runtime.GOMAXPROCS(0) {
		s.wg.Add(1)
		go s.write()
	}
}

// stopWorkers queues what Add left and waits for every write.
func (s *Stream) stopWorkers() {
	if s.jobs == nil {
		return
	}
	s.flush()
	close(s.jobs)
	s.wg.Wait()
	s.jobs = nil
}

// flush queues the writes Add collected.
func (s *Stream) flush() {
	if len(s.batch) > 0 {
		s.jobs <- s.batch
		s.batch = nil
	}
}

// write creates the queued files, and links the top-level names of those written in place.
// After a failure it only drains the queue, so Add never blocks; Add and Commit report the
// failure.
func (s *Stream) write() {
	defer s.wg.Done()
	dirs := dirCache{top: int(s.top.Fd()), max: max(1, s.w.maxOpen/runtime.GOMAXPROCS(0))}
	defer dirs.close()
	for batch := range s.jobs {
		for _, j := range batch {
			if s.broken.Load() {
				break
			}
			dir, err := j.dir, error(nil)
			if dir < 0 {
				dir, err = dirs.open(j.dirName)
			}
			if err == nil {
				err = s.w.createFileAt(dir, j.dirName, j.name, j.value)
			}
			if err == nil && j.link != nil && unix.Symlinkat(formLinkTarget(s.bucketed, j.name), int(s.top.Fd()), j.name) == nil {
				// Ours now; anything else (a link from before, a foreign file) Commit checks.
				j.link.linked.Store(true)
				s.linked.Store(true)
				s.links.Add(1)
			}
			s.w.marked("spooled")
			if err != nil {
				s.mu.Lock()
				if s.err == nil {
					s.err = noSpace(err, s.w.absDir)
				}
				s.mu.Unlock()
				s.broken.Store(true)
			}
		}
	}
}

// fail aborts the stream after a write error. On a full disk it also removes the previous
// version, kept only for readers still inside it, and the spares, so that the next full batch has room: the
// values already written are gone, so this one cannot be tried again at once, as Apply is.
func (s *Stream) fail(err error) error {
	s.Abort()
	if isNoSpace(err) {
		s.w.Tidy()
	}
	if isNoSpace(err) {
		s.w.freeRoom("removing the previous version and the spares, so that the next full sync fits")
	}
	return fmt.Errorf("applying revision %d: writing: %w", s.revision, err)
}

func (s *Stream) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Add folds one page of the batch into the new model and queues its new or changed values
// for the writers. A later change of the same key wins, as in a Batch. It may keep the Values
// until they are written; the caller must not modify them. An error aborts the stream.
func (s *Stream) Add(changes []Change) error {
	if s.done {
		return errors.New("writer: Add after Commit or Abort")
	}
	if err := s.failed(); err != nil {
		return s.fail(err)
	}
	w := s.w
	if s.direct && !s.formSet {
		s.chooseForm(changes)
	}
	for _, c := range changes {
		p, err := KeyPath(c.Key)
		if err != nil {
			w.log.Warn("key skipped", "revision", s.revision, "reason", err.Error())
			s.skipped++
			continue
		}
		again := false // the key was written in place already: that file is stale now
		if e := w.keys[p]; s.direct && e != nil && e.spool == inPlace {
			s.stale = append(s.stale, s.placed(p))
			again = true
		}
		if c.Delete {
			if s.direct && w.keys[p] != nil && !strings.Contains(p, "/") {
				s.relinks = true // a link the stream made (or makes) may be no key's now
			}
			w.remove(p)
			continue
		}
		sum := sha256.Sum256(c.Value)
		if old, ok := w.live[p]; ok && old == sum {
			w.put(p, sum, nil, false) // the live file holds it
			continue
		}
		if again || !s.direct && s.jobs == nil && s.held+len(c.Value) <= s.holdMax {
			// A key given twice in one snapshot does not happen; kept in memory, its value
			// never races with its first write.
			s.held += len(c.Value)
			w.put(p, sum, c.Value, true)
			continue
		}
		if s.jobs == nil {
			if err := s.start(); err != nil {
				return s.fail(err)
			}
		}
		e := w.put(p, sum, nil, false)
		if s.direct {
			// The stage places p at its tree path in the form it stages: the value goes into
			// the object of that path's directory, which the stage adopts.
			d, name := s.placeOf(p)
			o, err := s.object(d)
			if err != nil {
				return s.fail(err)
			}
			e.spool = inPlace
			o.names = append(o.names, name)
			s.placedN++
			j := spoolJob{dir: -1, dirName: o.name, name: name, value: c.Value}
			if name == p {
				j.link = e // a top-level key
				s.linkJobs++
			}
			s.batch = append(s.batch, j)
		} else {
			s.n++
			e.spool = strconv.Itoa(s.n)
			s.batch = append(s.batch, spoolJob{dir: int(s.dir.Fd()), dirName: s.name, name: e.spool, value: c.Value})
		}
		if len(s.batch) >= jobBatch {
			s.flush()
		}
	}
	if s.jobs != nil {
		s.flush()
	}
	return nil
}

// chooseForm decides the form the values are placed in, before the first is written. With a
// live version it is the live form: the stage builds on it (and switches after the swap if
// the width asks for it), and the early links then never differ from a live name's link.
// For a first version it is the form the estimated width of the top level asks for, so a
// first start of thousands of flat keys is staged bucketed at once, not flat and then
// switched (which would cost the width again): the distinct top-level names of this first
// page, scaled by the keys the batch has (etcd returns them sorted, so names are not
// counted twice across pages). A wrong guess costs a switch after the commit, never
// correctness.
func (s *Stream) chooseForm(page []Change) {
	w := s.w
	if len(page) == 0 {
		return // nothing to estimate from yet, and nothing to place
	}
	s.formSet = true
	if w.version != "" {
		s.bucketed = w.bucketed
		return
	}
	tops := make(map[string]struct{}, min(len(page), w.bucketAbove+1))
	for _, c := range page {
		if c.Delete {
			continue
		}
		top, _, _ := strings.Cut(c.Key, "/")
		tops[top] = struct{}{}
	}
	estimate := len(tops)
	if n := len(page); s.expect > n {
		estimate = int(int64(len(tops)) * int64(s.expect) / int64(n))
	}
	s.bucketed = estimate > w.bucketAbove
}

// placeOf is the tree directory and the name in it where the stream's form stores key path p.
func (s *Stream) placeOf(p string) (dir, name string) { return formPlace(s.bucketed, p) }

// object is the new object that the values of tree directory d are written into, made at its
// first value.
func (s *Stream) object(d string) (*streamObject, error) {
	if o := s.objs[d]; o != nil {
		return o, nil
	}
	name, fd, err := s.w.makeObject(int(s.top.Fd()))
	if err != nil {
		return nil, fmt.Errorf("creating a directory object: %w", noSpace(err, s.w.absDir))
	}
	unix.Close(fd) // the workers open it as they need it
	o := &streamObject{name: name}
	s.objs[d] = o // so that Abort removes it
	return o, nil
}

// placed is where the value of p written in place is, relative to the target ("" once its
// object is gone).
func (s *Stream) placed(p string) string {
	d, name := s.placeOf(p)
	o := s.objs[d]
	if o == nil {
		return ""
	}
	return o.name + "/" + name
}

// spooled is where the content of p, spooled or written in place, is, relative to the target.
func (s *Stream) spooled(p string, e *entry) string {
	if e.spool == inPlace {
		return s.placed(p)
	}
	return s.name + "/" + e.spool
}

// stagedObject is the object the stage makes for tree directory d, and opens it: the one a
// streamed full batch wrote d's values into, the first time it is asked for, if the stage
// uses the stream's form (a stage tried again, after its first try removed its objects, gets
// a new one, and the values written in place are lost).
func (w *Writer) stagedObject(top int, d string) (string, int, error) {
	if s := w.stream; s != nil && s.bucketed == w.bucketed {
		if o := s.objs[d]; o != nil {
			if !o.handed {
				fd, err := openDirAt(top, o.name)
				if err != nil {
					return "", -1, fmt.Errorf("opening directory %s: %w", o.name, err)
				}
				o.handed = true
				return o.name, fd, nil
			}
			delete(s.objs, d)
		}
	}
	return w.makeObject(top)
}

// placedIn reports whether the value of key path p was written in place, into the object
// of tree directory d that the stage is about to adopt (stagedObject hands over an object
// the first time it is asked for, in the stream's form).
func (s *Stream) placedIn(d, p string) bool {
	if s == nil || !s.direct || s.bucketed != s.w.bucketed {
		return false
	}
	o := s.objs[d]
	if o == nil || o.handed {
		return false
	}
	e := s.w.keys[p]
	return e != nil && e.spool == inPlace
}

// placedAll returns the stream's objects, by tree directory, if the write paths to stage
// (write of them) are exactly the values written in place, by the names in these objects,
// and the stage adopts every object: the stage then needs no look at each path. That is so
// when no value written in place was given again, removed or shadowed (each such file is
// in stale) and every value of the batch was written in place.
func (s *Stream) placedAll(write int) map[string]*streamObject {
	if s == nil || !s.direct || s.bucketed != s.w.bucketed || len(s.stale) > 0 || s.placedN != write {
		return nil
	}
	for _, o := range s.objs {
		if o.handed {
			return nil // a stage tried again: its first try removed them
		}
	}
	return s.objs
}

// linkedAll reports whether the workers linked every top-level key written in place, in the
// form being staged.
func (s *Stream) linkedAll() bool {
	return s != nil && s.direct && s.bucketed == s.w.bucketed && len(s.stale) == 0 &&
		s.links.Load() == int64(s.linkJobs)
}

// adopt hands the stage the object of tree directory d, without opening it: it holds every
// entry of d already (as stagedObject, when the stage has entries to add).
func (s *Stream) adopt(d string) string {
	o := s.objs[d]
	o.handed = true
	return o.name
}

// linkedEarly reports whether the stream made the top-level link of name while it arrived,
// in the form now being linked (a switch after the commit re-points it).
func (s *Stream) linkedEarly(name string) bool {
	if s == nil || !s.linked.Load() || s.bucketed != s.w.bucketed {
		return false
	}
	e := s.w.keys[name]
	return e != nil && e.linked.Load()
}

// Commit waits for the writers, then publishes the new model as Apply does, and reports what
// changed.
func (s *Stream) Commit() (Result, error) {
	var res Result
	if s.done {
		return res, errors.New("writer: Commit after Commit or Abort")
	}
	s.stopWorkers()
	if err := s.failed(); err != nil {
		return res, s.fail(err)
	}
	w := s.w
	res.Skipped = s.skipped
	var shadowed []string
	for d := range w.below { // the directories: fewer than the keys
		if _, ok := w.keys[d]; ok {
			shadowed = append(shadowed, d)
		}
	}
	for _, p := range slices.Sorted(slices.Values(shadowed)) {
		w.log.Warn("key skipped", "revision", s.revision,
			"reason", fmt.Sprintf("key %q: keys below it exist, so it is a directory; it returns as a file when they are gone", p))
		res.Skipped++
		// Its name is a directory now: the value written in place goes into memory.
		if e := w.keys[p]; e.spool == inPlace {
			data, err := w.readFile(s.placed(p))
			if err != nil {
				return res, s.fail(fmt.Errorf("key %s: %w", p, err))
			}
			s.stale = append(s.stale, s.placed(p))
			e.value, e.held, e.spool = data, true, ""
		}
	}
	for _, name := range s.stale {
		if err := w.root.Remove(name); err != nil && !isNotExist(err) {
			return res, s.fail(err)
		}
	}
	if s.relinks {
		w.relink = true
	}
	err := w.finish(s.revision, &res)
	// What still needs the spool (shadowed keys; after a failure, every unpublished value)
	// goes into memory, as Apply keeps it.
	if uerr := s.unspool(); uerr != nil {
		w.log.Error("cannot read back a value written before the failure; the writer forgets this full batch", "error", uerr)
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
	if s.direct {
		s.closeObjects(err != nil)
		return res, err
	}
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

// closeObjects closes the objects written in place and removes those no version took (all
// of them after a failure: the stage removed those it took).
func (s *Stream) closeObjects(all bool) {
	if s.top != nil {
		s.top.Close()
	}
	for _, o := range s.objs {
		if all || !o.handed {
			s.w.discard(o.name)
		}
	}
}

// unspool reads the values that are still only in the spool into memory.
func (s *Stream) unspool() error {
	var errs []error
	for p, e := range s.w.keys {
		if e.spool == "" {
			continue
		}
		data, err := s.w.content(p)
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
	s.batch = nil
	s.stopWorkers()
	w := s.w
	if s.linked.Load() {
		// The links the stream made dangle: their names are no key of the live version.
		for name, e := range w.keys {
			if e.linked.Load() {
				w.unlink(name)
			}
		}
		if s.relinks {
			w.relink = true // a link made for a key removed since: the next Apply finds it
		}
	}
	w.keys, w.below, w.dirty, w.dirtyAll = s.keys, s.below, s.dirty, s.dirtyAll
	w.obstructed = w.obstructed[:0]
	w.stream = nil
	if s.direct {
		s.closeObjects(true)
		return
	}
	if s.dir != nil {
		s.dir.Close()
	}
	if s.name != "" {
		w.discard(s.name)
	}
}

// linkSpooled hard-links the spooled content of path p as name in the directory open as to,
// and reports whether it did; otherwise the caller writes the content itself. A value
// written in place is there already: the stage's object for p's directory is the one it was
// written into (stagedObject handed it over). So Add must place p where the stage does: in
// the object of parentDir(p), as path.Base(p).
func (w *Writer) linkSpooled(p string, to int, name string) bool {
	s := w.stream
	if s == nil {
		return false
	}
	e := w.keys[p]
	if e == nil || e.spool == "" {
		return false
	}
	if e.spool == inPlace {
		// The stage's object for p's directory is the one it was written into, if handed.
		d, _ := s.placeOf(p)
		o := s.objs[d]
		return o != nil && o.handed && s.bucketed == w.bucketed
	}
	return unix.Linkat(int(s.dir.Fd()), e.spool, to, name, 0) == nil
}

// waitSweep waits for the removal of the last stream's spool, if it still runs.
func (w *Writer) waitSweep() {
	if w.sweeping != nil {
		<-w.sweeping
		w.sweeping = nil
	}
}

// dirCache keeps up to max directory objects open, for one worker of a Stream: values of one
// directory usually come together, but a bucketed top level spreads flat keys over up to 512
// objects. When full, it closes them all (cheaper than tracking which was used last).
type dirCache struct {
	top int // the target, open
	max int
	fds map[string]int
}

func (c *dirCache) open(name string) (int, error) {
	if fd, ok := c.fds[name]; ok {
		return fd, nil
	}
	if len(c.fds) >= c.max {
		c.close()
	}
	fd, err := openDirAt(c.top, name)
	if err != nil {
		return -1, fmt.Errorf("opening directory %s: %w", name, err)
	}
	if c.fds == nil {
		c.fds = map[string]int{}
	}
	c.fds[name] = fd
	return fd, nil
}

func (c *dirCache) close() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	clear(c.fds)
}
