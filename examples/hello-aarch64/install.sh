#!/bin/sh
# install.sh installs hello under the configured prefix, and hands it to
# the build farm as an artifact when it asks for them.
set -eu
. ./config.sh
mkdir -p "$prefix/bin"
cp out/hello "$prefix/bin/hello"
echo "install: $prefix/bin/hello"
if [ -n "${BUILDFARM_ARTIFACTS:-}" ]; then
	cp out/hello "$BUILDFARM_ARTIFACTS/hello"
	echo "install: artifact hello"
fi
