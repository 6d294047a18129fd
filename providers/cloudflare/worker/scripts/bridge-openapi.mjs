// Print the OpenAPI document of Cloudflare's sandbox bridge, as the installed @cloudflare/sandbox
// package ships it (the OPENAPI_SCHEMA literal of dist/bridge/index.js, the document the bridge
// serves at GET /v1/openapi.json), as JSON.
//
//   node scripts/bridge-openapi.mjs [path/to/dist/bridge/index.js]
//
// The provider's tests keep a copy (providers/cloudflare/tests/bridge-openapi-<version>.json) and
// check it against this output when the Worker's dependencies are installed.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import vm from 'node:vm';

const require = createRequire(import.meta.url);
const file =
  process.argv[2] ?? require.resolve('@cloudflare/sandbox/bridge', { paths: [process.cwd()] });
const src = readFileSync(file, 'utf8');
const start = src.indexOf('const OPENAPI_SCHEMA = {');
if (start < 0) throw new Error(`no OPENAPI_SCHEMA in ${file}`);
let i = src.indexOf('{', start);
let depth = 0;
let quote = null;
for (; i < src.length; i++) {
  const ch = src[i];
  if (quote) {
    if (ch === '\\') i++;
    else if (ch === quote) quote = null;
    continue;
  }
  if (ch === '"' || ch === "'" || ch === '`') quote = ch;
  else if (ch === '{') depth++;
  else if (ch === '}' && --depth === 0) break;
}
const literal = src.slice(src.indexOf('{', start), i + 1);
// A plain object literal: evaluated in an empty context, it can reach nothing.
const schema = vm.runInNewContext(`(${literal})`, Object.create(null));
process.stdout.write(`${JSON.stringify(schema, null, 2)}\n`);
