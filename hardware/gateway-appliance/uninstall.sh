#!/usr/bin/env bash
# Removes the EdgeMail gateway service installed by install.sh. Keeps the spool, the mailbox and the
# configuration (/var/lib/edgemail, /etc/edgemail) and the edgemail user unless --purge is given.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: uninstall.sh [--purge] [--root DIR]
  --purge      also delete /var/lib/edgemail (the spool: alerts not yet delivered are lost, and the mailbox),
               /etc/edgemail and the edgemail user
  --root DIR   remove from a tree staged with install.sh --root DIR (no systemctl, no user)
USAGE
}

purge=false
root=
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) purge=true; shift ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "uninstall.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
  echo "uninstall.sh: run as root" >&2
  exit 1
fi

unit_name=edgemail-gateway.service
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  # Stopping is graceful: the gateway closes its listeners and the spool before it exits.
  systemctl disable --now "$unit_name" 2>/dev/null || true
fi

rm -f "$root/etc/systemd/system/$unit_name"
rm -rf "$root/etc/systemd/system/$unit_name.d" "$root/opt/edgemail" "$root/opt/edgemail.old" "$root/opt/edgemail.new"
rm -f "$root/usr/local/bin/edgemail"
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi

if [ "$purge" = true ]; then
  rm -rf "$root/var/lib/edgemail" "$root/etc/edgemail"
  if [ -z "$root" ] && getent passwd edgemail >/dev/null; then
    userdel edgemail
  fi
  echo "EdgeMail gateway removed, with its spool, mailbox, configuration and user."
else
  echo "EdgeMail gateway removed. Kept: $root/var/lib/edgemail (spool, mailbox), $root/etc/edgemail (configuration)"
  echo "and the edgemail user; uninstall.sh --purge deletes them."
fi
