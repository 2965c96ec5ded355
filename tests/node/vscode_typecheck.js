'use strict';
// Type-check the VS Code extension's JavaScript against the API of the oldest VS Code its
// manifest accepts (@types/vscode pinned to that version) and Node 18's own types (what VS Code
// 1.82 runs extensions on): `tsc --noEmit --allowJs --checkJs` through the compiler API, so a
// call to an API newer than `engines.vscode` is an error here, not a crash on a user's machine.
//   node vscode_typecheck.js EXTENSION_DIR
// Exits 1 with every diagnostic (file:line:col) or with a version mismatch.

const fs = require('node:fs');
const path = require('node:path');
const ts = require('typescript');

const extensionDir = path.resolve(process.argv[2] || '');
const manifestPath = path.join(extensionDir, 'package.json');
if (!process.argv[2] || !fs.existsSync(manifestPath)) {
  console.error('usage: node vscode_typecheck.js EXTENSION_DIR (a folder with package.json)');
  process.exit(2);
}
const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'));
const typesDir = path.join(__dirname, 'node_modules', '@types');
const typesVersion = require(path.join(typesDir, 'vscode', 'package.json')).version;
const engine = manifest.engines.vscode.replace(/^[\^~>=]+/, '');
if (engine !== typesVersion) {
  console.error(`${manifestPath}: engines.vscode is ${manifest.engines.vscode} but tests/node pins ` +
    `@types/vscode ${typesVersion}: pin @types/vscode to ${engine} in tests/node/package.json ` +
    '(npm install --save-exact) so the check uses the oldest API the manifest accepts');
  process.exit(1);
}

const options = {
  allowJs: true,
  checkJs: true,
  noEmit: true,
  // Plain JavaScript without JSDoc everywhere: implicit any is fine, unknown members are not.
  strict: false,
  target: ts.ScriptTarget.ES2022,
  lib: ['lib.es2022.d.ts'], // Node 18's language level; no DOM: fetch must come from @types/node
  module: ts.ModuleKind.CommonJS,
  moduleResolution: ts.ModuleResolutionKind.Node10,
  resolveJsonModule: true,
  skipLibCheck: true, // the API's .d.ts files are inputs, not under test
  typeRoots: [typesDir],
  types: ['node', 'vscode'],
};
const main = path.join(extensionDir, manifest.main);
const program = ts.createProgram([main], options);
const diagnostics = ts.getPreEmitDiagnostics(program);
const checked = program.getSourceFiles()
  .map((f) => f.fileName)
  .filter((f) => !f.split(/[\\/]/).includes('node_modules'));
for (const d of diagnostics) {
  const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
  if (d.file) {
    const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
    console.error(`${d.file.fileName}:${line + 1}:${character + 1}: TS${d.code}: ${text}`);
  } else {
    console.error(`TS${d.code}: ${text}`);
  }
}
console.log(JSON.stringify({ typescript: ts.version, vscodeTypes: typesVersion, checked,
                             errors: diagnostics.length }));
process.exit(diagnostics.length ? 1 : 0);
