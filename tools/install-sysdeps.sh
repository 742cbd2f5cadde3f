#!/usr/bin/env bash
# Debian packages the tests and the demo need: espeak-ng + sox make real speech offline,
# libportaudio2 backs sounddevice, chromium + chromium-driver run the kiosk page's browser test
# (Playwright drives Debian's browser through executable_path: no browser download). Installs only what is missing.
set -euo pipefail
need=()
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need+=(sox)
ldconfig -p 2>/dev/null | grep -q 'libportaudio.so.2' || need+=(libportaudio2)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: need root or sudo to apt-get install ${need[*]}" >&2; exit 1; }
  sudo_cmd="sudo"
fi
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
