#!/bin/sh
# The real programs the interoperability tests talk to: DCMTK (dcmsign, storescu, img2dcm), Orthanc, and
# the OpenSSL command line (an independent timestamp authority, `openssl ts -reply`).
# `make test` runs this first. It installs the missing ones where it can (Debian/Ubuntu, as root); where it
# cannot, it says so and the tests that need them are skipped -- the test run then ends by listing them
# with the one command that enables them (tests/conftest.py).
set -u
missing=""
command -v dcmsign >/dev/null 2>&1 || missing="$missing dcmtk"
command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ] || missing="$missing orthanc"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing$missing (the interoperability tests' peers)"
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $missing >/dev/null; then
        # the orthanc package may start its own daemon; the tests start their own instance on loopback
        (command -v service >/dev/null 2>&1 && service orthanc stop >/dev/null 2>&1) || true
    else
        echo "warning: could not install$missing: the tests that need them will be skipped" >&2
    fi
else
    echo "note:$missing not installed, and this is not root with apt-get: the tests that need them will be skipped" >&2
fi
exit 0
