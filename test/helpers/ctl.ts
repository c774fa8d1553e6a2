/**
 * snapctl as the restore, rollback and diff tests call it: on one mount (through -C, from a
 * working directory outside it), checking the exit code, parsing --json, and checking the one-line
 * error the spec defines for a refused command. Also `snapfs check` after an unmount.
 */
import type { Test } from 'tap'
import { snapctl, snapfs, type Mounted, type RunResult } from './mount.js'
import type { SnapshotInfo } from '../../src/api.js'

export type { DiffEntry, SnapshotInfo } from '../../src/api.js'

/** snapctl acting on mount `m` (through -C), from a working directory outside it. */
export async function ctl (m: Mounted, args: string[]): Promise<RunResult> {
  return await snapctl(['-C', m.mnt, ...args], { cwd: '/' })
}

/** Runs a snapctl command that must succeed and returns its stdout. */
export async function ctlOk (t: Test, m: Mounted, args: string[]): Promise<string> {
  const r = await ctl(m, args)
  t.equal(r.code, 0, `snapctl ${args.join(' ')} exits 0 ${r.stderr}`)
  return r.stdout
}

/** Runs a snapctl command with --json that must succeed and returns what it printed, parsed. */
export async function ctlJson<T> (t: Test, m: Mounted, args: string[]): Promise<T> {
  return JSON.parse(await ctlOk(t, m, [...args, '--json'])) as T
}

export async function listSnapshots (t: Test, m: Mounted): Promise<SnapshotInfo[]> {
  return await ctlJson<SnapshotInfo[]>(t, m, ['list'])
}

/** A command that must fail the way the spec says: exit 1, nothing on stdout, one `snapctl: ` line. */
export function failsWithOneLine (t: Test, r: RunResult, pattern: RegExp, what: string): void {
  t.equal(r.code, 1, `${what}: exit code 1`)
  t.equal(r.stdout, '', `${what}: nothing on stdout`)
  const lines = r.stderr.trimEnd().split('\n')
  t.equal(lines.length, 1, `${what}: one line on stderr (${JSON.stringify(r.stderr)})`)
  t.match(lines[0], /^snapctl: /, `${what}: the line starts with "snapctl: "`)
  t.match(lines[0], pattern, `${what}: the line says why`)
}

/** Unmounts, then runs `snapfs check` on the store: it must exit 0 and say ok. */
export async function umountAndCheck (t: Test, m: Mounted): Promise<void> {
  t.equal(await m.umount(), 0, 'the daemon exits with code 0 on umount')
  const check = await snapfs(['check', m.store])
  t.equal(check.code, 0, `snapfs check exits 0 ${check.stdout}${check.stderr}`)
  t.match(check.stdout, /^ok: /m, 'snapfs check says ok')
}
