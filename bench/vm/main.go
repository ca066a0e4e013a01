// Command vm benchmarks buildfarm's VM layer against raw QEMU, side by
// side in one run, with the cached guest kernel under the chosen
// accelerator (TCG here):
//
//   - ours: package qemu starts the VM (QMP socket, serial log, user-mode
//     networking, qboot), waits for the first sign of life on the console
//     ("buildfarm-worker ...: started"), and powers it off over QMP (ACPI
//     power button, acpid in the guest); timed from Start to QEMU's exit.
//   - raw: `qemu-system-x86_64 -kernel K -initrd I -append ...` with an
//     init that powers off at once, the whole process timed, once with
//     QEMU's default firmware (SeaBIOS) and once with -bios qboot.rom.
//
// Runs alternate so that load on the machine hits all alike; it prints each
// run, the medians and the ratio of ours to the fastest raw variant.
//
//	go run ./bench/vm [-runs 5] [-accel tcg]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/buildfarm/buildfarm/internal/accel"
	"github.com/buildfarm/buildfarm/internal/cache"
	"github.com/buildfarm/buildfarm/internal/proc"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/qemu/guesttest"
)

func main() {
	runs := flag.Int("runs", 5, "runs of each variant")
	accelSet := flag.String("accel", "tcg", "accelerator: auto, kvm or tcg")
	flag.Parse()
	if err := run(context.Background(), *runs, *accelSet); err != nil {
		fmt.Fprintln(os.Stderr, "bench/vm:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, runs int, accelSet string) error {
	k, err := cache.GuestKernel()
	if err != nil {
		return err
	}
	acc, err := (&accel.Prober{}).Resolve(ctx, accelSet)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "bench-vm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ours := filepath.Join(tmp, "ours.initrd")
	body := "echo 'buildfarm-worker bench: started'\nexec sleep 3600\n"
	if err := guesttest.Write(ctx, ours, k, guesttest.Prelude+body, guesttest.PowerButton...); err != nil {
		return err
	}
	raw := filepath.Join(tmp, "raw.initrd")
	if err := guesttest.Write(ctx, raw, k, "#!/bin/busybox sh\n/bin/busybox poweroff -f\n"); err != nil {
		return err
	}

	variants := []struct {
		name string
		run  func(i int) (time.Duration, error)
	}{
		{"ours (start, first sign of life, ACPI power-off)", func(i int) (time.Duration, error) {
			return runOurs(ctx, k, acc, ours, filepath.Join(tmp, fmt.Sprint("vm", i)))
		}},
		{"raw qemu -kernel -initrd, SeaBIOS", func(int) (time.Duration, error) {
			return runRaw(ctx, k, acc, raw, tmp, "")
		}},
		{"raw qemu -kernel -initrd, qboot", func(int) (time.Duration, error) {
			return runRaw(ctx, k, acc, raw, tmp, qemu.QbootROM)
		}},
	}
	times := make([][]time.Duration, len(variants))
	fmt.Printf("kernel %s, accel %s, %d runs each, alternating\n", k.Version, acc, runs)
	for i := range runs {
		for j, v := range variants {
			d, err := v.run(i)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			times[j] = append(times[j], d)
			fmt.Printf("run %d  %-50s %.2fs\n", i+1, v.name, d.Seconds())
		}
	}
	med := make([]time.Duration, len(variants))
	for j, v := range variants {
		slices.Sort(times[j])
		med[j] = times[j][len(times[j])/2]
		fmt.Printf("median %-50s %.2fs (min %.2fs, max %.2fs)\n", v.name, med[j].Seconds(), times[j][0].Seconds(), times[j][len(times[j])-1].Seconds())
	}
	best := min(med[1], med[2])
	fmt.Printf("ratio ours / fastest raw: %.2f (SeaBIOS raw: %.2f)\n", float64(med[0])/float64(best), float64(med[0])/float64(med[1]))
	return nil
}

func runOurs(ctx context.Context, k cache.Kernel, acc, initrd, dir string) (time.Duration, error) {
	vm, err := qemu.New(qemu.Config{Name: "bench", Accel: acc, Kernel: k.Image, Initrd: initrd, Append: guesttest.Append}, dir, nil)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	defer vm.Forcedown(context.WithoutCancel(ctx))
	t0 := time.Now()
	if err := vm.Start(ctx); err != nil {
		return 0, err
	}
	if _, err := vm.WaitConsole(ctx, "the first sign of life", qemu.Contains(": started")); err != nil {
		return 0, err
	}
	ok, err := vm.Shutdown(ctx)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("the guest did not power off; console:\n%s", vm.SerialTail(1000))
	}
	if err := vm.Wait(ctx); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}

func runRaw(ctx context.Context, k cache.Kernel, acc, initrd, dir, bios string) (time.Duration, error) {
	args := []string{"-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc,accel=" + acc,
		"-m", "256", "-kernel", k.Image, "-initrd", initrd, "-append", guesttest.Append,
		"-serial", "file:" + filepath.Join(dir, "raw-serial.log"), "-no-reboot"}
	if bios != "" {
		args = append(args, "-bios", bios)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := proc.Run(ctx, nil, "qemu-system-x86_64", args...); err != nil {
		return 0, err
	}
	return time.Since(t0), nil
}
