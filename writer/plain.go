package writer

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

const (
	// manifestName lists the files and directories we own in the Plain layout, so that after a
	// restart we still delete only what we created.
	manifestName   = "..etcd-config-dispenser.manifest"
	manifestHeader = "etcd-config-dispenser manifest 1\n"
	// tmpPrefix starts the name of every temporary entry; keys cannot produce it, so whatever
	// carries it is a leftover of ours.
	tmpPrefix = "..tmp"
	// manifestMode: the manifest names the keys, which only the owner needs to read.
	manifestMode = 0o600
)

// errObstructed marks a file that cannot be written because something that is not ours is in
// the way (a directory at its path, a symlink or file where a parent directory should be).
var errObstructed = errors.New("something that is not ours is in the way")

// openPlain loads the manifest, keeps what still exists of it, hashes those files, and removes
// temporary files a crash left behind.
func (w *Writer) openPlain() error {
	files, dirs, err := w.readManifest()
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if checkKey(d) == nil && w.realDirs(d) == nil {
			if fi, err := w.root.Lstat(d); err == nil && fi.IsDir() {
				w.dirs[d] = true
				continue
			}
		}
		w.manifestStale = true
	}
	for _, p := range files {
		if err := w.loadPlainFile(p); err != nil {
			w.log.Debug("a file of the manifest is gone", "path", p, "error", err)
			w.manifestStale = true
		}
	}
	if err := w.cleanTemps(); err != nil {
		return err
	}
	w.remodePlain()
	// A crash between removing files and pruning their directories leaves them empty.
	w.pruneDirs(slices.Collect(maps.Keys(w.dirs)), map[string]bool{})
	return nil
}

// remodePlain gives the manifest and the directories we created the modes the current
// Options ask for, so that after a restart with a tighter --mode nothing of ours stays more
// readable (the files with a wrong mode are rewritten at the next Apply).
func (w *Writer) remodePlain() {
	if fi, err := w.root.Lstat(manifestName); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() != manifestMode {
		if err := w.root.Chmod(manifestName, manifestMode); err != nil {
			w.log.Error("cannot set the mode of the manifest", "error", err)
		}
	}
	for d := range w.dirs {
		fi, err := w.root.Lstat(d)
		if err != nil || !fi.IsDir() || !w.wrongOwnerOrMode(fi, w.dirMode) {
			continue
		}
		if err := w.root.Chmod(d, w.dirMode); err != nil {
			w.log.Error("cannot set the mode of a directory", "path", d, "error", err)
		}
		if err := chown(w.root.Lstat, w.root.Lchown, d, w.opts.UID, w.opts.GID); err != nil {
			w.log.Error("cannot set the owner of a directory", "path", d, "error", err)
		}
	}
}

// loadPlainFile hashes file p of the manifest if it is still a regular file of ours.
func (w *Writer) loadPlainFile(p string) error {
	if err := checkKey(p); err != nil {
		return err
	}
	if err := w.realDirs(p); err != nil {
		return err
	}
	fi, err := w.root.Lstat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is no longer a regular file", p)
	}
	sum, err := w.hashFile(p)
	if err != nil {
		return err
	}
	w.live[p] = sum
	if w.wrongOwnerOrMode(fi, w.opts.Mode) {
		w.fix[p] = true
	}
	return nil
}

// cleanTemps removes ..tmp* entries from the directories we write into.
func (w *Writer) cleanTemps() error {
	scan := map[string]bool{".": true}
	for d := range w.dirs {
		scan[d] = true
	}
	for p := range w.live {
		scan[path.Dir(p)] = true
	}
	for d := range scan {
		names, err := readDirNames(w.root, d)
		if err != nil {
			return fmt.Errorf("writer: %w", err)
		}
		for _, name := range names {
			if !strings.HasPrefix(name, tmpPrefix) {
				continue
			}
			if err := w.root.RemoveAll(path.Join(d, name)); err != nil {
				return fmt.Errorf("writer: removing leftover %s: %w", path.Join(d, name), err)
			}
			w.log.Info("removed a leftover temporary file", "path", path.Join(d, name))
		}
	}
	return nil
}

// applyPlain is steps 3 to 9 of Apply for the Plain layout.
func (w *Writer) applyPlain(write, remove []string, res *Result) (err error) {
	if len(write) == 0 && len(remove) == 0 && !w.manifestStale && len(w.journal) == 0 {
		return nil
	}
	if w.opts.Check != nil && (len(write) > 0 || len(remove) > 0) {
		if err := w.checkPlain(w.desiredTree()); err != nil {
			return err
		}
	}
	if err := w.recordIntent(write); err != nil {
		return err
	}
	w.marked("intent")
	touched := map[string]bool{}
	defer func() {
		res.Changed = res.Written > 0 || res.Removed > 0
		err = errors.Join(err, w.syncDirs(touched))
		err = errors.Join(err, w.flushManifest())
		w.marked("manifest")
	}()
	for _, p := range remove {
		if err := w.removePlain(p, touched); err != nil {
			return err
		}
		res.Removed++
		w.marked("removed")
	}
	w.pruneDirs(emptiedDirs(remove, write), touched)
	for _, p := range write {
		err := w.writePlain(p, w.keys[p].sum, touched)
		if errors.Is(err, errObstructed) {
			w.obstructed = append(w.obstructed, p) // tried again at every Apply
			w.log.Error("key skipped", "reason", err.Error())
			res.Skipped++
			continue
		}
		if err != nil {
			return noSpace(err, w.absDir)
		}
		res.Written++
		w.marked("written")
	}
	return nil
}

// checkPlain is step 4: Check needs the complete new tree in one directory, which the Plain
// layout does not have, so it gets a temporary copy (hard links where unchanged).
func (w *Writer) checkPlain(want map[string][32]byte) error {
	staged := randomName(tmpPrefix + "check")
	if err := w.makeDir(staged); err != nil {
		return err
	}
	defer w.discard(staged)
	if err := w.fillStaged(staged, want, ""); err != nil {
		return err
	}
	if err := w.opts.Check(filepath.Join(w.absDir, staged)); err != nil {
		return fmt.Errorf("check of the staged tree: %w", err)
	}
	return nil
}

// recordIntent is step 5: before creating files and directories, it adds them to the
// manifest, so that after a crash they are known as ours. Only entries that do not exist yet
// are added: a foreign file the key overwrites becomes ours only once it is overwritten.
func (w *Writer) recordIntent(write []string) error {
	var newFiles []string
	newDirs := map[string]bool{}
	for _, p := range write {
		if _, ok := w.live[p]; ok {
			continue
		}
		forParents(p, func(d string) {
			if _, err := w.root.Lstat(d); isNotExist(err) {
				newDirs[d] = true
			}
		})
		if _, err := w.root.Lstat(p); isNotExist(err) {
			newFiles = append(newFiles, p)
		}
	}
	if len(newFiles) == 0 && len(newDirs) == 0 {
		return nil
	}
	var rec []byte
	for _, d := range slices.Sorted(maps.Keys(newDirs)) {
		rec = record(rec, 'd', d)
	}
	for _, p := range newFiles {
		rec = record(rec, 'f', p)
	}
	// It lists more than we own until the removals are recorded at the end of the Apply.
	return w.appendManifest(rec, len(newDirs)+len(newFiles))
}

// removePlain is step 6 for one file: our regular file at p goes; anything else that took its
// place is not ours and stays.
func (w *Writer) removePlain(p string, touched map[string]bool) error {
	delete(w.live, p)
	w.note('F', p)
	delete(w.fix, p)
	if w.realDirs(p) != nil {
		return nil
	}
	fi, err := w.root.Lstat(p)
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	if err := w.root.Remove(p); err != nil && !isNotExist(err) {
		return fmt.Errorf("removing %s: %w", p, err)
	}
	touched[path.Dir(p)] = true
	return nil
}

// pruneDirs is step 8: the given directories, if we created them, go when empty, deepest
// first. A directory that is not empty holds something, maybe not ours, and stays.
func (w *Writer) pruneDirs(dirs []string, touched map[string]bool) {
	slices.SortFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, d := range dirs {
		if !w.dirs[d] {
			continue
		}
		if fi, err := w.root.Lstat(d); err != nil || !fi.IsDir() {
			delete(w.dirs, d)
			w.note('D', d)
			continue
		}
		if err := w.root.Remove(d); err != nil {
			continue // not empty
		}
		delete(w.dirs, d)
		w.note('D', d)
		delete(touched, d)
		touched[path.Dir(d)] = true
	}
}

// emptiedDirs returns the parent directories of the removed files that no file about to be
// written needs: the candidates for pruneDirs.
func emptiedDirs(removed, write []string) []string {
	keep := map[string]bool{}
	for _, p := range write {
		forParents(p, func(d string) { keep[d] = true })
	}
	cand := map[string]bool{}
	for _, p := range removed {
		forParents(p, func(d string) {
			if !keep[d] {
				cand[d] = true
			}
		})
	}
	return slices.Collect(maps.Keys(cand))
}

// writePlain is step 7 for one file: a temporary file in the same directory, synced, then
// renamed over p, so a reader opening p gets the whole old or the whole new content.
func (w *Writer) writePlain(p string, sum [32]byte, touched map[string]bool) error {
	if err := w.ensureDirs(p, touched); err != nil {
		return err
	}
	if fi, err := w.root.Lstat(p); err == nil && fi.IsDir() {
		// An empty directory of ours (its files went in an earlier, interrupted Apply) makes
		// way; anything else stays.
		w.pruneDirs([]string{p}, touched)
		if _, err := w.root.Lstat(p); err == nil {
			return fmt.Errorf("writing %s: a directory is there: %w", p, errObstructed)
		}
	}
	if !w.placeSpooled(p) {
		data, err := w.content(p)
		if err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		tmp := path.Join(path.Dir(p), randomName(tmpPrefix))
		if err := w.createFile(tmp, data, !w.opts.NoSync); err != nil {
			return err
		}
		if err := w.root.Rename(tmp, p); err != nil {
			w.root.Remove(tmp)
			return fmt.Errorf("renaming %s to %s: %w", tmp, p, err)
		}
	}
	if _, ok := w.live[p]; !ok {
		w.note('f', p)
	}
	w.live[p] = sum
	delete(w.fix, p)
	touched[path.Dir(p)] = true
	return nil
}

// ensureDirs creates the missing parent directories of p. An existing parent must be a real
// directory: a symlink there could lead the write elsewhere, so it is never followed.
func (w *Writer) ensureDirs(p string, touched map[string]bool) (err error) {
	forParents(p, func(d string) {
		if err != nil {
			return
		}
		fi, lerr := w.root.Lstat(d)
		switch {
		case lerr == nil && fi.IsDir():
		case lerr == nil:
			err = fmt.Errorf("writing %s: %s is not a directory: %w", p, d, errObstructed)
		case isNotExist(lerr):
			if err = w.makeDir(d); err == nil {
				w.dirs[d] = true
				w.note('d', d)
				touched[path.Dir(d)] = true
			}
		default:
			err = fmt.Errorf("writing %s: %w", p, lerr)
		}
	})
	return err
}

// realDirs checks that every parent of p is a real directory, not a symlink.
func (w *Writer) realDirs(p string) (err error) {
	forParents(p, func(d string) {
		if err != nil {
			return
		}
		fi, lerr := w.root.Lstat(d)
		if lerr != nil {
			err = lerr
		} else if !fi.IsDir() {
			err = fmt.Errorf("%s is not a directory", d)
		}
	})
	return err
}

// syncDirs makes the renames, creations and removals in the touched directories durable.
func (w *Writer) syncDirs(touched map[string]bool) error {
	var errs []error
	for d := range touched {
		if err := w.syncDir(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// The manifest is a journal: a header, then records "f<path>\0" (a file of ours), "d<path>\0"
// (a directory we created), and "F<path>\0", "D<path>\0" (no longer ours), replayed in order.
// A change appends its few records, so it costs what changed; once the records outnumber
// twice what we own, the manifest is rewritten whole (compacted).

// note records a change of what we own, appended at the end of the Apply.
func (w *Writer) note(kind byte, p string) {
	w.journal = record(w.journal, kind, p)
	w.records++
}

func record(b []byte, kind byte, p string) []byte {
	b = append(b, kind)
	b = append(b, p...)
	return append(b, 0)
}

// flushManifest is step 9: it appends the noted records, or compacts the manifest.
func (w *Writer) flushManifest() error {
	if w.manifestStale || w.records > 2*(len(w.live)+len(w.dirs))+64 {
		return w.saveManifest(slices.Collect(maps.Keys(w.live)), w.dirs)
	}
	if len(w.journal) == 0 {
		return nil
	}
	if err := w.appendManifest(w.journal, 0); err != nil {
		return err
	}
	w.journal = w.journal[:0]
	return nil
}

// appendManifest appends records to the manifest and syncs it; n more records are counted.
// A crash can leave the last record without its NUL: readManifest ignores it.
func (w *Writer) appendManifest(rec []byte, n int) (err error) {
	if _, err := w.root.Lstat(manifestName); isNotExist(err) {
		w.records += n
		return w.saveManifest(slices.Collect(maps.Keys(w.live)), w.dirs, rec)
	}
	f, err := w.root.OpenFile(manifestName, os.O_WRONLY|os.O_APPEND|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("writing the manifest: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("writing the manifest: %w", cerr)
		}
	}()
	if _, err := f.Write(rec); err != nil {
		return fmt.Errorf("writing the manifest: %w", err)
	}
	w.records += n
	if !w.opts.NoSync {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("syncing the manifest: %w", err)
		}
	}
	return nil
}

// saveManifest writes the manifest whole, with extra records after it, atomically: temporary
// file, fsync, rename, directory fsync.
func (w *Writer) saveManifest(files []string, dirs map[string]bool, extra ...[]byte) error {
	var b bytes.Buffer
	b.WriteString(manifestHeader)
	for _, d := range slices.Sorted(maps.Keys(dirs)) {
		b.WriteString("d" + d + "\x00")
	}
	slices.Sort(files)
	for _, p := range files {
		b.WriteString("f" + p + "\x00")
	}
	for _, rec := range extra {
		b.Write(rec)
	}
	tmp := randomName(tmpPrefix)
	if err := w.createFileMode(tmp, b.Bytes(), !w.opts.NoSync, manifestMode); err != nil {
		return fmt.Errorf("writing the manifest: %w", err)
	}
	if err := w.root.Rename(tmp, manifestName); err != nil {
		w.root.Remove(tmp)
		return fmt.Errorf("writing the manifest: %w", err)
	}
	w.manifestStale = false
	w.journal = w.journal[:0]
	w.records = len(files) + len(dirs)
	return w.syncDir(".")
}

// readManifest returns the files and directories the manifest lists; none if it is missing.
// Paths are NUL-terminated, since keys may hold any other byte.
func (w *Writer) readManifest() (files, dirs []string, err error) {
	fileSet, dirSet := map[string]bool{}, map[string]bool{}
	defer func() {
		files, dirs = slices.Sorted(maps.Keys(fileSet)), slices.Sorted(maps.Keys(dirSet))
	}()
	data, err := w.readFile(manifestName)
	if isNotExist(err) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("writer: reading the manifest: %w", err)
	}
	rest, ok := bytes.CutPrefix(data, []byte(manifestHeader))
	if !ok {
		return nil, nil, fmt.Errorf("writer: %s is not a manifest of ours; remove it", filepath.Join(w.absDir, manifestName))
	}
	for len(rest) > 0 {
		rec, tail, found := bytes.Cut(rest, []byte{0})
		if !found {
			break // the tail of an append a crash interrupted
		}
		if len(rec) < 2 {
			return nil, nil, fmt.Errorf("writer: %s is truncated or corrupt; remove it", filepath.Join(w.absDir, manifestName))
		}
		switch p := string(rec[1:]); rec[0] {
		case 'd':
			dirSet[p] = true
		case 'D':
			delete(dirSet, p)
		case 'f':
			fileSet[p] = true
		case 'F':
			delete(fileSet, p)
		}
		w.records++
		rest = tail
	}
	return nil, nil, nil
}

// placeSpooled renames the spooled content of p (a streamed full batch wrote it already, with
// Mode and owner) over p, synced first unless NoSync, and reports whether it did; otherwise
// the caller writes the content itself.
func (w *Writer) placeSpooled(p string) bool {
	e := w.keys[p]
	if w.stream == nil || e == nil || e.spool == "" {
		return false
	}
	src := w.stream.name + "/" + e.spool
	if !w.opts.NoSync {
		f, err := w.root.Open(src)
		if err != nil {
			return false
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return false
		}
	}
	if err := w.root.Rename(src, p); err != nil {
		return false
	}
	e.spool = "" // the content is at p now, live
	return true
}
