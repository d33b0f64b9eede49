#!/usr/bin/env sh
# Certificates for running Parley with TLS on one machine (README, "TLS"):
# a local CA, and one certificate for every service, named for the compose
# services (auth, user, chat, media, gateway) and localhost, usable to
# serve and, under mTLS, to call.
#
#   deploy/make-certs.sh [DIR]     (default: deploy/tls)
#
# Writes DIR/ca.crt, DIR/tls.crt and DIR/tls.key; the CA's key stays in
# DIR/ca/ca.key (mode 0600) and is reused on the next run, so running the
# script again renews the certificate under the same CA: a rotation the
# services pick up without a restart. tls.key is readable by all (0644) so
# the containers' non-root user can read the mounted file; on a shared
# machine, chown it to that user (65532) instead.
set -eu
dir=${1:-deploy/tls}
mkdir -p "$dir/ca"
umask 077
if [ ! -f "$dir/ca/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$dir/ca/ca.key" -out "$dir/ca.crt" -days 3650 -subj "/CN=Parley local CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  chmod 0644 "$dir/ca.crt"
fi
extensions="$dir/ca/extensions.cnf"
cat >"$extensions" <<CNF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:auth,DNS:user,DNS:chat,DNS:media,DNS:gateway,DNS:localhost,IP:127.0.0.1
CNF
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$dir/ca/tls.key.new" -out "$dir/ca/tls.csr" -subj "/CN=parley" 2>/dev/null
openssl x509 -req -in "$dir/ca/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca/ca.key" \
  -set_serial "0x$(openssl rand -hex 16)" -days 397 -extfile "$extensions" \
  -out "$dir/ca/tls.crt.new" 2>/dev/null
chmod 0644 "$dir/ca/tls.key.new" "$dir/ca/tls.crt.new"
# Renamed into place, certificate first: a service that looks in between
# keeps its previous pair until the key matches.
mv "$dir/ca/tls.crt.new" "$dir/tls.crt"
mv "$dir/ca/tls.key.new" "$dir/tls.key"
rm -f "$dir/ca/tls.csr"
echo "wrote $dir/ca.crt, $dir/tls.crt and $dir/tls.key"
