#!/usr/bin/env bash
# Build, without Docker Hub, the base image that `mlflow models build-docker --env-manager local`
# names in its generated Dockerfile (`FROM python:<model python>-slim`), from Debian bookworm via
# debootstrap. Works on air-gapped hosts with a local Debian/PyPI mirror and on hosts behind a
# TLS-intercepting corporate proxy (the host CA bundle is copied in and trusted by pip and apt).
#
#   docker/build-base.sh [--rebuild] [--python-version X.Y.Z]
#
# Tags: python:<X.Y.Z>-slim  (X.Y.Z: the Python that logs the models; default: .venv/bin/python of
#       this repo, else python3)  and  stylize-base:bookworm.
# Reuse: when python:<X.Y.Z>-slim exists, nothing is done unless --rebuild.
# The image holds Debian bookworm (minbase) + python3 (3.11 from bookworm) in a venv at /opt/python
# that is first on PATH (`python`, `pip`; PEP 668 forbids pip in the system Python), ca-certificates,
# the host CA bundle, pip.conf (cert=), the host's bookworm apt sources and apt proxy settings.
#
# Settings (env):
#   STYLIZE_DEBIAN_MIRROR   Debian mirror for debootstrap (default: first bookworm URI of the
#                           host's apt sources, else http://deb.debian.org/debian)
#   STYLIZE_CA_BUNDLE       CA bundle to trust in the image (default /etc/ssl/certs/ca-certificates.crt)
#   STYLIZE_BASE_TAG        extra tag (default stylize-base:bookworm)
#   STYLIZE_PIP_INDEX_URL   if set, written to the image's pip.conf as index-url (air-gapped mirror)
set -euo pipefail

SUITE=bookworm
REBUILD=0
PYVER=""
EXTRA_TAG=${STYLIZE_BASE_TAG:-stylize-base:bookworm}
CA_BUNDLE=${STYLIZE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { echo "[build-base] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

while (($#)); do
    case "$1" in
        --rebuild) REBUILD=1 ;;
        --python-version) PYVER=${2:?--python-version needs X.Y.Z}; shift ;;
        --python-version=*) PYVER=${1#*=} ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done

if [[ -z $PYVER ]]; then
    PY=python3
    [[ -x $REPO_ROOT/.venv/bin/python ]] && PY=$REPO_ROOT/.venv/bin/python
    PYVER=$("$PY" -c 'import platform; print(platform.python_version())')
fi
[[ $PYVER =~ ^3\.[0-9]+\.[0-9]+$ ]] || die "bad python version '$PYVER' (want X.Y.Z)"
TAG="python:${PYVER}-slim"

docker info >/dev/null 2>&1 || die "no Docker engine answers (start one: docker/engine.sh start)"

if [[ $REBUILD -eq 0 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG already exists ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')); nothing to do (--rebuild to rebuild)"
    docker image inspect "$EXTRA_TAG" >/dev/null 2>&1 || docker tag "$TAG" "$EXTRA_TAG"
    exit 0
fi

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root (try: sudo $0)"
[[ -r $CA_BUNDLE ]] || die "CA bundle $CA_BUNDLE not readable"
if [[ ${PYVER%.*} != 3.11 ]]; then
    log "WARNING: models are logged with Python $PYVER but bookworm ships Python 3.11;" \
        "the image is tagged $TAG yet runs 3.11"
fi

# value of a deb822 field (first stanza that has it, or all with "all")
field() { awk -v k="$1" -v all="${3:-}" 'BEGIN{IGNORECASE=1} tolower($0) ~ "^"k":" {sub(/^[^:]*: */,""); print; if (all=="") exit}' "$2"; }

# --- apt sources of the host: enabled files whose suites are all bookworm[-*] -------------------
host_sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    if [[ $f == *.sources ]]; then
        suites=$(field suites "$f" all)
        enabled=$(field enabled "$f" | tr 'A-Z' 'a-z')
        [[ $enabled == no ]] && continue
    else
        suites=$(awk '$1 ~ /^deb(-src)?$/ { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $(i+1) }' "$f")
    fi
    [[ -n ${suites// /} ]] || continue
    ok=1
    for s in $suites; do [[ $s =~ ^${SUITE}(-[a-z]+)?$ ]] || ok=0; done
    ((ok)) && host_sources+=("$f")
done
if [[ -z ${STYLIZE_DEBIAN_MIRROR:-} ]]; then
    STYLIZE_DEBIAN_MIRROR=http://deb.debian.org/debian
    for f in "${host_sources[@]}"; do
        if [[ $f == *.sources ]]; then
            u=$(field uris "$f" | awk '{print $1}')
            s=$(field suites "$f")
        else
            read -r u s < <(awk '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i+1); exit }' "$f")
        fi
        if [[ -n $u && " $s " == *" $SUITE "* ]]; then STYLIZE_DEBIAN_MIRROR=$u; break; fi
    done
fi

command -v debootstrap >/dev/null || {
    log "installing debootstrap on the host"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap
}

T0=$(date +%s)
WORK=$(mktemp -d /tmp/stylize-base.XXXXXX)
ROOTFS=$WORK/rootfs
cleanup() {
    # debootstrap may leave /proc or /sys mounted inside the rootfs when it fails
    for m in proc sys dev/pts dev; do
        mountpoint -q "$ROOTFS/$m" 2>/dev/null && umount -l "$ROOTFS/$m" || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

log "debootstrap $SUITE from $STYLIZE_DEBIAN_MIRROR into $ROOTFS"
debootstrap --variant=minbase --components=main \
    --include=ca-certificates,python3,python3-venv \
    "$SUITE" "$ROOTFS" "$STYLIZE_DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 40 "$WORK/debootstrap.log" >&2
    [[ -f $ROOTFS/debootstrap/debootstrap.log ]] && tail -n 40 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
}
T1=$(date +%s)
log "debootstrap done in $((T1 - T0))s"

# --- configuration ----------------------------------------------------------------------------
# Keep later package installs (nginx, ...) lean too, like the official debian:*-slim images.
mkdir -p "$ROOTFS/etc/dpkg/dpkg.cfg.d" "$ROOTFS/etc/apt/apt.conf.d"
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/01-stylize-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$ROOTFS/etc/apt/apt.conf.d/01-stylize-slim" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
Acquire::CompressionTypes::Order:: "gz";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
EOF

# apt sources: the host's bookworm sources (same mirrors, snapshots, keyrings)
if ((${#host_sources[@]})); then
    : >"$ROOTFS/etc/apt/sources.list"
    rm -f "$ROOTFS"/etc/apt/sources.list.d/*
    for f in "${host_sources[@]}"; do
        if [[ $f == /etc/apt/sources.list ]]; then cp "$f" "$ROOTFS/etc/apt/sources.list"
        else cp "$f" "$ROOTFS/etc/apt/sources.list.d/"
        fi
        # keyrings named by Signed-By / signed-by= that the host has but the rootfs lacks
        for k in $(grep -ohiE '(signed-by[:=] *)/[^] ,]+' "$f" | sed -E 's/^[^/]*//'); do
            [[ -f $k && ! -e $ROOTFS$k ]] && install -D -m 0644 "$k" "$ROOTFS$k"
        done
    done
    log "apt sources from the host: ${host_sources[*]}"
fi
# apt settings the host needs to reach its mirrors: proxies, CA, snapshot validity
apt-config dump 2>/dev/null | grep -iE '^Acquire::(https?::Proxy|https?::CaInfo|Check-Valid-Until|Check-Date)|^Acquire::https?::Verify' \
    >"$ROOTFS/etc/apt/apt.conf.d/02-stylize-host" || true
[[ -s $ROOTFS/etc/apt/apt.conf.d/02-stylize-host ]] || rm -f "$ROOTFS/etc/apt/apt.conf.d/02-stylize-host"

# CA: host bundle as the system bundle, host's local CAs kept for a later update-ca-certificates
cp "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
fi

# Python: a venv first on PATH gives `python`/`pip` that may install as root (PEP 668 blocks the
# system interpreter); pip trusts the CA bundle through /etc/pip.conf and PIP_CERT.
chroot "$ROOTFS" /usr/bin/python3 -m venv /opt/python
{
    echo "[global]"
    echo "cert = /etc/ssl/certs/ca-certificates.crt"
    echo "disable-pip-version-check = true"
    echo "no-cache-dir = true"
    [[ -n ${STYLIZE_PIP_INDEX_URL:-} ]] && echo "index-url = $STYLIZE_PIP_INDEX_URL"
} >"$ROOTFS/etc/pip.conf"
ln -sf /opt/python/bin/python "$ROOTFS/usr/local/bin/python"

# --- lean ---------------------------------------------------------------------------------------
find "$ROOTFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$ROOTFS"/usr/share/{man,info,groff,lintian,linda}/* \
       "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* "$ROOTFS"/debootstrap "$ROOTFS"/tmp/* \
       "$ROOTFS"/root/.cache
find "$ROOTFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
: >"$ROOTFS/etc/machine-id"
rm -f "$ROOTFS/etc/resolv.conf" "$ROOTFS/etc/hostname"

# --- import -------------------------------------------------------------------------------------
log "importing rootfs ($(du -sh "$ROOTFS" | cut -f1)) as $TAG"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV VIRTUAL_ENV=/opt/python' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=$PYVER" \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV PIP_NO_CACHE_DIR=1' \
    --change 'ENV PIP_DISABLE_PIP_VERSION_CHECK=1' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --message "stylize base: debian $SUITE + python3 venv (/opt/python), built by docker/build-base.sh" \
    - "$TAG" >/dev/null
docker tag "$TAG" "$EXTRA_TAG"
T2=$(date +%s)

# smoke test: python, pip, CA trust
docker run --rm "$TAG" sh -c 'python --version && pip --version' >&2 \
    || die "smoke test of $TAG failed"
SIZE=$(docker image inspect --format '{{.Size}}' "$TAG")
log "built $TAG (= $EXTRA_TAG): $((SIZE / 1000000)) MB, $((T2 - T0))s (debootstrap $((T1 - T0))s)"
