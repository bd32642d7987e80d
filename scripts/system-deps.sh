#!/usr/bin/env bash
# Installs the Debian packages that the tests' real parts need, when missing and when possible.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || need+=(mosquitto)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# bench/decode.py's baselines: scapy's offline BPF filter runs tcpdump, which needs libpcap0.8;
# tests/test_capture_files.py also reads a file tcpdump wrote. setpriv (util-linux) drops
# CAP_NET_RAW for the permission test.
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
[[ -e /usr/lib/x86_64-linux-gnu/libpcap.so.0.8 || -e /usr/lib/aarch64-linux-gnu/libpcap.so.0.8 ]] \
    || ldconfig -p 2>/dev/null | grep -q 'libpcap.so.0.8' || need+=(libpcap0.8)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# bench/decode.py: GNU time reports each method's own peak RSS (wait4's includes this parent's).
[[ -x /usr/bin/time ]] || need+=(time)
if ((${#need[@]} == 0)); then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    echo "note: missing Debian packages (${need[*]}); tests that need them will be skipped." >&2
    exit 0
fi
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
