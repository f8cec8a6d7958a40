// Signs and verifies webhooks with the providers' own Node.js libraries, for tests/test_providers.py.
//
// stdin: a JSON list of cases; stdout: a JSON list of results, one per case, in order.
//   {"op": "verify", "provider": P, "secret": S, "body_b64": B, "headers": {...}}
//       -> {"ok": true} or {"ok": false, "error": "..."}
//   {"op": "sign", "provider": P, "secret": S, "body_b64": B, "timestamp": T, "id": I}
//       -> {"ok": true, "headers": {...}}
// Providers: stripe (stripe-node), svix, standard-webhooks (standardwebhooks),
// github (@octokit/webhooks-methods), slack (@slack/bolt's request verification; verify only).
// Many cases go through one process, so a test matrix costs one Node start-up.

import { createRequire } from "node:module";
import { sign as githubSign, verify as githubVerify } from "@octokit/webhooks-methods";

const require = createRequire(import.meta.url);
const stripe = require("stripe")("sk_test_replayproxy_not_a_key");
const { Webhook: SvixWebhook } = require("svix");
const { Webhook: StandardWebhook } = require("standardwebhooks");
const { verifySlackRequest } = require("@slack/bolt");

function lower(headers) {
  const out = {};
  for (const [name, value] of Object.entries(headers)) out[name.toLowerCase()] = value;
  return out;
}

async function verify(c) {
  const body = Buffer.from(c.body_b64, "base64");
  const headers = lower(c.headers);
  switch (c.provider) {
    case "stripe":
      stripe.webhooks.constructEvent(body, headers["stripe-signature"], c.secret, 300);
      return;
    case "svix":
      new SvixWebhook(c.secret).verify(body.toString("utf8"), headers);
      return;
    case "standard-webhooks":
      new StandardWebhook(c.secret).verify(body.toString("utf8"), headers);
      return;
    case "github": {
      const good = await githubVerify(c.secret, body.toString("utf8"), headers["x-hub-signature-256"] ?? "");
      if (!good) throw new Error("signature does not match");
      return;
    }
    case "slack":
      verifySlackRequest({
        signingSecret: c.secret,
        body: body.toString("utf8"),
        headers: {
          "x-slack-signature": headers["x-slack-signature"] ?? "",
          "x-slack-request-timestamp": Number(headers["x-slack-request-timestamp"]),
        },
      });
      return;
    default:
      throw new Error(`unknown provider ${c.provider}`);
  }
}

async function sign(c) {
  const text = Buffer.from(c.body_b64, "base64").toString("utf8");
  switch (c.provider) {
    case "stripe":
      return {
        "Stripe-Signature": stripe.webhooks.generateTestHeaderString({
          payload: text, secret: c.secret, timestamp: c.timestamp,
        }),
      };
    case "svix":
    case "standard-webhooks": {
      const Hook = c.provider === "svix" ? SvixWebhook : StandardWebhook;
      const prefix = c.provider === "svix" ? "svix" : "webhook";
      return {
        [`${prefix}-id`]: c.id,
        [`${prefix}-timestamp`]: String(c.timestamp),
        [`${prefix}-signature`]: new Hook(c.secret).sign(c.id, new Date(c.timestamp * 1000), text),
      };
    }
    case "github":
      return { "X-Hub-Signature-256": await githubSign(c.secret, text) };
    default:
      throw new Error(`no signer for ${c.provider}`);
  }
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const cases = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const results = [];
for (const c of cases) {
  try {
    if (c.op === "sign") results.push({ ok: true, headers: await sign(c) });
    else {
      await verify(c);
      results.push({ ok: true });
    }
  } catch (err) {
    results.push({ ok: false, error: String(err && err.message ? err.message : err) });
  }
}
process.stdout.write(JSON.stringify(results));
