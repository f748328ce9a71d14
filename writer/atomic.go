package writer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/sys/unix"
)

const (
	dataLink    = "..data"     // the symlink whose rename publishes a version
	dataLinkTmp = "..data_tmp" // the new ..data before it is renamed into place
	lockName    = "..etcd-config-dispenser.lock"
	// versionLayout names version directories after the time they were made, in UTC.
	versionLayout = "..2006_01_02_15_04_05.000000000"
)

// versionName matches the version directories we create, and nothing else.
var versionName = regexp.MustCompile(`^\.\.\d{4}_\d{2}_\d{2}_\d{2}_\d{2}_\d{2}\.\d{9}$`)

// openAtomic cleans what a crash can leave (..data_tmp, version directories ..data does not
// point at) and loads the live version. Top-level links are checked at the next Apply, since
// a crash between the swap and the link step leaves some missing or dangling.
func (w *Writer) openAtomic() error {
	if err := w.removeOurLink(dataLinkTmp); err != nil {
		return err
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
	if err := w.pruneVersions(w.version); err != nil {
		return err
	}
	w.relink = true
	if w.version == "" {
		return nil
	}
	return w.loadVersion()
}

// loadVersion hashes every file of the live version. A file with the wrong mode or owner is
// marked to be rewritten; anything we would not have put there (symlinks, odd names, empty or
// wrongly permissioned directories) makes the next Apply build a fresh version.
func (w *Writer) loadVersion() error {
	err := fs.WalkDir(w.root.FS(), w.version, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if name == w.version {
			if w.wrongOwnerOrMode(fi, w.dirMode) {
				w.rebuild = true
			}
			return nil
		}
		rel := name[len(w.version)+1:]
		if checkKey(rel) != nil {
			w.rebuild = true
			return nil
		}
		switch {
		case d.IsDir():
			if w.wrongOwnerOrMode(fi, w.dirMode) {
				w.rebuild = true
			}
		case d.Type().IsRegular():
			sum, err := w.hashFile(name)
			if err != nil {
				return err
			}
			w.live[rel] = sum
			if w.wrongOwnerOrMode(fi, w.opts.Mode) {
				w.fix[rel] = true
			}
		default:
			w.rebuild = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("writer: loading version %s: %w", w.version, err)
	}
	return nil
}

// applyAtomic is steps 3 to 10 of Apply for the Atomic layout.
func (w *Writer) applyAtomic(want map[string][32]byte, res *Result) error {
	write, remove := w.diff(want)
	res.Written, res.Removed = len(write), len(remove)
	if len(write) == 0 && len(remove) == 0 && !w.rebuild && w.version != "" {
		if w.relink {
			res.Changed = w.relinkAll(want)
		}
		return nil
	}
	oldTop := topNames(w.live)

	staged, err := w.stage(want)
	if isNoSpace(err) && w.previous != "" {
		// The previous version is kept only for readers still inside it; a version that
		// cannot go live helps nobody. Make room and try again at once.
		w.log.Warn("no space left on the target's file system; removing the previous version and trying again",
			"version", w.previous)
		w.pruneOlder(w.previous)
		staged, err = w.stage(want)
	}
	if err != nil {
		return noSpace(err, w.absDir)
	}
	w.marked("staged")
	if w.opts.Check != nil {
		if err := w.opts.Check(filepath.Join(w.absDir, staged)); err != nil {
			w.discard(staged)
			return fmt.Errorf("check of the staged version %s: %w", staged, err)
		}
	}
	if err := w.syncAll(); err != nil {
		w.discard(staged)
		return err
	}
	w.marked("synced")
	newTop := topNames(want)
	linked := w.linkNew(oldTop, newTop)
	w.marked("linked")
	if err := w.swap(staged); err != nil {
		for _, name := range linked {
			w.unlink(name)
		}
		w.discard(staged)
		return err
	}
	w.marked("swapped")

	// The new version is live: what follows is logged and retried, not returned, since the
	// caller must learn that the files changed.
	older := w.previous
	if w.rebuild || len(w.fix) > 0 {
		// The old version has modes or owners Options no longer ask for (a tighter --mode):
		// it goes now rather than stay readable beside the new one.
		w.pruneOlder(older)
		older = w.version
	}
	w.previous, w.version = w.version, staged
	w.live, w.fix, w.rebuild = want, make(map[string]bool), false
	res.Changed = true
	if err := w.syncDir("."); err != nil {
		w.log.Error("the swap may not survive a crash", "error", err)
	}
	w.marked("dir-synced")
	if w.relink {
		w.relinkAll(want)
	} else {
		w.unlinkGone(oldTop, newTop)
	}
	w.marked("unlinked")
	w.pruneOlder(older)
	w.marked("pruned")
	return nil
}

// pruneOlder is step 10: it removes the version that was live before the previous one.
func (w *Writer) pruneOlder(older string) {
	if older == "" {
		return
	}
	if older == w.previous {
		w.previous = ""
	}
	if err := w.root.RemoveAll(older); err != nil {
		w.log.Error("cannot remove an old version", "version", older, "error", err)
	}
}

// stage is step 4: it builds the complete new tree in a fresh version directory and returns
// its name. On error nothing of it is left.
func (w *Writer) stage(want map[string][32]byte) (string, error) {
	staged, err := w.newVersionDir()
	if err != nil {
		return "", err
	}
	if err := w.fillStaged(staged, want, w.version); err != nil {
		w.discard(staged)
		return "", err
	}
	return staged, nil
}

// fillStaged writes the tree want into the empty directory staged; files whose live content
// (under from) is unchanged are hard-linked from there.
func (w *Writer) fillStaged(staged string, want map[string][32]byte, from string) error {
	made := map[string]bool{}
	l := &linker{root: w.root, from: from, to: staged, dirs: map[string]dirPair{}}
	defer l.close()
	for p, sum := range want {
		if err := w.stageFile(staged, p, sum, made, l); err != nil {
			return err
		}
		w.marked("staging")
	}
	return nil
}

// newVersionDir creates an empty version directory named after the current time, unique.
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

// stageFile puts file p into the staged version: a hard link to the live file when the content
// is unchanged (and its mode and owner right), a new file otherwise.
func (w *Writer) stageFile(staged, p string, sum [32]byte, made map[string]bool, l *linker) error {
	var err error
	forParents(p, func(d string) {
		if err != nil || made[d] {
			return
		}
		made[d] = true
		err = w.makeDir(path.Join(staged, d))
	})
	if err != nil {
		return err
	}
	if old, ok := w.live[p]; ok && old == sum && !w.fix[p] {
		if err := l.link(p); err == nil {
			return nil
		}
		// Fall back to a copy (too many links, a file gone missing...).
	}
	data, err := w.content(p)
	if err != nil {
		return fmt.Errorf("staging %s: %w", p, err)
	}
	return w.createFile(path.Join(staged, p), data, false)
}

// linker hard-links files from one tree to another with linkat(2) between two directory
// descriptors and a plain file name: one system call per file instead of a path walk for
// each side, and nothing to resolve, so no symlink can be followed. The directories are
// opened through the root.
type linker struct {
	root     *os.Root
	from, to string
	dirs     map[string]dirPair
}

type dirPair struct{ from, to *os.File }

func (l *linker) link(p string) error {
	d, base := path.Dir(p), path.Base(p)
	pair, ok := l.dirs[d]
	if !ok {
		var err error
		if pair.from, err = l.root.Open(path.Join(l.from, d)); err != nil {
			return err
		}
		if pair.to, err = l.root.Open(path.Join(l.to, d)); err != nil {
			pair.from.Close()
			return err
		}
		l.dirs[d] = pair
	}
	if err := unix.Linkat(int(pair.from.Fd()), base, int(pair.to.Fd()), base, 0); err != nil {
		return fmt.Errorf("linking %s: %w", p, err)
	}
	return nil
}

func (l *linker) close() {
	for _, pair := range l.dirs {
		pair.from.Close()
		pair.to.Close()
	}
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
	if err := w.removeOurLink(dataLinkTmp); err != nil {
		return err
	}
	if err := w.root.Symlink(staged, dataLinkTmp); err != nil {
		return fmt.Errorf("linking %s: %w", dataLinkTmp, err)
	}
	if err := w.root.Rename(dataLinkTmp, dataLink); err != nil {
		w.root.Remove(dataLinkTmp)
		return fmt.Errorf("renaming %s over %s: %w", dataLinkTmp, dataLink, err)
	}
	return nil
}

// pruneVersions removes every version directory except keep (and the previous one).
func (w *Writer) pruneVersions(keep string) error {
	entries, err := readDirNames(w.root, ".")
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	for _, name := range entries {
		if !versionName.MatchString(name) || name == keep || name == w.previous {
			continue
		}
		if fi, err := w.root.Lstat(name); err != nil || !fi.IsDir() {
			continue
		}
		if err := w.root.RemoveAll(name); err != nil {
			return fmt.Errorf("writer: removing stale version %s: %w", name, err)
		}
		w.log.Info("removed a stale version", "version", name)
	}
	return nil
}

// linkNew is step 7 (before the swap): it links the new top-level names (and those a foreign
// entry blocked before; every name after Open), so that each name of the new version is
// reachable the instant it goes live. Until the swap, a new link dangles: its name is no key
// of the live version yet. It returns the names it created.
func (w *Writer) linkNew(oldTop, newTop map[string]bool) (created []string) {
	for name := range newTop {
		if (w.relink || !oldTop[name] || w.unlinked[name]) && w.link(name) {
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
func (w *Writer) relinkAll(want map[string][32]byte) (changed bool) {
	w.relink = false
	newTop := topNames(want)
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

// link makes name -> ..data/name unless it exists. symlink(2) never replaces an existing
// entry, so a file that is not ours is safe even if it appears meanwhile.
func (w *Writer) link(name string) (created bool) {
	delete(w.unlinked, name)
	if w.isOurLink(name) {
		return false
	}
	err := w.root.Symlink(linkTarget(name), name)
	if err == nil {
		return true
	}
	if errors.Is(err, fs.ErrExist) {
		if w.unlinked == nil {
			w.unlinked = make(map[string]bool)
		}
		w.unlinked[name] = true
		w.log.Error("a file that is not ours takes a top-level name; remove it or rename the key (the data is in ..data)",
			"name", name, "data", path.Join(dataLink, name))
		return false
	}
	w.log.Error("cannot link a top-level name", "name", name, "error", err)
	w.relink = true
	return false
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

// isOurLink reports whether name is a symlink to exactly ..data/name, the only top-level
// entries we create, and so the only ones we may remove.
func (w *Writer) isOurLink(name string) bool {
	target, err := w.root.Readlink(name)
	return err == nil && target == linkTarget(name)
}

func linkTarget(name string) string { return dataLink + "/" + name }

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

// topNames returns the set of first segments of the paths of t.
func topNames(t map[string][32]byte) map[string]bool {
	names := make(map[string]bool)
	for p := range t {
		names[topName(p)] = true
	}
	return names
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
