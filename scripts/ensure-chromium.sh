#!/usr/bin/env bash
# Installs Debian's Chromium and ChromeDriver when missing (the chat-page test drives them headless).
# Serialised: parallel tests wait for one install. Needs root or sudo, as apt does.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exec 9>"$root/.chromium.lock"
flock 9
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=""
if [[ "$(id -u)" != 0 ]]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq chromium chromium-driver >&2
