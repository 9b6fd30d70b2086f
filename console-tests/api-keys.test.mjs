// API keys from the console: created with scopes, the full key shown once (a reload does not
// show it again), working over the REST API within its scope; revoked, it is refused (401).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { api, screenshot, setup, signIn, submit, visit } from './harness.mjs';

const ctx = setup();

test('an API key is created with scopes, shown once, works, and is refused once revoked', async () => {
  const { dev, browser } = ctx;
  const { context, page } = await signIn(browser, dev, dev.merchantUser);
  assert.equal(await visit(page, dev, '/console/api-keys'), 200);
  const rowsBefore = await page.locator('tr[data-testid=key-row]').count();
  const form = page.locator('form#create-key');
  const scopes = await form.locator('input[name=scopes]').evaluateAll((boxes) => boxes.map((b) => b.value));
  for (const scope of ['read', 'payments:write', 'payouts:write']) {
    assert.ok(scopes.includes(scope), `${scope} to choose: ${scopes}`);
  }
  // Reads and deposits, but no payouts.
  for (const box of await form.locator('input[name=scopes]').all()) await box.setChecked(false);
  await form.locator('input[name=scopes][value=read]').check();
  await form.locator('input[name="scopes"][value="payments:write"]').check();
  await submit(page, form);

  const key = (await page.locator('[data-testid=new-key]').textContent()).trim();
  assert.match(key, /^sk_\S+$/);
  await screenshot(page, 'api-keys-created');
  const prefixes = await page.locator('tr[data-testid=key-row]').evaluateAll((rows) => rows.map((r) => r.dataset.prefix));
  assert.equal(prefixes.length, rowsBefore + 1, 'one more key row');
  const mine = prefixes.filter((p) => p && key.startsWith(p));
  assert.equal(mine.length, 1, `exactly one row's prefix begins the new key: ${prefixes}`);
  const prefix = mine[0];
  assert.ok(prefix.length < key.length, 'the row shows a prefix, not the key');

  // Shown once: the page visited again has no new-key box and nowhere the full key.
  assert.equal(await visit(page, dev, '/console/api-keys'), 200);
  assert.equal(await page.locator('[data-testid=new-key]').count(), 0, 'the key is not shown again');
  assert.ok(!(await page.content()).includes(key), 'the full key is nowhere on the page');

  // It works over the API within its scopes: reads and deposits, but no payouts.
  assert.equal((await api(dev, key, 'GET', '/v1/transactions')).status, 200, 'the new key reads');
  const pay = await api(dev, key, 'POST', '/v1/deposits', { amount: 100, currency: 'USD', customer: 'cust_scope' });
  assert.equal(pay.status, 202, `the new key makes a deposit (accepted): ${JSON.stringify(pay.body)}`);
  const payout = await api(dev, key, 'POST', '/v1/withdrawals', { amount: 100, currency: 'USD', customer: 'cust_scope' });
  assert.equal(payout.status, 403, `a key without payouts:write may not pay out: ${JSON.stringify(payout.body)}`);

  // Revoke it from its row.
  const row = page.locator(`tr[data-testid=key-row][data-prefix="${prefix}"]`);
  assert.equal(await row.locator('[data-testid=revoked]').count(), 0, 'not revoked yet');
  await submit(page, row.locator('form[data-testid=revoke]'));
  const revokedRow = page.locator(`tr[data-testid=key-row][data-prefix="${prefix}"]`);
  assert.equal(await revokedRow.locator('[data-testid=revoked]').count(), 1, 'the row says revoked');
  await screenshot(page, 'api-keys-revoked');
  // Refused at once (docs/ARCHITECTURE.md: creates re-check the key's liveness in their insert).
  assert.equal((await api(dev, key, 'GET', '/v1/transactions')).status, 401, 'a revoked key is refused');
  // A create authenticates from the API's key cache, whose insert re-checks the key: 401 too.
  const late = await api(dev, key, 'POST', '/v1/deposits', { amount: 100, currency: 'USD', customer: 'cust_scope' });
  assert.equal(late.status, 401, `a revoked key may not pay: ${JSON.stringify(late.body)}`);
  assert.equal((await api(dev, dev.apiKey, 'GET', '/v1/transactions')).status, 200, 'the other keys still work');
  await context.close();
});
