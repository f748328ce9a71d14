package writer

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

const (
	// maxSegmentLen is NAME_MAX on Linux file systems: the longest single file name, in bytes.
	maxSegmentLen = 255
	// stagingRoom is kept free below PATH_MAX for what we put in front of a key's path:
	// the version directory ("..2006_01_02_15_04_05.000000000/", 32 bytes) or a temporary
	// file name, with margin.
	stagingRoom = 64
	// maxPathLen is the longest relative path a key may map to: PATH_MAX (4096, counting the
	// terminating NUL) minus stagingRoom.
	maxPathLen = 4096 - 1 - stagingRoom
	// maxDepth is the most segments a key may have. In the Atomic layout each directory level
	// is a symlink to a shared directory object, and Linux follows at most 40 symlinks in one
	// path lookup (the top-level link and ..data take two); no configuration needs more, and
	// deeper keys would cost a walk per level, so they are skipped like other unsafe keys.
	maxDepth = 32
)

// KeyPath maps a key (relative to the mirrored prefix, "/"-separated as etcd spells it) to the
// relative file path it is written to, or says why the key cannot be written.
//
// The mapping is the identity on accepted keys, so it is injective: two distinct keys never
// share a file. Every accepted path is confined to the target directory (filepath.IsLocal),
// already clean (filepath.Clean(p) == p), and has no segment starting with "..", the
// namespace this package reserves for its own entries (..data, version directories, temporary
// files, the manifest). Rejected: the empty key, empty segments (leading, trailing or doubled
// "/"), "." and ".." segments, segments starting with "..", NUL bytes, segments over 255 bytes,
// paths over 4031 bytes and keys of more than 32 levels (31 slashes).
func KeyPath(key string) (string, error) {
	if err := checkKey(key); err != nil {
		return "", fmt.Errorf("key %q: %w", key, err)
	}
	return filepath.FromSlash(key), nil
}

func checkKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	if strings.IndexByte(key, 0) >= 0 {
		return errors.New("NUL byte is not allowed")
	}
	if len(key) > maxPathLen {
		return fmt.Errorf("path is %d bytes long, at most %d are allowed", len(key), maxPathLen)
	}
	if n := strings.Count(key, "/") + 1; n > maxDepth {
		return fmt.Errorf("key has %d levels, at most %d are allowed", n, maxDepth)
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch {
		case seg == "":
			return errors.New("empty segment (leading, trailing or double slash) is not allowed")
		case seg == "." || seg == "..":
			return fmt.Errorf("segment %q is not allowed", seg)
		case strings.HasPrefix(seg, ".."):
			return fmt.Errorf("segment %q starts with \"..\", which is reserved", seg)
		case len(seg) > maxSegmentLen:
			return fmt.Errorf("segment is %d bytes long, at most %d are allowed", len(seg), maxSegmentLen)
		}
	}
	return nil
}
