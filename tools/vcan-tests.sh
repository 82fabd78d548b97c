#!/usr/bin/env bash
# Runs the vcan test suite (pytest -m vcan) against real SocketCAN:
#  - directly, where this kernel has vcan (modprobe vcan works, or vcan0 exists);
#  - else inside a throw-away qemu VM with Debian's stock kernel (tools/vcan-vm.sh), as root;
#  - else fails (exit 1), unless $VEHICLE_AGENT_ALLOW_SKIPS names tests/test_vcan.py: then it says
#    loudly that the suite did not run and exits 0.
# Under CI=true a test skipped inside the suite fails too unless that variable names it
# (tests/conftest.py); in the VM, the sustained 8,000 frames/s test is allowed to skip, and said so.
# Usage: bash tools/vcan-tests.sh [pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

native() {
  [ -e /sys/class/net/vcan0 ] && return 0
  [ "$(id -u)" = 0 ] || return 1
  modprobe vcan 2>/dev/null || true
  ip link add dev vcan0 type vcan 2>/dev/null && ip link set up vcan0 && return 0
  return 1
}

if "$PY" -c 'import socket; socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()' 2>/dev/null && native; then
  echo "vcan tests: native SocketCAN on this kernel"
  exec "$PY" -m pytest -q -m vcan tests/test_vcan.py tests/test_campaigns_vcan.py "$@"
fi

if [ "$(id -u)" = 0 ] && { [ -e /dev/kvm ] || command -v qemu-system-x86_64 >/dev/null || command -v apt-get >/dev/null; } \
   && [ "$(uname -m)" = x86_64 ]; then
  echo "vcan tests: this kernel has no CAN; running them in a qemu VM with vcan0 and vcan1 (tools/vcan-vm.sh)"
  export VEHICLE_AGENT_VCAN_VM=1
  sustained=tests/test_vcan.py::test_sustained_saturated_bus_loses_nothing
  echo "vcan tests: NOT RUN in the VM: $sustained (needs native vcan; Python in the VM is 15-40x slower)" >&2
  export VEHICLE_AGENT_ALLOW_SKIPS="${VEHICLE_AGENT_ALLOW_SKIPS:+$VEHICLE_AGENT_ALLOW_SKIPS,}$sustained"
  export VCANVM_CAN="vcan0 vcan1" VCANVM_TIMEOUT=${VCANVM_TIMEOUT:-1800}
  exec bash tools/vcan-vm.sh "$PY" -m pytest -q -p no:cacheprovider -m vcan tests/test_vcan.py tests/test_campaigns_vcan.py "$@"
fi

allowed=0
allow=${VEHICLE_AGENT_ALLOW_SKIPS:-}
for a in ${allow//,/ }; do [ "$a" = tests/test_vcan.py ] && allowed=1; done
cat >&2 <<'MSG'
################################################################################
#  NOT RUN: the vcan test suite did not run.                                   #
#  This kernel has no SocketCAN and no VM can be started here (needs root,     #
#  x86_64 and apt for qemu). Run it where `sudo modprobe vcan` works:          #
#      sudo modprobe vcan && sudo bash tools/vcan-tests.sh                     #
#  To accept this explicitly: VEHICLE_AGENT_ALLOW_SKIPS=tests/test_vcan.py     #
################################################################################
MSG
if [ "$allowed" = 1 ]; then
  echo "vcan tests: NOT RUN, allowed by VEHICLE_AGENT_ALLOW_SKIPS" >&2
  exit 0
fi
exit 1
