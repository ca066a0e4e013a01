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
# The machine is the shipped one: buildfarm-worker built as scripts/up builds
# it (CGO_ENABLED=0, -ldflags='-s -w'). Both initramfs are unpacked (cpio,
# unmkinitramfs) and measured the same way: apparent size (du -sb), files,
# modules (*.ko*).
#
# It prints its tables and writes the same figures (each boot, the medians
# and ranges, the ratios, the sizes, the load average, the date, the commit,
# the kernels, the settings) to RESULTS as JSON.
#
# Usage (as root, from the repository): sh bench/image/run.sh
#   RUNS            boots per variant (default 7)
#   SKIP_DEBIAN=1   skip the size comparison with Debian's initrd
#   WORKER_LDFLAGS  go build -ldflags of buildfarm-worker (default "-s -w")
#   RESULTS         JSON file to write (default bench/image/results.json;
#                   empty: none)
set -eu
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-7}
SKIP_DEBIAN=${SKIP_DEBIAN:-0}
WORKER_LDFLAGS=${WORKER_LDFLAGS--s -w}
RESULTS=${RESULTS-bench/image/results.json}
case $RUNS in '' | *[!0-9]* | 0) echo "$0: RUNS=$RUNS: want a positive number of boots" >&2; exit 2 ;; esac
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

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
measured=$(date -u +%Y-%m-%dT%H:%M:%SZ)
commit=$(git rev-parse --short HEAD)
host_kernel=$(uname -r)
qemu=$(qemu-system-x86_64 --version | head -1)
load_before=$(loadavg)

go build -o "$work/buildfarm" ./cmd/buildfarm
CGO_ENABLED=0 go build -ldflags="$WORKER_LDFLAGS" -o "$work/buildfarm-worker" ./cmd/buildfarm-worker
"$work/buildfarm" image build --preset busybox --out "$work/m" --worker "$work/buildfarm-worker" >"$work/built"
m="$work/m"
gzip -9n <"$m/initrd" >"$work/initrd.gz"
ver=$(cat "$CACHE/kernel/version")
# The worker's TFTP server: it finds no task there and exits, and the guest
# powers off.
mkdir -p "$work/tftp"
port=$((20000 + $$ % 10000))
"$work/buildfarm" tftp serve --root "$work/tftp" --listen "127.0.0.1:$port" --allow-put 2>/dev/null &
tftpd=$!

echo "== boot: busybox machine, kernel $ver, TCG, qboot, $RUNS runs each, interleaved, commit $commit, load average $load_before"
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
: >"$work/load"
i=0
while [ $i -lt "$RUNS" ]; do
	loadavg >>"$work/load"
	boot "$m/initrd" >>"$work/raw"
	boot "$work/initrd.gz" >>"$work/gz"
	i=$((i + 1))
done
load_after=$(loadavg)
# median, min, max of a column of numbers
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
lo() { sort -n | head -1; }
hi() { sort -n | tail -1; }
# a JSON array of a column of numbers
array() { awk 'BEGIN {printf "["} {printf "%s%s", (NR > 1 ? ", " : ""), $1} END {printf "]"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.4f", a / b}'; }
size_raw=$(stat -c %s "$m/initrd")
size_gz=$(stat -c %s "$work/initrd.gz")
worker_bytes=$(stat -c %s "$work/buildfarm-worker")
# gzip over uncompressed, boot by boot (the two ran back to back)
paste -d' ' "$work/raw" "$work/gz" | awk '{printf "%.4f %.4f\n", $3 / $1, $4 / $2}' >"$work/ratios"
: >"$work/boot.json"
for v in raw gz; do
	name=$([ $v = raw ] && echo uncompressed || echo gzip-9)
	size=$([ $v = raw ] && echo "$size_raw" || echo "$size_gz")
	cut -d' ' -f1 "$work/$v" >"$work/$v.wall"
	cut -d' ' -f2 "$work/$v" >"$work/$v.cpu"
	printf "%-13s %8d bytes  wall median %ss (%s-%s)  cpu median %ss (%s-%s)\n" "$name" "$size" \
		"$(median <"$work/$v.wall")" "$(lo <"$work/$v.wall")" "$(hi <"$work/$v.wall")" \
		"$(median <"$work/$v.cpu")" "$(lo <"$work/$v.cpu")" "$(hi <"$work/$v.cpu")"
	[ ! -s "$work/boot.json" ] || printf ',\n' >>"$work/boot.json"
	printf '    {"initrd": "%s", "file_bytes": %d,\n     "wall_s": %s, "wall_median_s": %s, "wall_min_s": %s, "wall_max_s": %s,\n     "qemu_cpu_s": %s, "qemu_cpu_median_s": %s, "qemu_cpu_min_s": %s, "qemu_cpu_max_s": %s}' \
		"$name" "$size" "$(array <"$work/$v.wall")" "$(median <"$work/$v.wall")" "$(lo <"$work/$v.wall")" "$(hi <"$work/$v.wall")" \
		"$(array <"$work/$v.cpu")" "$(median <"$work/$v.cpu")" "$(lo <"$work/$v.cpu")" "$(hi <"$work/$v.cpu")" >>"$work/boot.json"
done
cut -d' ' -f1 "$work/ratios" >"$work/ratios.wall"
cut -d' ' -f2 "$work/ratios" >"$work/ratios.cpu"
printf "gzip-9 / uncompressed, boot by boot: wall median %s (%s-%s), cpu median %s (%s-%s); load average %s\n" \
	"$(median <"$work/ratios.wall")" "$(lo <"$work/ratios.wall")" "$(hi <"$work/ratios.wall")" \
	"$(median <"$work/ratios.cpu")" "$(lo <"$work/ratios.cpu")" "$(hi <"$work/ratios.cpu")" "$load_after"

echo "== size: ours against Debian's mkinitramfs for $ver"
"$work/buildfarm" image inspect --top 4 "$m/initrd"
# unpacked: apparent size of the tree, files, modules
unpacked() { # dir -> "bytes files modules"
	echo "$(du -sb --apparent-size "$1" | cut -f1) $(find "$1" -type f | wc -l) $(find "$1" -name '*.ko*' | wc -l)"
}
mkdir "$work/ours"
(cd "$work/ours" && cpio -id --quiet <"$m/initrd")
set -- $(unpacked "$work/ours")
ours_unpacked=$1 ours_files=$2 ours_mods=$3
printf "%-28s %10s %12s %s\n" "" "file" "unpacked" "files/modules"
printf "%-28s %10d %12d %s\n" "ours (uncompressed cpio)" "$size_raw" "$ours_unpacked" "$ours_files/$ours_mods"
printf "%-28s %10d\n" "ours, gzip -9" "$size_gz"
debian=null
if [ "$SKIP_DEBIAN" != 1 ]; then
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
	itools=$(chroot "$root" dpkg-query -W -f='${Version}' initramfs-tools)
	mkdir -p "$root/lib/modules"
	cp -a "$CACHE/kernel/lib/modules/$ver" "$root/lib/modules/$ver"
	cp "$CACHE/kernel/config" "$root/boot/config-$ver"
	for c in zstd gzip; do
		chroot "$root" mkinitramfs -c "$c" -o "/tmp/initrd.$c" "$ver" 2>/dev/null
	done
	chroot "$root" sh -c "mkdir -p /tmp/u && unmkinitramfs /tmp/initrd.zstd /tmp/u"
	set -- $(unpacked "$root/tmp/u")
	deb_unpacked=$1 deb_files=$2 deb_mods=$3
	deb_zstd=$(stat -c %s "$root/tmp/initrd.zstd")
	deb_gzip=$(stat -c %s "$root/tmp/initrd.gzip")
	printf "%-28s %10d %12d %s\n" "Debian mkinitramfs (zstd)" "$deb_zstd" "$deb_unpacked" "$deb_files/$deb_mods"
	printf "%-28s %10d\n" "Debian mkinitramfs (gzip)" "$deb_gzip"
	printf "ours / Debian's (zstd): file %s uncompressed, %s gzip -9; unpacked %s\n" \
		"$(ratio "$size_raw" "$deb_zstd")" "$(ratio "$size_gz" "$deb_zstd")" "$(ratio "$ours_unpacked" "$deb_unpacked")"
	debian=$(printf '{"initramfs_tools": "%s", "zstd_file_bytes": %d, "gzip_file_bytes": %d, "unpacked_bytes": %d, "files": %d, "modules": %d,\n    "ours_over_debian_zstd_file": %s, "ours_gzip9_over_debian_zstd_file": %s, "ours_gzip9_over_debian_gzip_file": %s, "ours_over_debian_unpacked": %s}' \
		"$itools" "$deb_zstd" "$deb_gzip" "$deb_unpacked" "$deb_files" "$deb_mods" \
		"$(ratio "$size_raw" "$deb_zstd")" "$(ratio "$size_gz" "$deb_zstd")" "$(ratio "$size_gz" "$deb_gzip")" "$(ratio "$ours_unpacked" "$deb_unpacked")")
fi

[ -n "$RESULTS" ] || exit 0
cat >"$RESULTS" <<JSON
{
  "measured": "$measured",
  "commit": "$commit",
  "host_kernel": "$host_kernel",
  "guest_kernel": "$ver",
  "qemu": "$qemu",
  "qemu_settings": "-M pc -accel tcg -bios qboot.rom -m 512 -smp 1",
  "runs": $RUNS,
  "worker_ldflags": "$WORKER_LDFLAGS",
  "worker_bytes": $worker_bytes,
  "load_average_before": "$load_before",
  "load_average_after": "$load_after",
  "load_average_each_round": [$(sed 's/.*/"&"/' "$work/load" | paste -sd, - | sed 's/,/, /g')],
  "boot": [
$(cat "$work/boot.json")
  ],
  "gzip9_over_uncompressed": {
    "wall_of_medians": $(ratio "$(median <"$work/gz.wall")" "$(median <"$work/raw.wall")"),
    "qemu_cpu_of_medians": $(ratio "$(median <"$work/gz.cpu")" "$(median <"$work/raw.cpu")"),
    "wall_by_round": {"median": $(median <"$work/ratios.wall"), "min": $(lo <"$work/ratios.wall"), "max": $(hi <"$work/ratios.wall")},
    "qemu_cpu_by_round": {"median": $(median <"$work/ratios.cpu"), "min": $(lo <"$work/ratios.cpu"), "max": $(hi <"$work/ratios.cpu")},
    "file": $(ratio "$size_gz" "$size_raw")
  },
  "size": {
    "ours": {"file_bytes": $size_raw, "gzip9_file_bytes": $size_gz, "unpacked_bytes": $ours_unpacked, "files": $ours_files, "modules": $ours_mods},
    "debian_mkinitramfs": $debian
  }
}
JSON
echo "wrote $RESULTS"
