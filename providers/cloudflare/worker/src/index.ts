/**
 * agent-sandbox's Cloudflare Worker: Cloudflare's sandbox bridge (`@cloudflare/sandbox/bridge`,
 * its REST API under /v1, unchanged) plus what agent-sandbox's provider needs and the bridge
 * lacks (routes.ts, under /asb/v1): a registry of sandboxes with labels and a TTL, and
 * byte-exact processes with stdin, kill and reattach.
 *
 * In front of the bridge's /v1/sandbox/:id routes sits the registry: a sandbox that was never
 * created, was destroyed or has expired answers 404 instead of being handed a fresh container,
 * and DELETE forgets it. Every minute (the cron trigger) expired sandboxes are destroyed.
 */

import { bridge } from '@cloudflare/sandbox/bridge';
import { authorized, type Env, errorJson, registry, SANDBOX_ID } from './env';
import { isExpired } from './registry';
import { createRoutes } from './routes';

export { Sandbox } from '@cloudflare/sandbox';
export { WarmPool } from '@cloudflare/sandbox/bridge';
export { Registry } from './registry';

const SANDBOX_PATH = /^\/v1\/sandbox\/([^/]+)(\/.*)?$/;

/** The bridge itself: its routes, with ours as the handler of every other path. */
const inner = bridge({
  fetch: (request, env, ctx) => routes.fetch(request, env, ctx),
  scheduled: (_controller, env, ctx) => sweep(env, ctx)
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

async function destroy(id: string, request: Request, env: Env, ctx: ExecutionContext): Promise<void> {
  await bridgeFetch(internal(request, env, 'DELETE', `/v1/sandbox/${id}`), env, ctx);
  await registry(env).remove(id);
}

const routes = createRoutes({ mint, destroy });

/** Destroy every sandbox whose TTL has passed. */
async function sweep(env: Env, ctx: ExecutionContext): Promise<void> {
  const origin = new Request('https://agent-sandbox.internal/');
  for (const id of await registry(env).expired()) {
    await destroy(id, origin, env, ctx).catch((err: unknown) => {
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
        const response = await bridgeFetch(request, env, ctx);
        await registry(env).remove(id);
        return response;
      }
      if (record === null) return errorJson(`no sandbox ${id}`, 'sandbox_not_found', 404);
      if (isExpired(record)) {
        ctx.waitUntil(destroy(id, request, env, ctx));
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
