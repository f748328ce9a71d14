package writer

import (
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Recycling directory objects. A one-key change makes a new object for each directory on the
// key's path and hard-links into it every unchanged entry of the directory's live object; two
// changes later that live object is no longer needed and each of its entries is unlinked. With a
// bucketed top level of 10000 names that is some 40 links and as many unlinks per change (100
// each with 50000 names), for one entry that changed. Instead, an object no version needs any
// more becomes its directory's spare:
//
//  1. Tidy scrubs it: it unlinks the few entries that differ from the live version (those the
//     last two changes of the directory touched). A spare then holds only what is live, hard
//     links to the live files' inodes and symlinks to live objects, so it keeps no old value
//     on disk (and no room: a full disk finds nothing to free in it).
//  2. The next stage of that directory takes the spare (openLive) and renames it to a fresh
//     object name, so that nothing that once named it reaches it (a reader holding an old
//     version's name finds it gone, as before), then unlinks what differs from the new
//     content and creates only the entries it lacks (newObject, makeEntry).
//
// What an object holds is known from memory (a manifest, recorded when the stage made it:
// objects are never modified once made, except by this, under a fresh name), so neither step
// lists a directory, and the stage does not list a live object that has a manifest either.
// Objects made otherwise (loaded at Open, by a streamed full batch, by a switch of form) have
// none: they are removed as before. A spare is a directory object that no version reaches,
// like a staging leftover: Open removes it.

// content is what one entry of a directory object is: a file's sum, or the object that a
// subdirectory's symlink names.
type content struct {
	sum [32]byte
	obj string
}

// manifest is what a directory object made by a stage holds, and the tree directory it was
// made for.
type manifest struct {
	dir   string
	names map[string]content
}

// maxManifest bounds the entries of the manifests the writer keeps; the oldest go first (a
// directory changed again and again keeps getting new ones). Only stages of up to
// maxManifestDirs directories record them: a full sync would fill the room with objects that
// may never change.
const (
	maxManifest     = 4096
	maxManifestDirs = 64
)

// recycler holds the manifests and the spares.
type recycler struct {
	made    map[string]*manifest // object -> what it holds
	entries int                  // in made
	spares  map[string]string    // tree directory -> its spare object
	queue   []string             // objects no version needs, to become spares at Tidy
	taken   map[string]string    // tree directory -> the spare the stage under way took
	order   []string             // objects in the order they got manifests, oldest first
}

func (r *recycler) reset() {
	*r = recycler{made: map[string]*manifest{}, spares: map[string]string{}, taken: map[string]string{}}
}

// recycling reports whether objects get manifests and spares are used: not while a streamed
// full batch is open (its objects hold values it wrote), nor while the live version is to be
// rebuilt or holds files of the wrong mode or owner (Open found them; every file is rewritten).
func (w *Writer) recycling() bool {
	return w.stream == nil && !w.rebuild && !w.mixed && len(w.fix) == 0
}

// takeSpare is called for each directory a stage edits: the stage gets the directory's spare,
// if it has one, and any spare it does not use is removed at Tidy (a directory that is gone
// or changed while recycling was off must not keep one).
func (w *Writer) takeSpare(d string) {
	if sp, ok := w.recycle.spares[d]; ok {
		delete(w.recycle.spares, d)
		w.recycle.taken[d] = sp
	}
}

// wanted is what entry name of directory d holds in the version being staged: the staged or
// live object of a subdirectory, or the sum of a file (written says which files are new).
func (w *Writer) wanted(st *staging, d, name string, isDir bool, written map[string]bool) content {
	if isDir {
		p := joinPath(d, name)
		if obj, ok := st.objs[p]; ok {
			return content{obj: obj}
		}
		return content{obj: w.dirObj[p]}
	}
	k := joinPath(keyOf(d), name) // no new string in a bucket, where most files are
	if written[name] {
		if e := w.keys[k]; e != nil {
			return content{sum: e.sum}
		}
	}
	return content{sum: w.live[k]}
}

// reuse renames spare to a fresh object name, opens it, and unlinks what differs from the
// entries to stage. It returns the entries it holds already. On error, the spare is removed.
func (w *Writer) reuse(st *staging, d, spare string, entries, written map[string]bool) (name string, fd int, kept map[string]bool, err error) {
	m := w.recycle.made[spare]
	name, err = w.renameObject(spare)
	if err != nil {
		w.removeObjects([]string{spare})
		return "", -1, nil, err
	}
	delete(w.recycle.made, spare)
	w.recycle.made[name] = m
	w.recycle.order = append(w.recycle.order, name)
	if fd, err = openDirAt(w.topFd, name); err != nil {
		w.removeObjects([]string{name})
		return "", -1, nil, fmt.Errorf("opening directory %s: %w", name, err)
	}
	kept = make(map[string]bool, len(entries))
	for n, c := range m.names {
		if isDir, ok := entries[n]; ok && c == w.wanted(st, d, n, isDir, written) {
			kept[n] = true
			continue
		}
		if err = unix.Unlinkat(fd, n, 0); err != nil && err != unix.ENOENT {
			unix.Close(fd)
			w.removeObjects([]string{name})
			return "", -1, nil, fmt.Errorf("recycling %s: %w", name, err)
		}
		delete(m.names, n)
		w.recycle.entries--
	}
	return name, fd, kept, nil
}

// renameObject gives object obj a fresh name, made as makeObject makes one.
func (w *Writer) renameObject(obj string) (string, error) {
	for t := time.Now().UTC(); ; t = t.Add(time.Nanosecond) {
		name := t.Format(versionLayout)
		err := unix.Renameat2(w.topFd, obj, w.topFd, name, unix.RENAME_NOREPLACE)
		if err == unix.EEXIST {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("renaming %s to %s: %w", obj, name, err)
		}
		return name, nil
	}
}

// remember records what object obj, staged for directory d, holds once filled: its manifest
// (the one it was recycled with, completed), if the bound allows.
func (w *Writer) remember(st *staging, d, obj string, entries, written map[string]bool) {
	r := &w.recycle
	m := r.made[obj]
	if m == nil {
		if len(st.edited) > maxManifestDirs || !r.makeRoom(len(entries)) {
			return
		}
		m = &manifest{names: make(map[string]content, len(entries))}
		r.made[obj] = m
		r.order = append(r.order, obj)
	}
	m.dir = d
	for n, isDir := range entries {
		if _, ok := m.names[n]; !ok {
			r.entries++
		}
		m.names[n] = w.wanted(st, d, n, isDir, written)
	}
}

// makeRoom drops the oldest manifests until n more entries fit, and reports whether they do.
// Those of spares, and of objects on their way to be, stay: without one, an object is removed.
func (r *recycler) makeRoom(n int) bool {
	if n > maxManifest {
		return false
	}
	i := 0
	for ; r.entries+n > maxManifest && i < len(r.order); i++ {
		obj := r.order[i]
		m, ok := r.made[obj]
		if !ok {
			continue
		}
		if r.spares[m.dir] == obj || r.taken[m.dir] == obj || slices.Contains(r.queue, obj) {
			r.order = append(r.order, obj)
			continue
		}
		r.entries -= len(m.names)
		delete(r.made, obj)
	}
	r.order = r.order[i:]
	if len(r.order) > 4*len(r.made)+64 { // names of objects forgotten since
		r.order = slices.DeleteFunc(r.order, func(obj string) bool { _, ok := r.made[obj]; return !ok })
	}
	return r.entries+n <= maxManifest
}

// forgetManifest drops what the writer knows of object obj, which is being removed.
func (w *Writer) forgetManifest(obj string) {
	if m, ok := w.recycle.made[obj]; ok {
		w.recycle.entries -= len(m.names)
		delete(w.recycle.made, obj)
	}
}

// knownNames returns the names object obj holds, if the writer made it and knows them.
func (w *Writer) knownNames(obj string) ([]string, bool) {
	m, ok := w.recycle.made[obj]
	if !ok {
		return nil, false
	}
	names := make([]string, 0, len(m.names))
	for n := range m.names {
		names = append(names, n)
	}
	return names, true
}

// spareUp is Tidy's part: it removes the spares the last stage took and did not use, and turns
// the objects queued by prune into spares, scrubbed of whatever is not live.
func (w *Writer) spareUp() {
	r := &w.recycle
	var drop []string
	for d, sp := range r.taken {
		drop = append(drop, sp)
		delete(r.taken, d)
	}
	for _, obj := range r.queue {
		m := r.made[obj]
		if m == nil {
			drop = append(drop, obj)
			continue
		}
		w.dropContents(obj) // the manifest says it all
		if _, live := w.dirObj[m.dir]; !live || !w.recycling() {
			drop = append(drop, obj)
			continue
		}
		if err := w.scrub(obj, m); err != nil {
			if err != unix.ENOENT { // gone with the target, if it was removed
				w.log.Error("cannot keep an old version directory for reuse; removing it", "version", obj, "error", err)
			}
			drop = append(drop, obj)
			continue
		}
		if len(m.names) == 0 {
			drop = append(drop, obj)
			continue
		}
		if old, ok := r.spares[m.dir]; ok {
			drop = append(drop, old)
		}
		r.spares[m.dir] = obj
	}
	r.queue = r.queue[:0]
	if len(drop) > 0 {
		w.removeObjects(drop)
	}
}

// scrub unlinks from object obj every entry that differs from the live version.
func (w *Writer) scrub(obj string, m *manifest) error {
	var fd = -1
	defer func() { closeFd(fd) }()
	keyDir := keyOf(m.dir)
	for n, c := range m.names {
		if c.obj != "" {
			if w.dirObj[joinPath(m.dir, n)] == c.obj {
				continue
			}
		} else if sum, ok := w.live[joinPath(keyDir, n)]; ok && sum == c.sum {
			continue // a live file (w.live holds no directory)
		}
		if fd < 0 {
			var err error
			if fd, err = openDirAt(w.topFd, obj); err != nil {
				return err
			}
		}
		if err := unix.Unlinkat(fd, n, 0); err != nil && err != unix.ENOENT {
			return err
		}
		delete(m.names, n)
		w.recycle.entries--
	}
	return nil
}

// joinPath is dir/name, or name in the root ("").
func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// dropSpares removes every spare, and the objects on their way to become one. A spare holds
// only links to live files, so it frees no data, but on tmpfs each link counts against the
// file system's inodes, and elsewhere a directory takes a block: on a full disk, that room
// goes to the version being staged. It returns how many objects it removed.
func (w *Writer) dropSpares() int {
	r := &w.recycle
	var drop []string
	for d, sp := range r.spares {
		drop = append(drop, sp)
		delete(r.spares, d)
	}
	for d, sp := range r.taken { // taken by a stage that failed before it used them
		drop = append(drop, sp)
		delete(r.taken, d)
	}
	drop = append(drop, r.queue...)
	r.queue = r.queue[:0]
	w.removeObjects(drop)
	return len(drop)
}

// freeRoom removes, on a full disk, what no version needs: the previous version, kept only
// for readers still inside it (a version that cannot go live helps nobody), and the spares.
// It reports whether it removed anything, so that the caller tries again.
func (w *Writer) freeRoom(why string) bool {
	retired := len(w.retired)
	if retired > 0 {
		w.removeObjects(w.retired)
		w.retired = nil
	}
	spares := w.dropSpares()
	if retired+spares == 0 {
		return false
	}
	w.log.Warn("no space left on the target's file system; "+why,
		"directories", retired, "spares", spares)
	return true
}
