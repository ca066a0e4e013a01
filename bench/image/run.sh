#!/bin/sh
# bench/image: the guest image's initramfs, measured side by side in one run.
#
#  1. Boot time of the busybox machine with its initrd uncompressed (what
#     `buildfarm image build` writes) and gzip -9'd, interleaved, RUNS times
#     each, under TCG with qboot: QEMU's wall and CPU time from start to the
#     guest powering itself off after the worker's first sign of life.
#  2. Size: our initramfs against Debian's own initrd (mkinitramfs, as
#     initramfs-tools makes it on install) for the same kernel. initramfs-tools
#     is installed into a copy of the cached debootstrap rootfs and run there
#     in a chroot, so the host is left alone. Needs root and the network to
#     deb.debian.org; SKIP_DEBIAN=1 skips this part.
#
# Usage (as root, from the repository): sh bench/image/run.sh
#   RUNS   boots per variant (default 7)
set -eu
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-7}
CACHE="${BUILDFARM_CACHE:-$HOME/.cache/buildfarm}"
work=$(mktemp -d /tmp/bench-image.XXXXXX)
root="$work/rootfs"
tftpd=""
cleanup() {
	[ -z "$tftpd" ] || kill "$tftpd" 2>/dev/null || true
	for m in proc sys dev; do
		mountpoint -q "$root/$m" 2>/dev/null && umount "$root/$m"
	done
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

go build -o "$work/buildfarm" ./cmd/buildfarm
CGO_ENABLED=0 go build -o "$work/buildfarm-worker" ./cmd/buildfarm-worker
"$work/buildfarm" image build --preset busybox --out "$work/m" --worker "$work/buildfarm-worker" >"$work/built"
ourmods=$(sed -n 's/.* \([0-9]*\) modules:.*/\1/p' "$work/built")
m="$work/m"
gzip -9n <"$m/initrd" >"$work/initrd.gz"
ver=$(cat "$CACHE/kernel/version")
# The worker's TFTP server: it finds no task there and exits, and the guest
# powers off.
mkdir -p "$work/tftp"
port=$((20000 + $$ % 10000))
"$work/buildfarm" tftp serve --root "$work/tftp" --listen "127.0.0.1:$port" --allow-put 2>/dev/null &
tftpd=$!

echo "== boot: busybox machine, kernel $ver, TCG, qboot, $RUNS runs each, interleaved"
boot() { # initrd -> "wall cpu" seconds
	/usr/bin/time -f "%e %U %S" -o "$work/time" qemu-system-x86_64 -M pc -accel tcg \
		-bios /usr/share/qemu/qboot.rom -m 512 -smp 1 \
		-kernel "$m/kernel" -initrd "$1" -append "$(cat "$m/cmdline") buildfarm.tftp=10.0.2.2:$port" \
		-drive "file=$m/disk.img,if=virtio,format=raw,snapshot=on" \
		-nic user,model=virtio-net-pci -serial "file:$work/serial" \
		-display none -nodefaults -no-reboot
	grep -q "buildfarm-worker .*: started" "$work/serial" || { echo "no worker start:" >&2; cat "$work/serial" >&2; exit 1; }
	awk '{printf "%.3f %.3f\n", $1, $2 + $3}' "$work/time"
}
: >"$work/raw"
: >"$work/gz"
i=0
while [ $i -lt "$RUNS" ]; do
	boot "$m/initrd" >>"$work/raw"
	boot "$work/initrd.gz" >>"$work/gz"
	i=$((i + 1))
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for v in raw gz; do
	size=$([ $v = raw ] && stat -c %s "$m/initrd" || stat -c %s "$work/initrd.gz")
	printf "%-13s %8d bytes  wall median %ss (%s)  cpu median %ss\n" \
		"$([ $v = raw ] && echo uncompressed || echo gzip-9)" "$size" \
		"$(cut -d' ' -f1 "$work/$v" | median)" "$(cut -d' ' -f1 "$work/$v" | sort -n | tr '\n' ' ' | sed 's/ $//')" \
		"$(cut -d' ' -f2 "$work/$v" | median)"
done

echo "== size: ours against Debian's mkinitramfs for $ver"
"$work/buildfarm" image inspect --top 4 "$m/initrd"
[ "${SKIP_DEBIAN:-0}" = 1 ] && exit 0
tarball="$CACHE/rootfs/bookworm-minbase-build-essential.tar"
[ -f "$tarball" ] || "$work/buildfarm" image build --preset debian --out "$work/d" --worker "$work/buildfarm-worker" >/dev/null
mkdir -p "$root"
tar -C "$root" --numeric-owner -xpf "$tarball"
mount -t proc proc "$root/proc"
mount --bind /sys "$root/sys"
mount --bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" sh -c 'DEBIAN_FRONTEND=noninteractive apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -qq install -y --no-install-recommends initramfs-tools zstd' \
	>"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; exit 1; }
mkdir -p "$root/lib/modules"
cp -a "$CACHE/kernel/lib/modules/$ver" "$root/lib/modules/$ver"
cp "$CACHE/kernel/config" "$root/boot/config-$ver"
for c in zstd gzip; do
	chroot "$root" mkinitramfs -c "$c" -o "/tmp/initrd.$c" "$ver" 2>/dev/null
done
chroot "$root" sh -c "mkdir /tmp/u && unmkinitramfs /tmp/initrd.zstd /tmp/u && du -sb --apparent-size /tmp/u | cut -f1" >"$work/debsize"
chroot "$root" sh -c "find /tmp/u -type f | wc -l" >"$work/debfiles"
chroot "$root" sh -c "find /tmp/u -name '*.ko*' | wc -l" >"$work/debmods"
ours_total=$("$work/buildfarm" image inspect "$m/initrd" | tail -1)
ours_unc=$(echo "$ours_total" | awk '{print $1, $2}')
ours_files=$(echo "$ours_total" | sed 's/.*members, \([0-9]*\) files.*/\1/')
printf "%-28s %10s %12s %s\n" "" "file" "unpacked" "files/modules"
printf "%-28s %10d %12s %s\n" "ours (uncompressed cpio)" "$(stat -c %s "$m/initrd")" "$ours_unc" "$ours_files/$ourmods"
printf "%-28s %10d\n" "ours, gzip -9" "$(stat -c %s "$work/initrd.gz")"
printf "%-28s %10d %12s %s\n" "Debian mkinitramfs (zstd)" "$(stat -c %s "$root/tmp/initrd.zstd")" "$(numfmt --to=iec-i --suffix=B --format=%.1f "$(cat "$work/debsize")")" "$(cat "$work/debfiles")/$(cat "$work/debmods")"
printf "%-28s %10d\n" "Debian mkinitramfs (gzip)" "$(stat -c %s "$root/tmp/initrd.gzip")"
