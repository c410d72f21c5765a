// Kite's OpenAI-compatible API through the official `openai` npm client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startServer, metric } from './kite_server.mjs';

let server;
let client;

before(async () => {
  server = await startServer();
  client = new OpenAI({ apiKey: 'unused', baseURL: server.baseURL, maxRetries: 0, timeout: 120000 });
});

after(async () => {
  const { code } = await server.stop();
  assert.equal(code, 0, `kite serve should exit 0 on SIGTERM:\n${server.log()}`);
});

const PROMPT = 'The kernel scheduler';
const MESSAGES = [
  { role: 'system', content: 'You are a concise assistant.' },
  { role: 'user', content: 'What does a kernel scheduler do?' },
];

async function collectText(stream, kind) {
  const texts = new Map();
  let usage = null;
  let finishes = 0;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      const piece = kind === 'chat' ? (c.delta?.content ?? '') : c.text;
      texts.set(c.index, (texts.get(c.index) ?? '') + piece);
      if (c.finish_reason) finishes++;
    }
  }
  return { texts, usage, finishes };
}

test('models.list serves the model', async () => {
  const models = await client.models.list();
  const ids = [];
  for await (const m of models) ids.push(m.id);
  assert.deepEqual(ids, ['kite-ref']);
});

test('completions: streamed text equals the non-streamed greedy text', async () => {
  const whole = await client.completions.create({ model: 'kite-ref', prompt: PROMPT, max_tokens: 32, temperature: 0 });
  assert.equal(whole.object, 'text_completion');
  assert.equal(whole.choices.length, 1);
  assert.ok(whole.choices[0].text.length > 0);
  assert.equal(whole.usage.completion_tokens + whole.usage.prompt_tokens, whole.usage.total_tokens);
  const stream = await client.completions.create({
    model: 'kite-ref', prompt: PROMPT, max_tokens: 32, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  const { texts, usage, finishes } = await collectText(stream, 'completion');
  assert.equal(texts.get(0), whole.choices[0].text);
  assert.equal(finishes, 1);
  assert.deepEqual(
    [usage.prompt_tokens, usage.completion_tokens],
    [whole.usage.prompt_tokens, whole.usage.completion_tokens],
  );
});

test('chat: streamed text equals the non-streamed greedy text', async () => {
  const whole = await client.chat.completions.create({ model: 'kite-ref', messages: MESSAGES, max_tokens: 32, temperature: 0 });
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  const text = whole.choices[0].message.content;
  assert.ok(text.length > 0);
  const stream = await client.chat.completions.create({
    model: 'kite-ref', messages: MESSAGES, max_tokens: 32, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  const { texts, usage, finishes } = await collectText(stream, 'chat');
  assert.equal(texts.get(0), text);
  assert.equal(finishes, 1);
  assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
});

test('n=2 gives two choices; a seed makes sampling reproducible', async () => {
  const req = { model: 'kite-ref', prompt: 'It is a truth universally acknowledged, that', max_tokens: 24, temperature: 1.0, n: 2, seed: 42 };
  const a = await client.completions.create(req);
  const b = await client.completions.create(req);
  assert.equal(a.choices.length, 2);
  assert.deepEqual(a.choices.map((c) => c.index).sort(), [0, 1]);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  assert.notEqual(a.choices[0].text, a.choices[1].text);
  const c = await client.completions.create({ ...req, seed: 43 });
  assert.notDeepEqual(c.choices.map((x) => x.text), a.choices.map((x) => x.text));
  const chat = await client.chat.completions.create({ model: 'kite-ref', messages: MESSAGES, max_tokens: 8, n: 2, seed: 7 });
  assert.equal(chat.choices.length, 2);
});

test('stop strings end the text before the match', async () => {
  const whole = await client.completions.create({ model: 'kite-ref', prompt: PROMPT, max_tokens: 48, temperature: 0 });
  const text = whole.choices[0].text;
  const stop = text.slice(12, 16);
  const cut = await client.completions.create({ model: 'kite-ref', prompt: PROMPT, max_tokens: 48, temperature: 0, stop: [stop, 'zzzzqq'] });
  assert.equal(cut.choices[0].text, text.slice(0, text.indexOf(stop)));
  assert.equal(cut.choices[0].finish_reason, 'stop');
  const chat = await client.chat.completions.create({ model: 'kite-ref', messages: MESSAGES, max_tokens: 48, temperature: 0 });
  const ct = chat.choices[0].message.content;
  const cstop = ct.slice(5, 8);
  const cchat = await client.chat.completions.create({ model: 'kite-ref', messages: MESSAGES, max_tokens: 48, temperature: 0, stop: cstop });
  assert.equal(cchat.choices[0].message.content, ct.slice(0, ct.indexOf(cstop)));
});

test('logprobs in the completions shape', async () => {
  const r = await client.completions.create({ model: 'kite-ref', prompt: PROMPT, max_tokens: 5, temperature: 0, logprobs: 3 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, 5);
  assert.equal(lp.token_logprobs.length, 5);
  assert.equal(lp.text_offset.length, 5);
  assert.equal(lp.tokens.join(''), r.choices[0].text);
  for (let i = 0; i < 5; i++) {
    const top = Object.values(lp.top_logprobs[i]);
    assert.ok(top.length >= 3 && top.length <= 4);
    assert.ok(Math.abs(Math.max(...top) - lp.token_logprobs[i]) < 1e-5, 'greedy takes the most likely token');
  }
});

test("lm-evaluation-harness's loglikelihood request: echo, logprobs 1, max_tokens 0", async () => {
  const tok = await (await fetch(`${server.baseURL.replace(/\/v1$/, '')}/tokenize`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: PROMPT }),
  })).json();
  for (const prompt of [PROMPT, [PROMPT, 'Hello world'], tok.tokens, [tok.tokens, tok.tokens]]) {
    const r = await client.completions.create({ model: 'kite-ref', prompt, echo: true, logprobs: 1, max_tokens: 0, temperature: 0 });
    assert.equal(r.usage.completion_tokens, 0);
    assert.equal(r.choices.length, Array.isArray(prompt) && typeof prompt[0] !== 'number' ? 2 : 1);
    for (const c of r.choices) {
      assert.equal(c.finish_reason, 'length');
      const lp = c.logprobs;
      assert.equal(lp.token_logprobs[0], null);
      assert.ok(lp.token_logprobs.slice(1).every((v) => typeof v === 'number' && v <= 0));
      assert.equal(lp.tokens.length, lp.text_offset.length);
      // text_offset counts code points of the returned text (Python's len()).
      const chars = Array.from(c.text);
      for (let i = 0; i < lp.tokens.length; i++) {
        const end = i + 1 < lp.tokens.length ? lp.text_offset[i + 1] : chars.length;
        assert.equal(chars.slice(lp.text_offset[i], end).join(''), lp.tokens[i]);
      }
    }
  }
  assert.equal((await client.completions.create({ model: 'kite-ref', prompt: PROMPT, echo: true, logprobs: 1, max_tokens: 0 }))
    .choices[0].text, PROMPT);
  await assert.rejects(
    client.completions.create({ model: 'kite-ref', prompt: PROMPT, logprobs: 1, max_tokens: 0 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'max_tokens',
  );
});

test('logprobs in the chat shape', async () => {
  const r = await client.chat.completions.create({
    model: 'kite-ref', messages: MESSAGES, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 2,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, r.usage.completion_tokens);
  for (const t of content) {
    assert.equal(typeof t.token, 'string');
    assert.ok(t.logprob <= 0);
    assert.equal(t.top_logprobs.length, 2);
    assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5);
  }
  const stream = await client.chat.completions.create({
    model: 'kite-ref', messages: MESSAGES, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 1, stream: true,
  });
  let n = 0;
  for await (const chunk of stream) for (const c of chunk.choices) n += c.logprobs?.content?.length ?? 0;
  assert.equal(n, 5);
});

test('invalid parameters are 400 errors naming the parameter', async () => {
  await assert.rejects(
    client.completions.create({ model: 'kite-ref', prompt: PROMPT, temperature: -1 }),
    (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === 'temperature',
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'kite-ref', messages: MESSAGES, max_tokens: 100000 }),
    (e) => e instanceof OpenAI.BadRequestError && /maximum context length/.test(e.message),
  );
  await assert.rejects(
    client.completions.create({ model: 'kite-ref', prompt: PROMPT, n: 0 }),
    (e) => e.status === 400 && e.param === 'n',
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'no-such-model', messages: MESSAGES }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404,
  );
  await assert.rejects(
    client.completions.create({ model: 'kite-ref', prompt: PROMPT, max_tokens: 3.5 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'max_tokens' && /3\.5/.test(e.message),
  );
  await assert.rejects(
    client.completions.create({ model: 'kite-ref', prompt: PROMPT, seed: 2 ** 64 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'seed',
  );
  await assert.rejects(
    client.chat.completions.create({ model: 'kite-ref', messages: [{ role: 'user', content: null }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === 'messages[0].content',
  );
});

test('a client that disconnects mid-stream frees its KV blocks', async () => {
  const controller = new AbortController();
  const stream = await client.completions.create(
    { model: 'kite-ref', prompt: PROMPT, max_tokens: 900, ignore_eos: true, stream: true },
    { signal: controller.signal },
  );
  let chunks = 0;
  try {
    for await (const _ of stream) {
      if (++chunks === 3) {
        assert.ok((await metric(server.root, 'kite:kv_cache_blocks_used')) > 0);
        controller.abort();
      }
    }
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIUserAbortError || e.name === 'AbortError', String(e));
  }
  let used = -1;
  for (let i = 0; i < 200; i++) {
    used = await metric(server.root, 'kite:kv_cache_blocks_used');
    if (used === 0) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  assert.equal(used, 0);
  assert.ok((await metric(server.root, 'vllm:generation_tokens_total')) < 900 + 400);
});

test('200 concurrent streaming clients all finish with the right text', async () => {
  const prompts = ['The kernel scheduler', 'It is a truth universally acknowledged, that', 'Once upon a time', 'def main():'];
  const expected = [];
  for (const p of prompts) {
    const r = await client.completions.create({ model: 'kite-ref', prompt: p, max_tokens: 12, temperature: 0 });
    expected.push(r.choices[0].text);
  }
  const jobs = [];
  for (let i = 0; i < 200; i++) {
    const k = i % prompts.length;
    jobs.push((async () => {
      const stream = await client.completions.create({ model: 'kite-ref', prompt: prompts[k], max_tokens: 12, temperature: 0, stream: true });
      const { texts } = await collectText(stream, 'completion');
      return [k, texts.get(0)];
    })());
  }
  const results = await Promise.all(jobs);
  assert.equal(results.length, 200);
  for (const [k, text] of results) assert.equal(text, expected[k]);
});

test('an API key is enforced when set', async () => {
  const keyed = await startServer([], { KITE_API_KEY: 'sk-test-123' });
  try {
    const wrong = new OpenAI({ apiKey: 'sk-wrong', baseURL: keyed.baseURL, maxRetries: 0 });
    await assert.rejects(wrong.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
    const right = new OpenAI({ apiKey: 'sk-test-123', baseURL: keyed.baseURL, maxRetries: 0 });
    const r = await right.completions.create({ model: 'kite-ref', prompt: PROMPT, max_tokens: 2 });
    assert.equal(r.choices.length, 1);
    // Every route but /health and /metrics needs the key.
    const root = keyed.baseURL.replace(/\/v1\/?$/, '');
    const tokenize = (headers) => fetch(`${root}/tokenize`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ prompt: PROMPT }),
    });
    const anon = await tokenize({});
    assert.equal(anon.status, 401);
    assert.equal((await anon.json()).error.type, 'authentication_error');
    assert.equal((await tokenize({ authorization: 'Bearer sk-test-123' })).status, 200);
    assert.equal((await fetch(`${root}/version`)).status, 401);
    assert.equal((await fetch(`${root}/health`)).status, 200);
    assert.equal((await fetch(`${root}/metrics`)).status, 200);
  } finally {
    const { code } = await keyed.stop();
    assert.equal(code, 0);
  }
});

test('fan-out limits: 400 over --max-seqs-per-request, 429 with Retry-After, 400 for what can never queue', async () => {
  const s = await startServer(['--max-num-seqs', '2', '--max-queue', '2', '--max-seqs-per-request', '6']);
  try {
    const c = new OpenAI({ apiKey: 'unused', baseURL: s.baseURL, maxRetries: 0, timeout: 120000 });
    // prompts x n over the per-request cap.
    await assert.rejects(c.completions.create({ model: 'kite-ref', prompt: ['a', 'b', 'c'], n: 3, max_tokens: 1 }),
      (e) => e instanceof OpenAI.BadRequestError && e.param === 'n');
    // 5 sequences can never fit 2 seats + 2 waiting: 400, not "retry later".
    await assert.rejects(c.completions.create({ model: 'kite-ref', prompt: ['a', 'b', 'c', 'd', 'e'], max_tokens: 1 }),
      (e) => e instanceof OpenAI.BadRequestError && e.param === 'n');
    // Fill 2 seats + 2 waiting with long streams; the next request gets 429 + Retry-After.
    const long = { model: 'kite-ref', prompt: ['x', 'y', 'z', 'w'], max_tokens: 600, ignore_eos: true, stream: true };
    const stream = await c.completions.create(long);
    const it = stream[Symbol.asyncIterator]();
    await it.next();  // the streams are running
    await assert.rejects(c.completions.create({ model: 'kite-ref', prompt: PROMPT, max_tokens: 1 }), (e) => {
      assert.ok(e instanceof OpenAI.RateLimitError, `expected 429, got ${e.status}`);
      const retry = Number(e.headers.get ? e.headers.get('retry-after') : e.headers['retry-after']);
      assert.ok(retry >= 1 && retry <= 60, `Retry-After ${retry}`);
      return true;
    });
    stream.controller.abort();
  } finally {
    const { code } = await s.stop();
    assert.equal(code, 0);
  }
});
