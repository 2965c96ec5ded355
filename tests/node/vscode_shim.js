'use strict';
// The part of the `vscode` module the extension touches, with VS Code 1.82's constructor
// signatures, recording what the extension registers. vscode_activate.js resolves
// require('vscode') here. Settings come from the manifest's contributed defaults, as in VS Code,
// overridden by configure().

const registered = { inlineProviders: [], commands: {}, messages: [], edits: [] };
let settings = {};

function configure(manifest, overrides) {
  settings = {};
  const properties = manifest.contributes.configuration.properties;
  for (const [key, spec] of Object.entries(properties)) settings[key] = spec.default;
  for (const [key, value] of Object.entries(overrides)) settings[key] = value;
}

class Position {
  constructor(line, character) {
    this.line = line;
    this.character = character;
  }
}

class Range {
  constructor(start, end) {
    this.start = start;
    this.end = end;
  }
}

class InlineCompletionItem {
  constructor(insertText, range, command) {
    this.insertText = insertText;
    this.range = range;
    this.command = command;
  }
}

class CancellationTokenSource {
  constructor() {
    const listeners = [];
    this.token = {
      isCancellationRequested: false,
      onCancellationRequested: (fn) => {
        listeners.push(fn);
        return { dispose() {} };
      },
    };
    this.cancel = () => {
      this.token.isCancellationRequested = true;
      listeners.forEach((fn) => fn());
    };
  }
}

// A TextDocument over a string: the members the extension calls.
function textDocument(text, fileName) {
  const lineStarts = [0];
  for (let i = 0; i < text.length; i++) if (text[i] === '\n') lineStarts.push(i + 1);
  return {
    fileName,
    uri: { scheme: 'file', fsPath: fileName, path: fileName },
    languageId: 'plaintext', // no Csound language extension installed
    lineCount: lineStarts.length,
    getText: () => text,
    offsetAt: (pos) => Math.min(text.length, lineStarts[pos.line] + pos.character),
    positionAt: (offset) => {
      let line = 0;
      while (line + 1 < lineStarts.length && lineStarts[line + 1] <= offset) line++;
      return new Position(line, offset - lineStarts[line]);
    },
  };
}

const disposable = () => ({ dispose() {} });

module.exports = {
  // harness side
  registered,
  configure,
  textDocument,
  // the API
  Position,
  Range,
  InlineCompletionItem,
  CancellationTokenSource,
  ProgressLocation: { SourceControl: 1, Window: 10, Notification: 15 },
  InlineCompletionTriggerKind: { Invoke: 0, Automatic: 1 },
  workspace: {
    getConfiguration: (section) => ({
      get: (key, fallback) => {
        const value = settings[`${section}.${key}`];
        return value === undefined ? fallback : value;
      },
    }),
  },
  languages: {
    registerInlineCompletionItemProvider: (selector, provider) => {
      registered.inlineProviders.push({ selector, provider });
      return disposable();
    },
  },
  commands: {
    registerCommand: (id, fn) => {
      registered.commands[id] = fn;
      return disposable();
    },
  },
  window: {
    activeTextEditor: undefined,
    setStatusBarMessage: (m) => (registered.messages.push(m), disposable()),
    showErrorMessage: async (m) => void registered.messages.push(m),
    showInformationMessage: async (m) => void registered.messages.push(m),
    withProgress: (_options, task) => task({ report() {} }, new CancellationTokenSource().token),
  },
};
