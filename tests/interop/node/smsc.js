// A carrier SMSC built on node-smpp, for interop tests.
// Env: PORT (0 = ephemeral), CERT, KEY (PEM paths: TLS server), SYSTEM_ID, PASSWORD;
// optional carrier behaviours for edge tests:
//   THROTTLE_TPS=N  answer ESME_RTHROTTLED to submits above N per second
//   RECEIPTS=one    one DELIVRD receipt per message (for its first segment
//                   only, as many carriers do for concatenated messages)
// Prints {"event":"stats","submits":N,"throttled":N,"peak":N} every 500 ms
// once a submit came.
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
const throttleTps = Number(process.env.THROTTLE_TPS || 0);
let second = 0, inSecond = 0, peak = 0, submits = 0, throttled = 0;
setInterval(() => {
  if (submits > 0) out({ event: 'stats', submits, throttled, peak });
}, 500).unref();
// A receipt for carrier id `id` on `session`, as a DELIVRD deliver_sm.
const receipt = (session, pdu, id) => {
  setTimeout(() => session.deliver_sm({
    source_addr: pdu.destination_addr, source_addr_ton: 1, source_addr_npi: 1,
    destination_addr: pdu.source_addr, dest_addr_ton: 1, dest_addr_npi: 1,
    esm_class: 0x04,
    short_message: 'id:' + id + ' sub:001 dlvrd:001 submit date:2601010000 done date:2601010000 stat:DELIVRD err:000 text:',
    receipted_message_id: id, message_state: 2,
  }), 50);
};

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
    submits++;
    const now = Math.floor(Date.now() / 1000);
    if (now !== second) { second = now; inSecond = 0; }
    inSecond++;
    peak = Math.max(peak, inSecond);
    if (throttleTps > 0 && inSecond > throttleTps) {
      throttled++;
      session.send(pdu.response({ command_status: smpp.ESME_RTHROTTLED }));
      return;
    }
    const id = (nextId++).toString(16);
    session.send(pdu.response({ message_id: id }));
    if (process.env.RECEIPTS === 'one') {
      const udh = (pdu.short_message && pdu.short_message.udh) || [];
      const first = udh.every((u) => !((u[0] === 0x00 && u[4] !== 1) || (u[0] === 0x08 && u[5] !== 1)));
      if (first) receipt(session, pdu, id);
    }
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
