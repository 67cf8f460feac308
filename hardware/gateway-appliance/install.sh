#!/usr/bin/env bash
# Installs (or upgrades) the EdgeMail gateway as a systemd service on a Debian machine.
# Run as root from a checkout of the repository; see hardware/README.md ("Gateway appliance").
#
#   /opt/edgemail/                          the published gateway (root-owned, read-only to the service)
#   /etc/systemd/system/edgemail-gateway.service
#   /etc/edgemail/edgemail.json             configuration, root:edgemail 0640; never overwritten
#   /var/lib/edgemail/                      spool and mailbox (StateDirectory), edgemail:edgemail 0750
#   /usr/local/bin/edgemail                 the CLI: the gateway executable on the appliance's configuration
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: install.sh [options]
  --mqtt-bind ADDRESS     address the embedded MQTT broker listens on in a NEW configuration
                          (default 127.0.0.1: this machine only; 0.0.0.0: every interface; or the LAN address)
  --mqtt-plain            also listen for plain-text MQTT on 1883 in a NEW configuration, for devices that
                          cannot do TLS (default: MQTT over TLS on 8883 only; the secret travels in clear on 1883)
  --rid RID               runtime identifier to publish for (default: this machine's, linux-x64 or linux-arm64)
  --framework-dependent   publish without the .NET runtime (needs the .NET 10 runtime on this machine);
                          default: self-contained, nothing else to install
  --from DIR              install the output of a `dotnet publish` made elsewhere (e.g. on a PC for a
                          Raspberry Pi: dotnet publish gateway/EdgeMail.Gateway -c Release -r linux-arm64
                          --self-contained -o DIR) instead of building here
  --privileged-ports      let the service bind ports below 1024 (SMTP ingest on 25, 465 or 587):
                          adds CAP_NET_BIND_SERVICE in a drop-in
  --root DIR              install into DIR instead of / (staging for a package or an image): no user is
                          created and systemctl is not called
  -h, --help              this text
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
unit_name=edgemail-gateway.service

mqtt_bind=127.0.0.1
mqtt_plain=false
rid=
self_contained=true
from=
privileged=false
root=

while [ $# -gt 0 ]; do
  case "$1" in
    --mqtt-bind) mqtt_bind=${2:?--mqtt-bind needs an address}; shift 2 ;;
    --mqtt-plain) mqtt_plain=true; shift ;;
    --rid) rid=${2:?--rid needs a runtime identifier}; shift 2 ;;
    --framework-dependent) self_contained=false; shift ;;
    --from) from=${2:?--from needs a directory}; shift 2 ;;
    --privileged-ports) privileged=true; shift ;;
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

die() { echo "install.sh: $*" >&2; exit 1; }

if [ -n "$root" ]; then
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
elif [ "$(id -u)" -ne 0 ]; then
  die "run as root (sudo $0 ...), or stage with --root DIR"
fi

# An IPv4 or IPv6 literal; the gateway checks it again at start.
if ! [[ $mqtt_bind =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ || $mqtt_bind =~ ^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$ ]]; then
  die "--mqtt-bind '$mqtt_bind' is not an IP address (use 127.0.0.1, 0.0.0.0 or this machine's LAN address)"
fi

prefix="$root/opt/edgemail"
unit_dir="$root/etc/systemd/system"
dropin_dir="$unit_dir/$unit_name.d"
config_dir="$root/etc/edgemail"
config="$config_dir/edgemail.json"
state_dir="$root/var/lib/edgemail"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. The gateway binaries.
if [ -n "$from" ]; then
  [ -x "$from/EdgeMail.Gateway" ] || die "--from $from: no executable EdgeMail.Gateway there (expected a dotnet publish output)"
  payload=$from
else
  command -v dotnet >/dev/null || die "the .NET 10 SDK is needed to build here (or build elsewhere and use --from DIR)"
  if [ -z "$rid" ]; then
    case "$(uname -m)" in
      x86_64) rid=linux-x64 ;;
      aarch64|arm64) rid=linux-arm64 ;;
      armv7l|armv6l) die "32-bit ARM: install a 64-bit OS (Raspberry Pi OS 64-bit), or publish for linux-arm elsewhere and use --from" ;;
      *) die "unknown machine $(uname -m): give --rid" ;;
    esac
  fi
  echo "install.sh: publishing the gateway for $rid ($([ "$self_contained" = true ] && echo self-contained || echo framework-dependent))"
  # Own artifacts path: the checkout's bin/obj are left alone (and may belong to another user).
  dotnet publish "$repo/gateway/EdgeMail.Gateway/EdgeMail.Gateway.csproj" -c Release -r "$rid" \
    --self-contained "$self_contained" --artifacts-path "$work/artifacts" -o "$work/publish" -nologo -v quiet \
    || die "dotnet publish failed (see above)"
  payload="$work/publish"
fi

# Swap the new tree in whole; the previous one stays in /opt/edgemail.old for a rollback.
mkdir -p "$root/opt"
rm -rf "$prefix.new"
cp -a "$payload" "$prefix.new"
mkdir -p "$prefix.new/doc"
for doc in "$repo/hardware/README.md:gateway-appliance.md" "$repo/docs/gateway.md:gateway.md" "$repo/docs/spool.md:spool.md"; do
  [ -f "${doc%%:*}" ] && cp "${doc%%:*}" "$prefix.new/doc/${doc##*:}"
done
chown -R 0:0 "$prefix.new" 2>/dev/null || [ -n "$root" ]
chmod -R u+rwX,go+rX,go-w "$prefix.new"
chmod 0755 "$prefix.new/EdgeMail.Gateway"
if [ -d "$prefix" ]; then
  rm -rf "$prefix.old"
  mv "$prefix" "$prefix.old"
fi
mv "$prefix.new" "$prefix"

# The CLI ('edgemail devices list', 'edgemail doctor', ...): the same executable, on the appliance's configuration.
# It does not run the gateway itself: started by hand (as root, say) that would write root-owned files into the
# spool's directory; the service runs it, as the edgemail user.
install -d -m 0755 "$root/usr/local/bin"
cat > "$root/usr/local/bin/edgemail.tmp" <<'CLI'
#!/bin/sh
# EdgeMail CLI, written by hardware/gateway-appliance/install.sh: 'edgemail --help' lists the commands.
# Every command of 'edgemail --help' but 'run' passes; without one the executable would run the gateway.
for arg in "$@"; do
  case "$arg" in
    check-config|hash-secret|admin|doctor|devices|queue|alerts|send-test|relay|-h|--help|-\?|--version)
      EDGEMAIL_CONFIG=${EDGEMAIL_CONFIG:-/etc/edgemail/edgemail.json}
      export EDGEMAIL_CONFIG
      exec /opt/edgemail/EdgeMail.Gateway "$@" ;;
  esac
done
echo "edgemail: the gateway runs as a service: systemctl start edgemail-gateway (status: systemctl status edgemail-gateway)." >&2
echo "edgemail: give a command ('edgemail --help'); in the foreground: sudo -u edgemail /opt/edgemail/EdgeMail.Gateway --config /etc/edgemail/edgemail.json" >&2
exit 64
CLI
chmod 0755 "$root/usr/local/bin/edgemail.tmp"
mv "$root/usr/local/bin/edgemail.tmp" "$root/usr/local/bin/edgemail"

# 2. The service user: no login, no home of its own beyond the state directory.
if [ -z "$root" ] && ! getent passwd edgemail >/dev/null; then
  useradd --system --user-group --home-dir /var/lib/edgemail --no-create-home --shell /usr/sbin/nologin \
    --comment "EdgeMail gateway" edgemail
fi
owner() { # chown when installing for real; a staged tree keeps the caller's ids
  if [ -z "$root" ]; then chown "$@"; fi
}

# 3. The unit and its drop-ins.
mkdir -p "$unit_dir"
install -m 0644 "$here/edgemail-gateway.service" "$unit_dir/$unit_name"
mkdir -p "$dropin_dir"
# An upgrade keeps drop-ins (an earlier --privileged-ports too); delete one to undo it.
rm -f "$dropin_dir/10-dotnet-root.conf"
if [ "$self_contained" = false ] && [ -z "$from" ]; then
  dotnet_root=$(dirname "$(readlink -f "$(command -v dotnet)")")
  printf '# Written by install.sh --framework-dependent: where the .NET runtime is.\n[Service]\nEnvironment=DOTNET_ROOT=%s\n' \
    "$dotnet_root" > "$dropin_dir/10-dotnet-root.conf"
fi
if [ "$privileged" = true ]; then
  printf '%s\n' '# Written by install.sh --privileged-ports: bind ports below 1024 (SMTP 25/465/587), nothing else.' \
    '[Service]' 'CapabilityBoundingSet=CAP_NET_BIND_SERVICE' 'AmbientCapabilities=CAP_NET_BIND_SERVICE' \
    > "$dropin_dir/10-privileged-ports.conf"
fi
rmdir "$dropin_dir" 2>/dev/null || true

# 4. Configuration (kept on upgrade) and state.
install -d -m 0750 "$config_dir"
owner root:edgemail "$config_dir"
new_config=false
if [ -f "$config" ]; then
  echo "install.sh: keeping the existing $config"
  [ "$mqtt_bind" = 127.0.0.1 ] || echo "install.sh: --mqtt-bind applies to a new configuration only: set Mqtt:BindAddress in $config yourself"
  [ "$mqtt_plain" = false ] || echo "install.sh: --mqtt-plain applies to a new configuration only: set Mqtt:PlainEnabled in $config yourself"
else
  sed -e "s/\"BindAddress\": \"127\.0\.0\.1\"/\"BindAddress\": \"$mqtt_bind\"/" \
      -e "s/\"PlainEnabled\": false/\"PlainEnabled\": $mqtt_plain/" "$here/edgemail.json" > "$config.tmp"
  grep -q "\"BindAddress\": \"$mqtt_bind\"" "$config.tmp" || die "could not set Mqtt:BindAddress in the template"
  grep -q "\"PlainEnabled\": $mqtt_plain" "$config.tmp" || die "could not set Mqtt:PlainEnabled in the template"
  chmod 0640 "$config.tmp"
  owner root:edgemail "$config.tmp"
  mv "$config.tmp" "$config"
  new_config=true
fi
install -d -m 0750 "$state_dir"
owner -R edgemail:edgemail "$state_dir"

# 5. Tell systemd.
if [ -z "$root" ]; then
  systemctl daemon-reload
  if systemctl is-active --quiet "$unit_name"; then
    echo "install.sh: restarting the running gateway on the new binaries"
    systemctl restart "$unit_name"
  fi
fi

cat <<NEXT

EdgeMail gateway installed in $prefix (previous version, if any: $prefix.old).
Configuration: $config$([ "$new_config" = true ] && echo " (new; MQTT over TLS on $mqtt_bind:8883$([ "$mqtt_plain" = true ] && echo ", plain MQTT on $mqtt_bind:1883"))")

Next steps (the CLI is 'edgemail'; 'edgemail --help' lists its commands; run it as root, or as edgemail):
  1. Add your devices to Devices in $config, replacing example-sensor. For each secret:
       edgemail hash-secret        (type the secret twice; or pipe it in)
     and paste the printed pbkdf2-sha256\$... value as Devices:<id>:Secret.
     Once the gateway runs, 'edgemail devices add ID --owner USER' adds one without a restart.
  2. Set Users, Groups, Routes and Sender (address, host name), and the relay: Relay:Mode Smarthost with
     Host, Port, Security, User and Password (or DirectMx). Until then mail lands in /var/lib/edgemail/mailbox/new.
  3. Check it, then start it now and at every boot:
       edgemail check-config && edgemail doctor
       systemctl enable --now edgemail-gateway
     and set the console's admin password (the console is on http://127.0.0.1:8088):
       edgemail admin set-password
     and watch it: journalctl -u edgemail-gateway -f   (an invalid configuration is reported there, key by key)
  4. Open the MQTT port to the device network only: 8883 (MQTT over TLS; and 1883 if Mqtt:PlainEnabled).
     Devices pin the gateway's certificate: its SHA-256 is in the journal after the first start,
       journalctl -u edgemail-gateway | grep 'MQTT over TLS'
NEXT
