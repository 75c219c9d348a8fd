#!/usr/bin/env bash
# Throw-away TLS material for the compose files (and for a manual multi-machine deployment).
#
#   docker/gen-certs.sh [OUT_DIR] [EXTRA_HOST ...]
#
# writes, into OUT_DIR (default: docker/certificates, next to this script):
#   ca.crt, ca.key          a fresh CA (keep ca.key off the SuperLink; copy only ca.crt around)
#   server.pem, server.key  the SuperLink's certificate and key, valid for the names SuperNodes
#                           and `flwr` dial: superlink (compose service), localhost, 127.0.0.1,
#                           ::1 and every EXTRA_HOST (the SuperLink machine's DNS name or IP)
# and, when NODE_KEYS=N is set, N SuperNode authentication key pairs in OUT_DIR/../keys:
#   supernode-<i> / supernode-<i>.pub for i = 0..N-1 (ECDSA P-384, OpenSSH format, as flwr expects)
#
# Existing files are kept (delete the folder to start over). server.key and the SuperNode keys
# are mode 644 so the containers' `app` user (uid 49999) can read them through the compose
# secrets; their folders are mode 700, so on the host only you can.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/certificates}"
shift || true
days="${CERT_DAYS:-365}"

mkdir -p "$out"
chmod 700 "$out"
if [[ -f "$out/ca.crt" ]]; then
    echo "gen-certs: $out/ca.crt exists, keeping the certificates there"
else
    san="DNS:superlink,DNS:localhost,IP:127.0.0.1,IP:::1"
    for host in "$@"; do
        if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
            san="$san,IP:$host"
        else
            san="$san,DNS:$host"
        fi
    done
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout "$out/ca.key" -out "$out/ca.crt" -days "$days" \
        -subj "/O=flora/CN=flora deployment CA" 2>/dev/null
    openssl req "${ec[@]}" -keyout "$out/server.key" -out "$out/server.csr" \
        -subj "/O=flora/CN=superlink" 2>/dev/null
    printf '%s\n' "subjectAltName=$san" "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
        >"$out/server.ext"
    openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
        -CAcreateserial -out "$out/server.pem" -days "$days" -sha256 \
        -extfile "$out/server.ext" 2>/dev/null
    openssl verify -CAfile "$out/ca.crt" "$out/server.pem" >/dev/null
    chmod 600 "$out/ca.key"
    chmod 644 "$out/server.key" "$out/server.pem" "$out/ca.crt"
    echo "gen-certs: CA and SuperLink certificate in $out ($san)"
fi

if [[ -n "${NODE_KEYS:-}" ]]; then
    keys="$(dirname "$out")/keys"
    mkdir -p "$keys"
    chmod 700 "$keys"
    for ((i = 0; i < NODE_KEYS; i++)); do
        if [[ ! -f "$keys/supernode-$i" ]]; then
            ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "$keys/supernode-$i"
            chmod 644 "$keys/supernode-$i"
        fi
    done
    echo "gen-certs: $NODE_KEYS SuperNode key pair(s) in $keys"
fi
