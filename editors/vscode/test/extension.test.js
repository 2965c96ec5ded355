'use strict';
// extension.js wired to a minimal stand-in for the `vscode` module (VS Code itself cannot run
// here): activation registers the provider and the command, and both reach a local HTTP server
// and put its completion where the cursor is.

const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const Module = require('node:module');

function fakeVscode(config) {
  const registered = { providers: [], commands: {}, messages: [] };
  class Position {
    constructor(line, character) { this.line = line; this.character = character; }
  }
  const vscode = {
    registered,
    Position,
    Range: class { constructor(start, end) { this.start = start; this.end = end; } },
    InlineCompletionItem: class { constructor(insertText, range) { this.insertText = insertText; this.range = range; } },
    ProgressLocation: { Notification: 15 },
    workspace: { getConfiguration: () => ({ get: (key) => config[key] }) },
    languages: {
      registerInlineCompletionItemProvider: (selector, provider) => {
        registered.providers.push({ selector, provider });
        return { dispose() {} };
      },
    },
    commands: {
      registerCommand: (id, fn) => {
        registered.commands[id] = fn;
        return { dispose() {} };
      },
    },
    window: {
      activeTextEditor: undefined,
      setStatusBarMessage: (m) => registered.messages.push(m),
      showErrorMessage: (m) => registered.messages.push(m),
      showInformationMessage: (m) => registered.messages.push(m),
      withProgress: (_opts, task) => task({ report() {} }, { isCancellationRequested: false, onCancellationRequested() {} }),
    },
  };
  return vscode;
}

function loadExtension(vscode) {
  const original = Module._load;
  Module._load = function (request, ...rest) {
    if (request === 'vscode') return vscode;
    return original.call(this, request, ...rest);
  };
  try {
    delete require.cache[require.resolve('../extension.js')];
    return require('../extension.js');
  } finally {
    Module._load = original;
  }
}

function document(text, fileName) {
  return {
    fileName,
    getText: () => text,
    offsetAt: (pos) => {
      const lines = text.split('\n');
      let offset = 0;
      for (let i = 0; i < pos.line; i++) offset += lines[i].length + 1;
      return offset + pos.character;
    },
  };
}

const token = { isCancellationRequested: false, onCancellationRequested() {} };
const CSD = '<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\n\nendin\n</CsInstruments>\n</CsoundSynthesizer>\n';

test('activation registers the inline provider and the command; both complete at the cursor', async (t) => {
  const seen = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      seen.push({ url: req.url, body: JSON.parse(body) });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ content: '  aSig poscil 0.5, 440\n', stop: true, stop_type: 'eos' }));
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => server.close());
  const vscode = fakeVscode({
    serverUrl: `http://127.0.0.1:${server.address().port}`, enable: true, endpoint: 'infill',
    maxTokens: 16, debounceMs: 0,
  });
  const extension = loadExtension(vscode);
  const subscriptions = [];
  extension.activate({ subscriptions });
  assert.equal(subscriptions.length, 2);
  const { selector, provider } = vscode.registered.providers[0];
  assert.ok(selector.some((s) => s.language === 'csound'));
  assert.ok(selector.some((s) => s.pattern && s.pattern.includes('csd')));

  const doc = document(CSD, '/tmp/piece.csd');
  const cursor = new vscode.Position(3, 0); // the empty line inside instr 1
  const items = await provider.provideInlineCompletionItems(doc, cursor, {}, token);
  assert.equal(items.length, 1);
  assert.equal(items[0].insertText, '  aSig poscil 0.5, 440\n');
  assert.equal(items[0].range.start, cursor);
  assert.equal(seen[0].url, '/infill');
  assert.ok(seen[0].body.input_prefix.endsWith('instr 1\n'));

  const inserted = [];
  vscode.window.activeTextEditor = {
    document: doc,
    selection: { active: cursor },
    edit: async (fn) => { fn({ insert: (pos, text) => inserted.push({ pos, text }) }); return true; },
  };
  await vscode.registered.commands['csoundAssistant.completeAtCursor']();
  assert.deepEqual(inserted, [{ pos: cursor, text: '  aSig poscil 0.5, 440\n' }]);
});

test('errors show once in the status bar; disabled means no requests', async () => {
  const vscode = fakeVscode({ serverUrl: 'http://127.0.0.1:9', enable: true, debounceMs: 0 });
  loadExtension(vscode).activate({ subscriptions: [] });
  const { provider } = vscode.registered.providers[0];
  const doc = document(CSD, '/tmp/piece.csd');
  const cursor = new vscode.Position(3, 0);
  assert.deepEqual(await provider.provideInlineCompletionItems(doc, cursor, {}, token), []);
  assert.deepEqual(await provider.provideInlineCompletionItems(doc, cursor, {}, token), []);
  assert.equal(vscode.registered.messages.length, 1);
  assert.match(vscode.registered.messages[0], /cannot reach/);

  const off = fakeVscode({ serverUrl: 'http://127.0.0.1:9', enable: false, debounceMs: 0 });
  loadExtension(off).activate({ subscriptions: [] });
  assert.deepEqual(await off.registered.providers[0].provider.provideInlineCompletionItems(doc, cursor, {}, token), []);
  assert.equal(off.registered.messages.length, 0);
});

test('the manifest activates without a Csound language extension, on a VS Code with fetch', () => {
  const manifest = require('../package.json');
  // src/client.js calls the global fetch(): node 18, first shipped in VS Code 1.82 (Electron 25);
  // VS Code 1.75 ran node 16, where fetch is missing and every request failed as "cannot reach".
  const [major, minor] = manifest.engines.vscode.replace(/^[\^~>=]+/, '').split('.').map(Number);
  assert.ok(major > 1 || minor >= 82, `engines.vscode ${manifest.engines.vscode} predates fetch`);
  // Activation does not wait for a Csound language id or an open folder...
  assert.ok(manifest.activationEvents.includes('onStartupFinished'));
  // ...and the provider then serves Csound files by name, whatever language VS Code gave them.
  const vscode = fakeVscode({});
  loadExtension(vscode).activate({ subscriptions: [] });
  const { selector } = vscode.registered.providers[0];
  assert.ok(selector.some((s) => !s.language && s.scheme === 'file' && /csd/.test(s.pattern)));
});
