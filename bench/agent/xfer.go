package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/buildfarm/buildfarm/internal/image"
	"github.com/buildfarm/buildfarm/internal/netns"
	"github.com/buildfarm/buildfarm/internal/qemu"
	"github.com/buildfarm/buildfarm/internal/tftp"
)

// A transfer variant the guest runs each round: a client fetching "big"
// from a server at a block size (0: the worker's default) and windowsize
// (0: none).
type xfer struct {
	client, server  string // "ours" (guestget; package tftp's server) or "busybox", "tftpd-hpa"
	blksize, window int
}

const (
	oursPort = 23461
	hpaPort  = 23462
)

// xfers: the comparison the goal is about (ours against busybox with
// tftpd-hpa), then each side crossed with the other's partner, so that a
// difference can be put on the client or on the server.
var xfers = []xfer{
	{"ours", "ours", 0, 0},
	{"busybox", "tftpd-hpa", 65464, 0},
	{"ours", "ours", 1468, 0},
	{"busybox", "tftpd-hpa", 1468, 0},
	{"ours", "ours", 1468, 16},
	{"busybox", "ours", 65464, 0},
	{"ours", "tftpd-hpa", 0, 0},
	{"busybox", "ours", 1468, 0},
	{"ours", "tftpd-hpa", 1468, 0},
}

func (x xfer) name() string {
	s := x.client + " client, " + x.server + " server, "
	if x.blksize == 0 {
		s += "worker defaults (65464)"
	} else {
		s += fmt.Sprint("blksize ", x.blksize)
	}
	if x.window > 0 {
		s += fmt.Sprint(", windowsize ", x.window)
	}
	return s
}

func (x xfer) cmd() string {
	port := oursPort
	if x.server == "tftpd-hpa" {
		port = hpaPort
	}
	if x.client == "busybox" {
		return fmt.Sprintf("tftp -g -b %d -r big -l /tmp/f 10.0.2.2 %d", x.blksize, port)
	}
	c := "guestget"
	if x.blksize != 0 {
		c += fmt.Sprint(" -blksize ", x.blksize)
	}
	if x.window != 0 {
		c += fmt.Sprint(" -windowsize ", x.window)
	}
	return fmt.Sprintf("%s 10.0.2.2:%d big /tmp/f", c, port)
}

// xferInit is the guest's /init: modules, a static address, the rounds of
// transfers, each line "BENCH <variant> <round> <t0> <t1> <sha ok> ...".
func xferInit(rounds int, sum string) string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
while read -r ko; do [ -z "$ko" ] || insmod "$ko"; done </etc/buildfarm/modules
ip link set lo up
nic=""
for d in /sys/class/net/*; do [ "${d##*/}" = lo ] || { nic=${d##*/}; break; }; done
ip link set "$nic" up
ip addr add 10.0.2.15/24 dev "$nic"
ip route add default via 10.0.2.2
mkdir -p /tmp
echo "BENCH ready $(cut -d' ' -f1 /proc/uptime)"
x() {
	rm -f /tmp/f
	sync
	t0=$(cut -d' ' -f1 /proc/uptime)
	sh -c "$2" >/tmp/out 2>&1
	st=$?
	t1=$(cut -d' ' -f1 /proc/uptime)
	ok=bad
	[ $st = 0 ] && [ "$(sha256sum /tmp/f | cut -d' ' -f1)" = "$SUM" ] && ok=ok
	echo "BENCH $1 $round $t0 $t1 $ok status=$st $(tr '\n' ' ' </tmp/out | cut -c1-200)"
	rm -f /tmp/f
}
`)
	// A warm-up fetch with each client, untimed: the guest's first touch
	// of its RAM for the file would otherwise go to the first variant.
	fmt.Fprintf(&b, "SUM=%s\nround=0\nx 0 '%s'\nx 1 '%s'\nround=1\nwhile [ $round -le %d ]; do\n", sum, xfers[0].cmd(), xfers[1].cmd(), rounds)
	for i, x := range xfers {
		fmt.Fprintf(&b, "\tx %d '%s'\n", i, x.cmd())
	}
	b.WriteString("\tround=$((round + 1))\ndone\necho \"BENCH done\"\npoweroff -f\nsleep 10\n")
	return b.String()
}

func benchTransfer(ctx context.Context, c config, tmp, workerBin, getBin string) ([]xferRow, error) {
	dir := filepath.Join(tmp, "xfer")
	get := filepath.Join(dir, "get")
	if err := os.MkdirAll(get, 0o755); err != nil {
		return nil, err
	}
	// The file: pseudo-random bytes, and its sum.
	sum, err := writeRandom(filepath.Join(get, "big"), c.size)
	if err != nil {
		return nil, err
	}
	initFile := filepath.Join(dir, "init")
	if err := os.WriteFile(initFile, []byte(xferInit(c.xferRuns, sum)), 0o755); err != nil {
		return nil, err
	}
	img := filepath.Join(dir, "img")
	if _, err := image.Build(ctx, image.Options{Preset: "busybox", Out: img, Worker: workerBin,
		InitOverride: initFile, Add: []image.Add{{Src: getBin, Dst: "bin/guestget"}}}); err != nil {
		return nil, err
	}
	cmdline, err := os.ReadFile(filepath.Join(img, "cmdline"))
	if err != nil {
		return nil, err
	}

	// The namespace, our server with the agent's rules, and tftpd-hpa.
	ns, err := netns.New(ctx)
	if err != nil {
		return nil, err
	}
	defer ns.Delete(context.WithoutCancel(ctx))
	conn, err := ns.ListenPacket(ctx, "udp4", fmt.Sprintf("127.0.0.1:%d", oursPort))
	if err != nil {
		return nil, err
	}
	rule, err := tftp.ParseRule(`Gr ^/?(.+)$ get/\1`) // the agent's read rule
	if err != nil {
		return nil, err
	}
	srv := &tftp.Server{Root: dir, Rules: []tftp.Rule{rule},
		ListenTransfer: func() (net.PacketConn, error) {
			return ns.ListenPacket(context.WithoutCancel(ctx), "udp4", "127.0.0.1:0")
		}}
	sctx, scancel := context.WithCancel(ctx)
	served := make(chan struct{})
	go func() { defer close(served); srv.Serve(sctx, conn) }()
	defer func() { scancel(); conn.Close(); <-served }()
	stopTFTPD, err := startTFTPD(ns.Name, hpaPort, get)
	if err != nil {
		return nil, err
	}
	defer stopTFTPD()

	vm, err := qemu.New(qemu.Config{Name: "bench-xfer", Accel: c.accel, MemoryMB: c.ram,
		Kernel: filepath.Join(img, "kernel"), Initrd: filepath.Join(img, "initrd"),
		Append: strings.TrimSpace(string(cmdline)), NoReboot: true, NetNS: ns.Path()}, filepath.Join(dir, "vm"), nil)
	if err != nil {
		return nil, err
	}
	fmt.Printf("\n== transfer of %d bytes into a running guest, %d rounds, interleaved ==\n", c.size, c.xferRuns)
	vctx, cancel := context.WithTimeout(ctx, time.Duration(c.xferRuns)*10*time.Minute)
	defer cancel()
	defer vm.Forcedown(context.WithoutCancel(ctx))
	if err := vm.Start(vctx); err != nil {
		return nil, err
	}
	if _, err := vm.WaitConsole(vctx, "the end of the rounds", qemu.Contains("BENCH done")); err != nil {
		return nil, err
	}
	vm.Wait(vctx)
	con, err := os.ReadFile(vm.Info().SerialLog)
	if err != nil {
		return nil, err
	}
	return reportTransfers(c, con)
}

func writeRandom(path string, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	r := rand.NewChaCha8([32]byte{'b', 'e', 'n', 'c', 'h'})
	_, err = io.CopyN(io.MultiWriter(f, h), r, size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return hex.EncodeToString(h.Sum(nil)), err
}

// xferRow is one transfer variant, as written to results.json.
type xferRow struct {
	Client     string  `json:"client"`
	Server     string  `json:"server"`
	BlockSize  int     `json:"blksize"` // 0: the worker's default
	WindowSize int     `json:"windowsize,omitempty"`
	Runs       []int64 `json:"runs_ns"`
	MedianNS   int64   `json:"median_ns"`
	MinNS      int64   `json:"min_ns"`
	MaxNS      int64   `json:"max_ns"`
}

func reportTransfers(c config, con []byte) ([]xferRow, error) {
	times := make([][]time.Duration, len(xfers))
	inner := make([][]time.Duration, len(xfers))
	var errs []error
	for _, line := range strings.Split(string(con), "\n") {
		line = strings.TrimRight(line, "\r")
		i := strings.Index(line, "BENCH ")
		if i < 0 {
			continue
		}
		f := strings.Fields(line[i:])
		if len(f) < 6 || f[1] == "ready" || f[1] == "done" {
			continue
		}
		v, err1 := strconv.Atoi(f[1])
		t0, err2 := strconv.ParseFloat(f[3], 64)
		t1, err3 := strconv.ParseFloat(f[4], 64)
		if err := errors.Join(err1, err2, err3); err != nil || v < 0 || v >= len(xfers) {
			errs = append(errs, fmt.Errorf("console line %q: %v", line, err))
			continue
		}
		if f[2] == "0" { // the warm-up
			if f[5] != "ok" {
				errs = append(errs, fmt.Errorf("%s, warm-up failed: %s", xfers[v].name(), line))
			}
			continue
		}
		if f[5] != "ok" {
			errs = append(errs, fmt.Errorf("%s, round %s failed: %s", xfers[v].name(), f[2], line))
			continue
		}
		d := time.Duration((t1 - t0) * float64(time.Second))
		times[v] = append(times[v], d)
		// guestget prints "BYTES NS" of the transfer itself.
		var inDur string
		if xfers[v].client == "ours" && len(f) >= 9 {
			if ns, err := strconv.ParseInt(f[8], 10, 64); err == nil {
				inner[v] = append(inner[v], time.Duration(ns))
				inDur = fmt.Sprintf("  (transfer alone %.2fs)", time.Duration(ns).Seconds())
			}
		}
		fmt.Printf("round %s  %-60s %.2fs%s\n", f[2], xfers[v].name(), d.Seconds(), inDur)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	med := make([]time.Duration, len(xfers))
	var rows []xferRow
	for v, x := range xfers {
		if len(times[v]) == 0 {
			return nil, fmt.Errorf("%s: no result on the console", x.name())
		}
		m, lo, hi := stats(times[v])
		med[v] = m
		extra := ""
		if len(inner[v]) > 0 {
			im, _, _ := stats(inner[v])
			extra = fmt.Sprintf("; transfer alone %.2fs", im.Seconds())
		}
		row := xferRow{Client: x.client, Server: x.server, BlockSize: x.blksize, WindowSize: x.window,
			MedianNS: int64(m), MinNS: int64(lo), MaxNS: int64(hi)}
		for _, d := range times[v] {
			row.Runs = append(row.Runs, int64(d))
		}
		rows = append(rows, row)
		mib := float64(c.size) / (1 << 20)
		fmt.Printf("median %-60s %.2fs (min %.2fs, max %.2fs; %.1f MiB/s%s)\n", x.name(), m.Seconds(), lo.Seconds(), hi.Seconds(), mib/m.Seconds(), extra)
	}
	ratio := func(what string, base, ours int) {
		fmt.Printf("ratio %-62s %.2f\n", what+":", float64(med[base])/float64(med[ours]))
	}
	fmt.Println("ratios of medians, baseline / ours (above 1: ours is faster):")
	ratio("busybox+tftpd-hpa 65464 / ours worker defaults (goal > 1)", 1, 0)
	ratio("busybox+tftpd-hpa 1468 / ours 1468 lock-step (goal > 1)", 3, 2)
	ratio("busybox+tftpd-hpa 1468 / ours 1468 windowsize 16", 3, 4)
	ratio("busybox+tftpd-hpa 65464 / ours 1468 windowsize 16", 1, 4)
	ratio("servers, busybox client, 65464: tftpd-hpa / ours", 1, 5)
	ratio("servers, busybox client, 1468: tftpd-hpa / ours", 3, 7)
	ratio("clients, tftpd-hpa server, 65464: busybox / ours", 1, 6)
	ratio("clients, tftpd-hpa server, 1468: busybox / ours", 3, 8)
	return rows, nil
}
