package hook

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestSplitLikeAShell(t *testing.T) {
	for in, want := range map[string][]string{
		`nginx -t`:                      {"nginx", "-t"},
		`  nginx   -t  `:                {"nginx", "-t"},
		`sh -c 'nginx -t && echo "ok"'`: {"sh", "-c", `nginx -t && echo "ok"`},
		`echo "a \"b\" \c" 'd'e`:        {"echo", `a "b" \c`, "de"},
		`a\ b ""`:                       {"a b", ""},
		`haproxy -c -f {{staged}}`:      {"haproxy", "-c", "-f", "{{staged}}"},
	} {
		got, err := Split(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("Split(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{`'a`, `"a`, `a "b\"`} {
		if _, err := Split(bad); err == nil {
			t.Errorf("Split(%q) accepted", bad)
		}
	}
	if _, err := Parse("   ", 0); err == nil {
		t.Error("an empty command was accepted")
	}
}

type fakeRunner struct {
	argv, env []string
	code      int
	out       string
	err       error
}

func (f *fakeRunner) Output(_ context.Context, argv, env []string) (int, []byte, error) {
	f.argv, f.env = argv, env
	return f.code, []byte(f.out), f.err
}

func TestRunPassesThePathsAndReportsTheOutput(t *testing.T) {
	c, _ := Parse("check --file={{staged}} --dest {{target}} {{.src}} {{.dest}}", 0)
	r := &fakeRunner{}
	if err := c.Run(context.Background(), r, []string{"A=1"}, "/s", "/t"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.argv, []string{"check", "--file=/s", "--dest", "/t", "/s", "/t"}) {
		t.Fatalf("argv %q", r.argv)
	}
	if !slices.Equal(r.env, []string{"A=1", "DISPENSER_STAGED=/s", "DISPENSER_TARGET=/t"}) {
		t.Fatalf("env %q", r.env)
	}
	r.code, r.out = 1, "line 3: syntax error\n"
	err := c.Run(context.Background(), r, nil, "/s", "/t")
	var f *Failure
	if !errors.As(err, &f) || f.Code != 1 || !strings.Contains(err.Error(), "line 3: syntax error") {
		t.Fatalf("error %v does not carry the code and output", err)
	}
	r.code, r.err = 127, errors.New("command not found")
	if err := c.Run(context.Background(), r, nil, "/s", "/t"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("error %v", err)
	}
}
