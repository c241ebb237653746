#!/usr/bin/env bash
# Headless Chromium for the browser tests, from Debian (never `playwright install`). (The widget
# JavaScript for offline HTML pages is fetched by setup_env.sh.)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "Chromium is missing and this is not root: run 'sudo apt-get install chromium' (browser tests will be skipped)" >&2
  fi
fi
