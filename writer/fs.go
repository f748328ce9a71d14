package writer

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// createFile creates name, which must not exist, with data, Mode and the owner from Options.
// Mode and owner are set on the open descriptor, so no symlink can redirect them, and
// explicitly, so the umask does not matter. With syncFile the content is fsynced before the
// file is closed (a rename alone can otherwise publish an empty file after a crash).
func (w *Writer) createFile(name string, data []byte, syncFile bool) (err error) {
	return w.createFileMode(name, data, syncFile, w.opts.Mode)
}

// createFileAt is createFile for a single name in the directory open as dirFd (one
// openat(2), no walk from the root); dirName is for errors. O_NOFOLLOW and O_EXCL: nothing
// there is followed or reused.
func (w *Writer) createFileAt(dirFd int, dirName, name string, data []byte) (err error) {
	fd, err := unix.Openat(dirFd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC,
		uint32(w.opts.Mode))
	if err != nil {
		return fmt.Errorf("creating %s/%s: %w", dirName, name, err)
	}
	if !w.modeAtCreate {
		full := dirName + "/" + name
		f := os.NewFile(uintptr(fd), full)
		defer func() {
			if cerr := f.Close(); err == nil && cerr != nil {
				err = fmt.Errorf("writing %s: %w", full, cerr)
			}
			if err != nil {
				unix.Unlinkat(dirFd, name, 0)
			}
		}()
		return w.fillFile(f, full, data, false)
	}
	// The file has Mode and our owner already: three system calls, no *os.File.
	for len(data) > 0 && err == nil {
		var n int
		n, err = unix.Write(fd, data)
		switch {
		case err == unix.EINTR:
			err = nil
		case err == nil && n == 0:
			err = io.ErrShortWrite
		}
		data = data[max(n, 0):]
	}
	if cerr := unix.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		unix.Unlinkat(dirFd, name, 0)
		return fmt.Errorf("writing %s/%s: %w", dirName, name, err)
	}
	return nil
}

// modeAtCreate reports whether a file created with mode m gets exactly m and our owner, so
// that nothing needs setting after open(2): no owner asked for, a umask that clears no bit of
// m, and no default ACL on dir (which would replace the umask).
func modeAtCreate(dir string, m os.FileMode, uid, gid int) bool {
	if uid != -1 || gid != -1 {
		return false
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	umask := -1
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			if u, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				umask = int(u)
			}
		}
	}
	if umask < 0 || int(m.Perm())&umask != 0 {
		return false
	}
	_, err = unix.Getxattr(dir, "system.posix_acl_default", nil)
	return errors.Is(err, unix.ENODATA) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP)
}

// createFileMode is createFile with another mode, for our own files (the manifest).
func (w *Writer) createFileMode(name string, data []byte, syncFile bool, mode os.FileMode) (err error) {
	f, err := w.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("creating %s: %w", name, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("writing %s: %w", name, cerr)
		}
		if err != nil {
			w.root.Remove(name)
		}
	}()
	return w.fillFileMode(f, name, data, syncFile, mode)
}

// fillFile writes data to the new file f and gives it Mode and the owner from Options.
func (w *Writer) fillFile(f *os.File, name string, data []byte, syncFile bool) error {
	return w.fillFileMode(f, name, data, syncFile, w.opts.Mode)
}

func (w *Writer) fillFileMode(f *os.File, name string, data []byte, syncFile bool, mode os.FileMode) error {
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("setting mode of %s: %w", name, err)
	}
	if err := chown(func(string) (os.FileInfo, error) { return f.Stat() },
		func(_ string, uid, gid int) error { return f.Chown(uid, gid) }, name, w.opts.UID, w.opts.GID); err != nil {
		return err
	}
	if syncFile {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("syncing %s: %w", name, err)
		}
	}
	return nil
}

// makeDir creates directory name with dirMode and the owner from Options.
func (w *Writer) makeDir(name string) error {
	if err := w.root.Mkdir(name, w.dirMode); err != nil {
		return fmt.Errorf("creating directory %s: %w", name, err)
	}
	// Mkdir is subject to the umask; the directory is new and ours, so Chmod meets it.
	if err := w.root.Chmod(name, w.dirMode); err != nil {
		return fmt.Errorf("setting mode of %s: %w", name, err)
	}
	return chown(w.root.Lstat, w.root.Lchown, name, w.opts.UID, w.opts.GID)
}

// chown gives name the owner uid:gid (-1 leaves one as it is) unless it already has it, so
// that asking for our own ids works without the privilege to chown.
func chown(lstat func(string) (os.FileInfo, error), lchown func(string, int, int) error, name string, uid, gid int) error {
	if uid == -1 && gid == -1 {
		return nil
	}
	fi, err := lstat(name)
	if err != nil {
		return fmt.Errorf("setting owner of %s: %w", name, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && owns(st.Uid, st.Gid, uid, gid) {
		return nil
	}
	if err := lchown(name, uid, gid); err != nil {
		return fmt.Errorf("setting owner of %s: %w", name, err)
	}
	return nil
}

// owns reports whether a file owned by fileUID:fileGID has the owner uid:gid already (-1
// matches any).
func owns(fileUID, fileGID uint32, uid, gid int) bool {
	return (uid == -1 || int(fileUID) == uid) && (gid == -1 || int(fileGID) == gid)
}

// chownFd is chown for the file open as fd.
func chownFd(fd int, name string, uid, gid int) error {
	if uid == -1 && gid == -1 {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("setting owner of %s: %w", name, err)
	}
	if owns(st.Uid, st.Gid, uid, gid) {
		return nil
	}
	if err := unix.Fchown(fd, uid, gid); err != nil {
		return fmt.Errorf("setting owner of %s: %w", name, err)
	}
	return nil
}

// readFile reads the regular file name, refusing a symlink in its place.
func (w *Writer) readFile(name string) ([]byte, error) {
	fi, err := w.root.Lstat(name)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("reading %s: not a regular file", name)
	}
	f, err := w.openRead(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return data, nil
}

// hashFile returns the sha256 of the regular file name.
func (w *Writer) hashFile(name string) ([32]byte, error) {
	var sum [32]byte
	f, err := w.openRead(name)
	if err != nil {
		return sum, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return sum, fmt.Errorf("reading %s: %w", name, err)
	}
	h.Sum(sum[:0])
	return sum, nil
}

// openRead opens the regular file name for reading, without following a symlink. A file of
// ours that its mode keeps even us from reading (--mode=0200 without root) is made readable
// by its owner for the instant of the open: owner read adds no reader.
func (w *Writer) openRead(name string) (*os.File, error) {
	f, err := w.root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if !errors.Is(err, fs.ErrPermission) {
		return f, err
	}
	fi, lerr := w.root.Lstat(name)
	if lerr != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o400 != 0 {
		return nil, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		return nil, err
	}
	if cerr := w.root.Chmod(name, fi.Mode().Perm()|0o400); cerr != nil {
		return nil, err
	}
	f, err = w.root.OpenFile(name, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if cerr := w.root.Chmod(name, fi.Mode().Perm()); cerr != nil && err == nil {
		f.Close()
		return nil, fmt.Errorf("restoring the mode of %s: %w", name, cerr)
	}
	return f, err
}

// readLive reads live file p (relative to the mirrored tree).
func (w *Writer) readLive(p string) ([]byte, error) {
	if w.opts.Layout == Atomic {
		if w.version == "" {
			return nil, fmt.Errorf("reading %s: no live version", p)
		}
		p = path.Join(w.version, w.treePath(p))
	} else if err := w.realDirs(p); err != nil {
		return nil, err
	}
	return w.readFile(p)
}

// wrongOwnerOrMode reports whether fi differs from what Options ask for.
func (w *Writer) wrongOwnerOrMode(fi os.FileInfo, mode os.FileMode) bool {
	if fi.Mode().Perm() != mode {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	return (w.opts.UID != -1 && int(st.Uid) != w.opts.UID) || (w.opts.GID != -1 && int(st.Gid) != w.opts.GID)
}

// syncAll flushes the whole file system of the target with one syncfs(2): cheaper than an
// fsync per file of a new version, and it covers the new directories too.
func (w *Writer) syncAll() error {
	if w.opts.NoSync {
		return nil
	}
	if err := unix.Syncfs(w.topFd); err != nil {
		return fmt.Errorf("syncing %s: %w", w.absDir, err)
	}
	return nil
}

// syncDir fsyncs directory name, which makes the renames and removals in it durable.
func (w *Writer) syncDir(name string) error {
	if w.opts.NoSync {
		return nil
	}
	if name == "." {
		if err := unix.Fsync(w.topFd); err != nil {
			return fmt.Errorf("syncing directory %s: %w", w.absDir, err)
		}
		return nil
	}
	f, err := w.root.Open(name)
	if err != nil {
		return fmt.Errorf("syncing directory %s: %w", name, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", name, err)
	}
	return nil
}

// The Atomic layout's hot path works on open directory descriptors with *at system calls
// (openat, mkdirat, linkat, symlinkat, unlinkat, renameat, readlinkat) instead of os.Root,
// whose checked walks cost an openat, an fstat and the poller's fcntls per call. This is as
// safe: every name given to them is a single path component, never "." or "..", and has no
// slash (object names we generate or versionName matches, our reserved link names, and key
// segments, which KeyPath checks), so there is no path to walk and nothing to escape through;
// the only component is opened with O_NOFOLLOW, and unlinkat, renameat, linkat (without
// AT_SYMLINK_FOLLOW) and readlinkat act on a symlink itself, never on what it points at.

// openDirAt opens directory name, a single component, in the directory open as dirFd,
// without following a symlink in its place.
func openDirAt(dirFd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirFd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// direntBufs holds buffers for getdents(2), so a listing costs no 8 KiB allocation.
var direntBufs = sync.Pool{New: func() any { b := make([]byte, 8192); return &b }}

// readNamesAt appends the names in the directory open as fd, freshly opened, to names.
func readNamesAt(fd int, names []string) ([]string, error) {
	bp := direntBufs.Get().(*[]byte)
	defer direntBufs.Put(bp)
	for {
		n, err := unix.ReadDirent(fd, *bp)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return names, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent((*bp)[:n], -1, names)
	}
}

// removeObject removes directory object obj of the target open as topFd: one openat, a
// listing unless the caller knows the names in it, an unlinkat per entry and one for the
// directory, where os.Root.RemoveAll costs several system calls per step. An object holds
// only files and symlinks (a subdirectory is a symlink to another object), and unlinkat
// removes a symlink itself. Anything else there (a real subdirectory, as versions had before
// directories were shared) is left to os.Root.RemoveAll.
func removeObject(r *os.Root, topFd int, obj string, names []string) error {
	fd, err := openDirAt(topFd, obj)
	if err == unix.ENOENT {
		return nil
	}
	if err != nil {
		return r.RemoveAll(obj)
	}
	known := names != nil
	if !known {
		names, err = readNamesAt(fd, nil)
	}
	for _, name := range names {
		if err != nil {
			break
		}
		if uerr := unix.Unlinkat(fd, name, 0); uerr != nil && uerr != unix.ENOENT {
			err = uerr
		}
	}
	unix.Close(fd)
	if err == nil {
		err = unix.Unlinkat(topFd, obj, unix.AT_REMOVEDIR)
	}
	if known && (err == unix.ENOTEMPTY || err == unix.EEXIST) {
		return removeObject(r, topFd, obj, nil) // more than we knew of
	}
	if err != nil && err != unix.ENOENT {
		return r.RemoveAll(obj)
	}
	return nil
}

// randomName returns prefix followed by random digits, for temporary entries.
func randomName(prefix string) string {
	return prefix + rand.Text()
}

func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }

// isNoSpace reports whether err says the file system (or the owner's quota) is full.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// noSpace names a full disk for what it is, so nobody looks for the fault in etcd; other
// errors pass unchanged.
func noSpace(err error, dir string) error {
	if !isNoSpace(err) {
		return err
	}
	return fmt.Errorf("no space left on the file system of %s (only what is live is kept): %w", dir, err)
}
