'use strict';
// The extension's logic against the project's REAL server on a real GGUF. Needs
// CSOUND_ASSISTANT_TEST_SERVER_URL (tests/test_editors_vscode.py starts
// `csound-assistant serve` on the embedded model and sets it); skipped, saying so, without it.

const test = require('node:test');
const assert = require('node:assert/strict');
const { complete } = require('../src/client');

const URL_ = process.env.CSOUND_ASSISTANT_TEST_SERVER_URL;
const KEY = process.env.CSOUND_ASSISTANT_TEST_API_KEY || '';
const skip = URL_ ? false : 'set CSOUND_ASSISTANT_TEST_SERVER_URL to a running csound-assistant server';

const CSD = `<CsoundSynthesizer>
<CsOptions>
-d
</CsOptions>
<CsInstruments>
sr = 48000
ksmps = 64
nchnls = 2
0dbfs = 1

instr 1
  aSig poscil 0.5, p4

endin
</CsInstruments>
<CsScore>
i 1 0 2 440

e
</CsScore>
</CsoundSynthesizer>
`;

const base = { serverUrl: URL_, apiKey: KEY, maxTokens: 4, temperature: 0, seed: 1 };

for (const section of ['instruments', 'score']) {
  test(`inline completion in <Cs${section === 'score' ? 'Score' : 'Instruments'}> over /infill and /v1/completions`, { skip }, async () => {
    const offset = section === 'score' ? CSD.indexOf('\ne\n') + 1 : CSD.indexOf('\nendin') + 1;
    const infill = await complete({ text: CSD, offset, fileName: 'piece.csd', settings: { ...base, endpoint: 'infill' } });
    const legacy = await complete({ text: CSD, offset, fileName: 'piece.csd', settings: { ...base, endpoint: 'completions' } });
    assert.equal(infill.context.section, section);
    assert.equal(typeof infill.raw.text, 'string');
    assert.equal(typeof legacy.raw.text, 'string');
    // The server stops at the end tokens instead of printing them.
    assert.ok(!/<\|endoftext\|>|<\|im_end\|>/.test(infill.raw.text + legacy.raw.text));
    // Both routes built the same FIM prompt from the extension's prefix and suffix (greedy text
    // may still differ: a prompt read from the prefix cache is evaluated in other batch sizes).
    assert.ok(infill.raw.promptTokens > 20, `prompt of ${infill.raw.promptTokens} tokens`);
    assert.equal(infill.raw.promptTokens, legacy.raw.promptTokens);
  });
}

test('a wrong API key is reported as such', { skip: skip || (KEY ? false : 'server runs without --api-key') }, async () => {
  await assert.rejects(
    complete({ text: CSD, offset: 10, fileName: 'piece.csd', settings: { ...base, apiKey: 'wrong' } }),
    /HTTP 401.*apiKey/);
});
