package config

import (
	"io"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestTheOriginalCommandLineParses(t *testing.T) {
	c, err := Parse([]string{"--prefix=/certificates", "--target=/config", "--signal=SIGHUP",
		"-m", "0640", "-o", "0", "-g", "0", "--", "/usr/sbin/nginx", "-g", "daemon off;"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Prefix != "/certificates" || c.Target != "/config" || c.Signal != syscall.SIGHUP || c.Mode != 0o640 ||
		c.UID != 0 || c.GID != 0 || !slices.Equal(c.Command, []string{"/usr/sbin/nginx", "-g", "daemon off;"}) {
		t.Fatalf("parsed %+v", c)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse([]string{"-p", "/a", "-t", "/b"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Signal != syscall.SIGHUP || c.Mode != 0o600 || c.UID != -1 || c.GID != -1 || c.Layout != "atomic" ||
		!c.Fsync || c.KillTimeout != 0 || len(c.Command) != 0 || c.OnChange != "signal" {
		t.Fatalf("defaults %+v", c)
	}
}

func TestTheCommandStartsAtTheFirstNonFlagWord(t *testing.T) {
	c, err := Parse([]string{"-p", "/a", "-t", "/b", "nginx", "-t"}, io.Discard)
	if err != nil || !slices.Equal(c.Command, []string{"nginx", "-t"}) {
		t.Fatalf("command %q, err %v", c.Command, err)
	}
}

func TestSignalNames(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"SIGHUP": syscall.SIGHUP, "HUP": syscall.SIGHUP, "hup": syscall.SIGHUP, "1": syscall.SIGHUP,
		"SIGUSR2": syscall.SIGUSR2, "WINCH": syscall.SIGWINCH, "SIGRTMIN": 34, "SIGRTMIN+3": 37, "RTMAX-1": 63,
		"9": syscall.SIGKILL, "sigquit": syscall.SIGQUIT,
	} {
		got, err := ParseSignal(in)
		if err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "65", "-1", "SIGFOO", "RTMIN+40", "RTMIN3", "HUP2"} {
		if _, err := ParseSignal(in); err == nil {
			t.Errorf("ParseSignal(%q) accepted", in)
		}
	}
}

func TestBadValuesNameTheFlagAndWhatIsAccepted(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-t", "/b"}, "--prefix is required"},
		{[]string{"-p", "/a"}, "--target is required"},
		{[]string{"-p", "/a", "-t", "/b", "-s", "SIGFOO"}, `--signal "SIGFOO": not a signal`},
		{[]string{"-p", "/a", "-t", "/b", "-m", "0999"}, `--mode "0999": not a file mode; use octal digits`},
		{[]string{"-p", "/a", "-t", "/b", "-m", "rw"}, `--mode "rw"`},
		{[]string{"-p", "/a", "-t", "/b", "-o", "no-such-user-here"}, `--owner "no-such-user-here": no such user`},
		{[]string{"-p", "/a", "-t", "/b", "-g", "no-such-group-here"}, `--group "no-such-group-here": no such group`},
		{[]string{"-p", "/a", "-t", "/b", "--layout", "fancy"}, `--layout "fancy": accepted values are atomic and plain`},
		{[]string{"-p", "/a", "-t", "/b", "--log-format", "xml"}, `--log-format "xml"`},
		{[]string{"-p", "/a", "-t", "/b", "--on-change", "reboot"}, `--on-change "reboot": accepted values are signal, restart and none`},
		{[]string{"-p", "/a", "-t", "/b", "--once", "nginx"}, "--once syncs and exits"},
		{[]string{"-p", "/a", "-t", "/b", "--kill-timeout", "soon"}, "kill-timeout"},
	} {
		_, err := Parse(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) error %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
}

func TestOwnerAndGroupNamesAreLookedUp(t *testing.T) {
	c, err := Parse([]string{"-p", "/a", "-t", "/b", "-o", "root", "-g", "root"}, io.Discard)
	if err != nil || c.UID != 0 || c.GID != 0 {
		t.Fatalf("uid %d gid %d err %v", c.UID, c.GID, err)
	}
}

func TestPID1Options(t *testing.T) {
	c, err := Parse([]string{"-p", "/a", "-t", "/b", "--rewrite-signal", "TERM:QUIT", "--rewrite-signal=HUP:0",
		"--remap-exit", "143", "--remap-exit=130", "--parent-death-signal", "SIGTERM", "--", "nginx"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.RewriteSignal[syscall.SIGTERM] != syscall.SIGQUIT || c.RewriteSignal[syscall.SIGHUP] != 0 || len(c.RewriteSignal) != 2 {
		t.Errorf("rewrite %v", c.RewriteSignal)
	}
	if len(c.RemapExit) != 2 || c.RemapExit[0] != 143 || c.RemapExit[1] != 130 {
		t.Errorf("remap-exit %v", c.RemapExit)
	}
	if c.ParentDeath != syscall.SIGTERM {
		t.Errorf("parent-death-signal %v", c.ParentDeath)
	}
	for _, bad := range [][]string{{"--rewrite-signal", "TERM"}, {"--rewrite-signal", "KILL:TERM"}, {"--rewrite-signal", "TERM:NOPE"},
		{"--remap-exit", "300"}, {"--parent-death-signal", "NOPE"}} {
		_, err := Parse(append([]string{"-p", "/a", "-t", "/b"}, bad...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(bad[0], "--")) {
			t.Errorf("%v: error %v does not name the flag", bad, err)
		}
	}
}
