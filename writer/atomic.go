package writer

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	dataLink    = "..data"     // the symlink whose rename publishes a version
	dataLinkTmp = "..data_tmp" // the new ..data before it is renamed into place
	lockName    = "..etcd-config-dispenser.lock"
	// versionLayout names directory objects after the time they were made, in UTC.
	versionLayout = "..2006_01_02_15_04_05.000000000"
)

// versionName matches the directory objects we create, and nothing else.
var versionName = regexp.MustCompile(`^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{9}$`)

// The Atomic layout stores the tree as immutable directory objects, git-tree style: each
// directory of the tree is an object, a directory at the top of the target named like
// ..2026_11_24_16_30_00.123456789, holding its files and, for each subdirectory, a symlink
// "../<object>" to that subdirectory's object. ..data points at the root object. A change
// makes new objects only for the directories that hold a changed path and those above them;
// every other directory is shared with the previous version by its symlink, and unchanged
// files in a new object are hard links. So a change costs the width of the directories on its
// paths, not the size of the tree. Objects are never modified once ..data can reach them.
// A wide top level is bucketed (bucket.go), so that its width does not count either: the
// tree paths below are then ..X/..Y/..Z/NAME/..., while w.live and the caller see key paths.
//
// Nested symlinks bound the depth: Linux follows at most 40 symlinks in one path lookup, and
// a path through the top-level link, ..data and one symlink per level must stay below that
// (maxDepth); the three bucket levels fit in the margin (3 + 32 + 2 < 40).

// openAtomic cleans what a crash can leave (..data_tmp, objects ..data does not reach) and
// loads the live version. Top-level links are checked at the next Apply.
func (w *Writer) openAtomic() error {
	for _, tmp := range []string{dataLinkTmp, linkTmp} {
		if err := w.removeOurLink(tmp); err != nil {
			return err
		}
	}
	target, err := w.root.Readlink(dataLink)
	switch {
	case err == nil && versionName.MatchString(target):
		if fi, err := w.root.Lstat(target); err == nil && fi.IsDir() {
			w.version = target
		} else {
			w.log.Warn("..data points at a missing version; the next batch replaces it", "target", target)
		}
	case err == nil:
		return fmt.Errorf("writer: %s points at %q, which is not a version directory of ours; remove it",
			filepath.Join(w.absDir, dataLink), target)
	case isNotExist(err):
	default:
		if fi, lerr := w.root.Lstat(dataLink); lerr == nil && fi.Mode()&fs.ModeSymlink == 0 {
			return fmt.Errorf("writer: %s is not a symlink; remove it", filepath.Join(w.absDir, dataLink))
		}
		return fmt.Errorf("writer: reading %s: %w", dataLink, err)
	}
	w.relink = true
	if w.version != "" {
		if err := w.loadForm(); err != nil {
			return fmt.Errorf("writer: loading version %s: %w", w.version, err)
		}
		if err := w.loadDir("", w.version, map[string]bool{}); err != nil {
			return fmt.Errorf("writer: loading version %s: %w", w.version, err)
		}
		w.tops = len(w.liveTops())
	}
	if w.rebuild {
		// Junk or wrong directory modes: every file is written again into new objects.
		for p := range w.live {
			w.fix[p] = true
		}
	}
	return w.pruneObjects()
}

// loadForm finds the form of the live root: bucketed if it holds buckets, and mixed if it
// holds top-level names too (a switch was cut short; the names are then ignored, the buckets
// hold the same tree).
func (w *Writer) loadForm() error {
	names, err := readDirNames(w.root, w.version)
	if err != nil {
		return err
	}
	flat := false
	for _, name := range names {
		if isBucketName(name) {
			w.bucketed = true
		} else {
			flat = true
		}
	}
	w.mixed = w.bucketed && flat
	return nil
}

// loadDir hashes the files of the live object obj, directory dir of the tree, and loads its
// subdirectories. A file with the wrong mode or owner is marked to be rewritten; anything we
// would not have put there (odd names, foreign symlinks, a real subdirectory as versions had
// before directories were shared, wrong directory modes) makes the next Apply rebuild
// everything in new objects.
func (w *Writer) loadDir(dir, obj string, seen map[string]bool) error {
	w.dirObj[dir] = obj
	fi, err := w.root.Lstat(obj)
	if err != nil {
		return err
	}
	if w.wrongOwnerOrMode(fi, w.dirMode) {
		w.rebuild = true
	}
	names, err := readDirNames(w.root, obj)
	if err != nil {
		return err
	}
	for _, name := range names {
		rel, inObj := path.Join(dir, name), obj+"/"+name
		if w.mixed && dir == "" && !isBucketName(name) {
			continue // the flat half of a mixed root
		}
		if !w.inForm(rel) {
			w.rebuild = true
			continue
		}
		fi, err := w.root.Lstat(inObj)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := w.root.Readlink(inObj)
			child, ok := strings.CutPrefix(target, "../")
			if err != nil || !ok || !versionName.MatchString(child) || seen[child] {
				w.rebuild = true
				continue
			}
			if cfi, err := w.root.Lstat(child); err != nil || !cfi.IsDir() {
				w.rebuild = true
				continue
			}
			seen[child] = true
			if err := w.loadDir(rel, child, seen); err != nil {
				return err
			}
		case fi.IsDir():
			w.rebuild = true
			if err := w.loadDir(rel, inObj, seen); err != nil {
				return err
			}
		case fi.Mode().IsRegular() && keyOf(rel) == "":
			w.rebuild = true // a file where a bucket belongs
		case fi.Mode().IsRegular():
			sum, err := w.hashFile(inObj)
			if err != nil {
				return err
			}
			w.live[keyOf(rel)] = sum
			if w.wrongOwnerOrMode(fi, w.opts.Mode) {
				w.fix[keyOf(rel)] = true
			}
		default:
			w.rebuild = true
		}
	}
	return nil
}

// pruneObjects removes every object the live version does not reach: staging leftovers, and
// the previous version's own objects (Open keeps only the live version).
func (w *Writer) pruneObjects() error {
	keep := make(map[string]bool, len(w.dirObj))
	for _, obj := range w.dirObj {
		keep[obj] = true
	}
	names, err := readDirNames(w.root, ".")
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	others := false
	for _, name := range names {
		others = others || !strings.HasPrefix(name, "..")
		if !versionName.MatchString(name) || keep[name] {
			continue
		}
		if fi, err := w.root.Lstat(name); err != nil || !fi.IsDir() {
			continue
		}
		if err := w.root.RemoveAll(name); err != nil {
			return fmt.Errorf("writer: removing stale version %s: %w", name, err)
		}
		w.log.Debug("removed a stale version directory", "version", name)
	}
	if !others && w.version == "" {
		w.relink = false // no link to check: the first batch links its names as new ones
	}
	return nil
}

// applyAtomic is steps 4 to 11 of Apply for the Atomic layout.
func (w *Writer) applyAtomic(write, remove []string, res *Result) error {
	w.waitPrune()
	res.Written, res.Removed = len(write), len(remove)
	tops := w.topsAfter(write, remove)
	bucketed := w.wantBucketed(tops)
	if w.version == "" {
		w.bucketed = bucketed // nothing live: the first version takes its form at once
		if s := w.stream; s != nil && s.formSet {
			// Its values are placed in the stream's form already: stage in it, and switch
			// after the swap if the real width asks for the other.
			w.bucketed = s.bucketed
		}
	}
	if len(write) == 0 && len(remove) == 0 && !w.rebuild && !w.mixed && w.version != "" {
		if w.relink {
			res.Changed = w.relinkAll(w.liveTops())
		}
		w.switchIf(bucketed)
		return nil
	}

	// With nothing live, the live tree after the swap is the paths written: a first sync of
	// thousands makes that map on another core while this one stages (which, like every step
	// up to publish, only reads the model). Joined on every return.
	var firstLive chan firstVersion
	if len(w.live) == 0 && len(write) >= parallelLive {
		firstLive = make(chan firstVersion, 1)
		go func() {
			f := firstVersion{make(map[string][32]byte, len(write)), make([]*entry, len(write))}
			for i, p := range write {
				e := w.keys[p]
				f.live[p], f.entries[i] = e.sum, e
			}
			firstLive <- f
		}()
		defer func() {
			if firstLive != nil {
				<-firstLive
			}
		}()
	}
	st, err := w.stage(write, remove)
	if isNoSpace(err) {
		w.waitSweep() // a streamed start's spool, still being removed
	}
	if isNoSpace(err) && w.freeRoom("removing the previous version and the spares, and trying again") {
		st, err = w.stage(write, remove)
	}
	if err != nil {
		return noSpace(err, w.absDir)
	}
	staged := st.objs[""]
	w.marked("staged")
	if w.opts.Check != nil {
		if err := w.check(staged); err != nil {
			w.removeObjects(slices.Collect(maps.Values(st.objs)))
			return fmt.Errorf("check of the staged version %s: %w", staged, err)
		}
	}
	if err := w.syncAll(); err != nil {
		w.removeObjects(slices.Collect(maps.Values(st.objs)))
		return err
	}
	w.marked("synced")
	newTop := st.newTop
	if w.relink {
		newTop = w.desiredTops()
	}
	linked := w.linkNew(st.oldTop, newTop)
	w.marked("linked")
	if err := w.swap(staged); err != nil {
		for _, name := range linked {
			w.unlink(name)
		}
		w.removeObjects(slices.Collect(maps.Values(st.objs)))
		return err
	}
	w.marked("swapped")

	// The new version is live: what follows is logged and retried, not returned, since the
	// caller must learn that the files changed.
	res.Changed = res.Changed || len(write) > 0 || len(remove) > 0 || w.rebuild
	stale := w.rebuild || len(w.fix) > 0
	var live map[string][32]byte
	if firstLive != nil {
		f := <-firstLive
		firstLive, live, w.published = nil, f.live, f.entries
	}
	retired := append(w.publish(st, write, remove, live), w.otherHalf...)
	w.tops, w.mixed, w.otherHalf = tops, false, nil
	if err := w.syncDir("."); err != nil {
		w.log.Error("the swap may not survive a crash", "error", err)
	}
	w.marked("dir-synced")
	if w.relink {
		res.Changed = w.relinkAll(newTop) || res.Changed
	} else {
		w.unlinkGone(st.oldTop, st.newTop)
	}
	w.marked("unlinked")
	gone := w.retired
	w.retired = retired
	if stale {
		// The old version has modes or owners Options no longer ask for (a tighter --mode):
		// it goes now, before Apply returns, rather than stay readable beside the new one.
		w.removeObjects(append(gone, w.retired...))
		gone, w.retired = nil, nil
	}
	w.switchIf(bucketed)
	w.prune(gone)
	if w.step != nil {
		w.waitPrune() // the crash tests copy the target at each step: let it hold still
	}
	w.marked("pruned")
	return nil
}

// switchIf switches the top level to the bucketed form or back (switchForm) when its width
// asks for it. A failure is logged; the next Apply tries again.
func (w *Writer) switchIf(bucketed bool) {
	if bucketed == w.bucketed {
		return
	}
	if err := w.switchForm(bucketed); err != nil {
		w.log.Error("cannot switch the form of the top level; the next change tries again",
			"bucketed", bucketed, "error", err)
	}
}

// pruneInline is the most entries (files, symlinks, and the objects themselves) prune
// leaves for Tidy rather than hand to a goroutine. A goroutine costs a thread wake-up, on
// the caller's way to the signal, and its hand-back: about as much as removing that many
// entries (an unlinkat each), which Tidy does after the signal.
const pruneInline = 64

// maxKnown bounds the names of retired objects the writer remembers (contents), so that
// a change that rewrote everything does not keep every name until the next one.
const maxKnown = 4096

// prune removes objects no version still reachable needs, off the caller's way to the
// signal: few and narrow ones are left for Tidy, which the caller calls once it has
// signalled, others go in the background, since their removal costs their width. The next
// Apply, Open or Close removes or waits for them (waitPrune), so a full disk is never blamed
// on objects still being removed.
func (w *Writer) prune(objs []string) {
	if w.recycling() {
		// Those we made become spares at Tidy (recycle.go), after the signal.
		others := objs[:0:0]
		for _, obj := range objs {
			if _, ok := w.recycle.made[obj]; ok {
				w.recycle.queue = append(w.recycle.queue, obj)
			} else {
				others = append(others, obj)
			}
		}
		objs = others
	}
	if len(objs) == 0 {
		return
	}
	width := 0
	for _, obj := range objs {
		if names, ok := w.contents[obj]; ok {
			width += len(names) + 1
		} else {
			width += pruneInline + 1 // unknown: maybe wide
		}
	}
	if width <= pruneInline {
		w.pending = append(w.pending, objs...)
		return
	}
	names := make([][]string, len(objs))
	for i, obj := range objs {
		names[i] = w.forgetContents(obj)
	}
	done := make(chan struct{})
	w.pruning = done
	root, top, log := w.root, w.topFd, w.log
	go func() {
		defer close(done)
		for i, obj := range objs {
			if err := removeObject(root, top, obj, names[i]); err != nil {
				log.Error("cannot remove an old version directory", "version", obj, "error", err)
			}
		}
	}()
}

// forgetContents returns the names object obj holds, if the writer knows them, and forgets them.
func (w *Writer) forgetContents(obj string) []string {
	names, ok := w.dropContents(obj)
	if !ok {
		names, _ = w.knownNames(obj)
	}
	w.forgetManifest(obj)
	return names
}

// dropContents forgets the names the stage listed in object obj, and returns them.
func (w *Writer) dropContents(obj string) ([]string, bool) {
	names, ok := w.contents[obj]
	if ok {
		delete(w.contents, obj)
		w.known -= len(names)
	}
	return names, ok
}

// Tidy removes the objects of the version before the previous one that Apply left for
// later, or keeps them as spares (recycle.go), so that this work does not delay the
// caller's signal: call it once the change is signalled. It costs a few system calls per
// entry that changed (per file, for an object it removes); without it, the next Apply (or
// Close) does it first.
func (w *Writer) Tidy() {
	if w.root == nil { // released: Open prunes what no version reaches
		w.pending = nil
		w.recycle.reset()
		return
	}
	if len(w.pending) > 0 {
		w.removeObjects(w.pending)
		w.pending = w.pending[:0]
	}
	w.spareUp()
}

// waitPrune removes the objects left for Tidy, and waits for those prune is removing in the
// background.
func (w *Writer) waitPrune() {
	w.Tidy()
	if w.pruning != nil {
		<-w.pruning
		w.pruning = nil
	}
}

// check runs Options.Check on the staged root. With a bucketed top level, the check gets a
// directory where the top-level names resolve: a temporary object of symlinks into the staged
// version, made for the check only (it costs the width of the top level) and removed after.
func (w *Writer) check(staged string) error {
	if !w.bucketed {
		return w.opts.Check(filepath.Join(w.absDir, staged))
	}
	dir, err := w.newVersionDir()
	if err != nil {
		return err
	}
	defer w.removeObjects([]string{dir})
	d, err := w.root.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	for name := range w.desiredTops() {
		if err := unix.Symlinkat("../"+staged+"/"+bucketDir(name)+"/"+name, int(d.Fd()), name); err != nil {
			return fmt.Errorf("linking %s for the check: %w", name, err)
		}
	}
	return w.opts.Check(filepath.Join(w.absDir, dir))
}

// firstVersion is what a first version's publish needs, made while it is staged: the live
// tree, and the entries of the paths written (all of them live once it is published).
type firstVersion struct {
	live    map[string][32]byte
	entries []*entry
}

// parallelLive is the fewest paths of a first version for which publish's map is made on
// another core while the stage runs: below, a goroutine costs more than it saves.
const parallelLive = 1024

// publish records the staged version as live and returns the objects only the previous
// version reaches now. live, if not nil, is the live tree already made: a first version's
// paths written.
func (w *Writer) publish(st *staging, write, remove []string, live map[string][32]byte) (retired []string) {
	for d := range st.edited {
		if old, ok := w.dirObj[d]; ok && !strings.Contains(old, "/") {
			retired = append(retired, old)
			if names, ok := st.listed[d]; ok && w.known+len(names) <= maxKnown {
				w.contents[old] = names
				w.known += len(names)
			}
		}
		if obj, ok := st.objs[d]; ok {
			w.dirObj[d] = obj
		} else {
			delete(w.dirObj, d)
		}
	}
	if live != nil {
		w.live = live
	} else {
		if len(w.live) == 0 {
			w.live = make(map[string][32]byte, len(write)) // a first version: made at its size once
		}
		for _, p := range write {
			w.live[p] = w.keys[p].sum
		}
	}
	for _, p := range remove {
		delete(w.live, p)
	}
	if len(w.fix) > 0 {
		for _, ps := range [][]string{write, remove} {
			for _, p := range ps {
				delete(w.fix, p)
			}
		}
	}
	w.version = st.objs[""]
	w.rebuild = false
	return retired
}

// staging is a new version being built: an object for each directory on a changed path.
type staging struct {
	edited         map[string]bool     // the directories on changed paths, "" included
	listed         map[string][]string // directory -> every name in its live object
	objs           map[string]string   // directory -> its new object; missing: the directory is gone
	oldTop, newTop map[string]bool     // top-level names before and after
}

// stage is step 4: it makes a new object for each directory that holds a changed path or
// lies above one, deepest first: unchanged files are hard-linked from the directory's live
// object, changed ones written with Mode and owner, and each subdirectory is a symlink to its
// new object or, when nothing changed below it, to its live one. A directory left empty is
// dropped. On error nothing of it is left.
func (w *Writer) stage(write, remove []string) (st *staging, err error) {
	st = &staging{edited: map[string]bool{"": true}, objs: map[string]string{}, listed: map[string][]string{},
		oldTop: map[string]bool{}, newTop: map[string]bool{}}
	if w.version == "" && !w.stream.linkedAll() {
		st.newTop = make(map[string]bool, len(write)) // every name is new: made at its size once
	}
	defer func() {
		if err != nil {
			w.removeObjects(slices.Collect(maps.Values(st.objs)))
		}
	}()
	files := map[string]map[string]bool{} // dir -> name -> written (false: removed)
	children := map[string][]string{}     // dir -> edited subdirectories
	// dir -> the names a streamed full batch wrote in place, in the object of dir that it
	// made and that the stage adopts (stagedObject): they are there, and fill has nothing to do.
	placed := map[string][]string{}
	edit := func(d string) {
		for !st.edited[d] {
			st.edited[d] = true
			children[parentDir(d)] = append(children[parentDir(d)], d)
			d = parentDir(d)
		}
	}
	mark := func(p string, written bool) {
		d, name := formPlace(w.bucketed, p)
		if written && w.stream.placedIn(d, p) {
			placed[d] = append(placed[d], name)
		} else {
			if files[d] == nil {
				files[d] = map[string]bool{}
			}
			files[d][name] = written
		}
		edit(d)
	}
	if w.rebuild {
		for d := range w.dirObj {
			edit(d)
		}
	}
	for _, p := range remove {
		mark(p, false)
	}
	if objs := w.stream.placedAll(len(write)); objs != nil {
		// Every path written is in place already (a streamed first sync): its directories
		// are those of the stream's objects, and no path needs a look.
		for d, o := range objs {
			placed[d] = o.names
			edit(d)
		}
		write = nil
	}
	for _, p := range write {
		mark(p, true)
	}
	dirs := slices.Collect(maps.Keys(st.edited))
	slices.SortFunc(dirs, func(a, b string) int { return depth(b) - depth(a) })
	// The objects of one depth are independent of each other (a symlink names an object of
	// the depth below, already made), so each depth is filled at once, on every core (in
	// parts, if it has more objects than may be open at once).
	var level []*object
	defer func() {
		for _, o := range level {
			o.close()
		}
	}()
	for i, d := range dirs {
		from, err := w.openLive(d)
		if err != nil {
			return st, err
		}
		entries, listed, err := w.bucketEntries(d)
		switch {
		case entries == nil && from < 0:
			entries = make(map[string]bool, len(files[d])+len(children[d])) // nothing live: made at its size
		case entries == nil:
			entries, listed, err = w.entries(d, from) // name -> is a directory
		}
		if err != nil {
			closeFd(from)
			return st, err
		}
		if listed != nil {
			st.listed[d] = listed
		}
		top := w.isTopDir(d)
		if top {
			for name := range entries {
				st.oldTop[name] = true
			}
		}
		for name, written := range files[d] {
			if !written {
				delete(entries, name)
			}
		}
		if len(entries) > 0 {
			for _, name := range placed[d] {
				delete(entries, name) // the adopted object holds it: no live file is linked over it
			}
		}
		for _, c := range children[d] {
			if _, ok := st.objs[c]; ok {
				entries[path.Base(c)] = true
			} else {
				delete(entries, path.Base(c))
			}
		}
		for name, written := range files[d] {
			if written {
				entries[name] = false
			}
		}
		if top {
			for name := range entries {
				st.newTop[name] = true
			}
			// With nothing live (so no old name to tell apart), the names the stream
			// linked already need no link step.
			if w.version != "" || !w.stream.linkedAll() {
				for _, name := range placed[d] {
					st.newTop[name] = true
				}
			}
		}
		if d != "" && len(entries) == 0 && len(placed[d]) > 0 {
			// The stream's object holds all of it, and fill has nothing to put in it.
			closeFd(from)
			st.objs[d] = w.stream.adopt(d)
		} else if d == "" || len(entries) > 0 || len(placed[d]) > 0 {
			o, err := w.newObject(st, d, from, entries, files[d])
			if err != nil {
				return st, err
			}
			level = append(level, o)
		} else {
			closeFd(from)
		}
		// At the end of a depth, or once the objects open (each with its live object) reach
		// maxOpen: thousands of directories of one depth are filled a part at a time.
		if i+1 == len(dirs) || depth(dirs[i+1]) != depth(d) || 2*len(level) >= w.maxOpen {
			err := w.fill(st, level)
			for _, o := range level {
				o.close()
			}
			level = level[:0]
			if err != nil {
				return st, err
			}
		}
	}
	return st, nil
}

// openLive opens the live object of directory d, or returns -1 if d has none.
func (w *Writer) openLive(d string) (int, error) {
	w.takeSpare(d)
	obj, ok := w.dirObj[d]
	if !ok {
		return -1, nil
	}
	fd, err := w.openObject(obj)
	if err != nil {
		return -1, fmt.Errorf("opening %s: %w", obj, err)
	}
	return fd, nil
}

// openObject opens directory object obj, one component at a time: a live tree loaded from a
// version made before directories were shared has objects inside objects ("OBJ/sub").
func (w *Writer) openObject(obj string) (int, error) {
	fd := w.topFd
	for {
		name, rest, more := strings.Cut(obj, "/")
		next, err := openDirAt(fd, name)
		if fd != w.topFd {
			unix.Close(fd)
		}
		if err != nil || !more {
			return next, err
		}
		fd, obj = next, rest
	}
}

// closeFd closes descriptor fd unless it is -1.
func closeFd(fd int) {
	if fd >= 0 {
		unix.Close(fd)
	}
}

// bucketEntries is entries for a bucket above the last level (or the root) of a bucketed
// top level, from what the writer knows, with no listing: such an object holds only the
// buckets below it ("..0" to "..7"), and Open checked that (anything else makes it rebuild,
// and a mixed root holds top-level names too). It returns nil entries for any other
// directory.
func (w *Writer) bucketEntries(d string) (entries map[string]bool, names []string, err error) {
	if !w.bucketed || w.mixed || w.rebuild || depth(d) >= bucketLevels || keyOf(d) != "" {
		return nil, nil, nil
	}
	if _, ok := w.dirObj[d]; !ok {
		return nil, nil, nil // nothing live: entries says so
	}
	entries = map[string]bool{}
	for _, b := range bucketNames {
		c := b
		if d != "" {
			c = d + "/" + b
		}
		if _, ok := w.dirObj[c]; ok {
			entries[b] = true
			names = append(names, b)
		}
	}
	return entries, names, nil
}

// bucketNames are the names of the buckets of one level.
var bucketNames = [...]string{"..0", "..1", "..2", "..3", "..4", "..5", "..6", "..7"}

// entries lists the live object of directory d, open as from (-1: d has none): name ->
// whether it is a subdirectory. It also returns every name the object holds.
func (w *Writer) entries(d string, from int) (entries map[string]bool, names []string, err error) {
	entries = map[string]bool{}
	if from < 0 {
		return entries, nil, nil
	}
	if known, ok := w.knownNames(w.dirObj[d]); ok {
		names = known // we made it: no listing
	} else if names, err = readNamesAt(from, nil); err != nil {
		return nil, nil, fmt.Errorf("listing %s: %w", w.dirObj[d], err)
	}
	for _, name := range names {
		if d == "" && w.bucketed != isBucketName(name) {
			continue // the other half of a mixed root
		}
		tp := name
		if d != "" {
			tp = d + "/" + name
		}
		_, isDir := w.dirObj[tp]
		if _, isFile := w.live[keyOf(tp)]; isFile || isDir {
			entries[name] = isDir
		}
	}
	return entries, names, nil
}

// object is a new directory object being filled.
type object struct {
	dir, name string
	to, from  int             // the new object, and the live one of the same directory (or -1), open
	entries   map[string]bool // name -> is a subdirectory
	written   map[string]bool // names whose content changed
	kept      map[string]bool // names a recycled object holds already, as wanted
}

func (o *object) close() {
	closeFd(o.to)
	closeFd(o.from)
}

// newObject creates the empty object of directory d and opens it; from is d's live object,
// open (or -1), which the object closes, as it does on error here.
func (w *Writer) newObject(st *staging, d string, from int, entries, written map[string]bool) (*object, error) {
	var (
		name string
		to   = -1
		kept map[string]bool
		err  error
	)
	if spare, ok := w.recycle.taken[d]; ok && w.recycling() {
		delete(w.recycle.taken, d)
		if name, to, kept, err = w.reuse(st, d, spare, entries, written); err != nil {
			w.log.Warn("cannot reuse an old version directory; making a new one", "version", spare, "error", err)
		}
	}
	if to < 0 {
		name, to, err = w.stagedObject(w.topFd, d) // a streamed full batch may have made it, with its new files
		if err != nil {
			closeFd(from)
			return nil, err
		}
	}
	st.objs[d] = name
	if w.recycling() {
		w.remember(st, d, name, entries, written)
	}
	return &object{dir: d, name: name, to: to, from: from, entries: entries, written: written, kept: kept}, nil
}

// fill puts their entries into the objects of one depth: a symlink per subdirectory, a hard
// link per unchanged file, a new file per changed one. Many entries are shared out between
// one goroutine per core; os.Root and the descriptors are safe for that.
func (w *Writer) fill(st *staging, objs []*object) error {
	type job struct {
		o    *object
		name string
	}
	n := 0
	for _, o := range objs {
		n += len(o.entries)
	}
	jobs := make([]job, 0, n)
	for _, o := range objs {
		first := len(jobs)
		for name := range o.entries {
			jobs = append(jobs, job{o, name})
		}
		// In name order, so that a run is repeatable (the crash tests stop at each entry).
		slices.SortFunc(jobs[first:], func(a, b job) int { return strings.Compare(a.name, b.name) })
	}
	if len(jobs) < 512 {
		// A change's few entries, here: a goroutine would cost a wake-up of another thread
		// and a hand-off back, at each depth, on the way to the signal (and the shared state
		// below, allocations).
		for _, j := range jobs {
			if err := w.makeEntry(st, j.o, j.name); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		next     atomic.Int64
		firstErr error
		mu       sync.Mutex
		wg       sync.WaitGroup
	)
	work := func() {
		for {
			i := int(next.Add(1)) - 1
			if i >= len(jobs) {
				return
			}
			if err := w.makeEntry(st, jobs[i].o, jobs[i].name); err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				next.Store(int64(len(jobs))) // the others stop too
				return
			}
		}
	}
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			work()
		}()
	}
	wg.Wait()
	return firstErr
}

// makeEntry creates one entry of object o.
func (w *Writer) makeEntry(st *staging, o *object, name string) error {
	if o.kept[name] {
		w.marked("staging") // a recycled object holds it already
		return nil
	}
	p := name
	if o.dir != "" {
		p = o.dir + "/" + name
	}
	to := o.to
	switch {
	case o.entries[name]:
		child, ok := st.objs[p]
		if !ok && o.from >= 0 && !w.rebuild && unix.Linkat(o.from, name, to, name, 0) == nil {
			// The live object's symlink to the same, unchanged object: a hard link to it
			// shares its inode, as unchanged files are shared, and costs less than a new
			// symlink (and less to remove). Open checked every live symlink (loadDir), and
			// linkat never follows one.
			break
		}
		if !ok {
			child = w.dirObj[p]
		}
		if err := unix.Symlinkat("../"+child, to, name); err != nil {
			return fmt.Errorf("linking %s in %s: %w", name, o.name, err)
		}
	case o.written[name] && w.linkSpooled(keyOf(p), to, name):
		// Written already while a streamed full batch arrived.
	case o.written[name] || o.from < 0 || unix.Linkat(o.from, name, to, name, 0) != nil:
		// New or changed content (or a hard link that failed: too many links...).
		data, err := w.content(keyOf(p))
		if err != nil {
			return fmt.Errorf("staging %s: %w", p, err)
		}
		if err := w.createFileAt(o.to, o.name, name, data); err != nil {
			return err
		}
	}
	w.marked("staging")
	return nil
}

// newVersionDir creates an empty directory object named after the current time, unique.
func (w *Writer) newVersionDir() (string, error) {
	t := time.Now().UTC()
	for {
		name := t.Format(versionLayout)
		err := w.makeDir(name)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		t = t.Add(time.Nanosecond)
	}
}

// makeObject creates an empty directory object named after the current time, unique, in the
// target open as top, and opens it. It works on descriptors (mkdirat, openat, and fchmod
// where the umask or an ACL could change the mode): os.Root's checked walks cost several
// system calls each, which counted when a first sync makes hundreds of bucket objects. The
// name has no slash, and O_NOFOLLOW opens only what we made.
func (w *Writer) makeObject(top int) (string, int, error) {
	for t := time.Now().UTC(); ; t = t.Add(time.Nanosecond) {
		name := t.Format(versionLayout)
		err := unix.Mkdirat(top, name, uint32(w.dirMode))
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return "", -1, fmt.Errorf("creating directory %s: %w", name, err)
		}
		fd, err := openDirAt(top, name)
		if err != nil {
			unix.Unlinkat(top, name, unix.AT_REMOVEDIR)
			return "", -1, fmt.Errorf("opening directory %s: %w", name, err)
		}
		if !w.dirModeAtCreate {
			err = unix.Fchmod(fd, uint32(w.dirMode)) // despite the umask
			if err == nil {
				err = chownFd(fd, name, w.opts.UID, w.opts.GID)
			}
		}
		if err != nil {
			unix.Close(fd)
			unix.Unlinkat(top, name, unix.AT_REMOVEDIR)
			return "", -1, fmt.Errorf("setting mode or owner of %s: %w", name, err)
		}
		return name, fd, nil
	}
}

// maxOpenObjects is how many directory objects a writer keeps open at once: a quarter of the
// limit of open files (Go raises its soft limit to the hard one at start), at least 16 and
// at most 4096. A wide tree has thousands of directories, and a host or a container may allow
// only 1024 descriptors (ulimit -n): a stage or a stream that held one per directory failed
// there, for ever, with "too many open files".
func maxOpenObjects() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return 256
	}
	return int(min(max(rl.Cur/4, 16), 4096))
}

// removeObjects deletes directory objects (files and symlinks, never followed).
func (w *Writer) removeObjects(objs []string) {
	for _, obj := range objs {
		if err := removeObject(w.root, w.topFd, obj, w.forgetContents(obj)); err != nil {
			w.log.Error("cannot remove an old version directory", "version", obj, "error", err)
		}
	}
}

// parentDir is the directory holding p: "" for a top-level name.
func parentDir(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// depth is the number of segments of directory d ("" has none).
func depth(d string) int {
	if d == "" {
		return 0
	}
	return strings.Count(d, "/") + 1
}

// discard removes a staged version that will not go live.
func (w *Writer) discard(staged string) {
	if err := w.root.RemoveAll(staged); err != nil {
		w.log.Error("cannot remove a staged version", "version", staged, "error", err)
	}
}

// swap is step 7: the one atomic step. rename(2) replaces ..data in one go; a temporary
// symlink is needed because symlink(2) cannot replace an existing name.
func (w *Writer) swap(staged string) error {
	err := unix.Symlinkat(staged, w.topFd, dataLinkTmp)
	if err == unix.EEXIST {
		// A leftover of ours (a failed swap), or something else, which removeOurLink refuses.
		if err := w.removeOurLink(dataLinkTmp); err != nil {
			return err
		}
		err = unix.Symlinkat(staged, w.topFd, dataLinkTmp)
	}
	if err != nil {
		return fmt.Errorf("linking %s: %w", dataLinkTmp, err)
	}
	if err := unix.Renameat(w.topFd, dataLinkTmp, w.topFd, dataLink); err != nil {
		unix.Unlinkat(w.topFd, dataLinkTmp, 0)
		return fmt.Errorf("renaming %s over %s: %w", dataLinkTmp, dataLink, err)
	}
	return nil
}

// linkNew is step 7 (before the swap): it links the new top-level names (and those a foreign
// entry blocked before; every name after Open), so that each name of the new version is
// reachable the instant it goes live. Until the swap, a new link dangles: its name is no key
// of the live version yet. It returns the names it created.
func (w *Writer) linkNew(oldTop, newTop map[string]bool) (created []string) {
	if len(oldTop) == 0 {
		created = make([]string, 0, len(newTop)) // every name is new
	}
	for name := range newTop {
		if (w.relink || !oldTop[name] || w.unlinked[name]) && w.link(name) {
			created = append(created, name)
		}
	}
	// With a bucketed top level, newTop holds only the names of the buckets that changed.
	for _, name := range slices.Collect(maps.Keys(w.unlinked)) {
		if !newTop[name] && w.isDesiredTop(name) && w.link(name) {
			created = append(created, name)
		}
	}
	return created
}

// unlinkGone is step 9 after an ordinary swap: it unlinks the names that are gone. Until it
// runs, they dangle; no key of the live version is behind them.
func (w *Writer) unlinkGone(oldTop, newTop map[string]bool) {
	for name := range oldTop {
		if !newTop[name] {
			w.unlink(name)
		}
	}
}

// relinkAll checks every top-level name after Open (or a failed link step): it creates the
// missing links, and removes our links whose names are gone. It reports whether it changed any.
func (w *Writer) relinkAll(newTop map[string]bool) (changed bool) {
	w.relink = false
	for name := range newTop {
		changed = w.link(name) || changed
	}
	names, err := readDirNames(w.root, ".")
	if err != nil {
		w.log.Error("cannot list the target to remove stale links", "error", err)
		w.relink = true
		return changed
	}
	for _, name := range names {
		if !newTop[name] {
			changed = w.unlink(name) || changed
		}
	}
	return changed
}

// link makes name -> ..data/name (..data/..X/..Y/..Z/name when bucketed) unless it exists.
// symlink(2) never replaces an existing entry, so a file that is not ours is safe even if it
// appears meanwhile. Our link of the other form is re-pointed by a rename over it, so it never
// dangles.
func (w *Writer) link(name string) (created bool) {
	delete(w.unlinked, name)
	if w.stream.linkedEarly(name) {
		return true // made while the streamed full batch arrived, in the form staged
	}
	want := w.linkTarget(name)
	target, err := w.root.Readlink(name)
	if err == nil && target == want {
		return false
	}
	if err == nil && isOurTarget(name, target) {
		w.repoint(name, want) // not a new name: a failed swap must not remove it
		return false
	}
	err = w.root.Symlink(want, name)
	if err == nil {
		return true
	}
	if errors.Is(err, fs.ErrExist) {
		if w.unlinked == nil {
			w.unlinked = make(map[string]bool)
		}
		w.unlinked[name] = true
		w.log.Error("a file that is not ours takes a top-level name; remove it or rename the key (the data is in ..data)",
			"name", name, "data", w.linkTarget(name))
		return false
	}
	w.log.Error("cannot link a top-level name", "name", name, "error", err)
	w.relink = true
	return false
}

// repoint replaces our link name by one to target, in one rename.
func (w *Writer) repoint(name, target string) {
	err := w.removeOurLink(linkTmp)
	if err == nil {
		err = w.root.Symlink(target, linkTmp)
	}
	if err == nil {
		if err = w.root.Rename(linkTmp, name); err != nil {
			w.root.Remove(linkTmp)
		}
	}
	if err != nil {
		w.log.Error("cannot re-point a top-level link", "name", name, "error", err)
		w.relink = true
	}
}

// unlink removes name if it is our link; anything else is left alone.
func (w *Writer) unlink(name string) (removed bool) {
	delete(w.unlinked, name)
	if !w.isOurLink(name) {
		return false
	}
	if err := w.root.Remove(name); err != nil && !isNotExist(err) {
		w.log.Error("cannot remove a stale top-level link", "name", name, "error", err)
		w.relink = true
		return false
	}
	return true
}

// isOurLink reports whether name is a symlink to exactly ..data/name or
// ..data/..X/..Y/..Z/name, the only top-level entries we create, and so the only ones we may
// remove.
func (w *Writer) isOurLink(name string) bool {
	target, err := w.root.Readlink(name)
	return err == nil && isOurTarget(name, target)
}

func isOurTarget(name, target string) bool {
	return target == dataLink+"/"+name || target == dataLink+"/"+bucketDir(name)+"/"+name
}

// linkTarget is what top-level link name points at in the live form.
func (w *Writer) linkTarget(name string) string { return formLinkTarget(w.bucketed, name) }

// formLinkTarget is what top-level link name points at in the given form.
func formLinkTarget(bucketed bool, name string) string {
	if bucketed {
		return dataLink + "/" + bucketDir(name) + "/" + name
	}
	return dataLink + "/" + name
}

// removeOurLink removes symlink name, one of our reserved names, if it exists.
func (w *Writer) removeOurLink(name string) error {
	_, err := w.root.Readlink(name)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("writer: %s is not a symlink; remove it: %w", filepath.Join(w.absDir, name), err)
	}
	if err := w.root.Remove(name); err != nil && !isNotExist(err) {
		return fmt.Errorf("writer: removing %s: %w", name, err)
	}
	return nil
}

// readDirNames lists directory name without following symlinks in it.
func readDirNames(r *os.Root, name string) ([]string, error) {
	f, err := r.Open(name)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", name, err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", name, err)
	}
	return names, nil
}
