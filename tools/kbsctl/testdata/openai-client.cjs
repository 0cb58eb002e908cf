// The official OpenAI client library for Node.js as an application of the
// kbs proxy (run by TestOpenAINode in inference_test.go; make test-openai).
// Environment: KBS_OPENAI_NODE_MODULES (a node_modules directory holding
// the openai package), PROXY_URL, UNVERIFIED_PROXY_URL, REFUSED_PROXY_URL,
// UNREACHABLE_PROXY_URL, TAMPERED_PROXY_URL, TAMPERED_WHOLE_PROXY_URL (base
// URLs ending in /v1), WANT (the echo model's answer to the prompt).
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const { createRequire } = require('node:module');

const load = createRequire(path.join(process.env.KBS_OPENAI_NODE_MODULES, 'x.js'));
const { default: OpenAI, APIError } = load('openai');
const { VERSION: version } = load('openai/version');

const prompt = 'what is the capital of france?';
const want = process.env.WANT;

function client(baseURL) {
  // The proxy ignores the API key; the SDK insists on one. No retries, so
  // that errors show as they are.
  return new OpenAI({ baseURL, apiKey: 'sk-unused', maxRetries: 0, timeout: 60000 });
}

async function check(name, f) {
  await f();
  console.log(`ok   ${name}`);
}

async function main() {
  console.log(`openai-node ${version} (node ${process.version})`);
  const ai = client(process.env.PROXY_URL);

  await check('chat completion', async () => {
    const r = await ai.chat.completions.create({ model: 'kbs-echo', messages: [{ role: 'user', content: prompt }] });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.choices[0].message.content, want);
    assert.equal(r.choices[0].finish_reason, 'stop');
  });

  await check('chat completion, stream: true', async () => {
    const stream = await ai.chat.completions.create({
      model: 'kbs-echo', stream: true, stream_options: { include_usage: true },
      messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: prompt }],
    });
    let text = '', chunks = 0, usage = null;
    for await (const c of stream) {
      chunks++;
      if (c.usage) usage = c.usage;
      for (const ch of c.choices) text += ch.delta.content ?? '';
    }
    assert.equal(text, want);
    assert.ok(chunks > 5, `only ${chunks} chunks`);
    assert.ok(usage && usage.completion_tokens > 0, 'no usage chunk');
  });

  await check('chat completion, the SDK stream helper', async () => {
    const runner = ai.chat.completions.stream({ model: 'kbs-echo', messages: [{ role: 'user', content: prompt }] });
    const done = await runner.finalChatCompletion();
    assert.equal(done.choices[0].message.content, want);
  });

  await check('completion, with and without stream', async () => {
    const r = await ai.completions.create({ model: 'kbs-echo', prompt });
    assert.equal(r.choices[0].text, want);
    const s = await ai.completions.create({ model: 'kbs-echo', prompt, stream: true });
    let text = '';
    for await (const c of s) text += c.choices[0]?.text ?? '';
    assert.equal(text, want);
  });

  await check('embeddings (the SDK asks for base64 and decodes it)', async () => {
    const r = await ai.embeddings.create({ model: 'kbs-echo', input: ['one', 'two'] });
    assert.equal(r.data.length, 2);
    assert.equal(r.data[0].embedding.length, 8);
    const norm = Math.sqrt(r.data[0].embedding.reduce((s, x) => s + x * x, 0));
    assert.ok(Math.abs(norm - 1) < 1e-5, `norm ${norm}`);
    const f = await ai.embeddings.create({ model: 'kbs-echo', input: 'one', encoding_format: 'float', dimensions: 4 });
    assert.equal(f.data[0].embedding.length, 4);
  });

  await check('models list', async () => {
    const ids = [];
    for await (const m of ai.models.list()) ids.push(m.id);
    assert.deepEqual(ids, ['kbs-echo']);
  });

  await check('the upstream\'s own error (unknown model) as an APIError', async () => {
    await assert.rejects(
      ai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }),
      (e) => e instanceof APIError && e.status === 404 && e.code === 'model_not_found');
  });

  await check('a broker that fails verification: APIError 503 broker_verification_failed', async () => {
    const bad = client(process.env.UNVERIFIED_PROXY_URL);
    await assert.rejects(
      bad.chat.completions.create({ model: 'kbs-echo', messages: [{ role: 'user', content: prompt }] }),
      (e) => e instanceof APIError && e.status === 503 && e.code === 'broker_verification_failed');
  });

  await check('a key the broker does not hold: APIError 403 key_refused', async () => {
    const bad = client(process.env.REFUSED_PROXY_URL);
    await assert.rejects(
      bad.chat.completions.create({ model: 'kbs-echo', messages: [{ role: 'user', content: prompt }] }),
      (e) => e instanceof APIError && e.status === 403 && e.code === 'key_refused');
  });

  await check('an unreachable worker: APIError 502 worker_unreachable', async () => {
    const bad = client(process.env.UNREACHABLE_PROXY_URL);
    await assert.rejects(
      bad.embeddings.create({ model: 'kbs-echo', input: 'x' }),
      (e) => e instanceof APIError && e.status === 502 && e.code === 'worker_unreachable');
  });

  await check('a tampered stream: the SDK raises, the text stops short', async () => {
    const t = client(process.env.TAMPERED_PROXY_URL);
    const stream = await t.chat.completions.create({ model: 'kbs-echo', stream: true, messages: [{ role: 'user', content: prompt }] });
    let text = '';
    await assert.rejects((async () => {
      for await (const c of stream) for (const ch of c.choices) text += ch.delta.content ?? '';
    })(), (e) => e instanceof APIError && /answer_integrity|authentication/.test(String(e.code) + e.message));
    assert.notEqual(text, want);
    assert.ok(want.startsWith(text));
  });

  await check('a tampered answer without streaming: APIError 502 answer_integrity', async () => {
    const t = client(process.env.TAMPERED_WHOLE_PROXY_URL);
    await assert.rejects(
      t.chat.completions.create({ model: 'kbs-echo', messages: [{ role: 'user', content: prompt }] }),
      (e) => e instanceof APIError && e.status === 502 && e.code === 'answer_integrity');
  });

  console.log('openai-client: all checks passed');
}

main().catch((e) => {
  console.error('openai-client: FAILED:', e);
  process.exit(1);
});
