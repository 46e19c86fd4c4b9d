#!/bin/sh
# Lint the launchd agent: the template and the plist `aneshare service install`
# writes from it.  plutil -lint on macOS, else xmllint; exit 77 (skipped) with
# neither.  tests/test_service.c also parses it strictly and checks its keys.
#   launchd/lint.sh PATH/TO/aneshare PATH/TO/aneshared
set -eu
cli=$1
daemon=$2
here=$(cd "$(dirname "$0")" && pwd)
if command -v plutil >/dev/null 2>&1; then
	lint="plutil -lint"
elif command -v xmllint >/dev/null 2>&1; then
	lint="xmllint --noout"
else
	echo "neither plutil nor xmllint is installed: skipped"
	exit 77
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/anes-lint-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$cli" --socket "$tmp/run/aneshare.sock" service install --launchd --root "$tmp" \
	--daemon "$daemon" >/dev/null
$lint "$here/com.aneshare.aneshared.plist.in"
$lint "$tmp/Library/LaunchAgents/com.aneshare.aneshared.plist"
echo "ok ($lint)"
