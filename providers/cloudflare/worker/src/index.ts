/**
 * agent-sandbox's Cloudflare Worker: Cloudflare's sandbox bridge (`@cloudflare/sandbox/bridge`,
 * its REST API under /v1, unchanged) plus what agent-sandbox's provider needs and the bridge
 * lacks (routes.ts, under /asb/v1): a registry of sandboxes with labels and a TTL, and
 * byte-exact processes with stdin, kill and reattach.
 *
 * In front of the bridge's /v1/sandbox/:id routes sits the registry: a sandbox that was never
 * created, was destroyed or has expired answers 404 instead of being handed a fresh container.
 * DELETE /v1/sandbox/:id is answered here (the bridge's handler without the container start in
 * front of it, see `destroy`) and forgets the sandbox. Every minute (the cron trigger) expired
 * sandboxes are destroyed.
 */

import { getSandbox } from '@cloudflare/sandbox';
import { bridge } from '@cloudflare/sandbox/bridge';
import { authorized, type Env, errorJson, registry, SANDBOX_ID, warmPool } from './env';
import { isExpired } from './registry';
import { createRoutes } from './routes';

export { Sandbox } from '@cloudflare/sandbox';
export { WarmPool } from '@cloudflare/sandbox/bridge';
export { Registry } from './registry';

const SANDBOX_PATH = /^\/v1\/sandbox\/([^/]+)(\/.*)?$/;

/** The bridge itself: its routes, with ours as the handler of every other path. */
const inner = bridge({
  fetch: (request, env, ctx) => routes.fetch(request, env, ctx),
  scheduled: (_controller, env) => sweep(env)
});

function bridgeFetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
  if (!inner.fetch) throw new Error('the bridge has no fetch handler');
  return Promise.resolve(inner.fetch(request as Parameters<typeof inner.fetch>[0], env, ctx));
}

function internal(request: Request, env: Env, method: string, path: string): Request {
  const headers = new Headers();
  if (env.SANDBOX_API_KEY) headers.set('Authorization', `Bearer ${env.SANDBOX_API_KEY}`);
  return new Request(new URL(path, request.url), { method, headers });
}

async function mint(request: Request, env: Env, ctx: ExecutionContext): Promise<string> {
  const response = await bridgeFetch(internal(request, env, 'POST', '/v1/sandbox'), env, ctx);
  const { id } = (await response.json()) as { id: string };
  return id;
}

/**
 * Destroy a sandbox's container, if it has one, and forget the sandbox: what the bridge's DELETE
 * /v1/sandbox/:id handler does (best-effort destroy, then the pool forgets the container), without
 * the bridge's pool middleware in front of it. Hono's `/sandbox/:id/*` also matches the bare
 * path, so that middleware asks the warm pool for the id's container first, starting one when
 * none is running: destroying a sandbox whose container slept (or never started) would start a
 * container just to destroy it, or fail with 503 when every container is in use. (The SDK's
 * `Sandbox.destroy()` treats a container that is not running as nothing to stop.)
 */
async function destroy(id: string, env: Env): Promise<void> {
  const pool = warmPool(env);
  const container = await pool.lookupContainer(id);
  if (container !== null) {
    const sandbox = getSandbox(env.Sandbox, container, { enableDefaultSession: false });
    await sandbox.destroy().catch(() => {});
    await pool.reportStopped(container).catch(() => {});
  }
  await registry(env).remove(id);
}

const routes = createRoutes({ mint, destroy });

/** Destroy every sandbox whose TTL has passed. */
async function sweep(env: Env): Promise<void> {
  for (const id of await registry(env).expired()) {
    await destroy(id, env).catch((err: unknown) => {
      console.error({ message: 'destroying an expired sandbox failed', id, err: String(err) });
    });
  }
}

export default {
  async fetch(request: Request, env: Env, ctx: ExecutionContext): Promise<Response> {
    const url = new URL(request.url);
    const match = SANDBOX_PATH.exec(url.pathname);
    if (match && SANDBOX_ID.test(match[1]) && authorized(request, env)) {
      const id = match[1];
      const record = await registry(env).get(id);
      if (request.method === 'DELETE' && !match[2]) {
        if (record === null) return new Response(null, { status: 204 });
        try {
          await destroy(id, env);
        } catch (err) {
          const msg = err instanceof Error ? err.message : String(err);
          return errorJson(`pool error: ${msg}`, 'pool_error', 502);
        }
        return new Response(null, { status: 204 });
      }
      if (record === null) return errorJson(`no sandbox ${id}`, 'sandbox_not_found', 404);
      if (isExpired(record)) {
        ctx.waitUntil(destroy(id, env));
        return errorJson(`sandbox ${id} expired at ${record.expires_at}`, 'sandbox_not_found', 404);
      }
    } else if (url.pathname === '/v1/sandbox' && request.method === 'POST') {
      // The bridge's own create: still works for plain bridge clients, with the default TTL.
      const response = await bridgeFetch(request, env, ctx);
      if (response.ok) {
        const { id } = (await response.clone().json()) as { id: string };
        await registry(env).add({
          id,
          labels: {},
          ttlSeconds: Number(env.DEFAULT_TTL_SECONDS ?? '3600') || 3600,
          idleTimeoutSeconds: null,
          createKey: null
        });
      }
      return response;
    }
    return bridgeFetch(request, env, ctx);
  },
  scheduled: inner.scheduled
} satisfies ExportedHandler<Env>;
