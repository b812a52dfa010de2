#!/usr/bin/env bash
# Set up a Debian 12 machine for moorage (root): the Debian packages it needs, installed
# without starting their services, and the project itself. Sourced by .ci/run and by
# scripts/quickstart.sh; MOOR_PIP_EXTRAS picks the extras (default: none).
set -euo pipefail

say() { printf '==> %s\n' "$*"; }
die() { printf '!!! %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "setup needs root (it installs Debian packages)"

# --- Debian packages ------------------------------------------------------------------
# package:command pairs; a package is missing if dpkg does not list it as installed.
REQUIRED=(redis-server:redis-server redis-tools:redis-cli busybox-static:busybox iptables:iptables
          iproute2:ip kmod:modprobe iputils-ping:ping tini:tini-static libseccomp2:
          procps:ps docker-registry:docker-registry skopeo:skopeo)

installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
# The Docker API tests drive the real docker CLI; Debian's docker.io brings one (its
# daemon is never started: see policy-rc.d below). Machines that have a CLI keep theirs.
command -v docker >/dev/null || REQUIRED+=(docker.io:docker)
for pair in "${REQUIRED[@]}"; do
    pkg=${pair%%:*} cmd=${pair#*:}
    if installed "$pkg"; then
        say "package $pkg: installed${cmd:+ ($(command -v "$cmd" || echo "no $cmd on PATH"))}"
    else
        missing+=("$pkg")
    fi
done

# Is something listening on TCP 6379 (any address)? Read /proc: iproute2 may be missing.
listening_6379() {
    awk 'NR > 1 && $4 == "0A" && $2 ~ /:18EB$/ { found = 1 } END { exit !found }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
restore_policy() {
    if [ -n "$POLICY_BACKUP" ]; then
        mv -f "$POLICY_BACKUP" "$POLICY"
    else
        rm -f "$POLICY"
    fi
}

if [ "${#missing[@]}" -gt 0 ]; then
    say "installing missing Debian packages: ${missing[*]}"
    redis_before=no
    listening_6379 && redis_before=yes
    # policy-rc.d exit 101 tells invoke-rc.d/deb-systemd-invoke not to start services,
    # so the redis-server package does not start a daemon on 6379. Keep any existing one.
    if [ -e "$POLICY" ]; then
        POLICY_BACKUP=$(mktemp /usr/sbin/.policy-rc.d.moor.XXXXXX)
        cp -p "$POLICY" "$POLICY_BACKUP"
    fi
    trap restore_policy EXIT
    printf '#!/bin/sh\nexit 101\n' > "$POLICY"
    chmod 0755 "$POLICY"

    export DEBIAN_FRONTEND=noninteractive
    apt_install() {
        apt-get -q -y -o DPkg::Lock::Timeout=300 \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            install --no-install-recommends "${missing[@]}"
    }
    # apt-get update only when the package lists are absent, or when installing fails
    # with the lists we have (stale lists name files the mirror no longer has).
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        say "apt-get update (no package lists yet)"
        apt-get -q -o DPkg::Lock::Timeout=300 update
        apt_install
    elif ! apt_install; then
        say "apt-get update (install failed with the current package lists), then retry"
        apt-get -q -o DPkg::Lock::Timeout=300 update
        apt_install
    fi

    restore_policy
    trap - EXIT
    POLICY_BACKUP=""
    if [ "$redis_before" = no ] && listening_6379; then
        # Our tests never use 6379; a daemon that the install started there would only
        # get in the way. A server that was already there is left alone.
        say "stopping the redis-server that the package install started on 6379"
        if command -v systemctl >/dev/null && systemctl is-active -q redis-server 2>/dev/null
        then
            systemctl stop redis-server || true
        fi
        listening_6379 && { redis-cli -p 6379 shutdown nosave >/dev/null 2>&1 || true; }
    fi
    for pkg in "${missing[@]}"; do
        installed "$pkg" || die "package $pkg is still not installed"
    done
else
    say "all Debian packages present; apt not needed"
fi
say "$(redis-server --version)"

# --- Python package -------------------------------------------------------------------
say "python: $(command -v python3) ($(python3 --version 2>&1))"
extras=${MOOR_PIP_EXTRAS:+[$MOOR_PIP_EXTRAS]}
say "pip install -e '.$extras'"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".$extras"


