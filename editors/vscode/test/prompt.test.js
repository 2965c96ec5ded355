'use strict';
// Request building and response handling, without VS Code: node --test editors/vscode/test/

const test = require('node:test');
const assert = require('node:assert/strict');
const {
  buildContext, buildRequest, errorMessage, fileKind, findSection, optionsBlock,
  orchestraOutline, parseResponse, postProcess,
} = require('../src/prompt');

const CSD = `<CsoundSynthesizer>
<CsOptions>
-odac
</CsOptions>
<CsInstruments>
sr = 48000
ksmps = 64
nchnls = 2
0dbfs = 1

instr 1
  aSig poscil 0.5, p4
  outs aSig, aSig
endin

instr Bass
  kEnv linseg 0, 0.1, 1
endin
</CsInstruments>
<CsScore>
i 1 0 2 440
i "Bass" 2 1
e
</CsScore>
</CsoundSynthesizer>
`;

const at = (needle, after = 0) => {
  const i = CSD.indexOf(needle);
  assert.ok(i >= 0, `test text lacks ${needle}`);
  return i + after;
};

test('file kinds', () => {
  assert.equal(fileKind('/a/b/piece.CSD'), 'csd');
  assert.equal(fileKind('lib.udo'), 'udo');
  assert.equal(fileKind('x.orc'), 'orc');
  assert.equal(fileKind('notes.txt'), 'other');
  assert.equal(fileKind(undefined), 'other');
});

test('finds the section around the cursor', () => {
  assert.equal(findSection(CSD, at('aSig poscil')).kind, 'instruments');
  assert.equal(findSection(CSD, at('i "Bass"')).kind, 'score');
  assert.equal(findSection(CSD, at('-odac')).kind, 'options');
  assert.equal(findSection(CSD, at('<CsInstruments>')).kind, 'outside'); // before the tag
  assert.equal(findSection(CSD, at('</CsScore>', '</CsScore>'.length)).kind, 'outside');
  assert.equal(findSection(CSD, 0).kind, 'outside');
});

test('in <CsInstruments> the prompt is the orchestra around the cursor', () => {
  const offset = at('  outs aSig');
  const ctx = buildContext(CSD, offset, 'piece.csd');
  assert.equal(ctx.section, 'instruments');
  assert.ok(ctx.prefix.startsWith(
    '<CsoundSynthesizer>\n<CsOptions>\n-odac\n</CsOptions>\n<CsInstruments>\nsr = 48000\n'));
  assert.ok(ctx.prefix.endsWith('  aSig poscil 0.5, p4\n'));
  assert.ok(ctx.suffix.startsWith('  outs aSig, aSig\nendin\n'));
  assert.ok(ctx.suffix.endsWith('</CsInstruments>\n</CsoundSynthesizer>\n'));
  assert.ok(!ctx.suffix.includes('i 1 0 2'));
});

test('<CsOptions> stays in the prompt as the file has it, cut when long, dropped when open', () => {
  assert.equal(optionsBlock(CSD), '<CsOptions>\n-odac\n</CsOptions>\n');
  const flags = Array.from({ length: 100 }, (_, i) => `-+flag${i}=1`).join('\n');
  const long = `<CsoundSynthesizer>\n<CsOptions>\n${flags}\n</CsOptions>\n<CsInstruments>\ninstr 1\n`;
  const block = optionsBlock(long);
  assert.ok(block.length < 450 && block.startsWith('<CsOptions>\n-+flag0=1\n'));
  assert.ok(block.endsWith('\n</CsOptions>\n'), 'cut at a line end');
  assert.equal(optionsBlock('<CsoundSynthesizer>\n<CsOptions>\n-odac\n'), '');
  const plain = '<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\n';
  assert.equal(buildContext(plain, plain.length, 'a.csd').prefix, plain);
});

test('in <CsScore> the prompt carries an outline of the orchestra', () => {
  const offset = at('i "Bass"');
  const ctx = buildContext(CSD, offset, 'piece.csd');
  assert.equal(ctx.section, 'score');
  assert.equal(
    ctx.prefix,
    '<CsoundSynthesizer>\n<CsOptions>\n-odac\n</CsOptions>\n' +
      '<CsInstruments>\nsr = 48000\nksmps = 64\nnchnls = 2\n0dbfs = 1\n' +
      'instr 1\nendin\ninstr Bass\nendin\n</CsInstruments>\n<CsScore>\ni 1 0 2 440\n'
  );
  assert.equal(ctx.suffix, 'i "Bass" 2 1\ne\n</CsScore>\n</CsoundSynthesizer>\n');
  assert.equal(orchestraOutline('no tags here'), '');
});

test('an unfinished section (no closing tag yet) runs to the end of the file', () => {
  const text = '<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\n';
  const ctx = buildContext(text, text.length, 'new.csd');
  assert.equal(ctx.section, 'instruments');
  assert.equal(ctx.suffix, '');
  assert.ok(ctx.prefix.endsWith('<CsInstruments>\ninstr 1\n'));
});

test('plain .orc files and the outside of sections send the file text', () => {
  const orc = 'instr 1\n  a1 oscili 0.3, 440\n  out a1\nendin\n';
  const ctx = buildContext(orc, orc.indexOf('  out'), 'synth.orc');
  assert.deepEqual([ctx.prefix, ctx.suffix, ctx.section], [
    'instr 1\n  a1 oscili 0.3, 440\n', '  out a1\nendin\n', 'file']);
  const outside = buildContext(CSD, at('-odac'), 'piece.csd');
  assert.equal(outside.prefix + outside.suffix, CSD);
});

test('long files are cut at line boundaries within the budget', () => {
  const lines = Array.from({ length: 400 }, (_, i) => `  k${i} = ${i}`).join('\n');
  const text = `instr 1\n${lines}\nendin\n`;
  const offset = text.indexOf('  k200 ');
  const ctx = buildContext(text, offset, 'big.orc', { maxPrefixChars: 500, maxSuffixChars: 300 });
  assert.ok(ctx.prefix.length <= 500 && ctx.suffix.length <= 300);
  assert.ok(/^ {2}k\d+ = \d+\n/.test(ctx.prefix), 'prefix starts at a line start');
  assert.ok(ctx.suffix.endsWith('\n'), 'suffix ends at a line end');
  assert.ok(ctx.suffix.startsWith('  k200 = 200\n'));
  assert.throws(() => buildContext(text, text.length + 1, 'big.orc'), RangeError);
});

test('builds an /infill request (llama.cpp shape) with the API key', () => {
  const ctx = { prefix: 'instr 1\n', suffix: 'endin\n' };
  const { url, init } = buildRequest(ctx, {
    serverUrl: 'http://127.0.0.1:8080/', apiKey: 'k3y', maxTokens: 64, temperature: 0,
  });
  assert.equal(url, 'http://127.0.0.1:8080/infill');
  assert.equal(init.method, 'POST');
  assert.equal(init.headers.Authorization, 'Bearer k3y');
  const body = JSON.parse(init.body);
  assert.deepEqual(body, {
    input_prefix: 'instr 1\n', input_suffix: 'endin\n', input_extra: [], n_predict: 64,
    temperature: 0, cache_prompt: true, stream: false,
  });
});

test('builds a /v1/completions request with suffix, even from a /v1 URL', () => {
  const ctx = { prefix: 'p', suffix: 's' };
  const { url, init } = buildRequest(ctx, {
    serverUrl: 'http://localhost:9000/v1', endpoint: 'completions', maxTokens: 10.7,
  });
  assert.equal(url, 'http://localhost:9000/v1/completions');
  assert.equal(init.headers.Authorization, undefined);
  const body = JSON.parse(init.body);
  assert.equal(body.prompt, 'p');
  assert.equal(body.suffix, 's');
  assert.equal(body.max_tokens, 10);
  assert.equal(body.model, 'csound-assistant');
  assert.throws(() => buildRequest(ctx, { endpoint: 'chat' }), /unknown endpoint/);
});

test('reads both response shapes', () => {
  assert.deepEqual(
    parseResponse('infill', { content: 'out a1\n', stop: true, stop_type: 'eos', tokens_evaluated: 31 }),
    { text: 'out a1\n', truncated: false, promptTokens: 31 });
  assert.deepEqual(parseResponse('infill', { content: 'x', stop_type: 'limit' }),
    { text: 'x', truncated: true, promptTokens: undefined });
  assert.deepEqual(
    parseResponse('completions', { choices: [{ text: 'y', finish_reason: 'length' }], usage: { prompt_tokens: 9 } }),
    { text: 'y', truncated: true, promptTokens: 9 });
  assert.throws(() => parseResponse('infill', { choices: [] }), /content/);
  assert.throws(() => parseResponse('completions', { content: 'x' }), /choices/);
  assert.throws(() => parseResponse('completions', null), /JSON/);
});

test('error messages say what to do', () => {
  assert.match(errorMessage(401, '{"error":{"message":"bad key"}}'), /HTTP 401: bad key.*apiKey/);
  assert.match(errorMessage(503, '{"error":"queue full"}', { 'retry-after': '2' }),
    /queue full.*retry after 2 s/);
  assert.match(errorMessage(404, 'Not Found'), /serverUrl/);
  assert.match(errorMessage(400, '{"message":"prompt too long"}'), /prompt too long/);
});

test('post-processing stops at leaked end tokens and at a repeat of the suffix', () => {
  assert.equal(postProcess('aSig poscil 1, 440\n<|endoftext|>junk', ''), 'aSig poscil 1, 440\n');
  const suffix = '  outs aSig, aSig\nendin\n';
  assert.equal(
    postProcess('aSig poscil 1, 440\n  outs aSig, aSig\nendin\n', suffix),
    'aSig poscil 1, 440\n');
  // A completion that is the line after the cursor adds nothing but a second copy of it.
  assert.equal(postProcess('endin', 'endin\n</CsInstruments>\n'), '');
  assert.equal(postProcess('  outs aSig, aSig\nendin\n', suffix), '');
  assert.equal(postProcess('k1 = 1\nk2 = 2\nk3 =', '', { truncated: true }), 'k1 = 1\nk2 = 2\n');
  assert.equal(postProcess('k1 = 1', '', { truncated: true }), 'k1 = 1');
});
