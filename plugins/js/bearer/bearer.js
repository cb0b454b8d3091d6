// Portcullis auth plugin in JavaScript: a bearer-token allow-list with consumer names.
//
// Built with componentize-js against the `auth` world of wit/plugin.wit (see
// plugins/build-polyglot.sh). Route config (JSON text of the route's `config` table):
//
//     {"tokens": {"t-abc": "carol", "t-def": "dave"}}
//
// `Authorization: Bearer <token>` with a listed token: allow, consumer = its name.
// Anything else: 401 with a JSON body and `www-authenticate: Bearer`.
import { log } from "portcullis:plugin/host@0.1.0";

const encoder = new TextEncoder();
let tokens = null; // Map token -> consumer, set by configure

function fail(message) {
  // A thrown value becomes `err(message)` of configure's result<_, string>.
  throw message;
}

export function configure(config) {
  let cfg;
  try {
    cfg = JSON.parse(config);
  } catch (e) {
    fail(`config is not JSON: ${e.message}`);
  }
  if (cfg === null || typeof cfg !== "object" || Array.isArray(cfg)) fail("config must be a table");
  for (const k of Object.keys(cfg)) {
    if (k !== "tokens") fail(`unknown config key \`${k}\` (expected: tokens)`);
  }
  const t = cfg.tokens;
  if (t === null || typeof t !== "object" || Array.isArray(t) || Object.keys(t).length === 0) {
    fail("`tokens` is required: a non-empty table of token = consumer");
  }
  const map = new Map();
  for (const [token, consumer] of Object.entries(t)) {
    if (token.length === 0) fail("`tokens`: a token is empty");
    if (typeof consumer !== "string" || consumer.length === 0) {
      fail(`\`tokens.${token.slice(0, 4)}…\`: the consumer must be a non-empty string`);
    }
    map.set(token, consumer);
  }
  tokens = map;
}

function deny(message) {
  const body = JSON.stringify({ error: { code: "unauthorized", message } });
  return {
    tag: "deny",
    val: {
      status: 401,
      headers: [
        ["content-type", "application/json"],
        ["www-authenticate", 'Bearer realm="portcullis"'],
      ],
      body: encoder.encode(body),
    },
  };
}

export function authenticate(req) {
  const auth = req.header("authorization");
  if (auth === undefined || auth === null) return deny("missing bearer token");
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(auth);
  if (!m) return deny("missing bearer token");
  const consumer = tokens.get(m[1]);
  if (consumer === undefined) {
    log("debug", "unknown bearer token");
    return deny("invalid bearer token");
  }
  return { tag: "allow", val: consumer };
}
