'use strict';
// VS Code entry point: inline (ghost text) completions for Csound files and the
// "Csound Assistant: Complete at Cursor" command, both calling the server's FIM endpoint.
// The request/response logic lives in src/ (tested under node without VS Code).

const vscode = require('vscode');
const { complete } = require('./src/client');

const SELECTOR = [
  { language: 'csound' },
  { language: 'csound-csd' },
  { language: 'csound-orc' },
  { language: 'csound-sco' },
  { scheme: 'file', pattern: '**/*.{csd,orc,udo,sco}' },
  { scheme: 'untitled', language: 'csound' },
];
const REQUEST_TIMEOUT_MS = 30000;

function settings() {
  const c = vscode.workspace.getConfiguration('csoundAssistant');
  return {
    serverUrl: c.get('serverUrl'),
    apiKey: c.get('apiKey'),
    maxTokens: c.get('maxTokens'),
    enable: c.get('enable'),
    endpoint: c.get('endpoint'),
    model: c.get('model'),
    temperature: c.get('temperature'),
    debounceMs: c.get('debounceMs'),
    maxPrefixChars: c.get('maxPrefixChars'),
    maxSuffixChars: c.get('maxSuffixChars'),
  };
}

function sleep(ms, token) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    token.onCancellationRequested(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

// An AbortSignal that fires on cancellation or after the timeout.
function abortSignal(token) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
  if (token) token.onCancellationRequested(() => controller.abort());
  controller.signal.addEventListener('abort', () => clearTimeout(timer));
  return { signal: controller.signal, done: () => clearTimeout(timer) };
}

async function completionAt(document, position, token) {
  const { signal, done } = abortSignal(token);
  try {
    return await complete({
      text: document.getText(),
      offset: document.offsetAt(position),
      fileName: document.fileName,
      settings: settings(),
      signal,
    });
  } finally {
    done();
  }
}

let lastError = '';

const inlineProvider = {
  async provideInlineCompletionItems(document, position, _context, token) {
    const s = settings();
    if (!s.enable) return [];
    await sleep(s.debounceMs || 0, token);
    if (token.isCancellationRequested) return [];
    try {
      const result = await completionAt(document, position, token);
      lastError = '';
      if (!result.text.trim()) return [];
      return [new vscode.InlineCompletionItem(result.text, new vscode.Range(position, position))];
    } catch (err) {
      if (err && err.name === 'AbortError') return [];
      // Say it once, not on every keystroke.
      if (err.message !== lastError) {
        lastError = err.message;
        vscode.window.setStatusBarMessage(err.message, 8000);
      }
      return [];
    }
  },
};

async function completeAtCursor() {
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    vscode.window.showInformationMessage('Csound Assistant: open a Csound file first.');
    return;
  }
  const position = editor.selection.active;
  await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: 'Csound Assistant', cancellable: true },
    async (progress, token) => {
      progress.report({ message: 'completing…' });
      try {
        const result = await completionAt(editor.document, position, token);
        if (!result.text) {
          vscode.window.showInformationMessage('Csound Assistant: the model had nothing to add here.');
          return;
        }
        await editor.edit((edit) => edit.insert(position, result.text));
      } catch (err) {
        if (err && err.name === 'AbortError') return;
        vscode.window.showErrorMessage(err.message);
      }
    }
  );
}

function activate(context) {
  context.subscriptions.push(
    vscode.languages.registerInlineCompletionItemProvider(SELECTOR, inlineProvider),
    vscode.commands.registerCommand('csoundAssistant.completeAtCursor', completeAtCursor)
  );
}

function deactivate() {}

module.exports = { activate, deactivate };
