/**
 * The record of every sandbox: labels, creation and expiry. The bridge keeps none (it mints ids
 * and maps them to containers), so listing by label, TTLs and "this sandbox is gone" live here,
 * in one SQLite-backed Durable Object shared by every client of the Worker.
 */

import { DurableObject } from 'cloudflare:workers';
import type { Env } from './env';

export interface SandboxRecord {
  id: string;
  labels: Record<string, string>;
  created_at: string;
  expires_at: string;
  idle_timeout_seconds: number | null;
}

interface Row extends Record<string, SqlStorageValue> {
  id: string;
  labels: string;
  created_at: number;
  expires_at: number;
  idle_timeout: number | null;
}

function toRecord(row: Row): SandboxRecord {
  return {
    id: row.id,
    labels: JSON.parse(row.labels) as Record<string, string>,
    created_at: new Date(row.created_at).toISOString(),
    expires_at: new Date(row.expires_at).toISOString(),
    idle_timeout_seconds: row.idle_timeout
  };
}

export interface NewSandbox {
  id: string;
  labels: Record<string, string>;
  ttlSeconds: number;
  idleTimeoutSeconds: number | null;
  createKey: string | null;
}

export class Registry extends DurableObject<Env> {
  constructor(ctx: DurableObjectState, env: Env) {
    super(ctx, env);
    ctx.storage.sql.exec(
      `CREATE TABLE IF NOT EXISTS sandboxes (
         id TEXT PRIMARY KEY, create_key TEXT UNIQUE, labels TEXT NOT NULL,
         created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, idle_timeout REAL)`
    );
  }

  /** The sandbox made with this create key, if any (a retried create finds the first one's). */
  byKey(createKey: string): SandboxRecord | null {
    const rows = this.ctx.storage.sql
      .exec<Row>('SELECT * FROM sandboxes WHERE create_key = ?', createKey)
      .toArray();
    return rows.length ? toRecord(rows[0]) : null;
  }

  /** Record a new sandbox; with a create key already used, the existing record instead. */
  add(input: NewSandbox): { record: SandboxRecord; created: boolean } {
    if (input.createKey !== null) {
      const existing = this.byKey(input.createKey);
      if (existing) return { record: existing, created: false };
    }
    const now = Date.now();
    this.ctx.storage.sql.exec(
      'INSERT INTO sandboxes VALUES (?, ?, ?, ?, ?, ?)',
      input.id,
      input.createKey,
      JSON.stringify(input.labels),
      now,
      now + Math.round(input.ttlSeconds * 1000),
      input.idleTimeoutSeconds
    );
    return { record: this.get(input.id) as SandboxRecord, created: true };
  }

  /** The record of a sandbox (expired or not), or null. */
  get(id: string): SandboxRecord | null {
    const rows = this.ctx.storage.sql
      .exec<Row>('SELECT * FROM sandboxes WHERE id = ?', id)
      .toArray();
    return rows.length ? toRecord(rows[0]) : null;
  }

  /** Sandboxes carrying every one of `labels`: expired ones too, until they are destroyed. */
  list(labels: Record<string, string>): SandboxRecord[] {
    const rows = this.ctx.storage.sql
      .exec<Row>('SELECT * FROM sandboxes ORDER BY created_at')
      .toArray();
    return rows
      .map(toRecord)
      .filter((r) => Object.entries(labels).every(([k, v]) => r.labels[k] === v));
  }

  remove(id: string): void {
    this.ctx.storage.sql.exec('DELETE FROM sandboxes WHERE id = ?', id);
  }

  /** Ids of the sandboxes whose TTL has passed. */
  expired(): string[] {
    return this.ctx.storage.sql
      .exec<{ id: string }>('SELECT id FROM sandboxes WHERE expires_at <= ?', Date.now())
      .toArray()
      .map((row) => row.id);
  }
}

export function isExpired(record: SandboxRecord): boolean {
  return Date.parse(record.expires_at) <= Date.now();
}
