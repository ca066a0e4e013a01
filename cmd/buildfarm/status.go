package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/controller"
)

func init() {
	register(func(e *env) *cobra.Command {
		var (
			ctl    string
			asJSON bool
			limit  int
		)
		cmd := &cobra.Command{
			Use:   "status --controller URL [ID]",
			Short: "List a controller's submissions and their tasks",
			Long: `Without ID, list the newest submissions (--limit), one line each with how
many of their tasks are done and how many succeeded; with ID, that
submission and a line per task: configuration, machine, state, status (with
the reason of an abnormal end), attempts and agent. --json prints the API's
JSON instead.`,
			Args: cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				ctx := cmd.Context()
				c, err := controller.NewAPIClient(ctl, "", nil)
				if err != nil {
					return err
				}
				var subs []controller.Submission
				if len(args) == 1 {
					id, err := strconv.ParseInt(args[0], 10, 64)
					if err != nil || id <= 0 {
						return fmt.Errorf("submission id %q: not a positive number", args[0])
					}
					s, err := c.Submission(ctx, id)
					if err != nil {
						return err
					}
					subs = []controller.Submission{*s}
				} else {
					list, err := c.Submissions(ctx, limit, 0)
					if err != nil {
						return err
					}
					for _, s := range list {
						full, err := c.Submission(ctx, s.ID)
						if err != nil {
							return err
						}
						subs = append(subs, *full)
					}
				}
				if asJSON {
					enc := json.NewEncoder(e.stdout)
					enc.SetIndent("", "  ")
					if len(args) == 1 {
						return enc.Encode(subs[0])
					}
					return enc.Encode(subs)
				}
				if len(args) == 1 {
					s := subs[0]
					fmt.Fprintf(e.stdout, "submission %d: %s %s, priority %d, submitted %s", s.ID, s.Name, s.Version, s.Priority, s.Created.Format("2006-01-02 15:04:05Z"))
					if s.Repository != "" {
						fmt.Fprintf(e.stdout, ", from %s %s", s.Repository, s.Revision)
					}
					fmt.Fprintln(e.stdout)
					return printTasks(e.stdout, s.Tasks)
				}
				tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tNAME\tVERSION\tSUBMITTED\tDONE\tSUCCEEDED")
				for _, s := range subs {
					done, ok := 0, 0
					for _, t := range s.Tasks {
						if t.State == "done" {
							done++
							if t.Status == "success" || t.Status == "warning" {
								ok++
							}
						}
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d/%d\t%d/%d\n", s.ID, s.Name, s.Version, s.Created.Format("2006-01-02 15:04:05Z"), done, len(s.Tasks), ok, len(s.Tasks))
				}
				return tw.Flush()
			},
		}
		f := cmd.Flags()
		f.StringVar(&ctl, "controller", "", "the controller's `URL`")
		cmd.MarkFlagRequired("controller")
		f.BoolVar(&asJSON, "json", false, "print JSON")
		f.IntVar(&limit, "limit", 20, "submissions to list")
		return cmd
	})
}
