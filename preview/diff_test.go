package preview

import "testing"

func TestDiff(t *testing.T) {
	for _, tc := range []struct {
		name     string
		old, new []byte
		show     bool
		want     string
	}{
		{"same", []byte("a\n"), []byte("a\n"), true, ""},
		{"secret", []byte("hunter2\n"), []byte("hunter3\n"), false, "secret: changed, 8 -> 8 bytes\n"},
		{"new", nil, []byte("x"), false, "new: new, 1 bytes\n"},
		{"gone", []byte("x"), nil, false, "gone: removed, was 1 bytes\n"},
		{"cfg", []byte("a\nb\nc\n"), []byte("a\nB\nc\nd\n"), true,
			"--- a/cfg\n+++ b/cfg\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n c\n+d\n"},
		{"nl", []byte("a"), []byte("b\n"), true,
			"--- a/nl\n+++ b/nl\n@@ -1,1 +1,1 @@\n-a\n\\ No newline at end of file\n+b\n"},
		{"added", nil, []byte("x\n"), true, "--- a/added\n+++ b/added\n@@ -0,0 +1,1 @@\n+x\n"},
	} {
		if got := Diff(tc.name, tc.old, tc.new, tc.show); got != tc.want {
			t.Errorf("%s: got\n%s\nwant\n%s", tc.name, got, tc.want)
		}
	}
}

func TestDiffOfAnAbsolutePathHasNoDoubleSlash(t *testing.T) {
	got := Diff("/etc/x.conf", []byte("a\n"), []byte("b\n"), true)
	if want := "--- a/etc/x.conf\n+++ b/etc/x.conf\n"; got[:len(want)] != want {
		t.Fatalf("got %q", got)
	}
}
