#!/bin/sh
# Install ocrwatch as a systemd service, after `pip install` into /opt/ocrwatch (README, Install):
#
#   sudo sh systemd/install.sh [--instance NAME] FOLDER...
#
# It creates the system user and group `ocrwatch`, /etc/ocrwatch (root:ocrwatch 0750) with the
# config (root:ocrwatch 0640, from config.example.yaml, never overwritten) and an empty secret
# file (root:root 0600, handed to the service by LoadCredential=), installs both units, gives the
# group write access to each FOLDER (creating it if missing), and lists the folders as
# ReadWritePaths=- in a drop-in. It can be run again, e.g. with more folders.
#
# Environment: DESTDIR installs under a staging root (the tests use it; then no user is created
# and systemctl is not called); OCRWATCH_USER / OCRWATCH_GROUP (default ocrwatch); OCRWATCH_BIN
# (default /opt/ocrwatch/bin/ocrwatch), written into ExecStart; OCRWATCH_ACL=no gives the folders
# to the group instead of adding ACL entries.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
user=${OCRWATCH_USER:-ocrwatch}
group=${OCRWATCH_GROUP:-$user}
bin=${OCRWATCH_BIN:-/opt/ocrwatch/bin/ocrwatch}
acl=${OCRWATCH_ACL:-yes}
root=${DESTDIR:-}
unit=ocrwatch
config=config.yaml
secret=secret
# The main unit's state_dir is systemd's $STATE_DIRECTORY (the config leaves it unset).
state_line="# state_dir: /var/lib/ocrwatch "

if [ "${1:-}" = "--instance" ]; then
    [ -n "${2:-}" ] || { echo "install.sh: --instance needs a NAME" >&2; exit 2; }
    unit="ocrwatch@$2"
    config="$2.yaml"
    secret="$2.secret"
    state_line="state_dir: /var/lib/ocrwatch-$2 "
    shift 2
fi
[ "$#" -gt 0 ] || { echo "usage: sudo sh $0 [--instance NAME] FOLDER..." >&2; exit 2; }
for folder in "$@"; do
    case $folder in
    /*) ;;
    *) echo "install.sh: $folder: give the folder as an absolute path" >&2; exit 2 ;;
    esac
done

if [ -z "$root" ] && ! getent passwd "$user" >/dev/null; then
    adduser --system --group --home /nonexistent --no-create-home \
        --shell /usr/sbin/nologin "$user"
fi

install -d -o root -g "$group" -m 0750 "$root/etc/ocrwatch"
if [ ! -e "$root/etc/ocrwatch/$config" ]; then
    # An instance's config names its own secret and, so that `status` and `submit` find its
    # journal without systemd's $STATE_DIRECTORY, its own state_dir.
    # ... and watches the folders given here, in place of the example's.
    OCRWATCH_FOLDERS=$(printf '%s\n' "$@") sed -e "s|/etc/ocrwatch/secret|/etc/ocrwatch/$secret|" \
        -e "s|^# state_dir: /var/lib/ocrwatch |$state_line|" \
        "$here/../config.example.yaml" | OCRWATCH_FOLDERS=$(printf '%s\n' "$@") awk '
        /^folders:/ {
            print
            n = split(ENVIRON["OCRWATCH_FOLDERS"], folders, "\n")
            for (i = 1; i <= n; i++) {
                if (folders[i] == "") continue
                quoted = folders[i]; gsub(/\047/, "\047\047", quoted)
                print "  - path: \047" quoted "\047"
                print "    profile: default"
                print "    polling: false            # true for NFS/SMB shares, where inotify sees nothing"
                print "    settle_seconds: 2         # a file counts as complete once unchanged this long"
                print ""
            }
            skipping = 1
            next
        }
        skipping && /^[^ #]/ { skipping = 0 }
        !skipping' >"$root/etc/ocrwatch/$config.tmp"
    chown "root:$group" "$root/etc/ocrwatch/$config.tmp"
    chmod 0640 "$root/etc/ocrwatch/$config.tmp"
    mv "$root/etc/ocrwatch/$config.tmp" "$root/etc/ocrwatch/$config"
fi
if [ ! -e "$root/etc/ocrwatch/$secret" ]; then
    install -o root -g root -m 0600 /dev/null "$root/etc/ocrwatch/$secret"
fi

install -d -m 0755 "$root/etc/systemd/system"
for template in ocrwatch.service ocrwatch@.service; do
    sed "s|/opt/ocrwatch/bin/ocrwatch|$bin|" "$here/$template" >"$root/etc/systemd/system/$template"
    chmod 0644 "$root/etc/systemd/system/$template"
done

# The service user writes sidecars into every folder and its subfolders. An ACL (with a default
# ACL for folders created later) leaves the folders' owners and groups as they are; without the
# `acl` tools, on a filesystem without ACLs, or with OCRWATCH_ACL=no, the folders are given to
# the group instead, setgid so that new subfolders stay in it.
dropin="$root/etc/systemd/system/$unit.service.d"
install -d -m 0755 "$dropin"
[ -e "$dropin/folders.conf" ] || printf '[Service]\n' >"$dropin/folders.conf"
for folder in "$@"; do
    path="$root$folder"
    [ -d "$path" ] || install -d -o root -g "$group" -m 2775 "$path"
    # Folders rwx (to create sidecars), files r: ocrwatch never writes an original.
    if [ "$acl" != no ] && command -v setfacl >/dev/null &&
        find "$path" -type d -exec setfacl -m "g:$group:rwx,d:g:$group:rwx" {} + &&
        find "$path" -type f -exec setfacl -m "g:$group:r" {} +; then
        :
    else
        [ "$acl" = no ] || echo "install.sh: $folder: cannot set ACLs (no acl tools, or none on this filesystem); giving it to group $group" >&2
        # A share may refuse this too (cifs, NFS with root squash): said, and the next
        # folder still gets its turn; the drop-in line below is written either way.
        { chgrp -R "$group" "$path" &&
            find "$path" -type d -exec chmod g+rwxs {} + &&
            find "$path" -type f -exec chmod g+r {} +; } ||
            echo "install.sh: $folder: cannot give it to group $group either; give the service user write access to it yourself (e.g. the share's mount options)" >&2
    fi
    # Quoted for systemd: spaces, quotes and backslashes kept, `%` not read as a specifier.
    line=$(printf '%s' "-$folder" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/%/%%/g')
    line="ReadWritePaths=\"$line\""
    grep -qxF "$line" "$dropin/folders.conf" || printf '%s\n' "$line" >>"$dropin/folders.conf"
done

if [ -z "$root" ]; then
    systemctl daemon-reload ||
        echo "install.sh: systemd did not reload its units; run: sudo systemctl daemon-reload" >&2
fi
cat <<EOF
Installed $unit. Next:
  1. sudoedit /etc/ocrwatch/$config    # set api.client_id and the folders: $*
  2. sudoedit /etc/ocrwatch/$secret    # the client secret, one line
  3. sudo $bin check --online -c /etc/ocrwatch/$config
  4. sudo systemctl enable --now $unit
EOF
