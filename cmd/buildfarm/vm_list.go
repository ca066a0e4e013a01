package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

func vmListCmd(e *env) *cobra.Command {
	var registry string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List this host's running and suspended VMs, with the commands to look at each",
		Long: `List the VMs recorded in --registry, which the agents keep: name, machine,
task, state (running, suspended, or gone when its QEMU no longer runs),
since when, why (for a suspended VM, the deadline missed or the error), and
under each, the commands to look at it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			recs, err := vmrecord.Registry{Dir: registry}.List()
			if err != nil {
				return err
			}
			if len(recs) == 0 {
				fmt.Fprintf(e.stdout, "no VMs recorded in %s\n", registry)
				return nil
			}
			w := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tMACHINE\tTASK\tSTATE\tSINCE\tWHY")
			now := time.Now()
			for _, r := range recs {
				state := string(r.State)
				if !r.Alive() {
					state = "gone"
				}
				task := r.Task
				if task == "" {
					task = "-"
				}
				why, _, _ := strings.Cut(r.Why, "\n") // the rest is the console's tail
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s (%s ago)\t%s\n", r.Name, r.Machine, task, state,
					r.Since.UTC().Format(time.RFC3339), now.Sub(r.Since).Round(time.Second), why)
			}
			w.Flush()
			fmt.Fprintln(e.stdout)
			for _, r := range recs {
				fmt.Fprintf(e.stdout, "%s:\n", r.Name)
				for _, c := range r.Commands() {
					fmt.Fprintf(e.stdout, "    %s\n", c)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&registry, "registry", vmrecord.DefaultDir, "`directory` of the host's VM records")
	return cmd
}
