package controller

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/proc"
)

// gitEnv keeps git from asking for passwords and from running programs
// named by a URL (ext::).
var gitEnv = []string{"GIT_TERMINAL_PROMPT=0", "GIT_ALLOW_PROTOCOL=file:git:http:https:ssh", "GIT_CONFIG_NOSYSTEM=1"}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := proc.Command(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), gitEnv...)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := proc.Wait(cmd); err != nil {
		return "", err
	}
	return strings.TrimSpace(out.String()), nil
}

// fetchGit clones repo, checks out rev (a commit, branch or tag) and packs
// the tree without .git, reproducibly. It returns the archive and the
// commit. An archive over limit bytes is an error.
func fetchGit(ctx context.Context, repo, rev string, limit int64) ([]byte, string, error) {
	switch {
	case repo == "" || rev == "":
		return nil, "", badf("git: both url and revision are needed")
	case strings.HasPrefix(repo, "-") || strings.ContainsAny(repo, "\n\x00"):
		return nil, "", badf("git url %q: not a repository URL", repo)
	case strings.HasPrefix(rev, "-") || strings.ContainsAny(rev, " \t\n\x00"):
		return nil, "", badf("git revision %q: not a revision", rev)
	}
	tmp, err := os.MkdirTemp("", "buildfarm-git-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(tmp, "src")
	if _, err := git(ctx, tmp, "clone", "--quiet", "--no-checkout", "--", repo, src); err != nil {
		return nil, "", badf("git %s: %v", repo, err)
	}
	var commit string
	for _, r := range []string{rev, "origin/" + rev} {
		if commit, err = git(ctx, src, "rev-parse", "--verify", "--quiet", "--end-of-options", r+"^{commit}"); err == nil {
			break
		}
	}
	if err != nil {
		return nil, "", badf("git %s: revision %q: not found", repo, rev)
	}
	if _, err := git(ctx, src, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit); err != nil {
		return nil, "", fmt.Errorf("git %s: checkout %s: %w", repo, commit, err)
	}
	var buf bytes.Buffer
	if err := archive.Pack(&buf, src, func(name string) bool { return name == ".git" }); err != nil {
		return nil, "", fmt.Errorf("git %s %s: %w", repo, commit, err)
	}
	if int64(buf.Len()) > limit {
		return nil, "", badf("git %s %s: archive of %d bytes, larger than %d", repo, commit, buf.Len(), limit)
	}
	return buf.Bytes(), commit, nil
}
