/**
 * The routes agent-sandbox adds under /asb/v1 (described in openapi.json): the sandbox registry
 * (create with labels and a TTL, idempotent by create key; get; list by label) and processes
 * (start with argv, cwd, env, stdin and a timeout backstop; follow from byte offsets; kill the
 * whole tree; stream stdin; list), byte-exact, through runner.sh.
 */

import { getSandbox } from '@cloudflare/sandbox';
import { type Context, Hono } from 'hono';
import { authorized, type Env, errorJson, registry, SANDBOX_ID, warmPool } from './env';
import OPENAPI from './openapi.json';
import { isExpired, type SandboxRecord } from './registry';
import { type Executor, executor, runControl, runnerCommand, streamRunner } from './runner';

/** What the routes need from the Worker around them. */
export interface Bridge {
  /** A new sandbox id, minted by the bridge's own POST /v1/sandbox. */
  mint(request: Request, env: Env, ctx: ExecutionContext): Promise<string>;
  /** Destroy a sandbox's container, if it has one, and forget the sandbox. */
  destroy(id: string, env: Env): Promise<void>;
}

type App = Hono<{ Bindings: Env }>;
// biome-ignore lint/suspicious/noExplicitAny: every route's context
type Ctx = Context<{ Bindings: Env }, any>;

/** Hono's view of the execution context is the Workers runtime's own. */
function executionCtx(c: Ctx): ExecutionContext {
  return c.executionCtx as unknown as ExecutionContext;
}

const REF = /^[A-Za-z0-9_-]{1,64}$/;
/** Longest one response follows a process; the client follows again after. */
const FOLLOW_SECONDS = 300;
const MAX_SECONDS = 365 * 24 * 3600;
const MAX_LABELS = 64;
const MAX_LABEL_LENGTH = 1024;

/** How long to follow a process in one response: until the sandbox expires, at most. */
function followSeconds(record: SandboxRecord): number {
  const left = Math.ceil((Date.parse(record.expires_at) - Date.now()) / 1000);
  return Math.max(1, Math.min(FOLLOW_SECONDS, left));
}

function invalid(message: string): Response {
  return errorJson(message, 'invalid_request', 400);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function stringMap(value: unknown, what: string): Record<string, string> | Response {
  if (value === undefined) return {};
  if (!isObject(value)) return invalid(`${what} must be an object of strings`);
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') return invalid(`${what} values must be strings`);
    if (!k) return invalid(`${what} names must not be empty`);
  }
  return value as Record<string, string>;
}

function seconds(value: unknown, what: string): number | null | Response {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0 || value > MAX_SECONDS) {
    return invalid(`${what} must be a number of seconds in (0, ${MAX_SECONDS}]`);
  }
  return value;
}

async function jsonBody(c: Ctx, fields: string[]): Promise<Record<string, unknown> | Response> {
  let body: unknown;
  try {
    body = await c.req.json();
  } catch {
    return invalid('Invalid JSON body');
  }
  if (!isObject(body)) return invalid('the body must be a JSON object');
  const unknown = Object.keys(body).filter((k) => !fields.includes(k));
  return unknown.length ? invalid(`unknown fields: ${unknown.join(', ')}`) : body;
}

/** The sandbox's live record, or the 404 (an expired sandbox is destroyed on the way). */
async function live(c: Ctx, bridge: Bridge): Promise<SandboxRecord | Response> {
  const id = c.req.param('id') ?? '';
  if (!SANDBOX_ID.test(id)) return invalid('Invalid sandbox ID format');
  const record = await registry(c.env).get(id);
  if (record === null) return errorJson(`no sandbox ${id}`, 'sandbox_not_found', 404);
  if (isExpired(record)) {
    executionCtx(c).waitUntil(bridge.destroy(id, c.env));
    return errorJson(`sandbox ${id} expired at ${record.expires_at}`, 'sandbox_not_found', 404);
  }
  return record;
}

/**
 * Run a runner command to its end, its control lines; or the error response when the container
 * failed under it (404 when the sandbox was destroyed or expired meanwhile, else 502).
 */
async function control(c: Ctx, exec: Executor, id: string, command: string): Promise<string[] | Response> {
  try {
    return await runControl(exec, command);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    return lost(c, id, msg);
  }
}

/** The answer when the container failed: the sandbox is gone (404), or unreachable (502). */
async function lost(c: Ctx, id: string, message: string): Promise<Response> {
  const record = await registry(c.env).get(id);
  if (record === null || isExpired(record)) {
    return errorJson(`sandbox ${id} is gone`, 'sandbox_not_found', 404);
  }
  return errorJson(`exec failed: ${message}`, 'exec_transport_error', 502);
}

/** The error response of a runner control line that is not the expected one. */
async function controlError(line: string, c: Ctx, bridge: Bridge, id: string): Promise<Response> {
  switch (line) {
    case '!gone':
      // A container that is not this sandbox's (the sandbox's slept or stopped, and the pool
      // gave the id a fresh one): the sandbox is gone.
      executionCtx(c).waitUntil(bridge.destroy(id, c.env));
      return errorJson(
        `sandbox ${id} is gone: its container stopped (idle past its sleep timeout, or ended)`,
        'sandbox_not_found',
        404
      );
    case '!nosuch':
      return errorJson(`no process ${c.req.param('ref')} in sandbox ${id}`, 'process_not_found', 404);
    case '!cwd':
      return errorJson('working directory not found', 'cwd_not_found', 404);
    case '!exists':
      return errorJson(`process ${c.req.param('ref')} already exists`, 'conflict', 409);
    case '!ended':
      return errorJson(`process ${c.req.param('ref')} has ended`, 'conflict', 409);
    case '!closed':
      return errorJson(`stdin of process ${c.req.param('ref')} is closed`, 'conflict', 409);
    default:
      return line.startsWith('!error ')
        ? lost(c, id, line.slice(7))
        : errorJson(`unexpected answer from the sandbox: ${line.slice(0, 200)}`, 'exec_error', 502);
  }
}

export function createRoutes(bridge: Bridge): App {
  const app: App = new Hono<{ Bindings: Env }>().basePath('/asb/v1');

  app.use('*', async (c, next) => {
    if (!authorized(c.req.raw, c.env)) return errorJson('Unauthorized', 'unauthorized', 401);
    return next();
  });

  app.get('/openapi.json', (c) => c.json(OPENAPI));

  app.post('/sandboxes', async (c) => {
    const body = await jsonBody(c, ['labels', 'ttl_seconds', 'idle_timeout_seconds', 'create_key']);
    if (body instanceof Response) return body;
    const labels = stringMap(body.labels, 'labels');
    if (labels instanceof Response) return labels;
    const entries = Object.entries(labels);
    if (entries.length > MAX_LABELS) return invalid(`at most ${MAX_LABELS} labels`);
    if (entries.some(([k, v]) => k.length > MAX_LABEL_LENGTH || v.length > MAX_LABEL_LENGTH)) {
      return invalid(`label names and values are at most ${MAX_LABEL_LENGTH} characters`);
    }
    const ttl = seconds(body.ttl_seconds, 'ttl_seconds');
    if (ttl instanceof Response) return ttl;
    if (ttl === null) return invalid('ttl_seconds is required');
    const idle = seconds(body.idle_timeout_seconds, 'idle_timeout_seconds');
    if (idle instanceof Response) return idle;
    const key = body.create_key;
    if (key !== undefined && (typeof key !== 'string' || !key || key.length > 256)) {
      return invalid('create_key must be a non-empty string of at most 256 characters');
    }
    const reg = registry(c.env);
    const createKey = typeof key === 'string' ? key : null;
    if (createKey !== null) {
      const existing = await reg.byKey(createKey);
      if (existing) return c.json(existing);
    }
    const id = await bridge.mint(c.req.raw, c.env, executionCtx(c));
    const { record, created } = await reg.add({
      id,
      labels,
      ttlSeconds: ttl,
      idleTimeoutSeconds: idle,
      createKey
    });
    if (!created) return c.json(record);
    // Start the container and mark it as this sandbox's: a container that lacks the mark later
    // is a fresh one the pool gave the id after this one stopped.
    const failed = async (response: Response): Promise<Response> => {
      await bridge.destroy(id, c.env);
      return response;
    };
    const exec = await executor(c.env, id, null);
    if (exec instanceof Response) return failed(exec);
    try {
      if (idle !== null) {
        const pool = warmPool(c.env);
        getSandbox(c.env.Sandbox, await pool.getContainer(id), { sleepAfter: Math.ceil(idle) });
      }
      const lines = await runControl(exec, runnerCommand('init', id, []));
      if (!lines.includes('!ok')) {
        return failed(errorJson('could not prepare the sandbox', 'exec_error', 502));
      }
    } catch (err) {
      const msg = err instanceof Error ? err.message : String(err);
      return failed(errorJson(`could not start the sandbox: ${msg}`, 'exec_transport_error', 502));
    }
    return c.json(record);
  });

  app.get('/sandboxes', async (c) => {
    let labels: Record<string, string> | Response = {};
    const raw = c.req.query('labels');
    if (raw !== undefined) {
      try {
        labels = stringMap(JSON.parse(raw), 'labels');
      } catch {
        return invalid('labels must be a JSON object of strings');
      }
    }
    if (labels instanceof Response) return labels;
    return c.json({ sandboxes: await registry(c.env).list(labels) });
  });

  app.get('/sandboxes/:id', async (c) => {
    const record = await live(c, bridge);
    return record instanceof Response ? record : c.json(record);
  });

  app.post('/sandboxes/:id/processes', async (c) => {
    const record = await live(c, bridge);
    if (record instanceof Response) return record;
    const body = await jsonBody(c, ['ref', 'argv', 'cwd', 'env', 'timeout_ms', 'stdin', 'detached']);
    if (body instanceof Response) return body;
    const { ref, argv, cwd, timeout_ms, stdin, detached } = body;
    if (typeof ref !== 'string' || !REF.test(ref)) return invalid('ref must match ' + REF.source);
    if (!Array.isArray(argv) || argv.length === 0 || argv.some((a) => typeof a !== 'string')) {
      return invalid('argv must be a non-empty array of strings');
    }
    if (cwd !== undefined && (typeof cwd !== 'string' || !cwd.startsWith('/'))) {
      return invalid('cwd must be an absolute path');
    }
    const env = stringMap(body.env, 'env');
    if (env instanceof Response) return env;
    if (Object.keys(env).some((name) => name.includes('='))) {
      return invalid('env names must not contain "="');
    }
    if (
      timeout_ms !== undefined &&
      (typeof timeout_ms !== 'number' || !Number.isInteger(timeout_ms) || timeout_ms <= 0)
    ) {
      return invalid('timeout_ms must be a positive integer');
    }
    for (const [name, value] of [['stdin', stdin], ['detached', detached]] as const) {
      if (value !== undefined && typeof value !== 'boolean') return invalid(`${name} must be a boolean`);
    }
    const exec = await executor(c.env, record.id, c.req.header('Session-Id') ?? null);
    if (exec instanceof Response) return exec;
    const pairs = Object.entries(env).map(([k, v]) => `${k}=${v}`);
    const args = [
      followSeconds(record),
      ref,
      detached ? 1 : 0,
      typeof timeout_ms === 'number' ? Math.ceil(timeout_ms / 1000) : 0,
      stdin ? 1 : 0,
      typeof cwd === 'string' ? cwd : '-',
      pairs.length,
      ...pairs,
      ...(argv as string[])
    ];
    const answer = await streamRunner(exec, runnerCommand('start', record.id, args), ['!started'], [
      'start',
      { ref }
    ]);
    return answer instanceof Response ? answer : controlError(answer, c, bridge, record.id);
  });

  app.get('/sandboxes/:id/processes', async (c) => {
    const record = await live(c, bridge);
    if (record instanceof Response) return record;
    const exec = await executor(c.env, record.id, null);
    if (exec instanceof Response) return exec;
    const lines = await control(c, exec, record.id, runnerCommand('list', record.id, []));
    if (lines instanceof Response) return lines;
    if (!lines.includes('!ok')) return controlError(lines[0] ?? '', c, bridge, record.id);
    const decoder = new TextDecoder();
    const processes = [];
    for (const line of lines) {
      const parts = line.split(' ');
      if (parts[0] !== '!proc' || parts.length !== 5 || !REF.test(parts[1])) continue;
      const [, ref, status, started, argv] = parts;
      let command: string[];
      try {
        const bytes = Uint8Array.from(atob(argv), (ch) => ch.charCodeAt(0));
        command = decoder.decode(bytes).split('\0').slice(0, -1);
      } catch {
        continue;
      }
      const code = status === '-' ? null : Number(status);
      processes.push({
        ref,
        command,
        running: code === null,
        exit_code: code !== null && Number.isInteger(code) ? code : null,
        started_at: new Date(Number(started) * 1000 || 0).toISOString()
      });
    }
    return c.json({ processes });
  });

  app.get('/sandboxes/:id/processes/:ref', async (c) => {
    const record = await live(c, bridge);
    if (record instanceof Response) return record;
    const ref = c.req.param('ref');
    if (!REF.test(ref)) return invalid('ref must match ' + REF.source);
    const offsets = [c.req.query('stdout') ?? '0', c.req.query('stderr') ?? '0'];
    if (offsets.some((o) => !/^[0-9]{1,15}$/.test(o))) {
      return invalid('stdout and stderr offsets must be non-negative integers');
    }
    const exec = await executor(c.env, record.id, null);
    if (exec instanceof Response) return exec;
    const command = runnerCommand('follow', record.id, [followSeconds(record), ref, ...offsets]);
    const answer = await streamRunner(exec, command, ['!following'], null);
    return answer instanceof Response ? answer : controlError(answer, c, bridge, record.id);
  });

  app.post('/sandboxes/:id/processes/:ref/kill', async (c) => {
    const record = await live(c, bridge);
    if (record instanceof Response) return record;
    const ref = c.req.param('ref');
    if (!REF.test(ref)) return invalid('ref must match ' + REF.source);
    const exec = await executor(c.env, record.id, null);
    if (exec instanceof Response) return exec;
    const lines = await control(c, exec, record.id, runnerCommand('kill', record.id, [ref]));
    if (lines instanceof Response) return lines;
    return lines.includes('!ok') ? c.body(null, 204) : controlError(lines[0] ?? '', c, bridge, record.id);
  });

  app.put('/sandboxes/:id/processes/:ref/stdin', async (c) => {
    const record = await live(c, bridge);
    if (record instanceof Response) return record;
    const ref = c.req.param('ref');
    if (!REF.test(ref)) return invalid('ref must match ' + REF.source);
    const close = c.req.query('close') === 'true';
    const exec = await executor(c.env, record.id, null);
    if (exec instanceof Response) return exec;
    const body = c.req.raw.body;
    let staged = '-';
    if (body !== null && Number(c.req.header('Content-Length') ?? '1') !== 0) {
      staged = `in.tmp.${crypto.randomUUID()}`;
      // Streamed to a file of its own, then appended in order by the runner.
      try {
        await exec.writeFile(`/tmp/.agent-sandbox/p/${ref}/${staged}`, body);
      } catch (err) {
        return lost(c, record.id, err instanceof Error ? err.message : String(err));
      }
    }
    const command = runnerCommand('push', record.id, [ref, staged, close ? 1 : 0]);
    const lines = await control(c, exec, record.id, command);
    if (lines instanceof Response) return lines;
    return lines.includes('!ok') ? c.body(null, 204) : controlError(lines[0] ?? '', c, bridge, record.id);
  });

  return app;
}
