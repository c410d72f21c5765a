// Starts `kite serve` on the reference model for the API tests and stops it
// with SIGTERM (which must exit 0).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../../..');
export const KITE_BIN = process.env.KITE_BIN ?? path.join(repo, 'build/kite');
export const SHARED = process.env.KITE_SHARED_DIR ?? path.resolve(repo, '../shared');
export const MODEL = path.join(SHARED, 'models/kite-ref');

export async function startServer(extraArgs = [], env = {}) {
  const args = ['serve', '--model', MODEL, '--host', '127.0.0.1', '--port', '0', '--served-model-name', 'kite-ref',
    '--max-model-len', '1024', '--kv-cache-memory', '512MiB',
    ...(process.env.KITE_SERVE_EXTRA ?? '').split(' ').filter(Boolean), ...extraArgs];
  const proc = spawn(KITE_BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kite serve did not start in 60 s:\n${log}`)), 60000);
    proc.stderr.on('data', (d) => {
      log += d.toString();
      const m = log.match(/on http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) { clearTimeout(timer); resolve(Number(m[1])); }
    });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`kite serve exited with ${code}:\n${log}`)); });
  });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  return {
    port,
    baseURL: `http://127.0.0.1:${port}/v1`,
    root: `http://127.0.0.1:${port}`,
    log: () => log,
    async stop() {
      proc.kill('SIGTERM');
      return exited;
    },
  };
}

// Reads one Prometheus sample (the first series of that name).
export async function metric(root, name) {
  const text = await (await fetch(`${root}/metrics`)).text();
  const re = new RegExp(`^${name.replace(/[:.]/g, (c) => '\\' + c)}\\{[^}]*\\} (\\S+)$`, 'm');
  const m = text.match(re);
  return m ? Number(m[1]) : undefined;
}
