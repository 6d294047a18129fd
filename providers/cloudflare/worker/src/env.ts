/**
 * The Worker's bindings (wrangler.jsonc) and the small helpers every route shares.
 */

import type { Sandbox } from '@cloudflare/sandbox';
import type { WarmPool } from '@cloudflare/sandbox/bridge';
import type { Registry } from './registry';

export interface Env {
  Sandbox: DurableObjectNamespace<Sandbox>;
  WarmPool: DurableObjectNamespace<WarmPool>;
  Registry: DurableObjectNamespace<Registry>;
  /** Bearer token of every API route; unset, auth is off (as in the bridge: local dev only). */
  SANDBOX_API_KEY?: string;
  /** TTL of sandboxes created through the bridge's own POST /v1/sandbox. */
  DEFAULT_TTL_SECONDS?: string;
  [binding: string]: unknown;
}

/** Sandbox ids as the bridge mints and accepts them. */
export const SANDBOX_ID = /^[a-z2-7]{1,128}$/;

export function errorJson(error: string, code: string, status: number): Response {
  return Response.json({ error, code }, { status });
}

/** True when the request carries the API key (or none is configured, like the bridge). */
export function authorized(request: Request, env: Env): boolean {
  const token = env.SANDBOX_API_KEY;
  if (!token) return true;
  const header = request.headers.get('Authorization') ?? '';
  const provided = header.toLowerCase().startsWith('bearer ') ? header.slice(7) : '';
  const a = new TextEncoder().encode(provided);
  const b = new TextEncoder().encode(token);
  return a.byteLength === b.byteLength && crypto.subtle.timingSafeEqual(a, b);
}

export function registry(env: Env): DurableObjectStub<Registry> {
  return env.Registry.get(env.Registry.idFromName('registry'));
}

/** The bridge's warm pool: which container serves which sandbox id. */
export function warmPool(env: Env): DurableObjectStub<WarmPool> {
  return env.WarmPool.get(env.WarmPool.idFromName('global-pool'));
}
