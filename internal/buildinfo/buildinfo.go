// Package buildinfo reports the version of buildfarm's binaries. The version
// is set at link time with -ldflags "-X .../buildinfo.Version=..."; a build
// without it reports the VCS revision Go embedded, or "devel".
package buildinfo

import "runtime/debug"

// Version is the release version, set by the linker.
var Version = ""

// String returns the version of the running binary.
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			if dirty {
				rev += "-dirty"
			}
			return "0.0.0-" + rev
		}
	}
	return "0.0.0-devel"
}
