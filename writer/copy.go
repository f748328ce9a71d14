package writer

import (
	"fmt"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// fillStaged writes the whole tree want into the empty directory staged (the Plain layout's
// copy for Check); files whose live content
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
