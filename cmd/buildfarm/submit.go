package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/archive"
	"github.com/buildfarm/buildfarm/internal/controller"
	"github.com/buildfarm/buildfarm/internal/manifest"
)

func init() {
	register(func(e *env) *cobra.Command {
		var (
			ctl, tokenFile, tmplFile, dir, archiveFile, gitURL, rev string
			req                                                     controller.SubmitRequest
			timeout                                                 time.Duration
		)
		cmd := &cobra.Command{
			Use:   "submit --controller URL --template FILE (--dir DIR | --archive FILE | --git URL --rev REV) [options]",
			Short: "Submit work to a controller",
			Long: `Submit a build: its sources, the steps (a task template such as
examples/hello/task.manifest, whose buildfarm-configure, -update, -test and
-install fields are the build's commands) and the build configurations.

The sources are one of:
  --dir DIR          a directory, packed here reproducibly (sorted, zero
                     times and owners) without .git and without the
                     template's buildfarm-archive file, and uploaded;
  --archive FILE     a .tar.gz, uploaded as it is;
  --git URL --rev R  a git repository and revision that the controller
                     fetches and packs.

The template's machine and target fields are replaced per configuration;
--name and --version default to its name and version. --config names a
configuration or class of the controller's buildtab (repeatable; "default"
when none, "all" for every one); the submission becomes one task for each.

The admin token comes from --token-file, or $BUILDFARM_ADMIN_TOKEN (a
controller on loopback without a token needs none). Prints the submission's
id alone on the first line, then one line per task: ID, configuration and
state.

  id=$(buildfarm submit --controller http://127.0.0.1:8080 \
      --template examples/hello/task.manifest --dir examples/hello | head -1)
  buildfarm wait --controller http://127.0.0.1:8080 "$id"`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				c, err := apiClient(ctl, tokenFile)
				if err != nil {
					return err
				}
				if timeout > 0 {
					req.Timeout = timeout.String()
				}
				if (gitURL != "") != (rev != "") {
					return fmt.Errorf("--git and --rev go together")
				}
				if gitURL != "" {
					req.Git = &controller.GitSource{URL: gitURL, Revision: rev}
				}
				s, err := submitWork(cmd.Context(), c, req, tmplFile, dir, archiveFile)
				if err != nil {
					return err
				}
				fmt.Fprintln(e.stdout, s.ID)
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				for _, t := range s.Tasks {
					fmt.Fprintf(tw, "task %d\t%s\t%s\n", t.ID, t.Config, t.State)
				}
				return tw.Flush()
			},
		}
		f := cmd.Flags()
		f.StringVar(&ctl, "controller", "", "the controller's `URL`")
		cmd.MarkFlagRequired("controller")
		f.StringVar(&tokenFile, "token-file", "", "`file` holding the admin token (default: $"+tokenEnv+")")
		f.StringVar(&tmplFile, "template", "", "task template `file`: a task manifest with the build steps")
		cmd.MarkFlagRequired("template")
		f.StringVar(&dir, "dir", "", "sources `directory` to pack and upload")
		f.StringVar(&archiveFile, "archive", "", "sources archive `file` (.tar.gz) to upload")
		f.StringVar(&gitURL, "git", "", "git repository `URL` for the controller to fetch")
		f.StringVar(&rev, "rev", "", "git `revision` (commit, branch or tag)")
		f.StringArrayVar(&req.Configs, "config", nil, "build configuration or class `name` (repeatable)")
		f.IntVar(&req.Priority, "priority", 0, "priority: higher runs first")
		f.StringVar(&req.Name, "name", "", "package `name` (default: the template's)")
		f.StringVar(&req.Version, "version", "", "package `version` (default: the template's)")
		f.StringVar(&req.Toolchain, "toolchain", "", "toolchain `name` the agents need (default: any)")
		f.DurationVar(&timeout, "timeout", 0, "build timeout (default: the controller's)")
		f.StringVar(&req.Submitter, "submitter", os.Getenv("USER"), "who submits (shown with the submission)")
		return cmd
	})
}

// submitWork submits req to c with the task template in tmplFile and the
// sources given by exactly one of dir (packed here), archiveFile and
// req.Git, and returns the submission with its tasks. `buildfarm submit`
// and `buildfarm up --demo` submit through it.
func submitWork(ctx context.Context, c *controller.APIClient, req controller.SubmitRequest, tmplFile, dir, archiveFile string) (*controller.Submission, error) {
	tmpl, err := os.ReadFile(tmplFile)
	if err != nil {
		return nil, fmt.Errorf("template: %w", err)
	}
	ms, err := manifest.Parse(bytes.NewReader(tmpl), tmplFile)
	if err != nil {
		return nil, err
	}
	if ms.Len() != 1 {
		return nil, fmt.Errorf("template %s: %d manifests, want one task manifest", tmplFile, ms.Len())
	}
	req.Template = string(tmpl)
	sources := 0
	for _, given := range []bool{dir != "", archiveFile != "", req.Git != nil} {
		if given {
			sources++
		}
	}
	if sources != 1 {
		return nil, fmt.Errorf("give the sources as one of --dir, --archive, --git")
	}
	if req.Git == nil {
		data, err := sourcesArchive(dir, archiveFile, ms.Manifest(0))
		if err != nil {
			return nil, err
		}
		a, err := c.PutArchive(ctx, data)
		if err != nil {
			return nil, err
		}
		req.Archive = a.SHA256
	}
	return c.Submit(ctx, &req)
}

// sourcesArchive reads the archive file, or packs dir reproducibly without
// .git and the template's own buildfarm-archive file.
func sourcesArchive(dir, file string, tmpl manifest.Manifest) ([]byte, error) {
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("archive: %w", err)
		}
		return data, nil
	}
	own, _ := tmpl.Get("buildfarm-archive")
	var buf bytes.Buffer
	if err := archive.Pack(&buf, dir, func(name string) bool { return name == ".git" || (own != "" && name == own) }); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// apiClient makes a client of the controller at url with the admin token
// of tokenFile, or $BUILDFARM_ADMIN_TOKEN.
func apiClient(url, tokenFile string) (*controller.APIClient, error) {
	tok, err := adminToken(tokenFile)
	if err != nil {
		return nil, err
	}
	return controller.NewAPIClient(url, tok, nil)
}

// printTasks writes one line per task: id, configuration, machine, state
// and status with the reason.
func printTasks(w io.Writer, ts []controller.Task) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tCONFIG\tMACHINE\tSTATE\tSTATUS\tATTEMPTS\tAGENT")
	for _, t := range ts {
		status := t.Status
		if t.Reason != "" {
			status += " (" + t.Reason + ")"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", t.ID, t.Config, dash(t.Machine), t.State, dash(status), t.Attempts, dash(t.Agent))
	}
	return tw.Flush()
}

func dash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
