package apply

import (
	"path"
	"strings"
)

// Keep reports whether the key (relative to the prefix) is mirrored: it matches one of
// include (or include is empty) and none of exclude. A pattern is matched against the whole
// key, segment by segment: *, ? and [...] as in path.Match stay within one segment, and a
// segment ** matches any number of segments (zero included).
func Keep(key string, include, exclude []string) bool {
	if len(include) > 0 && !matchAny(include, key) {
		return false
	}
	return !matchAny(exclude, key)
}

func matchAny(globs []string, key string) bool {
	for _, g := range globs {
		if Match(g, key) {
			return true
		}
	}
	return false
}

// Match reports whether key matches the glob (see Keep). A malformed glob matches nothing;
// config.CheckGlob refuses it at start.
func Match(glob, key string) bool {
	return matchSegments(strings.Split(glob, "/"), strings.Split(key, "/"))
}

func matchSegments(g, k []string) bool {
	for len(g) > 0 {
		if g[0] == "**" {
			for i := 0; i <= len(k); i++ {
				if matchSegments(g[1:], k[i:]) {
					return true
				}
			}
			return false
		}
		if len(k) == 0 {
			return false
		}
		if ok, err := path.Match(g[0], k[0]); err != nil || !ok {
			return false
		}
		g, k = g[1:], k[1:]
	}
	return len(k) == 0
}
