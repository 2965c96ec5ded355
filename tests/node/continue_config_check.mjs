// Load a Continue config.yaml the way Continue does, with its own package
// (@continuedev/config-yaml): the zod schema parse (with no key of ours dropped by it), the
// validation Continue shows in its UI, and the unroll step a local config file goes through
// before Continue uses it.
//   node continue_config_check.mjs path/to/config.yaml
// Prints the unrolled config as JSON on stdout; exits 1 with every error on stderr.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import YAML from 'yaml';
import {
  parseConfigYaml,
  unrollAssistantFromContent,
  validateConfigYaml,
} from '@continuedev/config-yaml';

const [path] = process.argv.slice(2);
if (!path) {
  console.error('usage: node continue_config_check.mjs CONFIG.yaml');
  process.exit(2);
}
const text = readFileSync(path, 'utf8');
const errors = [];
let parsed;
try {
  parsed = parseConfigYaml(text);
} catch (err) {
  errors.push(`${path}: ${err.message}`);
}
// Continue's schema drops keys it does not know without a word (zod's default): a misspelled
// key would be lost silently, so every key written must survive the parse.
function droppedKeys(written, kept, where) {
  if (!written || typeof written !== 'object') return [];
  if (!kept || typeof kept !== 'object') return [where];
  return Object.keys(written).flatMap((key) => {
    const at = Array.isArray(written) ? `${where}[${key}]` : `${where}.${key}`;
    return key in kept ? droppedKeys(written[key], kept[key], at) : [at];
  });
}
if (parsed) {
  for (const at of droppedKeys(YAML.parse(text), parsed, 'config')) {
    errors.push(`${path}: ${at}: Continue's schema has no such key (dropped on load)`);
  }
  // Non-fatal ones are warnings in Continue's UI (maxTokens too close to contextLength, a
  // chat model used for autocomplete): the generated config should raise none.
  for (const e of validateConfigYaml(parsed)) {
    errors.push(`${path}: ${e.fatal ? 'error' : 'warning'}: ${e.message}`);
  }
}
// The generated config has no `uses:` blocks, so the registry must never be asked.
const registry = {
  getContent: async (id) => {
    throw new Error(`the config refers to a package (${JSON.stringify(id)}); it should be self-contained`);
  },
};
let unrolled;
if (parsed) {
  const id = { uriType: 'file', fileUri: pathToFileURL(resolve(path)).href };
  const result = await unrollAssistantFromContent(id, text, registry, { renderSecrets: false });
  for (const e of result.errors || []) errors.push(`${path}: unroll: ${e.message}`);
  unrolled = result.config;
  if (!unrolled) errors.push(`${path}: unroll produced no config`);
}
if (errors.length) {
  console.error(errors.join('\n'));
  process.exit(1);
}
console.log(JSON.stringify(unrolled));
