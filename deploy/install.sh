#!/usr/bin/env bash
# Install the pipeline as a systemd service on this host: bin/setup, then the unit, enabled at boot.
#   deploy/install.sh            install + enable + start
#   deploy/install.sh --remove   stop + disable + remove the unit (data under var/ is kept)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UNIT=/etc/systemd/system/food-orders.service

[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
if [ "${1:-}" = --remove ]; then
  systemctl disable --now food-orders.service || true
  rm -f "$UNIT"
  systemctl daemon-reload
  echo "removed $UNIT (state under $REPO/var kept)"
  exit 0
fi
"$REPO/bin/setup"
sed "s|@REPO@|$REPO|g" "$REPO/deploy/systemd/food-orders.service" >"$UNIT.tmp"
mv "$UNIT.tmp" "$UNIT"
systemctl daemon-reload
systemctl enable --now food-orders.service
echo "installed $UNIT; follow it with: journalctl -u food-orders -f   or   $REPO/bin/pipeline logs -f"
