#!/usr/bin/env bash
# Fetch onnxruntime's C/C++ API headers (onnxruntime 1.21, ORT_API_VERSION 21)
# from Debian 13 "trixie"'s libonnxruntime-dev package.
#
# The onnxruntime PyPI wheel ships libonnxruntime.so but no headers; this
# script supplies them without touching the machine's apt configuration:
# apt-get runs with a private sources list, lists dir, cache and dpkg status
# file under a temporary directory, so /etc/apt and /var/lib/apt stay as they
# are. Works as root and as non-root.
#
# Usage:   tools/fetch_onnxruntime_headers.sh DEST_DIR
# Output:  exactly one line on stdout, the absolute include directory that
#          contains onnxruntime_c_api.h and onnxruntime_cxx_api.h. Progress
#          and errors go to stderr. Exit 0 on success, 1 on failure.
#
# Environment:
#   AIHW_ORT_DEB     path to an already-downloaded libonnxruntime-dev .deb;
#                    skips apt-get entirely.
#   AIHW_ORT_MIRROR  Debian mirror URL (default http://deb.debian.org/debian).
#   AIHW_ORT_SUITE   Debian suite (default trixie).
#
# A second run with the same DEST_DIR is a no-op (stamp file, no network).
set -euo pipefail

PKG=libonnxruntime-dev
EXPECTED_API=21
MIRROR=${AIHW_ORT_MIRROR:-http://deb.debian.org/debian}
SUITE=${AIHW_ORT_SUITE:-trixie}
STAMP_NAME=.onnxruntime_headers.stamp

log() { printf '%s\n' "fetch_onnxruntime_headers: $*" >&2; }
die() { printf '%s\n' "fetch_onnxruntime_headers: error: $*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 DEST_DIR"

mkdir -p -- "$1" 2>/dev/null || die "cannot create destination directory '$1'"
DEST=$(cd -- "$1" && pwd -P) || die "cannot enter destination directory '$1'"
STAMP=$DEST/$STAMP_NAME

# --- Fast path: already fetched -------------------------------------------
if [[ -f $STAMP ]]; then
    inc=$(head -n 1 -- "$STAMP")
    if [[ -n $inc && -f $inc/onnxruntime_c_api.h && -f $inc/onnxruntime_cxx_api.h ]]; then
        log "headers already present in $inc (stamp $STAMP)"
        printf '%s\n' "$inc"
        exit 0
    fi
    log "stale stamp $STAMP (headers missing); fetching again"
    rm -f -- "$STAMP"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/aihw-ort-headers.XXXXXX") || die "mktemp failed"
STAGE=
cleanup() {
    rm -rf -- "$WORK"
    [[ -z $STAGE ]] || rm -rf -- "$STAGE"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# --- Obtain the .deb ---------------------------------------------------------
if [[ -n ${AIHW_ORT_DEB:-} ]]; then
    [[ -f $AIHW_ORT_DEB ]] || die "AIHW_ORT_DEB='$AIHW_ORT_DEB' is not a file"
    DEB=$(cd -- "$(dirname -- "$AIHW_ORT_DEB")" && pwd -P)/$(basename -- "$AIHW_ORT_DEB")
    log "using pre-downloaded package $DEB (AIHW_ORT_DEB)"
else
    command -v apt-get >/dev/null 2>&1 \
        || die "apt-get not found; install apt, or download ${PKG} (Debian ${SUITE}) yourself and set AIHW_ORT_DEB=/path/to/${PKG}_*.deb"

    APTDIR=$WORK/apt
    mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/download"
    : >"$APTDIR/status"                       # empty dpkg status: host state irrelevant
    SIGNED_BY=
    if [[ -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
        SIGNED_BY="[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
    fi
    printf 'deb %s%s %s main\n' "$SIGNED_BY" "$MIRROR" "$SUITE" >"$APTDIR/sources.list"

    # Private config, read after the system's apt.conf(.d) (which is kept for
    # proxies etc.): drop the host's update hooks (packagekit, appstream, ...).
    cat >"$APTDIR/apt.conf" <<'EOF'
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
#clear DPkg::Pre-Install-Pkgs;
EOF

    APT_OPTS=(
        -c "$APTDIR/apt.conf"
        -o "Dir::Etc::SourceList=$APTDIR/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::Etc::Preferences=/dev/null"
        -o "Dir::Etc::PreferencesParts=/dev/null"
        -o "Dir::State::Lists=$APTDIR/lists"
        -o "Dir::State::status=$APTDIR/status"
        -o "Dir::State::extended_states=$APTDIR/extended_states"
        -o "Dir::Cache=$APTDIR/cache"
        -o "Dir::Cache::archives=$APTDIR/cache/archives"
        -o "Dir::Cache::pkgcache=$APTDIR/cache/pkgcache.bin"
        -o "Dir::Cache::srcpkgcache=$APTDIR/cache/srcpkgcache.bin"
        -o "Dir::Log=$APTDIR/log"
        -o "APT::Sandbox::User=$(id -un)"     # no _apt privilege drop into our 0700 tmp dir
        -o "Acquire::Languages=none"
        -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
        -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
        -o "APT::Get::List-Cleanup=false"
        -q
    )

    t0=$(date +%s.%N)
    log "apt-get update (private lists, ${MIRROR} ${SUITE} main) ..."
    if ! apt-get "${APT_OPTS[@]}" update >"$WORK/update.log" 2>&1; then
        sed 's/^/  /' "$WORK/update.log" >&2
        die "apt-get update for Debian ${SUITE} failed (network/mirror/signature problem; see above)"
    fi
    # apt-get update exits 0 on some fetch/signature failures; surface them.
    if grep -Eq '^(E:|W: (Failed|GPG|The repository))' "$WORK/update.log"; then
        sed 's/^/  /' "$WORK/update.log" >&2
        die "apt-get update for Debian ${SUITE} reported errors (see above)"
    fi
    log "apt-get download ${PKG} ..."
    if ! (cd "$APTDIR/download" && apt-get "${APT_OPTS[@]}" download "$PKG") >"$WORK/download.log" 2>&1; then
        sed 's/^/  /' "$WORK/download.log" >&2
        if grep -q 'Unable to locate package\|has no installation candidate\|Can.t select candidate' "$WORK/download.log"; then
            die "package ${PKG} not found in Debian ${SUITE} for architecture $(dpkg --print-architecture 2>/dev/null || uname -m)"
        fi
        die "apt-get download ${PKG} failed (see above)"
    fi
    shopt -s nullglob
    debs=("$APTDIR/download/${PKG}"_*.deb)
    shopt -u nullglob
    [[ ${#debs[@]} -eq 1 ]] || die "apt-get download did not produce exactly one ${PKG} .deb"
    DEB=${debs[0]}
    t1=$(date +%s.%N)
    log "downloaded $(basename -- "$DEB") in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s"
fi

# --- Extract into a staging dir inside DEST, then move into place ----------
STAGE=$(mktemp -d "$DEST/.staging.XXXXXX") || die "cannot create staging dir in $DEST"
if command -v dpkg-deb >/dev/null 2>&1; then
    ver=$(dpkg-deb -f "$DEB" Version 2>/dev/null) || die "'$DEB' is not a valid .deb"
    pkgname=$(dpkg-deb -f "$DEB" Package)
    [[ $pkgname == "$PKG" ]] || log "warning: '$DEB' is package '$pkgname', expected '$PKG'"
    log "extracting ${pkgname} ${ver}"
    dpkg-deb -x "$DEB" "$STAGE/pkg" || die "dpkg-deb -x '$DEB' failed"
elif command -v ar >/dev/null 2>&1 && command -v tar >/dev/null 2>&1; then
    log "dpkg-deb not found; extracting with ar + tar"
    mkdir -p "$STAGE/ar" "$STAGE/pkg"
    (cd "$STAGE/ar" && ar x "$DEB") || die "ar x '$DEB' failed"
    data=$(ls "$STAGE/ar"/data.tar* 2>/dev/null | head -n 1)
    [[ -n $data ]] || die "no data.tar* member in '$DEB'"
    tar -xf "$data" -C "$STAGE/pkg" || die "cannot unpack $data (tar lacks xz/zstd support?)"
    rm -rf -- "$STAGE/ar"
else
    die "neither dpkg-deb nor ar+tar available to unpack '$DEB'"
fi

hdr=$(find "$STAGE/pkg" -name onnxruntime_c_api.h -type f -print | sort | head -n 1)
[[ -n $hdr ]] || die "onnxruntime_c_api.h not found in $(basename -- "$DEB")"
rel=${hdr#"$STAGE/pkg/"}
rel=$(dirname -- "$rel")
[[ -f $STAGE/pkg/$rel/onnxruntime_cxx_api.h ]] || die "onnxruntime_cxx_api.h not next to onnxruntime_c_api.h in package"

api=$(sed -n 's/^[[:space:]]*#[[:space:]]*define[[:space:]]\{1,\}ORT_API_VERSION[[:space:]]\{1,\}\([0-9]\{1,\}\).*/\1/p' "$hdr" | head -n 1)
[[ -n $api ]] || die "cannot find ORT_API_VERSION in onnxruntime_c_api.h"
log "ORT_API_VERSION = $api"
[[ $api == "$EXPECTED_API" ]] || log "warning: expected ORT_API_VERSION $EXPECTED_API, headers declare $api"

rm -rf -- "$DEST/pkg"
mv -- "$STAGE/pkg" "$DEST/pkg"
rmdir -- "$STAGE" 2>/dev/null || rm -rf -- "$STAGE"
STAGE=
INC=$DEST/pkg/$rel

printf '%s\n' "$INC" >"$STAMP.tmp.$$"
mv -f -- "$STAMP.tmp.$$" "$STAMP"
log "headers installed in $INC"
printf '%s\n' "$INC"
