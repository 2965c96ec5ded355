'use strict';
// complete() over real HTTP: a tiny local node server records what the extension sends and
// answers in the server's shapes, including errors. The test against the project's real server
// is server.test.js.

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { complete } = require('../src/client');

function serve(handler) {
  return new Promise((resolve) => {
    const seen = [];
    const server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        seen.push({ method: req.method, url: req.url, headers: req.headers, body: JSON.parse(body || '{}') });
        handler(req, res, seen[seen.length - 1]);
      });
    });
    server.listen(0, '127.0.0.1', () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}`, seen, close: () => server.close() });
    });
  });
}

const CSD = '<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\n\nendin\n</CsInstruments>\n</CsoundSynthesizer>\n';
const OFFSET = CSD.indexOf('\nendin') + 1;

test('a completion round trip over /infill', async (t) => {
  const srv = await serve((req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ content: '  aSig poscil 0.5, 440\n  outs aSig, aSig\nendin\n', stop: true, stop_type: 'eos' }));
  });
  t.after(srv.close);
  const result = await complete({ text: CSD, offset: OFFSET, fileName: 'a.csd', settings: { serverUrl: srv.url, apiKey: 's', maxTokens: 32 } });
  assert.equal(srv.seen[0].url, '/infill');
  assert.equal(srv.seen[0].headers.authorization, 'Bearer s');
  assert.equal(srv.seen[0].body.input_prefix, '<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\n\n');
  assert.equal(srv.seen[0].body.input_suffix, 'endin\n</CsInstruments>\n</CsoundSynthesizer>\n');
  // "endin" repeats the suffix: only the new lines are inserted.
  assert.equal(result.text, '  aSig poscil 0.5, 440\n  outs aSig, aSig\n');
});

test('a completion round trip over /v1/completions', async (t) => {
  const srv = await serve((req, res) => {
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end(JSON.stringify({ choices: [{ text: 'a1 oscili 1, 220\n', finish_reason: 'stop' }] }));
  });
  t.after(srv.close);
  const result = await complete({ text: CSD, offset: OFFSET, fileName: 'a.csd', settings: { serverUrl: `${srv.url}/v1`, endpoint: 'completions' } });
  assert.equal(srv.seen[0].url, '/v1/completions');
  assert.equal(srv.seen[0].body.suffix, 'endin\n</CsInstruments>\n</CsoundSynthesizer>\n');
  assert.equal(result.text, 'a1 oscili 1, 220\n');
});

test('server errors become messages for the user', async (t) => {
  const srv = await serve((req, res) => {
    res.writeHead(503, { 'Content-Type': 'application/json', 'Retry-After': '3' });
    res.end(JSON.stringify({ error: { message: 'queue is full' } }));
  });
  t.after(srv.close);
  await assert.rejects(
    complete({ text: CSD, offset: OFFSET, fileName: 'a.csd', settings: { serverUrl: srv.url } }),
    /HTTP 503: queue is full \(server busy; retry after 3 s\)/);
});

test('a non-JSON answer and an unreachable server are reported', async (t) => {
  const srv = await serve((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end('<html>proxy login</html>');
  });
  t.after(srv.close);
  await assert.rejects(
    complete({ text: CSD, offset: OFFSET, fileName: 'a.csd', settings: { serverUrl: srv.url } }),
    /non-JSON/);
  await assert.rejects(
    complete({ text: CSD, offset: OFFSET, fileName: 'a.csd', settings: { serverUrl: 'http://127.0.0.1:9' } }),
    /cannot reach http:\/\/127\.0\.0\.1:9\/infill.*csound-assistant serve/);
});

test('cancellation aborts the request', async (t) => {
  const srv = await serve(() => { /* never answers */ });
  t.after(srv.close);
  const controller = new AbortController();
  const pending = complete({ text: CSD, offset: OFFSET, fileName: 'a.csd', settings: { serverUrl: srv.url }, signal: controller.signal });
  setTimeout(() => controller.abort(), 50);
  await assert.rejects(pending, { name: 'AbortError' });
});
