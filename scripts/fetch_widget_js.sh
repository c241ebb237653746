#!/usr/bin/env bash
# The widget JavaScript for offline HTML exports (img2img_lab.htmlexport.export_html(offline=True)):
# @jupyter-widgets/html-manager's embed bundle and requirejs, from the npm registry with `npm pack`.
#   bash scripts/fetch_widget_js.sh [DEST]    # default: $IMG2IMG_LAB_HOME/widget-js (~/.cache/img2img_lab/widget-js)
# Does nothing when DEST already holds these versions.
set -euo pipefail
HTML_MANAGER_VERSION=1.0.15   # keep in step with img2img_lab/htmlexport.py
REQUIREJS_VERSION=2.3.8
dest="${1:-${IMG2IMG_LAB_HOME:-$HOME/.cache/img2img_lab}/widget-js}"
want="@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION requirejs@$REQUIREJS_VERSION"
if [ -f "$dest/VERSIONS" ] && [ "$(cat "$dest/VERSIONS")" = "$want" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "fetch_widget_js.sh: npm is needed (apt-get install npm)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION" "requirejs@$REQUIREJS_VERSION" >/dev/null)
mkdir -p "$tmp/hm" "$tmp/rq" "$tmp/out"
tar xzf "$tmp/jupyter-widgets-html-manager-$HTML_MANAGER_VERSION.tgz" -C "$tmp/hm"
tar xzf "$tmp/requirejs-$REQUIREJS_VERSION.tgz" -C "$tmp/rq"
# dist/embed-amd.js bundles base, controls and output widgets; its fonts sit beside it.
cp "$tmp/hm/package/dist/embed-amd.js" "$tmp/out/"
find "$tmp/hm/package/dist" -maxdepth 1 -type f \( -name '*.woff*' -o -name '*.ttf' -o -name '*.eot' -o -name '*.svg' -o -name '*.LICENSE.txt' \) -exec cp {} "$tmp/out/" \;
cp "$tmp/rq/package/require.js" "$tmp/out/require.js"
echo "$want" > "$tmp/out/VERSIONS"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial" && mv "$tmp/out" "$dest.partial"
rm -rf "$dest" && mv "$dest.partial" "$dest"
echo "widget JavaScript in $dest"
