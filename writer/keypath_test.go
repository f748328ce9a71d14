package writer

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestKeyPathAcceptsOrdinaryKeys(t *testing.T) {
	for _, key := range []string{
		"cert.pem",
		"sub/dir/a",
		".hidden",
		"a.b/c..d",
		"with space/and\\backslash",
		"ünïcode/名前",
		strings.Repeat("x", 255),
		strings.Repeat(strings.Repeat("d", 200)+"/", 19) + "f",
	} {
		p, err := KeyPath(key)
		if err != nil {
			t.Errorf("KeyPath(%q): %v", key, err)
			continue
		}
		if p != filepath.FromSlash(key) {
			t.Errorf("KeyPath(%q) = %q, want the key itself", key, p)
		}
	}
}

func TestKeyPathRejectsHostileKeys(t *testing.T) {
	long := strings.Repeat(strings.Repeat("d", 200)+"/", 20) + "f" // 4021 bytes
	for _, tc := range []struct{ name, key, reason string }{
		{"empty", "", "empty key"},
		{"parent at start", "../x", `segment ".." is not allowed`},
		{"parent inside", "a/../b", `segment ".." is not allowed`},
		{"parent at end", "a/..", `segment ".." is not allowed`},
		{"double slash", "a//b", "empty segment"},
		{"leading slash", "/a", "empty segment"},
		{"trailing slash", "a/", "empty segment"},
		{"only a slash", "/", "empty segment"},
		{"dot", ".", `segment "." is not allowed`},
		{"dot inside", "a/./b", `segment "." is not allowed`},
		{"reserved ..data", "..data", "reserved"},
		{"reserved prefix in a dir", "..foo/x", "reserved"},
		{"reserved prefix nested", "a/..tmp1", "reserved"},
		{"NUL byte", "a\x00b", "NUL byte"},
		{"segment of 256 bytes", "a/" + strings.Repeat("x", 256), "segment is 256 bytes long"},
		{"segment of 300 bytes", strings.Repeat("x", 300), "segment is 300 bytes long"},
		{"over-long path", long + strings.Repeat("/f", 10), "path is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := KeyPath(tc.key)
			if err == nil {
				t.Fatalf("KeyPath(%q) = %q, want an error", tc.key, p)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("error %q does not say %q", err, tc.reason)
			}
			if len(tc.key) < 100 && !strings.Contains(err.Error(), "key "+strconv.Quote(tc.key)) {
				t.Errorf("error %q does not name the key", err)
			}
		})
	}
}

func TestKeyPathErrorNamesKeyAndReason(t *testing.T) {
	_, err := KeyPath("a/../b")
	if want := `key "a/../b": segment ".." is not allowed`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

// FuzzKeyPath checks the guarantees of KeyPath on any input: accepted paths are local, clean,
// free of reserved segments and within the limits, and distinct keys give distinct paths.
func FuzzKeyPath(f *testing.F) {
	for _, seed := range []string{
		"cert.pem", "sub/dir/a", "../x", "a/../b", "a//b", "/a", "a/", ".", "..", "..data",
		"..foo/x", "a\x00b", "a/./b", ".hidden", "a..b", "a/b/", strings.Repeat("x", 256),
		"\\..\\x", "a\\..\\..\\b", "ü", "\xff\xfe",
	} {
		f.Add(seed, seed+"/x")
	}
	f.Fuzz(func(t *testing.T, k1, k2 string) {
		p1, err1 := KeyPath(k1)
		p2, err2 := KeyPath(k2)
		for _, c := range []struct {
			key, p string
			err    error
		}{{k1, p1, err1}, {k2, p2, err2}} {
			if c.err != nil {
				if c.p != "" {
					t.Errorf("KeyPath(%q) returned %q with error %v", c.key, c.p, c.err)
				}
				continue
			}
			if !filepath.IsLocal(c.p) {
				t.Errorf("KeyPath(%q) = %q is not local", c.key, c.p)
			}
			if filepath.Clean(c.p) != c.p {
				t.Errorf("KeyPath(%q) = %q is not clean", c.key, c.p)
			}
			if len(c.p) > maxPathLen || strings.IndexByte(c.p, 0) >= 0 {
				t.Errorf("KeyPath(%q) = %q is too long or has a NUL", c.key, c.p)
			}
			for _, seg := range strings.Split(c.p, string(filepath.Separator)) {
				if strings.HasPrefix(seg, "..") || seg == "" || seg == "." || len(seg) > maxSegmentLen {
					t.Errorf("KeyPath(%q) = %q has segment %q", c.key, c.p, seg)
				}
			}
		}
		if err1 == nil && err2 == nil && k1 != k2 && p1 == p2 {
			t.Errorf("distinct keys %q and %q both map to %q", k1, k2, p1)
		}
	})
}
