#!/bin/sh
# install.sh installs hello under the configured prefix.
set -eu
. ./config.sh
mkdir -p "$prefix/bin"
cp out/hello "$prefix/bin/hello"
echo "install: $prefix/bin/hello"
