// The browser tests' harness (issue 19): a `paygate dev` of its own per test file (fresh
// database, unique Redis prefix, the embedded broker), the REST API and the sandbox's knobs to
// make payments happen, and Debian's chromium driven by playwright-core.
//
// Why a whole `paygate dev` per file: the console is served by the API process, and a payment's
// timeline needs the processors, the sandbox and the demo webhook receiver behind it; dev runs
// all of them in one process on free ports, so each file sees only the data it made.
//
// Environment:
//   PAYGATE_BIN            the binary to run (default <repo>/target/debug/paygate)
//   PAYGATE_TEST_DATABASE_URL  the Postgres server, as for the workspace's tests (default
//                              postgres://postgres@127.0.0.1:5432/postgres); databases are made
//                              next to the one it names
// Neither is passed on to paygate, which reads every PAYGATE_* variable as a setting.

import { spawn, execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before } from 'node:test';
import { chromium } from 'playwright-core';

const run = promisify(execFile);

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const paygateBin = process.env.PAYGATE_BIN || path.join(repoRoot, 'target/debug/paygate');
export const screenshotDir = path.join(repoRoot, 'target/console/screenshots');
const adminUrl = new URL(process.env.PAYGATE_TEST_DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres');
/** The URL of database `name` on the test server. */
function databaseUrl(name) {
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

/** How long dev may take to print its banner (a cold start migrates a fresh database). */
const START_TIMEOUT_MS = 120_000;

/** A port nobody listens on right now (the OS picks it). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Distinct free ports (the OS may hand the same one out twice once it is closed). */
async function freePorts(n) {
  const ports = new Set();
  while (ports.size < n) ports.add(await freePort());
  return [...ports];
}

/**
 * The value of the banner line `  <label>   <value>`, or undefined: labels are padded to a
 * column with two or more spaces, so `console` does not match `console merchant  …`.
 */
function bannerValue(text, label) {
  const re = new RegExp(`^\\s*${label}\\s{2,}(\\S.*?)\\s*$`, 'm');
  const m = text.match(re);
  return m ? m[1] : undefined;
}

/** `<email> / <password>` of a `console merchant|operator` banner line. */
function credentials(value) {
  if (!value) return undefined;
  const m = value.match(/^(\S+)\s+\/\s+(\S+)$/);
  return m ? { email: m[1], password: m[2] } : undefined;
}

/**
 * What the banner says, parsed: `api`, `sandbox` (its root), `apiKey`, `merchantId` and, once the
 * console exists, `console` (its URL), `merchantUser` and `operatorUser` ({ email, password }).
 * Exported for the harness's own test.
 */
export function parseBanner(text) {
  const api = bannerValue(text, 'API');
  const sandboxKnobs = bannerValue(text, 'sandbox admin');
  const apiKey = bannerValue(text, 'API key');
  return {
    api,
    sandbox: sandboxKnobs ? sandboxKnobs.replace(/\/_admin\/knobs$/, '') : undefined,
    apiKey,
    merchantId: bannerValue(text, 'demo merchant'),
    console: bannerValue(text, 'console'),
    merchantUser: credentials(bannerValue(text, 'console merchant')),
    operatorUser: credentials(bannerValue(text, 'console operator')),
  };
}

/** Runs `psql -c sql` against `url`; its unaligned, tuples-only output. */
export async function psql(url, sql) {
  const { stdout } = await run('psql', [url, '-v', 'ON_ERROR_STOP=1', '-qtAc', sql]);
  return stdout.trim();
}

/** How many sets of free ports `startDev` tries before it gives up. */
const PORT_ATTEMPTS = 3;

/**
 * Starts `paygate dev` on free ports with a fresh database (`pgt_console_<random>`, created by
 * dev, dropped by `stop()`) and waits for its banner. With `console: true` (the default) the
 * banner must name the console and both of its users.
 */
export async function startDev(options = {}) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await startDevOnce(options);
    } catch (error) {
      // A port found free can be taken before dev binds it (by any socket's ephemeral port,
      // another run's included): that start is tried again on other ports; nothing else is.
      if (attempt >= PORT_ATTEMPTS || !/Address already in use/.test(String(error?.message))) throw error;
    }
  }
}

async function startDevOnce({ console: needConsole = true } = {}) {
  const [port, sandboxPort, receiverPort] = await freePorts(3);
  const suffix = randomBytes(6).toString('hex');
  const database = `pgt_console_${suffix}`;
  const env = { ...process.env };
  // The harness's own variables are not settings (paygate refuses unknown ones), and without
  // PAYGATE_KAFKA_BROKERS dev runs its embedded broker: nothing shared with other runs.
  for (const name of Object.keys(env)) {
    if (name === 'PAYGATE_BIN' || name.startsWith('PAYGATE_TEST_') || name === 'PAYGATE_KAFKA_BROKERS') delete env[name];
  }
  Object.assign(env, {
    PAYGATE_DATABASE_URL: databaseUrl(database),
    PAYGATE_REDIS_KEY_PREFIX: `pgt_console_${suffix}`, // paygate adds the `:`
    PAYGATE_LOG_FILTER: 'warn',
  });
  const child = spawn(
    paygateBin,
    ['dev', '--port', `${port}`, '--sandbox-port', `${sandboxPort}`, '--receiver-port', `${receiverPort}`],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  // A test process that ends early (a failure in a hook, Ctrl-C) takes its dev with it; the
  // database left behind is a pgt_* one, which scripts/test drops at its next start.
  const orphan = () => child.kill('SIGKILL');
  process.once('exit', orphan);
  child.once('exit', () => process.removeListener('exit', orphan));
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d) => { stdout += d; });
  child.stderr.setEncoding('utf8').on('data', (d) => { stderr = (stderr + d).slice(-20_000); });
  let spawnError;
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    // A binary that cannot be started never exits: its error ends the wait instead.
    child.once('error', (e) => { spawnError = e; resolve({ code: null, signal: null }); });
  });

  const dev = {
    env,
    database,
    databaseUrl: env.PAYGATE_DATABASE_URL,
    child,
    get log() { return `--- stdout\n${stdout}\n--- stderr\n${stderr}`; },
    async stop() {
      if (!spawnError && child.exitCode === null && child.signalCode === null) {
        child.kill('SIGINT');
        const stopped = await Promise.race([exited, sleep(15_000).then(() => null)]);
        if (!stopped) {
          child.kill('SIGKILL');
          await exited;
        }
      }
      await psql(adminUrl.toString(), `DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`).catch(() => {});
    },
  };

  const ready = (b) => b.api && b.apiKey && b.sandbox && (!needConsole || (b.console && b.merchantUser && b.operatorUser));
  const deadline = Date.now() + START_TIMEOUT_MS;
  let keySeenAt;
  for (;;) {
    const banner = parseBanner(stdout);
    if (ready(banner)) return Object.assign(dev, banner);
    // The banner is one write: once its key line is here, the rest is, or is not coming.
    if (banner.apiKey) keySeenAt ??= Date.now();
    if (keySeenAt && Date.now() - keySeenAt > 3_000) {
      await dev.stop();
      throw new Error(`paygate dev's banner lacks ${needConsole ? 'the console lines (console, console merchant, console operator) or ' : ''}the API or sandbox URL:\n${stdout}`);
    }
    if (spawnError) {
      await dev.stop();
      throw new Error(`cannot run ${paygateBin} (set PAYGATE_BIN, or build it): ${spawnError.message}`);
    }
    if (child.exitCode !== null || child.signalCode !== null) {
      await dev.stop();
      throw new Error(`paygate dev stopped before its banner:\n${dev.log}`);
    }
    if (Date.now() > deadline) {
      await dev.stop();
      throw new Error(`paygate dev printed no banner within ${START_TIMEOUT_MS / 1000} s:\n${dev.log}`);
    }
    await sleep(100);
  }
}

/** `paygate merchants create --name <name>` against dev's database: { id, apiKey }. */
export async function createMerchant(dev, name) {
  const { stdout } = await run(paygateBin, ['merchants', 'create', '--name', name], { env: dev.env });
  const id = stdout.match(/^merchant\s+(\S+)\s+\(/m)?.[1];
  const apiKey = stdout.match(/^api key\s+(\S+)$/m)?.[1];
  if (!id || !apiKey) throw new Error(`unexpected output of paygate merchants create:\n${stdout}`);
  return { id, apiKey };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until it returns a truthy value (returned), or throws naming `what`. */
export async function waitFor(what, probe, { timeoutMs = 60_000, intervalMs = 200 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await probe();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** One REST API call with `key`: { status, body } (body parsed when JSON). */
export async function api(dev, key, method, route, body) {
  const headers = { Authorization: `Bearer ${key}` };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    headers['Idempotency-Key'] = `console-test-${randomUUID()}`;
  }
  const res = await fetch(`${dev.api}${route}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed = text;
  try { parsed = JSON.parse(text); } catch { /* not JSON: keep the text */ }
  return { status: res.status, body: parsed };
}

/** A deposit (10.50 USD unless told) made with `key`; the created transaction. */
export async function deposit(dev, key, fields = {}) {
  const res = await api(dev, key, 'POST', '/v1/deposits', { amount: 1050, currency: 'USD', customer: 'cust_console', ...fields });
  if (res.status !== 201 && res.status !== 200 && res.status !== 202) {
    throw new Error(`POST /v1/deposits answered ${res.status}: ${JSON.stringify(res.body)}`);
  }
  return res.body;
}

/** Waits until the transaction's status satisfies `ok` (a status word or a predicate). */
export async function waitForStatus(dev, key, id, ok, timeoutMs = 60_000) {
  const want = typeof ok === 'function' ? ok : (s) => s === ok;
  let seen;
  try {
    return await waitFor(`${id} to be ${typeof ok === 'function' ? 'final' : ok}`, async () => {
      const res = await api(dev, key, 'GET', `/v1/transactions/${id}`);
      seen = res.body?.status;
      return res.status === 200 && want(seen) ? res.body : undefined;
    }, { timeoutMs });
  } catch (e) {
    throw new Error(`${e.message} (last status: ${seen})`);
  }
}

/** Changes one sandbox account's fault knobs (PATCH: the fields given, the rest kept). */
export async function patchKnobs(dev, account, patch) {
  const res = await fetch(`${dev.sandbox}/_admin/accounts/${account}/knobs`, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(patch),
  });
  if (!res.ok) throw new Error(`PATCH knobs of ${account}: ${res.status} ${await res.text()}`);
  return res.json();
}

/** Puts one sandbox account back on the sandbox-wide knobs. */
export async function resetKnobs(dev, account) {
  await fetch(`${dev.sandbox}/_admin/accounts/${account}/knobs`, { method: 'DELETE' });
}

/** Debian's chromium, headless, as the project installs it (scripts/browser-setup). */
export async function launchBrowser() {
  return chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'], headless: true });
}

/** A full-page screenshot at target/console/screenshots/<name>.png (for a reviewer). */
export async function screenshot(page, name) {
  await mkdir(screenshotDir, { recursive: true });
  const file = path.join(screenshotDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

/** The console's URL of `route` (`/console/...`), on dev's API. */
export function consoleUrl(dev, route = '/console') {
  return `${dev.api}${route}`;
}

/**
 * Signs `user` ({ email, password }) in through the login form in a fresh browser context;
 * returns { context, page } on `/console`. Throws when the form does not land there.
 */
export async function signIn(browser, dev, user) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(consoleUrl(dev, '/console/login'));
  await page.fill('form#login [name=email]', user.email);
  await page.fill('form#login [name=password]', user.password);
  await Promise.all([
    page.waitForURL((u) => u.pathname === '/console' || u.pathname === '/console/', { timeout: 15_000 }),
    submitOf(page.locator('form#login')).click(),
  ]);
  return { context, page };
}

/** GETs `route` in the page; the HTTP status of the document. */
export async function visit(page, dev, route) {
  const res = await page.goto(consoleUrl(dev, route));
  return res ? res.status() : 0;
}

/**
 * The usual file setup: a dev with the console and a browser, made before the file's tests
 * and stopped after them. The returned object gets `dev` and `browser` once `before` ran.
 */
export function setup(options) {
  const ctx = {};
  before(async () => {
    ctx.dev = await startDev(options);
    ctx.browser = await launchBrowser();
  });
  after(async () => {
    await ctx.browser?.close();
    await ctx.dev?.stop();
  });
  return ctx;
}

/** The submit control of `form` (a locator). */
export function submitOf(form) {
  return form.locator('button[type=submit], input[type=submit], button:not([type])').first();
}

/** Submits `form` (a locator) by its button and waits for the next page to load. */
export async function submit(page, form) {
  const [res] = await Promise.all([
    page.waitForNavigation({ waitUntil: 'load', timeout: 15_000 }),
    submitOf(form).click(),
  ]);
  return res;
}
