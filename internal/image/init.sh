#!/bin/sh
# buildfarm guest init: the first process of a one-shot build VM.
#
# 1. Mount /proc, /sys and /dev (devtmpfs): /etc/fstab, one mount -a.
# 2. Load the kernel modules the network needs (/etc/buildfarm/modules.early
#    names them) with one modprobe (-a); the image builder wrote the list
#    of all the modules, /etc/buildfarm/modules, in dependency order, and
#    a modules.dep for them.
# 3. The rest of the set-up, which the worker's first requests do without
#    (see below): load the other modules (the disk's, the console's, the
#    power button's) with one modprobe; start acpid, so that the ACPI
#    power button powers the guest off (x86_64), and wait until it has
#    the button open; mount the build disk, /dev/vda (ext4), on /build
#    (the worker's root is this initramfs) or as the root to chroot into
#    (the rootfs preset), and a guest without a disk still works: /build
#    is then a directory of the initramfs, in memory; link each
#    virtio-serial port as /dev/virtio-ports/NAME (as udev would: the
#    management console's channels); and make the file
#    /run/buildfarm.ready. On aarch64 the init watches the GPIO power
#    button from the start.
# 4. Network: IPv6 off on the NIC (the guest reaches nothing but the
#    agent, over IPv4; lo keeps ::1). Static 10.0.2.15/24 via 10.0.2.2
#    when the NIC has the magic MAC 00:01:02:03:04:0b (tap on a bridge)
#    or the kernel command line says buildfarm.net=user (QEMU's user-mode
#    networking, whose DHCP server would hand out that address: the agent
#    says so, and the guest saves the 0.15-0.2 s a DHCP exchange takes
#    under TCG); DHCP (udhcpc) otherwise. buildfarm.net=dhcp (the agent's
#    --bridge: a tap on a host bridge) always takes DHCP; with
#    buildfarm.start=channel too (a guest whose state is saved for warm
#    starts) the NIC stays down: the worker sets its MAC, brings it up and
#    asks DHCP for a lease when its start comes. The static network of a
#    guest without hooks is the worker's to set up (handed over in
#    BUILDFARM_NET): one process instead of four ip, and lo and the
#    default route while it waits for its first answers.
# 5. Run the hooks in /etc/buildfarm/rc.d, in name order, with
#    BUILDFARM_ROOT set to the worker's root.
# 6. Start buildfarm-worker in /build with stdio on the console, and power
#    the guest off when it exits, whatever happened before.
#
# Step 3 runs in the background, at the lowest priority, while the
# network is set up and the worker starts and makes its first requests
# (its progress report, the task and its key), unless the worker's root
# is on the disk or there are hooks: then it runs first, in order. The
# worker waits for /run/buildfarm.ready (BUILDFARM_READY) before it
# touches /build, and before it asks for its start (buildfarm.start=wait:
# a saved guest has all of it behind it). Until the file is there, a
# press of the power button may go unseen; package qemu's VM.Shutdown
# presses it again until the guest powers off.
#
# Under TCG a process costs the guest about 4-8 ms, so what the init does
# often (checks, waits, reading a file) it does with the shell's builtins.
#
# /etc/buildfarm/config sets ROOT=initramfs or ROOT=disk and NAME.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ROOT=initramfs
NAME=guest
. /etc/buildfarm/config

say() { echo "init: $*"; }
halt() {
	sync
	say "powering off"
	poweroff -f
	sleep 10
}
# up sets $up to the seconds since boot.
up() { read -r up _ </proc/uptime; }
# exists reports whether one of the paths (a glob's expansion) exists.
exists() {
	for f; do [ -e "$f" ] && return 0; done
	return 1
}

mount -a
exec </dev/console >/dev/console 2>&1
up
read -r release </proc/sys/kernel/osrelease
say "buildfarm guest $NAME, kernel $release, up ${up}s"
echo "$NAME" >/proc/sys/kernel/hostname

# The modules: those the network needs first, the others in step 3, each
# set with one modprobe (-a), which loads each after what it depends on.
# Without modules.early, all of them first.
early=" "
if [ -e /etc/buildfarm/modules.early ]; then
	while read -r m; do early="$early$m "; done </etc/buildfarm/modules.early
else
	early="*"
fi
all=""
first=""
later=""
while read -r ko; do
	[ -n "$ko" ] || continue
	m=${ko##*/}
	m=${m%.ko}
	all="$all $m"
	case "$early" in
	"*" | *" $m "*) first="$first $m" ;;
	*) later="$later $m" ;;
	esac
done </etc/buildfarm/modules
# loaded NAME... says which of the modules are there.
loaded() {
	ok=""
	failed=""
	for m; do
		if [ -d "/sys/module/$m" ]; then
			ok="$ok $m"
		else
			failed="$failed $m"
		fi
	done
	say "modules loaded:$ok"
	[ -z "$failed" ] || say "modules FAILED:$failed"
}
# Step 3 in the background, unless the worker's root is on the disk or
# there are hooks; in order otherwise, and then with one modprobe.
background=1
if [ "$ROOT" = disk ] || exists /etc/buildfarm/rc.d/*; then
	background=""
	first=$all
	later=""
fi
[ -z "$first" ] || {
	modprobe -a $first
	loaded $first
}

# opened PID FILE... reports whether process PID has each FILE open.
opened() {
	pid=$1
	shift
	for want; do
		[ -e "$want" ] || continue
		found=""
		for fd in /proc/$pid/fd/*; do
			if [ "$fd" -ef "$want" ]; then
				found=1
				break
			fi
		done
		[ -n "$found" ] || return 1
	done
}

# The disk: wait briefly for devtmpfs to make the node once the driver has
# seen the device. Sets $run (the chroot of the rootfs preset) and
# BUILDFARM_ROOT.
mount_disk() {
	[ -d /build ] || mkdir -p /build
	disk=""
	if [ -e /sys/block/vda ]; then
		n=0
		while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do
			usleep 20000
			n=$((n + 1))
		done
		disk=/dev/vda
	fi
	if [ -z "$disk" ]; then
		say "no disk: /build is in memory"
	elif [ "$ROOT" = disk ]; then
		mkdir -p /mnt/root
		if mount -t ext4 "$disk" /mnt/root; then
			say "disk $disk mounted on /mnt/root, the worker's root"
			for d in proc sys dev; do
				mkdir -p "/mnt/root/$d"
				mount --bind "/$d" "/mnt/root/$d"
			done
			mkdir -p /mnt/root/build /mnt/root/tmp
			run="chroot /mnt/root"
			export BUILDFARM_ROOT=/mnt/root
		else
			say "mounting $disk FAILED"
			halt
		fi
	elif mount -t ext4 "$disk" /build; then
		say "disk $disk mounted on /build"
	else
		say "mounting $disk on /build FAILED; /build is in memory"
	fi
}

# virtio-serial ports by name: guest programs write notifications to
# /dev/virtio-ports/org.buildfarm.notify. The host announces the ports
# after the driver has bound: wait for them briefly.
link_ports() {
	n=0
	while exists /sys/bus/virtio/drivers/virtio_console/virtio* && ! exists /sys/class/virtio-ports/* && [ $n -lt 50 ]; do
		usleep 20000
		n=$((n + 1))
	done
	for p in /sys/class/virtio-ports/*; do
		[ -e "$p/name" ] || continue
		[ -d /dev/virtio-ports ] || mkdir -p /dev/virtio-ports
		read -r port <"$p/name"
		ln -sf "../${p##*/}" "/dev/virtio-ports/$port"
		# Build steps run unprivileged and may write notifications.
		[ "$port" != org.buildfarm.notify ] || chmod 0666 "/dev/${p##*/}"
	done
}

# events_made reports whether each input event device has its node.
events_made() {
	for e in /sys/class/input/event*; do
		[ -e "$e" ] || continue
		[ -e "/dev/input/${e##*/}" ] || return 1
	done
}
# The ACPI power button (QMP system_powerdown) powers the guest off: busybox
# acpid runs /etc/acpi/PWRF/00000080. acpid opens the event devices once,
# so wait for devtmpfs to make them, and then until acpid has them open:
# the set-up is not done before the button works. With an argument (the
# background set-up's), acpid goes back to the normal priority.
power_button() {
	exists /sys/class/input/event* || return 0
	n=0
	while ! events_made && [ $n -lt 200 ]; do
		usleep 10000
		n=$((n + 1))
	done
	acpid -d -c /etc/acpi </dev/null >/dev/null 2>&1 &
	acpid=$!
	[ -z "$1" ] || renice 0 -p "$acpid" >/dev/null 2>&1
	n=0
	while [ -d "/proc/$acpid" ] && ! opened "$acpid" /dev/input/event* && [ $n -lt 200 ]; do
		usleep 10000
		n=$((n + 1))
	done
}

# Step 3.
ready=/run/buildfarm.ready
set_up() {
	if [ -n "$1" ]; then
		# In the background, at the lowest priority: the worker first.
		read -r self _ </proc/self/stat
		renice -n 19 -p "$self" >/dev/null 2>&1
	fi
	[ -z "$later" ] || {
		modprobe -a $later
		loaded $later
	}
	power_button "$1"
	mount_disk
	link_ports
	: >"$ready"
}

# aarch64: QEMU's virt machine without firmware has no ACPI; QMP
# system_powerdown pulses pin 3 of its PL061 GPIO for 100 ms, and Debian's
# cloud kernel has no gpio-keys driver to make that a key press. Watch the
# line from here every 50 ms, without forking: read is a shell builtin, and
# a read that times out on a fifo nobody writes is the sleep.
for c in /sys/class/gpio/gpiochip*; do
	[ -e "$c/label" ] || continue
	read -r label <"$c/label"
	[ "$label" = 9030000.pl061 ] || continue
	read -r base <"$c/base"
	pin=$((base + 3))
	echo "$pin" >/sys/class/gpio/export 2>/dev/null
	[ -r "/sys/class/gpio/gpio$pin/value" ] || break
	mkfifo /run/powerbutton.tick
	(
		exec 3<>/run/powerbutton.tick
		while :; do
			read -r v <"/sys/class/gpio/gpio$pin/value" || exit 0
			[ "$v" != 1 ] || break
			read -r -t 0.05 x <&3
		done
		say "power button pressed"
		sync
		poweroff -f
	) </dev/null &
done

run=""
setup=""
if [ -n "$background" ]; then
	set_up background &
	setup=$!
	export BUILDFARM_READY="$ready"
else
	set_up
fi
export BUILDFARM_ROOT=${BUILDFARM_ROOT:-/}

nic=""
for d in /sys/class/net/*; do
	[ "${d##*/}" = lo ] || { nic=${d##*/}; break; }
done
if [ -z "$nic" ]; then
	ip link set lo up
	say "no network interface"
else
	read -r mac <"/sys/class/net/$nic/address"
	read -r cmdline </proc/cmdline
	user=""
	dhcp=""
	channel=""
	for a in $cmdline; do
		case "$a" in
		buildfarm.net=user) user=1 ;;
		buildfarm.net=dhcp) dhcp=1 ;;
		buildfarm.start=channel) channel=1 ;;
		esac
	done
	if [ -e "/proc/sys/net/ipv6/conf/$nic/disable_ipv6" ]; then
		echo 1 >"/proc/sys/net/ipv6/conf/$nic/disable_ipv6"
	fi
	static=""
	[ -n "$dhcp" ] || { [ "$mac" != 00:01:02:03:04:0b ] && [ -z "$user" ]; } || static=1
	if [ -n "$static" ] && ! exists /etc/buildfarm/rc.d/*; then
		# One process, the worker, sets it up before its first request.
		export BUILDFARM_NET="$nic 10.0.2.15/24 10.0.2.2"
	else
		ip link set lo up
		[ -n "$dhcp" ] && [ -n "$channel" ] || ip link set "$nic" up
	fi
	if [ -n "$BUILDFARM_NET" ]; then
		[ -z "$user" ] || echo "nameserver 10.0.2.3" >/etc/resolv.conf
		say "network $nic ($mac): static 10.0.2.15/24 via 10.0.2.2, set by the worker"
	elif [ -n "$dhcp" ] && [ -n "$channel" ]; then
		say "network $nic ($mac): down until the worker's start"
		if [ "$ROOT" = disk ] && mkdir -p /mnt/root/run/buildfarm/bin; then
			# The worker sets the network up from the disk's root, which
			# may have no ip nor udhcpc: busybox's, and the DHCP script.
			cp /bin/busybox /etc/buildfarm/udhcpc.script /mnt/root/run/buildfarm/
			ln -sf ../busybox /mnt/root/run/buildfarm/bin/ip
			ln -sf ../busybox /mnt/root/run/buildfarm/bin/udhcpc
		fi
	elif [ -n "$static" ]; then
		ip addr add 10.0.2.15/24 dev "$nic"
		ip route add default via 10.0.2.2
		[ -z "$user" ] || echo "nameserver 10.0.2.3" >/etc/resolv.conf
		say "network $nic ($mac): static 10.0.2.15/24 via 10.0.2.2"
	elif udhcpc -i "$nic" -f -q -n -t 10 -T 1 -s /etc/buildfarm/udhcpc.script; then
		say "network $nic ($mac): $(ip -4 -o addr show dev "$nic" | awk '{print $4}') by DHCP"
	else
		say "network $nic ($mac): no DHCP lease"
	fi
	[ "$ROOT" != disk ] || cp /etc/resolv.conf /mnt/root/etc/resolv.conf 2>/dev/null
fi

for hook in /etc/buildfarm/rc.d/*; do
	[ -x "$hook" ] || continue
	say "running $hook"
	(cd "${BUILDFARM_ROOT%/}/build" && "$hook") || say "$hook failed: status $?"
done

up
say "starting buildfarm-worker (up ${up}s)"
if [ -n "$run" ]; then
	$run /bin/sh -c 'cd /build && exec buildfarm-worker'
else
	(cd /build && exec buildfarm-worker)
fi
say "buildfarm-worker exited: status $?"
[ -z "$setup" ] || wait "$setup"
[ ! -e /sys/block/vda ] || {
	sync
	[ "$ROOT" != disk ] || umount /mnt/root/proc /mnt/root/sys /mnt/root/dev
	umount /build /mnt/root 2>/dev/null
}
halt
