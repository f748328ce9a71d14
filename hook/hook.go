// Package hook runs the check and reload commands: a check command (like `nginx -t`) must pass
// before a new version goes live, a reload command runs after it went live.
//
// A command is one string split into words like a POSIX shell splits them (blanks separate
// words; single quotes, double quotes and backslashes quote), with no expansion, globbing or
// pipes, and executed directly: it works in a FROM scratch image, which has no /bin/sh. Write
// `sh -c '...'` yourself when you want a shell. In every word, {{staged}} becomes the path of
// what is being checked (the staged version directory, or the temporary file of a template)
// and {{target}} the path where it goes live; the command also gets them as the environment
// variables DISPENSER_STAGED and DISPENSER_TARGET. confd's {{.src}} and {{.dest}} are the same
// as {{staged}} and {{target}}.
package hook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Runner runs a command to its end and returns its exit code and output. The supervisor is
// one: while it exists, nothing else may wait for child processes.
type Runner interface {
	Output(ctx context.Context, argv, env []string) (int, []byte, error)
}

// Command is a check or reload command.
type Command struct {
	Argv    []string
	Timeout time.Duration // 0: no limit
}

// Parse splits s into a Command's words.
func Parse(s string, timeout time.Duration) (Command, error) {
	words, err := Split(s)
	if err != nil {
		return Command{}, err
	}
	if len(words) == 0 {
		return Command{}, errors.New("empty command")
	}
	return Command{Argv: words, Timeout: timeout}, nil
}

// Failure is a command that ran and did not exit 0, or could not run.
type Failure struct {
	Name   string // argv[0]
	Code   int
	Output string // stdout and stderr together, trimmed
	Err    error  // why it could not run or was stopped, if so
}

func (f *Failure) Error() string {
	msg := fmt.Sprintf("%s exited with code %d", f.Name, f.Code)
	if f.Err != nil {
		msg = fmt.Sprintf("%s failed (code %d): %v", f.Name, f.Code, f.Err)
	}
	if f.Output != "" {
		msg += ": " + f.Output
	}
	return msg
}

func (f *Failure) Unwrap() error { return f.Err }

// Run runs c with env and the paths staged and target (see the package comment). A command
// that exits 0 returns nil; anything else returns a *Failure holding its output.
func (c Command) Run(ctx context.Context, r Runner, env []string, staged, target string) error {
	if c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	argv := make([]string, len(c.Argv))
	for i, w := range c.Argv {
		argv[i] = strings.NewReplacer("{{staged}}", staged, "{{target}}", target, "{{.src}}", staged, "{{.dest}}", target).Replace(w)
	}
	env = append(env[:len(env):len(env)], "DISPENSER_STAGED="+staged, "DISPENSER_TARGET="+target)
	code, out, err := r.Output(ctx, argv, env)
	if err == nil && code == 0 {
		return nil
	}
	return &Failure{Name: argv[0], Code: code, Output: strings.TrimSpace(string(out)), Err: err}
}

// Split splits s into words as a POSIX shell does, without any expansion.
func Split(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				if s[i] != '\n' {
					w.WriteByte(s[i])
				}
			}
		case c == '\'':
			inWord = true
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("%q: unterminated single quote", s)
			}
			w.WriteString(s[i+1 : i+1+end])
			i += end + 1
		case c == '"':
			inWord = true
			closed := false
			for i++; i < len(s); i++ {
				if s[i] == '"' {
					closed = true
					break
				}
				// In double quotes a backslash quotes only these.
				if s[i] == '\\' && i+1 < len(s) && strings.IndexByte("\"\\$`", s[i+1]) >= 0 {
					i++
				}
				w.WriteByte(s[i])
			}
			if !closed {
				return nil, fmt.Errorf("%q: unterminated double quote", s)
			}
		default:
			inWord = true
			w.WriteByte(c)
		}
	}
	if inWord {
		words = append(words, w.String())
	}
	return words, nil
}
