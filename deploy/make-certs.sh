#!/usr/bin/env bash
# make-certs.sh DIR [HOSTNAME_OR_IP ...]
#
# A private CA and, signed by it, a key + certificate for each role of a Dask
# cluster with mutual TLS: the scheduler, the workers and the client (farm render).
#
#   DIR/ca.pem                          the CA certificate every party trusts
#   DIR/ca-key.pem                      the CA key: keep it off the cluster
#   DIR/scheduler.pem  scheduler-key.pem
#   DIR/worker.pem     worker-key.pem
#   DIR/client.pem     client-key.pem
#
# Every certificate names 127.0.0.1, ::1 and localhost plus each extra
# HOSTNAME_OR_IP given (Subject Alternative Names), is valid for both server and
# client use (a worker is both), and lasts DAYS days (env, default 825).
# Keys are written mode 0600. Existing files in DIR are not overwritten unless
# FORCE=1 is set. Needs openssl (1.1.1 or 3.x).
set -euo pipefail

usage() { echo "usage: $0 DIR [HOSTNAME_OR_IP ...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) sed -n '2,18p' "$0"; exit 0 ;; esac
command -v openssl >/dev/null || { echo "$0: openssl is not installed" >&2; exit 2; }

dir=$1; shift
days=${DAYS:-825}
mkdir -p "$dir"
if [[ -e "$dir/ca.pem" && "${FORCE:-0}" != 1 ]]; then
    echo "$0: $dir/ca.pem exists; set FORCE=1 to replace every certificate in $dir" >&2
    exit 1
fi

san="DNS:localhost,IP:127.0.0.1,IP:::1"
for h in "$@"; do
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+=",IP:$h"; else san+=",DNS:$h"; fi
done

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The CA.
openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days "$days" \
    -subj "/CN=mastering-farm dask CA" \
    -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

cat > "$tmp/ext.cnf" <<CNF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san
CNF

serial=1000
for role in scheduler worker client; do
    openssl req -new -newkey rsa:2048 -nodes -sha256 -subj "/CN=farm-$role" \
        -keyout "$dir/$role-key.pem" -out "$tmp/$role.csr" 2>/dev/null
    serial=$((serial + 1))
    openssl x509 -req -in "$tmp/$role.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
        -set_serial "$serial" -days "$days" -sha256 -extfile "$tmp/ext.cnf" \
        -out "$dir/$role.pem" 2>/dev/null
    openssl verify -CAfile "$dir/ca.pem" "$dir/$role.pem" >/dev/null
done
chmod 0644 "$dir"/ca.pem "$dir"/scheduler.pem "$dir"/worker.pem "$dir"/client.pem
chmod 0600 "$dir"/*-key.pem

echo "$0: CA and scheduler/worker/client certificates in $dir (SAN: $san)"
