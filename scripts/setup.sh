#!/usr/bin/env bash
# Installs what Switchyard's demo and tests need on a fresh Debian 12 machine.
# Idempotent: a second run installs nothing. Needs root (or sudo) for apt.
set -euo pipefail

need_apt=()
command -v tshark >/dev/null 2>&1 || need_apt+=(tshark)
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# Real peers for the end-to-end tests in network namespaces (tests/netns_e2e.rs).
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v ethtool >/dev/null 2>&1 || need_apt+=(ethtool)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
command -v iperf3 >/dev/null 2>&1 || need_apt+=(iperf3)
command -v h2load >/dev/null 2>&1 || need_apt+=(nghttp2-client)
/usr/bin/python3 -c "import websockets" >/dev/null 2>&1 || need_apt+=(python3-websockets)
[[ -x /usr/sbin/nginx ]] || need_apt+=(nginx-light)
[[ -x /usr/lib/postgresql/15/bin/initdb ]] || need_apt+=(postgresql)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
# The DPDK backend (`cargo build --features dpdk`): headers and libraries
# found by pkg-config, clang for bindgen, and the drivers (net_ring,
# net_af_packet, net_tap, mempool_ring) that EAL loads from its driver directory.
pkg-config --exists libdpdk 2>/dev/null || need_apt+=(libdpdk-dev)
dpkg -s dpdk >/dev/null 2>&1 || need_apt+=(dpdk)
command -v clang >/dev/null 2>&1 || need_apt+=(clang)
compgen -G "/usr/lib/llvm-*/lib/libclang.so" >/dev/null || need_apt+=(libclang-dev)

if ((${#need_apt[@]})); then
    sudo_cmd=()
    [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
    echo "setup: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | "${sudo_cmd[@]}" debconf-set-selections
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # The packages start their services; the tests run their own instances.
    for svc in nginx postgresql; do
        "${sudo_cmd[@]}" systemctl stop "$svc" >/dev/null 2>&1 || true
    done
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found; install Rust stable (1.85 or newer, edition 2024) with rustup" >&2
    exit 1
fi
echo "setup: ok ($(cargo --version), $(tshark --version 2>/dev/null | head -1))"
