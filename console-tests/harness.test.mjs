// The harness itself: the banner is parsed, dev answers, chromium drives a page of it and
// screenshots it, a second merchant is made with its own key. Needs no console page, so it
// tells a broken harness apart from a broken console.

import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import {
  api, createMerchant, launchBrowser, parseBanner, psql, screenshot, startDev,
} from './harness.mjs';

test('parseBanner reads the URLs, the key and the console users', () => {
  const banner = [
    '  API               http://127.0.0.1:4100',
    '  OpenAPI           http://127.0.0.1:4100/openapi.json',
    '  sandbox admin     http://127.0.0.1:4101/_admin/knobs',
    '  demo merchant     0b4f3c1e-0000-4000-8000-000000000001',
    '  API key           sk_test_abc',
    '  console           http://127.0.0.1:4100/console',
    '  console merchant  demo@paygate.test / s3cret-pass',
    '  console operator  ops@paygate.test / 0ther-pass',
  ].join('\n');
  assert.deepEqual(parseBanner(banner), {
    api: 'http://127.0.0.1:4100',
    sandbox: 'http://127.0.0.1:4101',
    apiKey: 'sk_test_abc',
    merchantId: '0b4f3c1e-0000-4000-8000-000000000001',
    console: 'http://127.0.0.1:4100/console',
    merchantUser: { email: 'demo@paygate.test', password: 's3cret-pass' },
    operatorUser: { email: 'ops@paygate.test', password: '0ther-pass' },
  });
  assert.equal(parseBanner('  API key           sk_1').console, undefined, 'no console line, no console');
});

describe('a running paygate dev', () => {
  let dev;
  let browser;
  before(async () => {
    dev = await startDev({ console: false });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await dev?.stop();
  });

  test('dev runs on its own database and answers with the demo key', async () => {
    assert.match(dev.api, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.match(dev.apiKey, /^sk_/);
    assert.equal(await psql(dev.databaseUrl, 'SELECT current_database()'), dev.database);
    assert.equal((await api(dev, dev.apiKey, 'GET', '/v1/transactions')).status, 200);
    assert.equal((await api(dev, 'sk_not_a_key', 'GET', '/v1/transactions')).status, 401);
  });

  test('chromium loads pages of dev and screenshots one', async () => {
    const page = await browser.newPage();
    const doc = await page.goto(`${dev.api}/openapi.json`);
    assert.equal(doc.status(), 200);
    assert.match(await page.textContent('body'), /"\/v1\/deposits"/);
    // A short page for the picture (the OpenAPI document is thousands of lines tall).
    const health = await page.goto(`${dev.api}/healthz`);
    assert.equal(health.status(), 200);
    const file = await screenshot(page, 'harness-healthz');
    assert.ok((await stat(file)).size > 100, 'a real picture');
    await page.close();
  });

  test('a second merchant gets its own key', async () => {
    const other = await createMerchant(dev, 'other');
    assert.notEqual(other.apiKey, dev.apiKey);
    assert.notEqual(other.id, dev.merchantId);
    const list = await api(dev, other.apiKey, 'GET', '/v1/transactions');
    assert.equal(list.status, 200);
    assert.deepEqual(list.body.data, [], 'a new merchant has no payments');
  });
});
