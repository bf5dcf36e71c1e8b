// Counts Kannel's delivery-report callbacks (smsbox calls the dlr-url for
// every receipt), for benches/compare/kannel.sh.
//
//   node callback-sink.js PORT
//
// Every request except GET /count is a callback: counted, answered 200.
// GET /count answers the count so far. Listens on 127.0.0.1 only. On
// SIGTERM it prints the count and the number of connections it saw.
'use strict';
const http = require('http');
let n = 0, conns = 0;
const server = http.createServer((req, res) => {
  if (req.url === '/count') { res.end(String(n)); return; }
  n++;
  req.resume();
  res.end('ok');
});
server.keepAliveTimeout = 60000;
server.on('connection', () => conns++);
process.on('SIGTERM', () => { console.log(`callback-sink: ${n} callbacks over ${conns} connections`); process.exit(0); });
server.listen(parseInt(process.argv[2], 10), '127.0.0.1', () => console.error('callback-sink listening'));
