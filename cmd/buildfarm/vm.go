package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/buildfarm/buildfarm/internal/accel"
	"github.com/buildfarm/buildfarm/internal/arch"
	"github.com/buildfarm/buildfarm/internal/manifest"
	"github.com/buildfarm/buildfarm/internal/qemu"
)

func init() {
	register(func(e *env) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "vm",
			Short: "Run and test virtual machines",
		}
		cmd.AddCommand(vmBootTestCmd(e), vmListCmd(e))
		return cmd
	})
}

// workerStarted matches buildfarm-worker's first sign of life on the
// console: "buildfarm-worker VERSION: started".
func workerStarted(line string) bool {
	i := strings.Index(line, "buildfarm-worker ")
	return i >= 0 && strings.HasSuffix(strings.TrimSpace(line[i:]), ": started")
}

// machineConfig reads the VM files of a machine directory: kernel, initrd
// and cmdline for direct kernel boot, and/or disk.img; its manifest gives
// the guest's architecture, MAC and extra QEMU options.
func machineConfig(dir string) (qemu.Config, error) {
	cfg := qemu.Config{Name: filepath.Base(dir)}
	exists := func(name string) bool {
		_, err := os.Stat(filepath.Join(dir, name))
		return err == nil
	}
	if exists("kernel") {
		cfg.Kernel = filepath.Join(dir, "kernel")
		if exists("initrd") {
			cfg.Initrd = filepath.Join(dir, "initrd")
		}
		if b, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
			cfg.Append = strings.TrimSpace(string(b))
		} else if !errors.Is(err, os.ErrNotExist) {
			return cfg, fmt.Errorf("machine %s: %w", dir, err)
		}
	}
	if exists("disk.img") {
		cfg.Drives = []qemu.Drive{{Path: filepath.Join(dir, "disk.img")}}
	}
	if cfg.Kernel == "" && len(cfg.Drives) == 0 {
		return cfg, fmt.Errorf("machine %s: neither kernel nor disk.img: not a machine directory", dir)
	}
	// The machine manifest, when there is one, gives the MAC and extra
	// QEMU options.
	ms, err := manifest.ReadFile(filepath.Join(dir, "manifest"))
	if errors.Is(err, os.ErrNotExist) {
		return cfg, nil
	}
	if err != nil {
		return cfg, err
	}
	if ms.Len() != 1 {
		return cfg, fmt.Errorf("machine %s: manifest holds %d manifests, want 1", dir, ms.Len())
	}
	m, err := manifest.ParseMachine(ms.Manifest(0), filepath.Join(dir, "manifest"), manifest.Lenient)
	if err != nil {
		return cfg, err
	}
	cfg.Arch = arch.Arch(m.Arch) // "" is x86_64 to QEMU too
	cfg.Net.MAC = m.MAC
	cfg.Extra = m.UnquotedOptions()
	return cfg, nil
}

func vmBootTestCmd(e *env) *cobra.Command {
	var (
		timeout  float64
		powerOff float64
		accelSet string
		memory   int
		keep     bool
	)
	cmd := &cobra.Command{
		Use:   "boot-test DIR",
		Short: "Boot a machine directory, wait for the worker, power it off, and time each step",
		Long: `Boot the machine directory DIR (kernel, initrd, cmdline and/or disk.img,
as buildfarm image build makes it) with user-mode networking, wait for the
worker's first sign of life on the serial console ("buildfarm-worker
VERSION: started"), power the VM off over QMP (the power button, pressed
again each second until the guest acts on it: ACPI on x86_64, where the
guest needs the button and evdev modules and acpid, which buildfarm's init
starts while the worker starts; a GPIO line on aarch64, which the init
watches), and print how long each step took. Exit status 1 when a step fails, with the
tail of the console.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			cfg, err := machineConfig(args[0])
			if err != nil {
				return err
			}
			cfg.MemoryMB = memory
			if cfg.Accel, err = (&accel.Prober{Log: e.log, Arch: cfg.Arch}).Resolve(ctx, accelSet); err != nil {
				return err
			}
			work, err := os.MkdirTemp("", "buildfarm-boot-test-")
			if err != nil {
				return err
			}
			vm, err := qemu.New(cfg, filepath.Join(work, "vm"), e.log)
			if err != nil {
				os.RemoveAll(work)
				return err
			}
			deadline := time.Duration(timeout * float64(time.Second))
			ctx, cancel := context.WithTimeout(ctx, deadline)
			defer cancel()
			err = bootTest(ctx, e, vm, time.Duration(powerOff*float64(time.Second)))
			if err != nil || keep {
				fmt.Fprintf(e.stdout, "kept:  %s (QEMU: %s)\n", work, vm.CommandLine())
			} else {
				os.RemoveAll(work)
			}
			if err != nil {
				fmt.Fprintf(e.stderr, "buildfarm: %v\n", err)
				return silent(1, err)
			}
			return nil
		},
	}
	cmd.Flags().Float64Var(&timeout, "timeout", 60, "seconds for the whole test: boot, first sign of life, power-off")
	cmd.Flags().Float64Var(&powerOff, "poweroff-timeout", 10, "seconds the guest has to power off after the ACPI power-down request")
	cmd.Flags().StringVar(&accelSet, "accel", accel.Auto, "accelerator: auto, kvm or tcg")
	cmd.Flags().IntVar(&memory, "memory", 512, "guest memory in MiB")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the VM's working directory (serial log, QEMU's output)")
	return cmd
}

// bootTest runs the steps of boot-test on vm, printing each as it ends.
func bootTest(ctx context.Context, e *env, vm *qemu.VM, powerOff time.Duration) error {
	defer vm.Forcedown(context.WithoutCancel(ctx))
	t0 := time.Now()
	step := func(name string, since time.Time, detail string) {
		l := fmt.Sprintf("%-19s %6.2fs  %s", name+":", time.Since(since).Seconds(), detail)
		fmt.Fprintln(e.stdout, strings.TrimSpace(l))
	}
	if err := vm.Start(ctx); err != nil {
		return err
	}
	step("start", t0, fmt.Sprintf("qemu pid %d, %s", vm.PID(), vm.Args()[0]))
	t1 := time.Now()
	line, err := vm.WaitConsole(ctx, "the worker's first sign of life", workerStarted)
	if err != nil {
		return err
	}
	step("first sign of life", t1, strings.TrimSpace(line))
	t2 := time.Now()
	pctx, cancel := context.WithTimeout(ctx, powerOff)
	defer cancel()
	ok, err := vm.Shutdown(pctx)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("vm %s: the guest did not power off within %v of the ACPI power-down request (it needs the button and evdev modules and acpid acting on the power button); console:\n%s",
			vm.Info().Name, powerOff, vm.SerialTail(1500))
	}
	if err := vm.Wait(ctx); err != nil {
		return err
	}
	step("power-off", t2, "clean, on the power-down request")
	step("total", t0, "")
	return nil
}
