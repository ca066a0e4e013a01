#!/bin/busybox sh
# The host OS's init: mount the kernel's filesystems, load the modules,
# then run the monitor (buildfarm hostos monitor --host-os), which sets the
# host up from the buildos.* parameters and supervises the agents. When the
# monitor stops (no machine volume, or an error) a shell takes over the
# console, so that the admin can look. For tests and debugging, on the
# kernel command line, buildfarm.agent_arg=OPTION passes one more option to
# every agent and buildfarm.monitor_arg=OPTION one to the monitor (both
# repeatable).
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
echo "hostos: loading modules"
while read -r m; do insmod "$m" 2>/dev/null; done </etc/modules
ln -sf /proc/self/fd /dev/fd
set --
for w in $(cat /proc/cmdline); do
	case "$w" in
	buildfarm.agent_arg=*) set -- "$@" --agent-arg "${w#buildfarm.agent_arg=}" ;;
	buildfarm.monitor_arg=*) set -- "$@" "${w#buildfarm.monitor_arg=}" ;;
	esac
done
/bin/buildfarm hostos monitor --host-os --cmdline-file /proc/cmdline --dhcp-script /etc/udhcpc.script "$@"
echo "hostos: the monitor exited with status $?; here is a shell (reboot with: reboot -f)"
exec setsid cttyhack sh
