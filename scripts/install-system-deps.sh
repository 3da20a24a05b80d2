#!/usr/bin/env bash
# Installs the Debian packages the integration tests need (and, with --bench, the load
# tools the benchmark uses), if any is missing. Needs root (or sudo); does nothing when
# everything is already there.
set -euo pipefail
need=()
command -v nginx   >/dev/null 2>&1 || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v socat   >/dev/null 2>&1 || need+=(socat)
command -v curl    >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v dig     >/dev/null 2>&1 || need+=(dnsutils)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)  # /usr/sbin: not on a user PATH
command -v chromium >/dev/null 2>&1 || need+=(chromium)  # headless: the status page test
command -v iperf3  >/dev/null 2>&1 || need+=(iperf3)  # UDP through the relay (and the bench)
command -v gcc     >/dev/null 2>&1 || need+=(gcc)  # builds the pre-connect hook libraries the tests load
if [ "${1:-}" = "--bench" ]; then
  command -v wrk    >/dev/null 2>&1 || need+=(wrk)
  command -v ab     >/dev/null 2>&1 || need+=(apache2-utils)
  command -v strace >/dev/null 2>&1 || need+=(strace)
  # sniproxy: one more SNI router to compare with; the bench runs it in the foreground
  # with its own config (/usr/sbin: not on a user PATH)
  command -v sniproxy >/dev/null 2>&1 || [ -x /usr/sbin/sniproxy ] || need+=(sniproxy)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts sniproxy as a service on ports 80 and 443 where systemd runs; the bench
# needs only the program, so keep that service off.
if [[ " ${need[*]} " == *" sniproxy "* ]] && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now sniproxy >/dev/null 2>&1 || true
fi
