#!/bin/sh
# test.sh runs hello's test suite.
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
exit $fail
