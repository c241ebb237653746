#!/usr/bin/env bash
# Headless Chromium for the browser tests, from Debian (never `playwright install`), and the
# widget JavaScript for offline static HTML, from the npm registry.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "Chromium is missing and this is not root: run 'sudo apt-get install chromium' (browser tests will be skipped)" >&2
  fi
fi
# the widget JavaScript for offline static HTML (npm registry), into the tests' cache
if command -v npm >/dev/null 2>&1; then
  bash scripts/fetch_widget_js.sh "${IMG2IMG_LAB_HOME:-$HOME/.cache/img2img_lab}/widget-js" ||
    echo "could not fetch the widget JavaScript from npm: the static-HTML browser test will say so" >&2
fi
