package writer

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// A wide top level is bucketed. The root object of a version holds every top-level name, so
// with thousands of keys at the top level (how most prefixes are used) a one-key change would
// hard-link them all into a new root. Above bucketAbove top-level names, the tree stores name
// NAME under ..X/..Y/..Z/NAME instead, X, Y and Z three digits (0-7) of a hash of NAME, and
// the top-level link is NAME -> ..data/..X/..Y/..Z/NAME. A change then makes new objects for
// a root and two buckets of at most 8 entries each, and a last bucket of about N/512 names:
// 44 entries for 10000 names (each costs a few µs). More buckets would make a change cheaper
// at 50000 names, but each bucket is a directory a first sync must create (4096 of them, for
// 3 levels of 16, added a third to a first sync of 10000 keys). Below flatBelow names the tree
// is flat again (..data/NAME); the gap keeps a prefix near the threshold from switching back
// and forth. Bucket names start with "..", which no key segment may, so they never collide
// with a key.
//
// Switching forms moves every top-level name, so it costs the width of the top level, once:
// see switchForm.
const (
	bucketAbove  = 256
	flatBelow    = 128
	bucketLevels = 3            // of 8 buckets each
	linkTmp      = "..link_tmp" // a top-level link being re-pointed, before its rename
)

// bucketDir is the tree directory holding top-level name NAME in the bucketed form:
// bucketLevels bucket names, one per 3 bits of a hash of NAME ("..3/..0/..6"). The 512
// strings are made once (bucketDirs): a first sync asks for one per key, several times.
func bucketDir(name string) string {
	h := uint32(2166136261) // FNV-1a
	for i := 0; i < len(name); i++ {
		h ^= uint32(name[i])
		h *= 16777619
	}
	return bucketDirs[h&(1<<(3*bucketLevels)-1)]
}

// bucketDirs is every bucketDir, by the low 3*bucketLevels bits of the hash.
var bucketDirs = func() (dirs [1 << (3 * bucketLevels)]string) {
	const digits = "01234567"
	for i := range dirs {
		var b [bucketLevels * 4]byte
		h := i
		for l := range bucketLevels {
			b[4*l], b[4*l+1], b[4*l+2], b[4*l+3] = '.', '.', digits[h&7], '/'
			h >>= 3
		}
		dirs[i] = string(b[:len(b)-1])
	}
	return dirs
}()

// formPlace is the tree directory and the name in it where the given form stores key path
// p, without building the tree path (formPath).
func formPlace(bucketed bool, p string) (dir, name string) {
	i := strings.LastIndexByte(p, '/')
	switch {
	case i < 0 && !bucketed:
		return "", p
	case !bucketed:
		return p[:i], p[i+1:]
	case i < 0:
		return bucketDir(p), p
	}
	return bucketDir(topName(p)) + "/" + p[:i], p[i+1:]
}

// isBucketName reports whether seg names a bucket ("..0" to "..7").
func isBucketName(seg string) bool {
	return len(seg) == 3 && seg[:2] == ".." && seg[2] >= '0' && seg[2] <= '7'
}

// treePath is where the live form stores the file or directory of key path p.
func (w *Writer) treePath(p string) string { return w.formPath(w.bucketed, p) }

// keyOf is the key path of tree path tp, in either form ("" for a bucket itself).
func keyOf(tp string) string {
	if !strings.HasPrefix(tp, "..") {
		return tp
	}
	rest := tp
	for range bucketLevels {
		_, rest, _ = strings.Cut(rest, "/")
	}
	return rest
}

// isTopDir reports whether tree directory d holds top-level names in the live form.
func (w *Writer) isTopDir(d string) bool {
	if !w.bucketed {
		return d == ""
	}
	return depth(d) == bucketLevels && strings.HasPrefix(d, "..")
}

// wantBucketed is the form for a top level of n names.
func (w *Writer) wantBucketed(n int) bool {
	switch {
	case n > w.bucketAbove:
		return true
	case n < w.flatBelow:
		return false
	}
	return w.bucketed
}

// isLiveTop reports whether name is a top-level name of the live tree.
func (w *Writer) isLiveTop(name string) bool {
	if _, ok := w.live[name]; ok {
		return true
	}
	_, ok := w.dirObj[w.treePath(name)]
	return ok
}

// isDesiredTop reports whether name is a top-level name of the desired tree.
func (w *Writer) isDesiredTop(name string) bool {
	return w.keys[name] != nil || w.below[name] > 0
}

// topsAfter is the number of top-level names once the paths write and remove are published.
// Each name counts once: the tops of paths below a top-level directory go through a set,
// and a top-level file (write and remove hold distinct paths) needs none, which keeps a
// first sync of thousands of flat keys from making a set of them all.
func (w *Writer) topsAfter(write, remove []string) int {
	n := w.tops
	nothingLive := len(w.live) == 0 && len(w.dirObj) == 0
	var seen map[string]bool // tops of paths below one
	count := func(t string, desired bool) {
		if !nothingLive && w.isLiveTop(t) {
			n--
		}
		if desired || w.isDesiredTop(t) {
			n++
		}
	}
	for _, ps := range [][]string{write, remove} {
		for _, p := range ps {
			t := topName(p)
			if len(t) == len(p) || seen[t] {
				continue
			}
			if seen == nil {
				seen = map[string]bool{}
			}
			seen[t] = true
			count(t, false)
		}
	}
	for i, ps := range [][]string{write, remove} {
		for _, p := range ps {
			if strings.IndexByte(p, '/') < 0 && !seen[p] {
				count(p, i == 0) // a path written is a desired file
			}
		}
	}
	return n
}

// liveTops lists the top-level names of the live tree.
func (w *Writer) liveTops() map[string]bool {
	tops := map[string]bool{}
	for p := range w.live {
		tops[topName(p)] = true
	}
	return tops
}

// desiredTops lists the top-level names of the desired tree (after Apply they are live).
func (w *Writer) desiredTops() map[string]bool {
	tops := map[string]bool{}
	for p := range w.keys {
		if w.below[p] == 0 {
			tops[topName(p)] = true
		}
	}
	return tops
}

// switchForm moves the live tree, unchanged, to the bucketed form or back, without a top-level
// link ever dangling for a live name:
//
//  1. Stage a root holding both forms: the top-level names as the flat form holds them, and
//     the buckets (new ones holding the names, or the live ones). Files are hard links and
//     directories symlinks to the objects they already have, so this costs the width of the
//     top level, once.
//  2. Sync, and swap ..data to it: every link resolves, in either form.
//  3. Re-point each top-level link to the new form, each by renaming a new symlink over it,
//     and sync the target directory.
//
// The root with both forms stays live until the next Apply, which stages the new form only:
// a reader that read a link's old text just before it was re-pointed still finds the name
// until then, as a reader inside the previous version does. A crash leaves ..data at the old
// version with the old links (plus links for no live name), or at the mixed root with links
// of either form. Open loads a mixed root as bucketed, and the next Apply re-points every
// link to the form it stages before it swaps.
func (w *Writer) switchForm(bucketed bool) (err error) {
	sw := &switching{w: w}
	defer func() {
		if err != nil {
			w.removeObjects(sw.made)
		}
	}()
	names := slices.Sorted(maps.Keys(w.liveTops()))
	newObj := map[string]string{}  // buckets of the new form -> their objects
	buckets := map[string]string{} // the mixed root's bucket entries -> their objects
	var otherHalf []string         // objects only the old form's half of the mixed root reaches
	if bucketed {
		// Each bucket, deepest first, links the buckets below it.
		below := map[string]map[string]string{} // bucket -> its entries -> their objects
		add := func(d, obj string) {
			parent := parentDir(d)
			if below[parent] == nil {
				below[parent] = map[string]string{}
			}
			below[parent][path.Base(d)] = obj
			newObj[d] = obj
		}
		leaves := map[string][]string{}
		for _, n := range names {
			leaves[bucketDir(n)] = append(leaves[bucketDir(n)], n)
		}
		for leaf, ns := range leaves {
			obj, err := sw.object(func(to int, toName string) error { return sw.putTops(to, toName, ns) })
			if err != nil {
				return err
			}
			add(leaf, obj)
		}
		for level := bucketLevels - 1; level >= 1; level-- {
			for d, entries := range below {
				if depth(d) != level {
					continue
				}
				obj, err := sw.object(func(to int, _ string) error { return sw.putLinks(to, entries) })
				if err != nil {
					return err
				}
				add(d, obj)
			}
		}
		buckets = below[""]
	} else {
		for d, obj := range w.dirObj {
			if d != "" && keyOf(d) == "" {
				otherHalf = append(otherHalf, obj)
				if !strings.Contains(d, "/") {
					buckets[d] = obj
				}
			}
		}
	}
	both, err := sw.object(func(to int, toName string) error {
		if err := sw.putLinks(to, buckets); err != nil {
			return err
		}
		return sw.putTops(to, toName, names)
	})
	if err != nil {
		return err
	}
	w.marked("switch-staged")
	if err := w.syncAll(); err != nil {
		return err
	}
	if err := w.swap(both); err != nil {
		return err
	}
	w.marked("switch-swapped")
	if err := w.syncDir("."); err != nil {
		w.log.Error("the swap may not survive a crash", "error", err)
	}

	// The mixed root is live, in the new form: map every directory to its path there.
	w.retired = append(w.retired, w.dirObj[""])
	dirObj := make(map[string]string, len(w.dirObj)+len(newObj))
	for d, obj := range w.dirObj {
		if k := keyOf(d); d != "" && k != "" {
			dirObj[w.formPath(bucketed, k)] = obj
		}
	}
	maps.Copy(dirObj, newObj)
	dirObj[""] = both
	w.dirObj, w.version, w.bucketed = dirObj, both, bucketed
	w.mixed, w.otherHalf = true, otherHalf
	for _, n := range names {
		w.link(n)
		w.marked("switch-relinked")
	}
	if err := w.syncDir("."); err != nil {
		w.log.Error("the re-pointed links may not survive a crash", "error", err)
	}
	w.log.Info("top level switched form", "bucketed", bucketed, "names", len(names), "version", both)
	return nil
}

// formPath is where the given form stores key path p.
func (w *Writer) formPath(bucketed bool, p string) string {
	if !bucketed {
		return p
	}
	return bucketDir(topName(p)) + "/" + p
}

// switching holds the objects switchForm made.
type switching struct {
	w    *Writer
	made []string
}

// object makes a new object and fills it with fill, which gets it open, and its name.
func (sw *switching) object(fill func(to int, toName string) error) (string, error) {
	name, to, err := sw.w.makeObject(sw.w.topFd)
	if err != nil {
		return "", err
	}
	sw.made = append(sw.made, name)
	defer unix.Close(to)
	if err := fill(to, name); err != nil {
		return "", fmt.Errorf("switching the top level's form: %w", err)
	}
	return name, nil
}

// putLinks creates a symlink name -> ../obj for each entry of links.
func (sw *switching) putLinks(to int, links map[string]string) error {
	for name, obj := range links {
		if err := unix.Symlinkat("../"+obj, to, name); err != nil {
			return fmt.Errorf("linking %s: %w", name, err)
		}
	}
	return nil
}

// putTops puts top-level names into to as the live tree holds them: a directory as a symlink
// to its object, a file as a hard link to its live file (a copy if linking fails). The live
// objects are opened one at a time: bucketed, there may be 512 of them.
func (sw *switching) putTops(to int, toName string, names []string) error {
	w := sw.w
	files := map[string][]string{} // live object -> the names of files it holds
	for _, n := range names {
		tp := w.treePath(n)
		if obj, isDir := w.dirObj[tp]; isDir {
			if err := unix.Symlinkat("../"+obj, to, n); err != nil {
				return fmt.Errorf("linking %s: %w", n, err)
			}
			continue
		}
		obj := w.dirObj[parentDir(tp)]
		files[obj] = append(files[obj], n)
	}
	for obj, ns := range files {
		if err := sw.linkFiles(to, toName, obj, ns); err != nil {
			return err
		}
	}
	return nil
}

// linkFiles hard-links the files names of the live object obj into to (copies them if
// linking fails).
func (sw *switching) linkFiles(to int, toName, obj string, names []string) error {
	w := sw.w
	from, err := w.openObject(obj)
	if err != nil {
		return fmt.Errorf("opening %s: %w", obj, err)
	}
	defer unix.Close(from)
	for _, n := range names {
		if unix.Linkat(from, n, to, n, 0) == nil {
			continue
		}
		data, err := w.readLive(n)
		if err != nil {
			return err
		}
		if err := w.createFileAt(to, toName, n, data); err != nil {
			return err
		}
	}
	return nil
}

// inForm reports whether tree path tp is one the live form stores: a key path where the key
// belongs, or a bucket.
func (w *Writer) inForm(tp string) bool {
	if !w.bucketed {
		return checkKey(tp) == nil
	}
	segs := strings.SplitN(tp, "/", bucketLevels+1)
	for i, seg := range segs {
		if i == bucketLevels {
			return checkKey(seg) == nil && bucketDir(topName(seg)) == strings.Join(segs[:i], "/")
		}
		if !isBucketName(seg) {
			return false
		}
	}
	return true
}
