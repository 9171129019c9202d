#!/usr/bin/env bash
# System packages the test suite drives, installed when missing (Debian, as root): Chromium and
# its driver (the rating app's browser test, the study report's rendering check) and PostgreSQL's
# initdb/pg_ctl (the rating app against a real PostgreSQL). Elsewhere it says what to install and
# those tests skip with the reason.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
        && ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium chromium-driver postgresql >/dev/null
else
    echo "note: install chromium, chromium-driver and postgresql for the browser and" \
         "PostgreSQL tests (they are skipped without them)" >&2
fi
