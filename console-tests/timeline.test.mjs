// One payment's timeline down to its webhook delivery: created, the attempt (with its
// gateway), the state changes, the provider's callback, the webhook event and its delivery
// with the response code the demo receiver answered; then a redelivery from the page, which
// the API sees as a new delivery attempt.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  api, deposit, screenshot, setup, signIn, submit, visit, waitFor, waitForStatus,
} from './harness.mjs';

const ctx = setup();

/** The transaction's delivery attempts as the REST API lists them. */
async function deliveries(dev, id) {
  const res = await api(dev, dev.apiKey, 'GET', `/v1/transactions/${id}/deliveries`);
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.data;
}

/** The answered delivery attempts' status codes, as text. */
const answered = (all) => all.filter((d) => d.status_code != null).map((d) => `${d.status_code}`);

/** A succeeded deposit whose webhook the demo receiver has answered (made once). */
let made;
function payment() {
  made ??= (async () => {
    const { dev } = ctx;
    const txn = await deposit(dev, dev.apiKey, { customer: 'cust_timeline' });
    await waitForStatus(dev, dev.apiKey, txn.id, 'succeeded');
    await waitFor('a delivery with a response code', async () => answered(await deliveries(dev, txn.id)).length > 0);
    return txn;
  })();
  return made;
}

test("a payment's timeline has every kind of item, created first", async () => {
  const { dev, browser } = ctx;
  const txn = await payment();
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  assert.equal(await visit(page, dev, `/console/transactions/${txn.id}`), 200);
  await screenshot(page, 'transaction');
  assert.equal((await page.locator('[data-testid=status]').first().textContent()).trim(), 'succeeded');
  const timeline = page.locator('ol[data-testid=timeline]');
  assert.equal(await timeline.count(), 1);
  const kinds = await timeline.locator('li[data-kind]').evaluateAll((items) => items.map((i) => i.dataset.kind));
  assert.equal(kinds[0], 'created', `the timeline starts with the creation: ${kinds}`);
  const missing = ['created', 'attempt', 'state_change', 'callback', 'event', 'delivery'].filter((k) => !kinds.includes(k));
  assert.deepEqual(missing, [], `kinds missing from the timeline (it has: ${kinds})`);
  const attempt = await timeline.locator('li[data-kind=attempt]').first().textContent();
  assert.match(attempt, /sandbox-(json|proto|soap)/, `the attempt names its gateway: ${attempt}`);
  await context.close();
});

test('the delivery shows its response code, and a redelivery is one more attempt', async () => {
  const { dev, browser } = ctx;
  const txn = await payment();
  const codes = answered(await deliveries(dev, txn.id));
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  assert.equal(await visit(page, dev, `/console/transactions/${txn.id}`), 200);
  const timeline = page.locator('ol[data-testid=timeline]');
  const shown = (await timeline.locator('li[data-kind=delivery] [data-testid=response-code]').allTextContents())
    .map((t) => t.trim());
  assert.ok(shown.length >= codes.length, `a code per answered delivery: ${shown} (API: ${codes})`);
  for (const code of codes) assert.ok(shown.includes(code), `response code ${code} shown: ${shown}`);

  // Redeliver the first event from the page: a flash, and one more answered delivery.
  const forms = page.locator('form[data-testid=redeliver]');
  assert.ok(await forms.count() >= 1, 'a redeliver form per webhook event');
  const res = await submit(page, forms.first());
  assert.equal(res.status(), 200, 'back on the payment');
  assert.equal(new URL(page.url()).pathname, `/console/transactions/${txn.id}`);
  await page.locator('[data-testid=flash]').waitFor({ state: 'visible', timeout: 10_000 });
  await screenshot(page, 'transaction-redelivered');
  await waitFor('the redelivery', async () => answered(await deliveries(dev, txn.id)).length > codes.length,
    { timeoutMs: 30_000 });
  await visit(page, dev, `/console/transactions/${txn.id}`);
  const after = (await page.locator('ol[data-testid=timeline] li[data-kind=delivery] [data-testid=response-code]')
    .allTextContents()).map((t) => t.trim());
  assert.ok(after.length > shown.length, `the redelivery is in the timeline: ${shown} → ${after}`);
  await screenshot(page, 'transaction-after-redelivery');
  await context.close();
});
