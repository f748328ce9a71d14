package preview

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Live reads the files the dispenser shows in dir: through ..data in the atomic layout, or the
// files in place (not the dispenser's own ..-names) in the plain layout. A missing dir is empty.
func Live(dir string) (map[string][]byte, error) {
	root := dir
	if data, err := filepath.EvalSymlinks(filepath.Join(dir, "..data")); err == nil {
		root = data // WalkDir does not follow a symlink, not even the root
	}
	files := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && p == root {
				return filepath.SkipAll
			}
			return err
		}
		if p == root {
			return nil
		}
		if strings.HasPrefix(de.Name(), "..") {
			if de.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if de.IsDir() || !de.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[filepath.ToSlash(rel)] = b
		return nil
	})
	return files, err
}
