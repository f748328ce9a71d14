package preview

import (
	"os"
	"path"
	"path/filepath"
	"strings"
)

// Live reads the files the dispenser shows in dir: through ..data in the atomic layout, or the
// files in place (not the dispenser's own ..-names) in the plain layout. A missing dir is empty.
func Live(dir string) (map[string][]byte, error) {
	root := dir
	if data, err := filepath.EvalSymlinks(filepath.Join(dir, "..data")); err == nil {
		root = data
	}
	files := map[string][]byte{}
	if _, err := os.Stat(root); os.IsNotExist(err) {
		return files, nil
	}
	return files, walk(root, "", files)
}

// walk reads the regular files below dir into files. Symlinks are followed: in the atomic
// layout each subdirectory of a version is a symlink to a directory shared between versions.
func walk(dir, rel string, files map[string][]byte) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, de := range entries {
		if rel == "" && isBucket(de.Name()) {
			// A wide top level keeps its names in buckets inside a version
			// (..X/..Y/..Z/NAME); no key starts with "..", so only the writer makes them.
			if err := walk(filepath.Join(dir, de.Name()), rel, files); err != nil {
				return err
			}
			continue
		}
		if strings.HasPrefix(de.Name(), "..") {
			continue
		}
		p, r := filepath.Join(dir, de.Name()), path.Join(rel, de.Name())
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if err := walk(p, r, files); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			files[r] = b
		}
	}
	return nil
}

// isBucket reports whether name is one of the writer's buckets ("..0" to "..7").
func isBucket(name string) bool {
	return len(name) == 3 && name[:2] == ".." && name[2] >= '0' && name[2] <= '7'
}
