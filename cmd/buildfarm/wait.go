package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/controller"
)

func init() {
	register(func(e *env) *cobra.Command {
		var (
			ctl           string
			timeout, poll time.Duration
		)
		usage := func(err error) error {
			fmt.Fprintf(e.stderr, "buildfarm wait: %v\n", err)
			return silent(2, err)
		}
		cmd := &cobra.Command{
			Use:   "wait --controller URL [--timeout D] ID",
			Short: "Wait for a submission's tasks to end; exit 0 only if all succeeded",
			Long: `Wait until every task of submission ID is done, print each task's status,
and exit 0 if every one ended success or warning, 1 if any did not (error,
abort, abnormal, ...), and 2 when --timeout passed first or the command line
is wrong. Meant for CI:

  buildfarm wait --controller "$URL" --timeout 1h "$id"`,
			RunE: func(cmd *cobra.Command, args []string) error {
				if len(args) != 1 {
					return usage(fmt.Errorf("want one submission ID, got %d arguments", len(args)))
				}
				id, err := strconv.ParseInt(args[0], 10, 64)
				if err != nil || id <= 0 {
					return usage(fmt.Errorf("submission id %q: not a positive number", args[0]))
				}
				if poll <= 0 {
					return usage(fmt.Errorf("--poll %v: not positive", poll))
				}
				c, err := controller.NewAPIClient(ctl, "", nil)
				if err != nil {
					return usage(err)
				}
				ctx := cmd.Context()
				if timeout > 0 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, timeout)
					defer cancel()
				}
				s, err := c.Wait(ctx, id, poll)
				if err != nil {
					if s != nil {
						printTasks(e.stdout, s.Tasks)
					}
					if errors.Is(err, context.DeadlineExceeded) {
						return usage(fmt.Errorf("submission %d: not done after %v", id, timeout))
					}
					return err
				}
				if err := printTasks(e.stdout, s.Tasks); err != nil {
					return err
				}
				if !s.Succeeded() {
					return silent(1, fmt.Errorf("submission %d: not every task succeeded", id))
				}
				return nil
			},
		}
		cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usage(err) })
		f := cmd.Flags()
		f.StringVar(&ctl, "controller", "", "the controller's `URL`")
		f.DurationVar(&timeout, "timeout", 0, "give up after this long, with exit status 2 (default: never)")
		f.DurationVar(&poll, "poll", time.Second, "how often to ask the controller")
		cmd.PreRunE = func(*cobra.Command, []string) error {
			if ctl == "" {
				return usage(errors.New("--controller URL is required"))
			}
			return nil
		}
		return cmd
	})
}
