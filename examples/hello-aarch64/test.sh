#!/bin/sh
# test.sh runs hello's test suite, on an aarch64 machine: it says the
# machine's architecture, so that the result's test log carries it.
set -u
fail=0
check() { # NAME EXPECTED COMMAND...
	name=$1 want=$2
	shift 2
	got=$("$@")
	if [ "$got" = "$want" ]; then
		echo "PASS: $name"
	else
		echo "FAIL: $name: got '$got', want '$want'"
		fail=1
	fi
}
check greeting "Hello, World!" ./out/hello
check named "Hello, build farm!" ./out/hello build farm
echo "uname -m: $(uname -m)"
check architecture aarch64 uname -m
exit $fail
