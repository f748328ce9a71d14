// Package writer publishes the mirrored keys as files in one directory, atomically and safely,
// and reports whether anything visible changed. It knows nothing about etcd or processes.
//
// Guarantees:
//   - Nothing is written, followed or deleted outside the target directory: every key goes
//     through KeyPath, and every file system operation goes through an os.Root opened on it,
//     or through the target's open descriptor with *at system calls on single path
//     components, never following a symlink (fs.go, openDirAt).
//   - Files this package did not create are never deleted. In the Atomic layout they are not
//     overwritten either; in the Plain layout a key that maps onto one overwrites it, because
//     the key asks for exactly that file.
//   - With the Atomic layout, all changes of one Apply become visible at one instant (one
//     rename of the ..data symlink) and, unless NoSync is set, they are on disk before Apply
//     returns. A crash at any moment leaves ..data pointing at a complete version; Open cleans
//     the leftovers and the next Full batch converges.
//   - A batch that leaves the tree (paths and content) as it was changes nothing on disk and
//     reports Changed=false, so the caller signals its child only on a real change.
//   - With the Atomic layout, every key of the live version is reachable by its path from the
//     target at every instant: new top-level names are linked before the swap.
//   - One writer per target: Open takes an flock on ..etcd-config-dispenser.lock and refuses a
//     target another process holds, naming its pid. A removed target is recreated at the
//     next Apply.
//   - An empty (or nil) value is an empty file; files get exactly Options.Mode, and nothing
//     older stays more readable than it once a batch has been applied.
//
// Cost: an Apply costs what it changes, not what exists. Only the paths a batch touches are
// compared, and in the Atomic layout a version shares every directory off the changed paths
// with the previous one (see atomic.go); the Plain layout writes each changed file in place.
//
// Memory: the writer keeps a sha256 per key, not the values, except for the few values it
// cannot read back from disk (keys shadowed by a directory, and changes not yet published).
// A Full batch can also arrive in pages (BeginFull, stream.go): its values are then written to
// disk as they arrive (Atomic: straight into the new version's hidden objects), so even a
// snapshot's values are never all in memory.
package writer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// Change is the new state of one key. Key is relative to the mirrored prefix, as etcd spells it
// ("cert.pem", "sub/dir/a").
type Change struct {
	Key    string
	Value  []byte
	Delete bool
}

// Batch is the changes of one or more whole etcd revisions, applied as one. Apply may keep
// references to the Values (not copies: a full sync of big values would hold them twice), so
// the caller must not modify them afterwards.
type Batch struct {
	Revision int64
	Full     bool     // Changes list every key that exists; every key not listed is gone (initial sync / resync)
	Changes  []Change // in order; a later change of the same key wins
}

// Layout is how the files are laid out in the target directory.
type Layout int

const (
	// Atomic keeps each version in its own hidden directory, makes it live by renaming the
	// ..data symlink, and links each top-level name to ..data/<name> (the Kubernetes
	// ConfigMap volume layout).
	Atomic Layout = iota
	// Plain replaces each file in place by one rename, for programs that cannot follow
	// symlinks. A reader may see some files of a batch new and others old.
	Plain
)

func (l Layout) String() string {
	switch l {
	case Atomic:
		return "atomic"
	case Plain:
		return "plain"
	}
	return fmt.Sprintf("Layout(%d)", int(l))
}

// Options configure a Writer. The zero value of each field is a sensible default, except
// UID and GID: 0 means root, pass -1 to leave the owner as it is.
type Options struct {
	Dir    string       // target directory; created (0755) if missing
	Layout Layout       // Atomic (default) or Plain
	Mode   os.FileMode  // file mode; 0 means 0600
	UID    int          // owner for files and directories we create; -1 leaves it
	GID    int          // -1 leaves it
	NoSync bool         // skip fsync (benchmarks / tmpfs); default false = durable
	Logger *slog.Logger // nil = slog.Default()
	// Check, if set, is called with the absolute path of the staged new version (a directory
	// holding the complete new tree) before it goes live; an error keeps the old version live,
	// Apply returns that error wrapped, and the next Apply tries again. With a bucketed top
	// level (atomic.go), the path is a temporary directory of one symlink per top-level name
	// into the staged version, so staged/NAME works either way.
	Check func(staged string) error
}

// Result says what an Apply did.
type Result struct {
	Changed          bool   // something visible changed (the caller signals the child only then)
	Written, Removed int    // files written (new or changed content) and removed
	Skipped          int    // keys that do not map to a safe path (logged each time)
	Version          string // the live version's directory object (Atomic layout)
}

// Writer mirrors a model of keys into Options.Dir. It is not safe for concurrent use: the
// caller serialises Apply, Files and Close (there is one writer per target directory, and
// two Applies racing would interleave their versions).
type Writer struct {
	opts    Options
	dirMode os.FileMode
	log     *slog.Logger
	root    *os.Root
	// top is the target directory, open for the writer's life: the hot path works on it with
	// *at system calls and single-component names (see openDirAt), not through the root's
	// checked walks, which cost several system calls each.
	top   *os.File
	topFd int
	// topDev and topIno identify the directory top holds (reopenIfGone).
	topDev, topIno uint64
	lock           *os.File // holds the flock on lockName while the writer is open
	closed         bool
	absDir         string
	// modeAtCreate: files created get Mode and our owner from open(2) alone (fs.go), and
	// dirModeAtCreate: directories get dirMode and our owner from mkdir(2) alone.
	modeAtCreate, dirModeAtCreate bool

	// The desired state: every accepted key, and for each directory the number of keys below
	// it. A key with keys below it is shadowed: the directory wins.
	keys  map[string]*entry
	below map[string]int
	// dirty holds the paths whose desired state may differ from the live one: those a batch
	// touched, and those to rewrite. Only they are compared, so a change costs what changed.
	// It is cleared once an Apply succeeded. dirtyAll says every key and every live path is
	// dirty too (a full batch): they are not listed in dirty, since changes and forget then
	// range over keys and live, which costs less than a set of every path.
	dirty    map[string]struct{}
	dirtyAll bool
	// published holds the entries of the paths a first version published (nothing was live
	// before, so they are all that is live): forget needs no look at the others.
	published []*entry

	// The published state: relative path -> sha256 of the files now live, and those of them
	// whose mode or owner differ from Options (found at Open; they get rewritten).
	live map[string][32]byte
	fix  map[string]bool

	// Atomic layout.
	version string            // the root directory object ..data points at; "" before the first
	dirObj  map[string]string // directory path of the live tree ("" for its root) -> its object
	retired []string          // objects of the previous version only, kept for readers still inside it
	// contents holds the names in some of the retired objects, as the stage listed them, so
	// that their removal needs no listing; known counts them.
	contents map[string][]string
	known    int
	rebuild  bool            // the live version holds junk or wrong directory modes
	relink   bool            // check every top-level link at the next Apply
	unlinked map[string]bool // top-level names taken by an entry that is not ours
	// The form of the top level (bucket.go): bucketed stores NAME under ..X/..Y/..Z/NAME, and
	// mixed says the live root also holds the other form (a switch was cut short). tops is
	// the number of top-level names of the live tree.
	bucketed, mixed        bool
	otherHalf              []string // objects only the other form's half of a mixed root reaches
	tops                   int
	bucketAbove, flatBelow int
	maxOpen                int           // directory objects kept open at once (maxOpenObjects)
	pruning                chan struct{} // closed once the retired objects being removed are gone
	pending                []string      // retired objects no version reaches, left for Tidy
	recycle                recycler      // manifests of the objects we made, and spares (recycle.go)

	// Plain layout.
	dirs          map[string]bool // directories we created
	obstructed    []string        // paths a foreign entry kept us from writing: still dirty
	manifestStale bool            // the manifest on disk must be rewritten whole
	journal       []byte          // records not yet appended to the manifest
	records       int             // records in the manifest file, for its compaction

	// stream is the streamed full batch being received, if any (stream.go), and sweeping is
	// closed once the last one's spool is removed.
	stream   *Stream
	sweeping chan struct{}

	// step, if set (tests only), is called at each step of Apply; the crash tests copy the
	// target directory there to see what a kill -9 at that moment would leave.
	step   func(name string)
	stepMu sync.Mutex
}

// entry is one key of the model. value is kept only while the key is shadowed or its content
// is not live yet; otherwise the bytes are on disk and only the sum is needed. held says
// which: a nil or empty value is a value (etcd returns nil for ""), never "read it from disk".
type entry struct {
	sum   [32]byte
	value []byte
	held  bool
	spool string // during a streamed full batch: the file in the spool holding the content, or inPlace
	// During a streamed full batch written in place: the stream made the top-level link of
	// this (top-level) key. Set by the stream's writers.
	linked atomic.Bool
}

// Open validates opts, creates Dir if missing, cleans what a crash left behind, and loads the
// tree that is already live, so that a Full batch with the same content is a no-op.
func Open(opts Options) (*Writer, error) {
	if opts.Dir == "" {
		return nil, errors.New("writer: Options.Dir is empty")
	}
	if opts.Layout != Atomic && opts.Layout != Plain {
		return nil, fmt.Errorf("writer: unknown layout %v", opts.Layout)
	}
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	if opts.Mode&^os.ModePerm != 0 {
		return nil, fmt.Errorf("writer: mode %v has bits other than permissions", opts.Mode)
	}
	if opts.UID < -1 || opts.GID < -1 {
		return nil, fmt.Errorf("writer: invalid owner %d:%d", opts.UID, opts.GID)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	abs, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("writer: %w", err)
	}
	w := &Writer{
		opts:    opts,
		dirMode: dirMode(opts.Mode),
		log:     opts.Logger.With("dir", abs, "layout", opts.Layout.String()),
		absDir:  abs,
		topFd:   -1,

		bucketAbove: bucketAbove,
		flatBelow:   flatBelow,
		maxOpen:     maxOpenObjects(),
	}
	if err := w.open(); err != nil {
		return nil, err
	}
	w.log.Info("target opened", "files", len(w.live), "version", w.version)
	return w, nil
}

// open does the work of Open on a fresh state; Apply calls it again when the target was
// removed or replaced.
func (w *Writer) open() error {
	w.waitPrune()
	w.waitSweep()
	w.keys, w.below, w.dirty = make(map[string]*entry), make(map[string]int), make(map[string]struct{})
	w.dirtyAll = false
	w.live, w.fix, w.dirs = make(map[string][32]byte), make(map[string]bool), make(map[string]bool)
	w.dirObj, w.retired, w.contents, w.known = make(map[string]string), nil, make(map[string][]string), 0
	w.version, w.rebuild, w.relink, w.unlinked, w.manifestStale = "", false, false, nil, false
	w.bucketed, w.mixed, w.tops, w.otherHalf = false, false, 0, nil
	w.recycle.reset() // spares on disk are objects no version reaches: pruned below
	if err := w.openDir(); err != nil {
		return err
	}
	var err error
	if w.opts.Layout == Atomic {
		err = w.openAtomic()
	} else {
		err = w.openPlain()
	}
	if err != nil {
		w.release()
		return err
	}
	for p, sum := range w.live {
		w.putLive(p, sum)
	}
	clear(w.dirty)
	for p := range w.fix {
		w.dirty[p] = struct{}{}
	}
	return nil
}

// openDir creates the target directory if needed (0755, owned by UID:GID) and opens the root
// that every later operation goes through.
func (w *Writer) openDir() error {
	if _, err := os.Stat(w.absDir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(w.absDir, 0o755); err != nil {
			return fmt.Errorf("writer: creating %s: %w", w.absDir, err)
		}
		if err := os.Chmod(w.absDir, 0o755); err != nil { // despite the umask
			return fmt.Errorf("writer: %w", err)
		}
		if err := chown(os.Lstat, os.Lchown, w.absDir, w.opts.UID, w.opts.GID); err != nil {
			return fmt.Errorf("writer: %w", err)
		}
	}
	if err := checkPrivate(w.absDir); err != nil {
		return err
	}
	w.modeAtCreate = modeAtCreate(w.absDir, w.opts.Mode, w.opts.UID, w.opts.GID)
	w.dirModeAtCreate = modeAtCreate(w.absDir, w.dirMode, w.opts.UID, w.opts.GID)
	root, err := os.OpenRoot(w.absDir)
	if err != nil {
		return fmt.Errorf("writer: opening %s: %w", w.absDir, err)
	}
	w.root = root
	if w.top, err = root.Open("."); err != nil {
		w.release()
		return fmt.Errorf("writer: opening %s: %w", w.absDir, err)
	}
	w.topFd = int(w.top.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(w.topFd, &st); err != nil {
		w.release()
		return fmt.Errorf("writer: %s: %w", w.absDir, err)
	}
	w.topDev, w.topIno = st.Dev, st.Ino
	if err := w.lockTarget(); err != nil {
		w.release()
		return err
	}
	return nil
}

// lockTarget takes an exclusive flock on lockName, so that two dispensers never work on one
// target: each would remove the other's versions and links. The kernel drops the lock when
// the holder exits, even by kill -9, so a stale lock file is harmless. The file holds the
// holder's pid, for the error the next one gets.
func (w *Writer) lockTarget() error {
	f, err := w.root.OpenFile(lockName, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("writer: opening the lock file %s: %w", filepath.Join(w.absDir, lockName), err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("writer: locking %s: %w", filepath.Join(w.absDir, lockName), err)
		}
		pid := "unknown"
		if b, err := io.ReadAll(io.LimitReader(f, 32)); err == nil && len(bytes.TrimSpace(b)) > 0 {
			pid = string(bytes.TrimSpace(b))
		}
		return fmt.Errorf("writer: target %s is in use by another etcd-config-dispenser (pid %s); "+
			"stop it or choose another target", w.absDir, pid)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		if err != nil {
			w.log.Warn("cannot write our pid into the lock file", "error", err)
		}
	}
	w.lock = f
	return nil
}

// reopenIfGone notices a target directory that was removed or replaced since Open (its path
// no longer leads to the directory we hold) and opens the one at the path, creating it if
// needed, with its lock. It reports whether it did: the model then holds only what is in
// the new directory, and only a Full batch can fill it.
func (w *Writer) reopenIfGone() (bool, error) {
	// The held directory's identity never changes (openDir read it): one stat of the path
	// per Apply tells whether the path still leads to it.
	var now unix.Stat_t
	if unix.Stat(w.absDir, &now) == nil && w.topDev == now.Dev && w.topIno == now.Ino {
		return false, nil
	}
	w.log.Warn("the target directory was removed or replaced; recreating it, the next full sync fills it")
	w.waitPrune() // they use the root being released
	w.waitSweep()
	w.release()
	if err := w.open(); err != nil {
		return true, err
	}
	return true, nil
}

// checkPrivate refuses a target that another user could write to: such a
// user could plant files or symlinks under the names we publish, or swap the
// directory's entries while we work (like sshd's StrictModes). A group may
// write only when it is our own group.
func checkPrivate(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("writer: target %s is not a directory", dir)
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	perm := st.Mode().Perm()
	if perm&0o002 != 0 || perm&0o020 != 0 && int(sys.Gid) != os.Getegid() {
		return fmt.Errorf("writer: target %s is writable by other users (mode %04o): they could plant files "+
			"or symlinks in it; run chmod go-w on it, or choose another directory", dir, perm)
	}
	return nil
}

// dirMode is the mode for directories holding files of mode m: always rwx for the owner, the
// writer, whatever m says (0400 or 0200 would lock it out of its own directories), and r-x for
// group and others where m lets them read. Directories are never writable by others, since
// only the writer creates entries in them (0600 -> 0700, 0644 -> 0755, 0440 -> 0750,
// 0200 -> 0700, 0664 -> 0755).
func dirMode(m os.FileMode) os.FileMode {
	r := m & 0o044
	return 0o700 | r | r>>2
}

// Apply makes the target show the model after batch b, and reports what changed.
//
//  0. If the target directory was removed or replaced, open it again, creating it
//     (reopenIfGone); only a Full batch can fill it, so any other batch fails.
//  1. Fold the batch into the model of desired keys (fold), marking the paths it touches
//     dirty. Keys that do not map to a safe path are skipped and logged; the value of a key
//     that a new key below it shadows is remembered, so the key can reappear when its
//     children are gone.
//  2. For each dirty path only, decide whether a file belongs there: a key with no key
//     below it (the directory wins). The choice depends on the whole model, never on event
//     order.
//  3. Compare with the live file (changes). If nothing differs, nothing is written and
//     Changed is false; with the Atomic layout, missing or stale top-level links are still
//     healed after Open.
//
// The Atomic layout then (applyAtomic):
//
//  4. Stage the new version (stage): a new directory object for each directory that holds
//     a changed path and for those above it, up to a new root; unchanged files in them are
//     hard-linked from the live object, changed ones written with Mode and owner, and
//     subdirectories off the changed paths are symlinks to their live, shared objects. On a
//     full disk, the previous version's objects are removed and the stage tried again.
//  5. Call Options.Check on the staged root; an error discards the new objects and keeps
//     the old version live.
//  6. Sync the file system (syncAll: one syncfs), so the new version is durable before it is
//     visible. Skipped with NoSync.
//  7. Link each new top-level name, name -> ..data/name (or ..data/..X/..Y/..Z/name with a
//     bucketed top level, bucket.go) (linkNew), then point the symlink
//     ..data_tmp at the new version and rename it over ..data (swap). The rename is the one
//     atomic step: a reader resolving ..data sees the complete old or new tree, and every
//     name of the new tree is linked before it goes live. Names taken by a file that is not
//     ours are left alone and logged.
//  8. Sync the target directory (syncDir), so the rename itself survives a crash.
//  9. Remove our links for top-level names that are gone (unlinkGone, or relinkAll after
//     Open, which also checks every link).
//  10. If the top level crossed the bucketing threshold, switch its form (switchForm).
//  11. Delete the objects only the version before the previous one reached, in the
//     background (prune), or after the signal (Tidy), where those a stage made become their
//     directory's spare, stripped of all that is not live, for the next change there to reuse
//     (recycle.go); the next Apply, Open or Close waits for it. The previous version
//     stays whole, so a reader that resolved into it just before the swap can finish; after
//     a tighter Mode, it goes at once, before Apply returns.
//
// The Plain layout then (applyPlain):
//
//  4. If Options.Check is set, stage a copy of the new tree in a ..tmp directory and check
//     it (checkPlain).
//  5. Record in the manifest the files and directories about to be created, so a crash
//     does not turn them into foreign files (recordIntent).
//  6. Remove the files that are gone, only our own (removePlain).
//  7. Remove directories we created that are now empty (pruneDirs), then write each changed
//     file: temporary file in the same directory, fsync, rename (writePlain).
//  8. Sync the directories touched (syncDirs).
//  9. Append what changed in what we own to the manifest, a journal, or rewrite it whole
//     once its records outnumber twice what we own (flushManifest).
//
// Finally, values no longer needed are dropped (forget).
//
// An error before the swap leaves the model updated but the old tree live: the next Apply,
// even of an empty batch, tries to publish again. Once ..data has moved, Apply reports
// success (the files did change); failures of steps 8 to 11 are logged, and links are
// retried at the next Apply. With the
// Plain layout an error can leave part of the batch written; the next Apply completes it.
// Apply is not safe for concurrent use.
func (w *Writer) Apply(b Batch) (Result, error) {
	var res Result
	if w.closed {
		return res, errors.New("writer: Apply after Close")
	}
	if w.stream != nil {
		return res, errors.New("writer: Apply while a streamed full batch is open")
	}
	// A streamed start's spool may still be going in the background: the change does not
	// wait for it (finish waits where it matters: a full disk, the Plain layout's copies).
	if err := w.ensureTarget(b.Revision, b.Full); err != nil {
		return res, err
	}
	w.obstructed = w.obstructed[:0]
	res.Skipped = w.fold(b)
	return res, w.finish(b.Revision, &res)
}

// finish is steps 2 to the end of Apply, once the batch is folded into the model.
func (w *Writer) finish(revision int64, res *Result) error {
	write, remove := w.changes()
	var err error
	if w.opts.Layout == Atomic {
		err = w.applyAtomic(write, remove, res)
	} else {
		w.waitSweep() // the spool held copies of every value: their room may be needed
		err = w.applyPlain(write, remove, res)
	}
	if err != nil {
		w.published = nil
		return fmt.Errorf("applying revision %d: %w", revision, err)
	}
	w.forget()
	w.clearDirty()
	w.dirtyAll = false
	for _, p := range w.obstructed {
		w.dirty[p] = struct{}{}
	}
	w.obstructed = w.obstructed[:0]
	res.Version = w.version
	if res.Changed {
		// The caller logs the batch once, after its signal.
		w.log.Debug("files written", "revision", revision, "written", res.Written,
			"removed", res.Removed, "skipped", res.Skipped, "version", w.version)
	} else {
		w.log.Debug("batch changed nothing", "revision", revision, "skipped", res.Skipped)
	}
	return nil
}

// clearDirty empties the dirty set. A map keeps the room it once needed, and ranging over it
// or clearing it costs that room: after a full batch, every later change would pay for every
// key. So a set that held many paths is dropped for a new one.
func (w *Writer) clearDirty() {
	if len(w.dirty) > 1024 {
		w.dirty = make(map[string]struct{})
		return
	}
	clear(w.dirty)
}

// ensureTarget is step 0: it opens the target again if it was removed or replaced. Only a
// full batch can fill a recreated target.
func (w *Writer) ensureTarget(revision int64, full bool) error {
	if w.root == nil { // a reopen failed: try again
		if err := w.open(); err != nil {
			return fmt.Errorf("applying revision %d: the target %s was removed and cannot be recreated: %w", revision, w.absDir, err)
		}
	} else if reopened, err := w.reopenIfGone(); err != nil {
		return fmt.Errorf("applying revision %d: the target %s was removed and cannot be recreated: %w", revision, w.absDir, err)
	} else if reopened && !full {
		return fmt.Errorf("applying revision %d: the target %s was removed or replaced; it was recreated, "+
			"and the next full sync fills it", revision, w.absDir)
	}
	return nil
}

// Files returns the live tree: relative path -> sha256 of its content. The map is a copy.
func (w *Writer) Files() map[string][32]byte {
	return maps.Clone(w.live)
}

// Close releases the target directory and its lock. The files stay.
func (w *Writer) Close() error {
	if w.stream != nil {
		w.stream.Abort()
	}
	w.waitSweep()
	w.waitPrune()
	w.closed = true
	return w.release()
}

func (w *Writer) release() error {
	var err error
	if w.top != nil {
		err = w.top.Close()
		w.top, w.topFd = nil, -1
	}
	if w.root != nil {
		err = errors.Join(err, w.root.Close())
		w.root = nil
	}
	if w.lock != nil {
		err = errors.Join(err, w.lock.Close())
		w.lock = nil
	}
	return err
}

// fold is step 1: it applies the changes to the model and returns how many keys it skipped.
func (w *Writer) fold(b Batch) (skipped int) {
	if b.Full {
		w.dirtyAll = true // every live path, and every key it puts
		w.keys = make(map[string]*entry, len(b.Changes))
		w.below = make(map[string]int)
	}
	put := make(map[string]bool)
	for _, c := range b.Changes {
		p, err := KeyPath(c.Key)
		if err != nil {
			w.log.Warn("key skipped", "revision", b.Revision, "reason", err.Error())
			skipped++
			continue
		}
		if !w.dirtyAll {
			w.dirty[p] = struct{}{}
		}
		if c.Delete {
			w.remove(p)
			delete(put, p)
			continue
		}
		w.put(p, sha256.Sum256(c.Value), c.Value, true)
		put[p] = true
	}
	// A key put in this batch, or one whose first child arrived in it, is reported while a
	// key below it exists.
	shadowed := make(map[string]bool)
	for p := range put {
		if w.below[p] > 0 {
			shadowed[p] = true
		}
		forParents(p, func(d string) {
			if _, ok := w.keys[d]; ok {
				shadowed[d] = true
			}
		})
	}
	for _, p := range slices.Sorted(maps.Keys(shadowed)) {
		w.log.Warn("key skipped", "revision", b.Revision,
			"reason", fmt.Sprintf("key %q: keys below it exist, so it is a directory; it returns as a file when they are gone", p))
		skipped++
	}
	return skipped
}

// putLive sets key p in the model with the content that is live on disk.
func (w *Writer) putLive(p string, sum [32]byte) { w.put(p, sum, nil, false) }

// put sets key p in the model, and returns its entry; held says value is its content
// (otherwise it is live on disk).
func (w *Writer) put(p string, sum [32]byte, value []byte, held bool) *entry {
	if e, ok := w.keys[p]; ok {
		e.sum, e.value, e.held, e.spool = sum, value, held, ""
		return e
	}
	e := &entry{sum: sum, value: value, held: held}
	w.keys[p] = e
	forParents(p, func(d string) {
		w.below[d]++
		if w.below[d] == 1 {
			w.dirty[d] = struct{}{} // a key there is hidden now
			w.shadow(d)
		}
	})
	return e
}

// shadow keeps the value of key d (if it is one) now that a key below it hides it; its file
// will be removed, and it must be able to come back.
func (w *Writer) shadow(d string) {
	e, ok := w.keys[d]
	if !ok || e.held || e.spool != "" {
		return
	}
	data, err := w.readLive(d)
	if err != nil {
		w.log.Error("cannot keep the value of a key hidden by keys below it; it returns only at the next full sync",
			"key", d, "error", err)
		delete(w.keys, d)
		forParents(d, func(a string) { w.decBelow(a) })
		return
	}
	e.value, e.sum, e.held = data, sha256.Sum256(data), true
}

// remove deletes key p from the model.
func (w *Writer) remove(p string) {
	if _, ok := w.keys[p]; !ok {
		return
	}
	delete(w.keys, p)
	forParents(p, func(d string) { w.decBelow(d) })
}

func (w *Writer) decBelow(d string) {
	if w.below[d]--; w.below[d] <= 0 {
		delete(w.below, d)
		w.dirty[d] = struct{}{} // a key there shows again
	}
}

// changes is steps 2 and 3: of the dirty paths, those to write (new, changed, or with a wrong
// mode or owner) and those to remove, both sorted. A path is desired when a key maps to it
// and no key lies below it (the directory wins), so the choice depends on the whole model,
// never on event order.
func (w *Writer) changes() (write, remove []string) {
	if w.dirtyAll {
		// Every key and live path: a path of dirty that is neither is no change.
		if len(w.live) == 0 {
			write = make([]string, 0, len(w.keys)) // a first version writes every key
		}
		for p, e := range w.keys {
			if w.below[p] == 0 {
				if old, ok := w.live[p]; !ok || old != e.sum || w.fix[p] {
					write = append(write, p)
				}
			}
		}
		for p := range w.live {
			if e, ok := w.keys[p]; !ok || e == nil || w.below[p] > 0 {
				remove = append(remove, p)
			}
		}
	} else {
		for p := range w.dirty {
			if e, ok := w.keys[p]; ok && w.below[p] == 0 {
				if old, ok := w.live[p]; !ok || old != e.sum || w.fix[p] {
					write = append(write, p)
				}
			} else if _, ok := w.live[p]; ok {
				remove = append(remove, p)
			}
		}
	}
	if w.opts.Layout == Plain {
		// Written and removed in this order (the Atomic layout's stage orders each object's
		// entries itself, and sorting every path of a first sync costs as much as its stage).
		slices.Sort(write)
		slices.Sort(remove)
	}
	return write, remove
}

// desiredTree is the whole desired tree, path -> sha256, for Check in the Plain layout.
func (w *Writer) desiredTree() map[string][32]byte {
	t := make(map[string][32]byte, len(w.keys))
	for p, e := range w.keys {
		if w.below[p] == 0 {
			t[p] = e.sum
		}
	}
	return t
}

// content returns the bytes of desired file p: the remembered value, or the live file.
func (w *Writer) content(p string) ([]byte, error) {
	if e := w.keys[p]; e.held {
		return e.value, nil
	} else if e.spool != "" {
		name := w.stream.spooled(p, e)
		if name == "" {
			return nil, fmt.Errorf("the value written for %s is gone with its object", p)
		}
		return w.readFile(name)
	}
	return w.readLive(p)
}

// forget drops the values of the dirty paths that are now live on disk and not shadowed.
func (w *Writer) forget() {
	if w.published != nil {
		// A first version: every path it wrote is live with its entry's sum, and no other
		// path is (a shadowed key keeps its value).
		for _, e := range w.published {
			e.value, e.held, e.spool = nil, false, ""
		}
		w.published = nil
		return
	}
	drop := func(p string, e *entry) {
		if !(e.held || e.spool != "") || w.below[p] > 0 {
			return
		}
		if sum, ok := w.live[p]; ok && sum == e.sum {
			e.value, e.held, e.spool = nil, false, ""
		}
	}
	if w.dirtyAll {
		for p, e := range w.keys {
			drop(p, e)
		}
		return
	}
	for p := range w.dirty {
		if e, ok := w.keys[p]; ok {
			drop(p, e)
		}
	}
}

// forParents calls fn for each parent directory of p, outermost first ("a", "a/b" for "a/b/c").
func forParents(p string, fn func(dir string)) {
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			fn(p[:i])
		}
	}
}

// topName is the first segment of p.
func topName(p string) string {
	if i := strings.IndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return p
}

// marked calls the test hook of the named step.
func (w *Writer) marked(step string) {
	if w.step != nil {
		w.stepMu.Lock() // staging may run on several goroutines
		defer w.stepMu.Unlock()
		w.step(step)
	}
}
