# Sourced by the bench scripts that start Synapse next to conduit (bench-vs-synapse,
# bench-federation-join): ports, waiting for a server, a private CA for federation on
# loopback, the appservice conduit-bench plays, and Synapse's rate limits lifted.
# Expects $OUT (where results and logs go).

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_up() { # url pid
  for _ in $(seq 1 600); do
    python3 -c "import urllib.request as u; u.urlopen('$1/_matrix/client/versions', timeout=1)" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "a server exited; see $OUT" >&2; return 1; }
    sleep 0.2
  done
  echo "no answer from $1" >&2; return 1
}

# $OUT/ca.pem, and $OUT/server.pem (chain) with $OUT/server.key for the IP address 127.0.0.1.
make_loopback_certificates() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=conduit-bench CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$OUT/server.key" -out "$OUT/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >"$OUT/server.ext"
  openssl x509 -req -in "$OUT/server.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial -days 2 \
    -extfile "$OUT/server.ext" -out "$OUT/server.pem" 2>/dev/null
  cat "$OUT/ca.pem" >>"$OUT/server.pem"
}

# The registration of the appservice conduit-bench plays: write_appservice FILE PORT USER_REGEX
write_appservice() {
  cat >"$1" <<REGISTRATION
id: conduit-bench
url: http://127.0.0.1:$2
as_token: $(python3 -c 'import secrets; print(secrets.token_hex(24))')
hs_token: $(python3 -c 'import secrets; print(secrets.token_hex(24))')
sender_localpart: benchbot
rate_limited: false
namespaces:
  users: [{exclusive: true, regex: '$3'}]
  aliases: []
  rooms: []
REGISTRATION
}

# Synapse's rate limits on but far above any load (as conduit's in the bench runs), as YAML.
synapse_unlimited_rates() {
  local unlimited="{per_second: 1000000, burst_count: 1000000}" key
  for key in rc_message rc_registration rc_joins_per_room rc_room_creation rc_key_requests \
    rc_3pid_validation rc_admin_redaction rc_user_directory rc_profile rc_reports; do
    echo "$key: $unlimited"
  done
  echo "rc_login: {address: $unlimited, account: $unlimited, failed_attempts: $unlimited}"
  echo "rc_joins: {local: $unlimited, remote: $unlimited}"
  echo "rc_invites: {per_room: $unlimited, per_user: $unlimited, per_issuer: $unlimited}"
  echo "rc_presence: {per_user: $unlimited}"
  echo "rc_federation: {window_size: 1000, sleep_limit: 1000000, sleep_delay: 1, reject_limit: 1000000, concurrent: 1000}"
}
