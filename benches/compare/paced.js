// Paced (or closed-loop) HTTP GET client for Kannel's sendsms, used by
// benches/compare/kannel.sh. Node's http with a keep-alive agent.
//
//   node paced.js URL MESSAGES RATE CONNECTIONS
//
// URL: the sendsms URL without `to` (each request appends a distinct
// `&to=`). The same design as `sms-conduit bench`: CONNECTIONS workers,
// each with one keep-alive connection and one request in flight at most,
// take the next message in turn. RATE > 0: a fixed rate, message i is due
// i/RATE s after the start and its worker waits until then (a worker that
// is late sends at once, so a backlog goes out as fast as the workers
// free up); RATE = 0: flat out. Latency runs from sending a request to its
// answer (time spent behind busy workers is not in it, as in the bench).
// Prints one line: answered, accepted (202), refused, elapsed (first
// request to last answer), msg/s, latency p50/p90/p99/max.
'use strict';
const http = require('http');
const [url, nArg, rateArg, connArg] = process.argv.slice(2);
const N = parseInt(nArg, 10), RATE = parseFloat(rateArg), C = parseInt(connArg, 10);
const agent = new http.Agent({ keepAlive: true, maxSockets: C });
const lat = new Float64Array(N);
let next = 0, ok = 0, bad = 0, lastAnswer = 0;
const errors = {};
const t0 = process.hrtime.bigint();
const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
const sleep = (d) => new Promise((r) => setTimeout(r, d));

function get(i) {
  return new Promise((resolve) => {
    const to = '%2B1555' + String(i).padStart(7, '0');
    const req = http.get(url + '&to=' + to, { agent }, (res) => {
      res.on('data', () => {});
      res.on('end', () => resolve(res.statusCode === 202 ? null : 'HTTP ' + res.statusCode));
    });
    req.on('error', (e) => resolve(e.code || String(e)));
  });
}
async function worker() {
  for (;;) {
    const i = next++;
    if (i >= N) return;
    if (RATE > 0) {
      const wait = (i * 1000) / RATE - ms();
      if (wait > 0) await sleep(wait);
    }
    const sent = ms();
    const err = await get(i);
    lastAnswer = ms();
    lat[i] = lastAnswer - sent;
    if (err) { bad++; errors[err] = (errors[err] || 0) + 1; } else ok++;
  }
}
Promise.all(Array.from({ length: Math.min(C, N) }, worker)).then(() => {
  const s = Array.from(lat).sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(2);
  const el = lastAnswer / 1000;
  const errs = Object.entries(errors).map(([k, v]) => `${v} ${k}`).join(', ');
  console.log(`paced: ${ok + bad} answered, ${ok} accepted (202), ${bad} refused${errs ? ' (' + errs + ')' : ''}; ` +
    `elapsed ${el.toFixed(3)} s, ${(ok / el).toFixed(0)} msg/s; latency p50 ${q(0.5)} ms p90 ${q(0.9)} ms ` +
    `p99 ${q(0.99)} ms max ${s[s.length - 1].toFixed(2)} ms`);
  agent.destroy();
  process.exit(bad ? 1 : 0);
});
