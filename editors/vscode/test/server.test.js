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

const base = { serverUrl: URL_, apiKey: KEY, maxTokens: 24, temperature: 0, seed: 1 };

for (const section of ['instruments', 'score']) {
  test(`inline completion in <Cs${section === 'score' ? 'Score' : 'Instruments'}> over /infill and /v1/completions agree`, { skip }, async () => {
    const offset = section === 'score' ? CSD.indexOf('\ne\n') + 1 : CSD.indexOf('\nendin') + 1;
    const infill = await complete({ text: CSD, offset, fileName: 'piece.csd', settings: { ...base, endpoint: 'infill' } });
    const legacy = await complete({ text: CSD, offset, fileName: 'piece.csd', settings: { ...base, endpoint: 'completions' } });
    assert.equal(infill.context.section, section);
    assert.equal(typeof infill.raw.text, 'string');
    assert.ok(!/<\|endoftext\|>|<\|im_end\|>|<jupyter_/.test(infill.text), 'no special tokens leak');
    // The same FIM prompt at temperature 0 gives the same text on both routes.
    assert.equal(infill.raw.text, legacy.raw.text);
  });
}

test('a wrong API key is reported as such', { skip: skip || (KEY ? false : 'server runs without --api-key') }, async () => {
  await assert.rejects(
    complete({ text: CSD, offset: 10, fileName: 'piece.csd', settings: { ...base, apiKey: 'wrong' } }),
    /HTTP 401.*apiKey/);
});
