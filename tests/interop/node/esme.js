// An ESME client built on node-smpp, for interop tests: binds to sms-conduit's
// [smpp_server] and sends one deliver_sm (an MO), then unbinds.
// Env: PORT, TLS=1 (ssmpp, trusting CA_FILE), SYSTEM_ID, PASSWORD, FROM, TO, TEXT.
// Prints JSON lines: {"event":"bind","status":N}, {"event":"deliver_sm_resp","status":N}, {"event":"done"}.
'use strict';
const fs = require('fs');
const smpp = require('smpp');

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const url = (process.env.TLS === '1' ? 'ssmpp' : 'smpp') + '://127.0.0.1:' + process.env.PORT;
const options = { url, auto_enquire_link_period: 10000 };
if (process.env.TLS === '1') {
  options.ca = fs.readFileSync(process.env.CA_FILE);
  options.servername = 'localhost';
}
const session = smpp.connect(options, () => {
  session.bind_transceiver({ system_id: process.env.SYSTEM_ID, password: process.env.PASSWORD }, (pdu) => {
    out({ event: 'bind', status: pdu.command_status });
    if (pdu.command_status !== 0) {
      session.close();
      out({ event: 'done' });
      return;
    }
    session.deliver_sm({
      source_addr: process.env.FROM, source_addr_ton: 1, source_addr_npi: 1,
      destination_addr: process.env.TO, dest_addr_ton: 1, dest_addr_npi: 1,
      short_message: process.env.TEXT,
    }, (resp) => {
      out({ event: 'deliver_sm_resp', status: resp.command_status });
      session.unbind(() => { session.close(); out({ event: 'done' }); });
    });
  });
});
session.on('error', (e) => { out({ event: 'error', message: String(e && e.code || e) }); process.exit(2); });
setTimeout(() => { out({ event: 'timeout' }); process.exit(3); }, 15000).unref();
