#!/bin/sh
# build.sh renders the hello program from its template.
set -eu
[ -f config.sh ] || { echo "build: run configure first" >&2; exit 1; }
. ./config.sh
mkdir -p out
sed "s|@GREETING@|Hello, World!|" hello.in >out/hello
chmod +x out/hello
echo "build: out/hello"
