// A carrier SMSC built on node-smpp, for interop tests.
// Env: PORT (0 = ephemeral), CERT, KEY (PEM paths: TLS server), SYSTEM_ID, PASSWORD.
// Prints JSON lines on stdout: {"event":"listening","port":N},
// {"event":"bind","system_id":..,"ok":bool}, and for every complete message
// (concatenated parts reassembled by their UDH) {"event":"message","text":..,
// "parts":N,"data_coding":N,"source":..,"destination":..}.
'use strict';
const fs = require('fs');
const smpp = require('smpp');

const opts = {};
if (process.env.CERT) {
  opts.key = fs.readFileSync(process.env.KEY);
  opts.cert = fs.readFileSync(process.env.CERT);
}
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const pending = new Map();
let nextId = 1;

const server = smpp.createServer(opts, (session) => {
  session.on('error', () => {});
  const onBind = (pdu) => {
    const ok = pdu.system_id === process.env.SYSTEM_ID && pdu.password === process.env.PASSWORD;
    out({ event: 'bind', system_id: pdu.system_id, ok });
    if (!ok) {
      session.send(pdu.response({ command_status: smpp.ESME_RINVPASWD }));
      session.close();
      return;
    }
    session.send(pdu.response({ system_id: 'nodesmsc' }));
  };
  session.on('bind_transceiver', onBind);
  session.on('bind_transmitter', onBind);
  session.on('bind_receiver', onBind);
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => { session.send(pdu.response()); session.close(); });
  session.on('submit_sm', (pdu) => {
    const id = (nextId++).toString(16);
    session.send(pdu.response({ message_id: id }));
    const sm = pdu.short_message;
    const text = typeof sm === 'string' ? sm : (sm && sm.message !== undefined ? String(sm.message) : '');
    let concat = null;
    for (const udh of (sm && sm.udh) || []) {
      if (udh[0] === 0x00 && udh.length >= 5) concat = { ref: udh[2], total: udh[3], seq: udh[4] };
      if (udh[0] === 0x08 && udh.length >= 6) concat = { ref: udh.readUInt16BE(2), total: udh[4], seq: udh[5] };
    }
    const meta = { data_coding: pdu.data_coding, source: pdu.source_addr, destination: pdu.destination_addr };
    if (!concat) {
      out({ event: 'message', text, parts: 1, ...meta });
      return;
    }
    const key = pdu.source_addr + '|' + pdu.destination_addr + '|' + concat.ref;
    const entry = pending.get(key) || { parts: new Array(concat.total).fill(null) };
    entry.parts[concat.seq - 1] = text;
    pending.set(key, entry);
    if (entry.parts.every((p) => p !== null)) {
      pending.delete(key);
      out({ event: 'message', text: entry.parts.join(''), parts: concat.total, ...meta });
    }
  });
});
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  out({ event: 'listening', port: server.address().port });
});
