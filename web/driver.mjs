// Drives Debian's Chromium (puppeteer-core: no browser download) through the page's
// automation contract, for tests/test_web.py and benchmarks/web_bench.py:
//
//   node web/driver.mjs --url 'http://127.0.0.1:P/?src=img.png&scale=2' \
//        [--png out.png] [--screenshot shot.png] [--timeout 300] \
//        [--rerun img.png --rerun-scale 4 --repeat 3] [--webgpu]
//
// Waits until document.title is `done` or `error: ...`, writes the result (the data URL in
// <img id="result">) and a screenshot, optionally upscales again in the same page (--rerun,
// warm timings), and prints one JSON object: {title, stats, reruns, console}. Exit status 0
// when the page finished either way; 2 when Chromium is missing or the page never finished.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

function parseArgs(argv) {
  const args = { timeout: 300, repeat: 1 };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '').replace(/-(.)/g, (_, c) => c.toUpperCase());
    if (key === 'webgpu') args.webgpu = true;
    else args[key] = argv[++i];
  }
  if (!args.url) throw new Error('--url is required');
  return args;
}

function fail(message) {
  process.stderr.write(`error: ${message}\n`);
  process.exit(2);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
  if (!fs.existsSync(executablePath)) {
    fail(`Chromium not found at ${executablePath} (install Debian's chromium package, or ` +
      'set CHROMIUM_PATH)');
  }
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'maffsrn-chromium-'));
  // No sandbox: CI runs as root. No background networking: this machine reaches nothing
  // but loopback, and Chromium's own connections would only fail.
  const flags = [
    '--no-sandbox', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic', `--user-data-dir=${profile}`,
    '--window-size=1200,1000',
  ];
  flags.push(...(args.webgpu
    ? ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--ignore-gpu-blocklist']
    : ['--disable-gpu']));
  let browser;
  try {
    browser = await puppeteer.launch({
      executablePath, headless: true, args: flags, protocolTimeout: 600_000,
    });
  } catch (e) {
    fail(`could not start Chromium at ${executablePath}: ${e.message.split('\n')[0]}`);
  }
  const consoleLines = [];
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1200, height: 1000 });
    page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
    await page.goto(args.url, { waitUntil: 'load' });
    try {
      await page.waitForFunction(
        () => document.title === 'done' || document.title.startsWith('error:'),
        { timeout: Number(args.timeout) * 1000, polling: 200 });
    } catch {
      const title = await page.title();
      fail(`the page did not finish in ${args.timeout} s (title ${JSON.stringify(title)}; ` +
        `console: ${consoleLines.slice(-5).join(' | ')})`);
    }
    const title = await page.title();
    if (title === 'done' && args.png) {
      const src = await page.$eval('#result', (img) => img.src);
      const prefix = 'data:image/png;base64,';
      if (!src.startsWith(prefix)) fail(`<img id="result"> holds no PNG data URL`);
      fs.writeFileSync(args.png, Buffer.from(src.slice(prefix.length), 'base64'));
    }
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    const reruns = [];
    if (args.rerun && title === 'done') {
      for (let i = 0; i < Number(args.repeat); i++) {
        reruns.push(await page.evaluate(
          (url, s) => window.maffsrnRun(url, s), args.rerun, Number(args.rerunScale ?? 4)));
      }
    }
    const stats = await page.evaluate(() => window.maffsrnStats);
    process.stdout.write(`${JSON.stringify({ title, stats, reruns, console: consoleLines })}\n`);
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => fail(e.stack || String(e)));
