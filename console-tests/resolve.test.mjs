// An operator resolves a payment of unknown outcome, and the merchant's page shows the result;
// an operator marks a flagged callback reviewed.
//
// The payment becomes `unresolved` the real way, through the sandbox's knobs on one gateway:
// the provider executes the deposit but answers 502 (ambiguous: the payment is pinned there
// and only asked about), its callback goes to a closed port once and is dropped, and the
// status query reports one minor unit more than was sent, so the outcome check refuses it
// (`outcome_mismatch`, docs/ARCHITECTURE.md, "Money safety"), in about 4 s. Nothing settles it
// after that: it waits for a person.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  api, deposit, patchKnobs, resetKnobs, screenshot, setup, signIn, submit, visit, waitFor, waitForStatus,
} from './harness.mjs';

const ctx = setup();
const GATEWAY = 'sandbox-json'; // the only protocol whose status answer carries an amount

test('an operator resolves an unresolved payment; the merchant sees the result', async () => {
  const { dev, browser } = ctx;
  await patchKnobs(dev, GATEWAY, {
    execute_then_error_rate: 1.0,
    mismatched_status_rate: 1.0,
    // The sandbox decides the outcome when it sends the callback; sent nowhere, only once.
    callbacks_enabled: true,
    callback_base_url: 'http://127.0.0.1:1',
    callback_delay_ms: 0,
    callback_max_attempts: 1,
  });
  const txn = await deposit(dev, dev.apiKey, { customer: 'cust_unknown', gateway: GATEWAY });
  const unresolved = await waitForStatus(dev, dev.apiKey, txn.id, 'unresolved', 120_000);
  // The knobs stay until the operator has decided: reconciliation keeps asking, and a true
  // status answer would settle the payment on its own.
  assert.equal(unresolved.failure?.code, 'outcome_mismatch', JSON.stringify(unresolved.failure));

  // A merchant user may not open the operator's page.
  const merchant = await signIn(browser, dev, dev.merchantUser);
  const refused = await visit(merchant.page, dev, '/console/ops/unresolved');
  assert.ok([403, 404].includes(refused), `a merchant user at /console/ops/unresolved: ${refused}`);
  assert.equal(await merchant.page.locator('tr[data-testid=unresolved-row]').count(), 0);
  assert.equal(await visit(merchant.page, dev, `/console/transactions/${txn.id}`), 200);
  assert.equal((await merchant.page.locator('[data-testid=status]').first().textContent()).trim(), 'unresolved');

  const operator = await signIn(browser, dev, dev.operatorUser);
  const page = operator.page;
  assert.equal(await visit(page, dev, '/console/ops/unresolved'), 200);
  const row = page.locator(`tr[data-testid=unresolved-row][data-id="${txn.id}"]`);
  assert.equal(await row.count(), 1, `the payment ${txn.id} is listed as unresolved`);
  await screenshot(page, 'ops-unresolved');
  const form = row.locator('form[data-testid=resolve]');
  const verdicts = await form.locator('select[name=verdict] option').evaluateAll((o) => o.map((x) => x.value).filter(Boolean));
  assert.deepEqual([...verdicts].sort(), ['failed', 'succeeded'], `verdicts: ${verdicts}`);
  await form.locator('select[name=verdict]').selectOption('succeeded');
  const reason = `provider statement shows ${txn.id} paid 10.50 USD`;
  await form.locator('textarea[name=reason]').fill(reason);
  const res = await submit(page, form);
  assert.ok(res.status() < 400, `resolve answered ${res.status()}`);
  assert.equal(await page.locator(`tr[data-testid=unresolved-row][data-id="${txn.id}"]`).count(), 0,
    'no longer listed as unresolved');
  await screenshot(page, 'ops-unresolved-resolved');

  // The merchant's page: the new status and the resolution with its reason.
  assert.equal(await visit(merchant.page, dev, `/console/transactions/${txn.id}`), 200);
  assert.equal((await merchant.page.locator('[data-testid=status]').first().textContent()).trim(), 'succeeded');
  const resolution = merchant.page.locator('ol[data-testid=timeline] li[data-kind=resolution]');
  assert.equal(await resolution.count(), 1, 'one resolution item');
  const text = await resolution.textContent();
  assert.ok(text.includes(reason), `the reason is shown: ${text}`);
  await screenshot(merchant.page, 'transaction-resolved');
  await resetKnobs(dev, GATEWAY);
  const after = await api(dev, dev.apiKey, 'GET', `/v1/transactions/${txn.id}`);
  assert.equal(after.body.status, 'succeeded', 'the API agrees');
  await merchant.context.close();
  await operator.context.close();
});

// A callback that reports another amount is flagged, never applied (docs/ARCHITECTURE.md,
// "Callbacks that are authentic but do not fit"); the operator's review page lists it and
// records who reviewed it and what they found. (The selectors here, review-row, mark-reviewed
// and reviewed, are the page's own: the brief's contract names none for this page.)
test('an operator marks a flagged callback reviewed', async () => {
  const { dev, browser } = ctx;
  await patchKnobs(dev, GATEWAY, { mismatched_callback_rate: 1.0 });
  const txn = await deposit(dev, dev.apiKey, { customer: 'cust_flagged', gateway: GATEWAY });
  const { context, page } = await signIn(browser, dev, dev.operatorUser);
  const row = page.locator('tr[data-testid=review-row]', { has: page.locator(`a[href="/console/transactions/${txn.id}"]`) });
  await waitFor(`a flagged callback of ${txn.id} on the review page`, async () => {
    assert.equal(await visit(page, dev, '/console/ops/review'), 200);
    return (await row.count()) === 1;
  }, { timeoutMs: 60_000, intervalMs: 500 });
  await resetKnobs(dev, GATEWAY);
  assert.notEqual((await api(dev, dev.apiKey, 'GET', `/v1/transactions/${txn.id}`)).body.status, 'succeeded',
    'the flagged callback (a success of another amount) was not applied');
  await screenshot(page, 'ops-review');
  const note = `sandbox reported 10.51 for ${txn.id}; we sent 10.50`;
  await row.locator('form[data-testid=mark-reviewed] textarea[name=note]').fill(note);
  const res = await submit(page, row.locator('form[data-testid=mark-reviewed]'));
  assert.ok(res.status() < 400, `mark reviewed answered ${res.status()}`);
  const reviewed = await row.locator('[data-testid=reviewed]').textContent();
  assert.ok(reviewed.includes(dev.operatorUser.email), `who reviewed it: ${reviewed}`);
  assert.ok((await row.textContent()).includes(note), 'what they found');
  assert.equal(await row.locator('form[data-testid=mark-reviewed]').count(), 0, 'reviewed once');
  await screenshot(page, 'ops-review-reviewed');
  await context.close();
});
