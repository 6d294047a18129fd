/**
 * Running runner.sh in a sandbox's container through the SDK, and relaying what it prints.
 *
 * The SDK streams a command's output line by line (each line a string ending in "\n"); the runner
 * prints only ASCII lines: base64 chunks of the process's stdout (on its stdout) and stderr (on its
 * stderr), and control lines starting with "!" on its stdout. Its exit status is the process's.
 */

import { type ExecutionSession, getSandbox } from '@cloudflare/sandbox';
import { shellQuote } from '@cloudflare/sandbox/bridge';
import { type Env, errorJson, warmPool } from './env';
import RUNNER from './runner.sh';

export type Executor = Pick<ExecutionSession, 'exec' | 'writeFile'>;

const BASE64_LINE = /^[A-Za-z0-9+/]+={0,2}$/;
const SESSION_ID = /^[a-zA-Z0-9._-]{1,128}$/;

/** The shell command line that runs the runner's `command` for `sandboxId`. */
export function runnerCommand(command: string, sandboxId: string, args: (string | number)[]): string {
  return ['sh', '-c', RUNNER, 'asb', command, sandboxId, ...args.map(String)]
    .map(shellQuote)
    .join(' ');
}

/**
 * The sandbox's container (through the bridge's warm pool, as its own routes find it), or the
 * error response the bridge gives when the pool cannot provide one. With `sessionId`, commands
 * run in that session (its environment and working directory).
 */
export async function executor(
  env: Env,
  sandboxId: string,
  sessionId: string | null
): Promise<Executor | Response> {
  if (sessionId !== null && (!SESSION_ID.test(sessionId) || sessionId.includes('..'))) {
    return errorJson('Invalid session ID format', 'invalid_request', 400);
  }
  const pool = warmPool(env);
  let container: string;
  try {
    container = await pool.getContainer(sandboxId);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    if (msg.includes('instance limit reached')) return errorJson(msg, 'capacity_exceeded', 503);
    return errorJson(`pool error: ${msg}`, 'pool_error', 502);
  }
  const sandbox = getSandbox(env.Sandbox, container, { enableDefaultSession: false });
  return sessionId === null ? sandbox : await sandbox.getSession(sessionId);
}

/** Run a runner command to its end; its control lines (stdout lines starting with "!"). */
export async function runControl(exec: Executor, command: string): Promise<string[]> {
  const result = await exec.exec(command);
  return result.stdout.split('\n').filter((line) => line.startsWith('!'));
}

/**
 * Run a runner command whose output streams (`start`, `follow`). Resolves once the runner's
 * first control line is known: to an SSE response (after `lead`, the process's `stdout` and
 * `stderr` chunks as base64, then `exit` with its status, or `more` when this response's share
 * of output or time is used up) when that line is one of `ok`, else to the line itself.
 */
export async function streamRunner(
  exec: Executor,
  command: string,
  ok: string[],
  lead: [string, unknown] | null
): Promise<Response | string> {
  let first: (line: string) => void = () => {};
  const firstLine = new Promise<string>((resolve) => {
    first = resolve;
  });
  const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
  const writer = writable.getWriter();
  const encoder = new TextEncoder();
  let pending: Promise<void> = Promise.resolve();
  let closed = false;
  let seenFirst = false;
  let last = '';

  const send = (event: string, data: string): void => {
    if (closed) return;
    pending = pending.then(() => writer.write(encoder.encode(`event: ${event}\ndata: ${data}\n\n`)));
  };
  const close = (): void => {
    if (closed) return;
    closed = true;
    pending.then(() => writer.close()).catch(() => {});
  };
  const fail = (message: string, code: string): void => {
    first(`!error ${message}`);
    send('error', JSON.stringify({ error: message, code }));
    close();
  };

  if (lead !== null) send(lead[0], JSON.stringify(lead[1]));
  exec
    .exec(command, {
      stream: true,
      onOutput(stream: 'stdout' | 'stderr', data: string) {
        for (const line of data.split('\n')) {
          if (!line) continue;
          if (stream === 'stdout' && line.startsWith('!')) {
            if (!seenFirst) {
              seenFirst = true;
              first(line);
            }
            last = line;
          } else if (BASE64_LINE.test(line)) {
            send(stream, line);
          }
        }
      },
      onComplete(result: { exitCode: number }) {
        first('!ended');
        if (last === '!more') send('more', '{}');
        else send('exit', JSON.stringify({ exit_code: result.exitCode }));
        close();
      },
      onError(err: Error) {
        fail(`exec failed: ${err.message}`, 'exec_error');
      }
    })
    .catch((err: unknown) => {
      fail(`exec failed: ${err instanceof Error ? err.message : String(err)}`, 'exec_transport_error');
    });

  const line = await firstLine;
  if (ok.includes(line)) {
    return new Response(readable, {
      headers: { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' }
    });
  }
  closed = true;
  writer.abort().catch(() => {});
  return line;
}
