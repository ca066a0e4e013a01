package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/buildfarm/buildfarm/internal/console"
	"github.com/buildfarm/buildfarm/internal/vmrecord"
)

func init() {
	register(func(e *env) *cobra.Command {
		var registry, links string
		cmd := &cobra.Command{
			Use:   "console VM [COMMAND [ARG]]",
			Short: "Manage a running VM through its console (after uml_mconsole)",
			Long: `Connect to the management console of VM and run COMMAND, printing the
reply: "OK" or "ERR MESSAGE", then its body. Exit status 0 on OK, 1 on ERR.
With no COMMAND, an interactive prompt runs one command a line.

VM is a VM's name (its record in --registry, as buildfarm vm list shows
it), TOOLCHAIN-INSTANCE for the VM an agent instance runs now (its link in
--links), or the path of a console socket.

Commands:
` + console.HelpText() + `
notify streams until interrupted (Ctrl-C); attach relays the terminal to the
guest's serial console until Ctrl-] is typed.`,
			Args: cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				ctx := cmd.Context()
				sock, err := consoleSocket(args[0], registry, links)
				if err != nil {
					return err
				}
				if len(args) == 1 {
					return consolePrompt(ctx, e, sock, args[0])
				}
				line, err := consoleLine(args[1:])
				if err != nil {
					return err
				}
				return consoleRun(ctx, e, sock, line)
			},
		}
		cmd.Flags().StringVar(&registry, "registry", vmrecord.DefaultDir, "`directory` of the host's VM records")
		cmd.Flags().StringVar(&links, "links", console.DefaultLinkDir, "`directory` of the agents' TOOLCHAIN-INSTANCE.sock console links")
		// Arguments after VM are the console command's, not flags.
		cmd.Flags().SetInterspersed(false)
		return cmd
	})
}

// consoleSocket finds the console socket of vm: a path, a record's
// console, or an agent instance's link.
func consoleSocket(vm, registry, links string) (string, error) {
	if strings.Contains(vm, "/") {
		if _, err := os.Stat(vm); err != nil {
			return "", fmt.Errorf("console %s: %w", vm, err)
		}
		return vm, nil
	}
	rec, err := vmrecord.Registry{Dir: registry}.Read(vm)
	if err == nil {
		if rec.Console == "" {
			return "", fmt.Errorf("vm %s has no console (its record in %s names none)", vm, registry)
		}
		return rec.Console, nil
	}
	if !errors.Is(err, vmrecord.ErrNotFound) {
		return "", err
	}
	l := filepath.Join(links, vm+".sock")
	if _, lerr := os.Stat(l); lerr == nil {
		return l, nil
	}
	return "", fmt.Errorf("vm %s: no record in %s and no console link %s (buildfarm vm list shows the VMs)", vm, registry, l)
}

// consoleLine joins a command and its argument into one line; a backup
// destination is made absolute, since the console resolves it, not us.
func consoleLine(args []string) (string, error) {
	line := strings.Join(args, " ")
	if strings.ContainsAny(line, "\r\n") {
		return "", fmt.Errorf("console command %q: one line, please", line)
	}
	if args[0] == "backup" && len(args) == 2 {
		abs, err := filepath.Abs(args[1])
		if err != nil {
			return "", err
		}
		line = "backup " + abs
	}
	return line, nil
}

// consoleRun runs one command line on a connection of its own.
func consoleRun(ctx context.Context, e *env, sock, line string) error {
	c, err := console.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	return consoleDo(ctx, e, c, line)
}

func consoleDo(ctx context.Context, e *env, c *console.Client, line string) error {
	var rep console.Reply
	var err error
	if console.IsStream(line) {
		var in io.Reader
		if strings.HasPrefix(line, "attach") {
			restore := rawTerminal(e.stdin)
			defer restore()
			in = detachOn(e.stdin, 0x1d) // Ctrl-]
		}
		rep, err = c.Stream(ctx, line, in, e.stdout)
		if err == nil && rep.OK {
			return nil
		}
	} else {
		rep, err = c.Do(ctx, line)
	}
	if err != nil {
		return err
	}
	status := "OK"
	if !rep.OK {
		status = "ERR"
	}
	if rep.Message != "" {
		status += " " + rep.Message
	}
	fmt.Fprintln(e.stdout, status)
	io.WriteString(e.stdout, rep.Body)
	if !rep.OK {
		return silent(1, errors.New(status))
	}
	return nil
}

// consolePrompt reads command lines from standard input and runs each.
func consolePrompt(ctx context.Context, e *env, sock, name string) error {
	c, err := console.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	in := bufio.NewScanner(e.stdin)
	for {
		fmt.Fprintf(e.stdout, "(%s) ", name)
		if !in.Scan() {
			fmt.Fprintln(e.stdout)
			return in.Err()
		}
		line := strings.TrimSpace(in.Text())
		switch {
		case line == "":
			continue
		case line == "quit" || line == "exit":
			return nil
		case console.IsStream(line):
			// A stream takes the connection: give it one of its own.
			err = consoleRun(ctx, e, sock, line)
		default:
			if f := strings.Fields(line); len(f) == 2 && f[0] == "backup" {
				line, _ = consoleLine(f)
			}
			err = consoleDo(ctx, e, c, line)
		}
		var ee *exitError
		if err != nil && !errors.As(err, &ee) {
			return err
		}
	}
}

// rawTerminal puts r in raw mode when it is a terminal and returns what
// restores it.
func rawTerminal(r io.Reader) func() {
	f, ok := r.(*os.File)
	if !ok {
		return func() {}
	}
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return func() {}
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if unix.IoctlSetTermios(fd, unix.TCSETS, &raw) != nil {
		return func() {}
	}
	return func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }
}

// detachOn reads r until the byte esc, which reads as end of file.
func detachOn(r io.Reader, esc byte) io.Reader { return &escReader{r: r, esc: esc} }

type escReader struct {
	r    io.Reader
	esc  byte
	done bool
}

func (e *escReader) Read(p []byte) (int, error) {
	if e.done {
		return 0, io.EOF
	}
	n, err := e.r.Read(p)
	for i := range p[:n] {
		if p[i] == e.esc {
			e.done = true
			return i, nil
		}
	}
	return n, err
}
