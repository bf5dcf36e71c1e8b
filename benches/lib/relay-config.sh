# The relay configuration the whole-path benchmarks share (sourced by
# benches/relay.sh, benches/fleet.sh and benches/compare/kannel.sh):
# one TLS carrier `sim` (the simulator, 2 binds, window 256), one campaign
# CBENCH1 without effective limits, one client `bench`. The `[[clients]]`
# table comes last, so a caller may append keys to it (webhook_*) and
# tables after it (`[fleet]`).
#
#   relay_config NODE_ID STATE_DIR EXAMPLES SIM_PORT API_PORT METRICS_PORT KEY_SHA256
#
# EXAMPLES: the directory holding config/example's files (certificates,
# carrier password, pseudonym key), absolute or relative to the config.
relay_config() {
  local id=$1 state=$2 ex=$3 sim=$4 api=$5 met=$6 hash=$7
  cat <<TOML
[node]
id = "$id"
state_dir = "$state"
pseudonym_key_file = "$ex/pseudonym.key"
[tls]
cert_file = "$ex/server.crt"
key_file = "$ex/server.key"
[api]
listen = "127.0.0.1:$api"
max_connections = 1024
[metrics]
listen = "127.0.0.1:$met"
[[carriers]]
name = "sim"
host = "127.0.0.1"
port = $sim
system_id = "bench"
password_file = "$ex/carrier-a.pass"
ca_file = "$ex/server.crt"
server_name = "localhost"
binds = 2
window = 256
prefixes = ["+1"]
[[brands]]
id = "BBENCH1"
[[campaigns]]
id = "CBENCH1"
brand = "BBENCH1"
numbers = ["+15551230001"]
segments_per_minute = 1000000
burst = 1000000
help_text = "help"
stop_text = "stop"
start_text = "start"
[[clients]]
id = "bench"
key_sha256 = ["$hash"]
campaigns = ["CBENCH1"]
TOML
}
