package main

import (
	"context"
	"fmt"

	"github.com/buildfarm/buildfarm/internal/image"
)

// imageBuildHostOS is "image build --preset hostos": the bootable host OS
// image, three files in --out:
//
//	buildos-image    the kernel (the cache's guest kernel, or --kernel)
//	buildos-initrd   the initramfs: busybox, buildfarm, QEMU with its
//	                 libraries and firmware, the modules, and an init that
//	                 runs "buildfarm hostos monitor --host-os"
//	buildos-buildid  the build id a host polls through buildos.buildid_url
//
// Boot them over PXE (see the README's "The host OS") or directly:
//
//	qemu-system-x86_64 -kernel buildos-image -initrd buildos-initrd \
//	    -append "console=ttyS0 buildos.toolchain_url=... buildos.controller_url=..."
func imageBuildHostOS(ctx context.Context, e *env, opts image.Options) error {
	id, err := image.BuildHostOS(ctx, image.HostOSOptions{Out: opts.Out, Kernel: opts.Kernel, Modules: opts.Modules}, e.log)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s: %s, %s, %s (build id %s)\n", opts.Out, image.HostOSKernel, image.HostOSInitrd, image.HostOSBuildID, id)
	return nil
}
