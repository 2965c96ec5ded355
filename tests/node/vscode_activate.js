'use strict';
// Activate the VS Code extension under node with vscode_shim.js as its `vscode` module, then ask
// its inline completion provider and its command for a completion at the cursor (‸) of DOCUMENT,
// from a running server (the requests go over HTTP to it, unchanged).
//   node vscode_activate.js EXTENSION_DIR SERVER_URL DOCUMENT   (API key: CSOUND_ASSISTANT_TEST_API_KEY)
// Prints JSON: the node that ran it, what activation registered, the items, every request the
// extension sent and what the server answered. Exits 1 with the error if activation or a call
// throws.

const fs = require('node:fs');
const Module = require('node:module');
const path = require('node:path');

const [extensionDir, serverUrl, documentPath] = process.argv.slice(2);
if (!extensionDir || !serverUrl || !documentPath) {
  console.error('usage: node vscode_activate.js EXTENSION_DIR SERVER_URL DOCUMENT');
  process.exit(2);
}

const SHIM = path.join(__dirname, 'vscode_shim.js');
const resolveFilename = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  return request === 'vscode' ? SHIM : resolveFilename.call(this, request, ...rest);
};
const vscode = require('vscode');

// Record what crosses the wire; the request itself goes to the server unchanged.
const exchanges = [];
const realFetch = globalThis.fetch;
globalThis.fetch = async (url, init) => {
  const response = await realFetch(url, init);
  exchanges.push({ url: String(url), request: JSON.parse(init.body), status: response.status,
                   response: await response.clone().text() });
  return response;
};

const CURSOR = '\u2038'; // ‸ marks the cursor in the document file

async function main() {
  const manifest = require(path.resolve(extensionDir, 'package.json'));
  vscode.configure(manifest, {
    'csoundAssistant.serverUrl': serverUrl,
    'csoundAssistant.apiKey': process.env.CSOUND_ASSISTANT_TEST_API_KEY || '',
    'csoundAssistant.maxTokens': 8,
    'csoundAssistant.temperature': 0,
  });
  const extension = require(path.resolve(extensionDir, manifest.main));
  const subscriptions = [];
  await extension.activate({ subscriptions, extensionPath: path.resolve(extensionDir) });

  const marked = fs.readFileSync(documentPath, 'utf8');
  if (marked.split(CURSOR).length !== 2) throw new Error(`${documentPath}: mark the cursor with one ${CURSOR}`);
  const text = marked.replace(CURSOR, '');
  const document = vscode.textDocument(text, path.resolve(documentPath));
  const cursor = document.positionAt(marked.indexOf(CURSOR));
  const [{ selector, provider }] = vscode.registered.inlineProviders;
  const context = { triggerKind: vscode.InlineCompletionTriggerKind.Automatic,
                    selectedCompletionInfo: undefined };
  const token = new vscode.CancellationTokenSource().token;
  const items = await provider.provideInlineCompletionItems(document, cursor, context, token);

  const inserted = [];
  vscode.window.activeTextEditor = {
    document,
    selection: { active: cursor },
    edit: async (build) => (build({ insert: (at, text) => inserted.push({ at, text }) }), true),
  };
  await vscode.registered.commands['csoundAssistant.completeAtCursor']();

  console.log(JSON.stringify({
    node: process.version,
    engines: manifest.engines.vscode,
    subscriptions: subscriptions.length,
    selector,
    commands: Object.keys(vscode.registered.commands),
    cursor,
    items: (items || []).map((i) => ({ insertText: i.insertText, range: i.range })),
    inserted,
    messages: vscode.registered.messages,
    exchanges,
  }));
}

main().catch((err) => {
  console.error(err && err.stack ? err.stack : String(err));
  process.exit(1);
});
