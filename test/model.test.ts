/**
 * A snapfs mount behaves like tmpfs under thousands of seeded random operations (writes at any
 * offset and size, holes, truncation, reads, renames, hard and symbolic links, directories,
 * chmod, fsync, descriptors held open across steps and across unlink, snapshots taken and
 * deleted among them): every operation has the same outcome or errno on both, the paths it
 * touches stay identical (bytes, size, type, mode, nlink, sorted listings), and so does the
 * whole tree every 50 operations and at the end. Every snapshot (MOUNT/.snapshots/NAME) stays
 * identical to a copy of the reference tree taken at its create: whole when it is taken, before
 * it is deleted and at the end, one in turn every 50 operations, and, in one of them in turn,
 * at the paths each change of the live tree touches; .snapshots lists exactly the snapshots
 * that exist, and attempts to change anything under it fail with EROFS. A failure prints the
 * seed and a shrunk list of operations that still fails. The environment may set
 * SNAPFS_MODEL_SEED (default: random, always printed), SNAPFS_MODEL_STEPS (3000) and
 * SNAPFS_MODEL_REPLAYS (60, the shrinker's bound on fresh mounts). Three smaller tests prove
 * that the engine itself can fail: its comparator reports planted differences, its shrinker
 * reduces an injected fault to a single write, and a snapshot that shares written bytes with
 * the live tree to a snapshot and the write that leaks into it.
 */
import t, { type Test } from 'tap'
import fs from 'node:fs'
import { syncBuiltinESMExports } from 'node:module'
import { randomInt } from 'node:crypto'
import { createSnapshot, deleteSnapshot } from '../dist/src/index.js'
import { mountFresh } from './helpers/mount.js'
import {
  compareOutcome,
  comparePath,
  compareTrees,
  copySnapshots,
  formatMismatch,
  formatOps,
  runModel,
  shrink,
  type Pair,
  type Snapshotter
} from './helpers/model.js'

/** The reference side lives on tmpfs. */
const TMPFS_PARENT = '/dev/shm'
const TMPFS_MAGIC = 0x01021994
const FULL_EVERY = 50
/** How many operations to show when a failure does not happen again on a fresh mount. */
const TAIL_SHOWN = 40

function envInt (name: string, fallback: () => number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback()
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name}=${raw}: expected a non-negative integer`)
  return n
}

const seed = envInt('SNAPFS_MODEL_SEED', () => randomInt(0x100000000)) >>> 0
const steps = envInt('SNAPFS_MODEL_STEPS', () => 3000)
/** Each replay of the shrinker needs a fresh mount: a bound on how many it may take. */
const maxReplays = envInt('SNAPFS_MODEL_REPLAYS', () => 60)

t.setTimeout(5 * 60_000 + steps * 100 + maxReplays * 10_000)

/** A snapfs mount's snapshots, taken and deleted through the package API. */
function mountSnapshots (mnt: string): Snapshotter {
  return {
    dir: `${mnt}/.snapshots`,
    readOnly: true,
    create: async name => { await createSnapshot(mnt, name) },
    remove: async name => { await deleteSnapshot(mnt, name) }
  }
}

/** A new empty directory under /dev/shm with the mode of a fresh mount's root, removed at the end of `t`. */
function scratch (t: Test, tag: string): string {
  const dir = fs.mkdtempSync(`${TMPFS_PARENT}/snapfs-model-${tag}-`)
  fs.chmodSync(dir, 0o755)
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** The same small tree in each directory: a 70 000-byte file with a hard link, a symbolic link
 * and an empty directory. */
function plant (...roots: string[]): void {
  const data = Buffer.alloc(70_000, 7)
  for (const root of roots) {
    fs.mkdirSync(`${root}/d`)
    fs.mkdirSync(`${root}/d/e`)
    fs.writeFileSync(`${root}/d/a`, data)
    fs.linkSync(`${root}/d/a`, `${root}/b`)
    fs.symlinkSync('d/a', `${root}/c`)
  }
}

t.test('the comparator reports planted differences', async t => {
  const [e1, a1, e2, a2, e3, a3] = ['e1', 'a1', 'e2', 'a2', 'e3', 'a3'].map(tag => scratch(t, tag))
  plant(e1!, a1!, e2!, a2!, e3!, a3!)
  t.equal(compareTrees(e1!, a1!), null, 'identical trees agree')

  const fd = fs.openSync(`${a1}/d/a`, 'r+')
  fs.writeSync(fd, Buffer.from([8]), 0, 1, 65_540)
  fs.closeSync(fd)
  const bytes = compareTrees(e1!, a1!)
  t.match(bytes, { what: 'content of b', expected: /^70000 bytes, from byte 65540: 07/, actual: /^70000 bytes, from byte 65540: 08/ },
    'one changed byte is found, with its offset (first through the hard link, which sorts first)')
  t.match(comparePath(e1!, a1!, 'd/a'), { what: 'content of d/a' }, 'and at the name it was written to')

  fs.writeFileSync(`${a2}/d/e/x`, '')
  t.match(compareTrees(e2!, a2!), { what: 'content of d/e', expected: '[]', actual: '[x]' }, 'an extra file shows in its directory listing')
  t.match(comparePath(e2!, a2!, 'd/e/x'), { what: 'stat of d/e/x', expected: 'error ENOENT', actual: /^file / }, 'and at its own path')

  fs.rmSync(`${a3}/b`)
  fs.copyFileSync(`${a3}/d/a`, `${a3}/b`)
  t.match(compareTrees(e3!, a3!), { what: 'stat of b', expected: /nlink=2/, actual: /nlink=1/ }, 'a copy is not a hard link')

  t.match(compareOutcome({ ok: true, value: '' }, { ok: false, code: 'EIO' }), { expected: 'ok', actual: 'error EIO' },
    'an error where the reference succeeds')
  t.match(compareOutcome({ ok: false, code: 'ENOTEMPTY' }, { ok: false, code: 'EEXIST' }), { expected: 'error ENOTEMPTY' },
    'a different errno')
  t.equal(compareOutcome({ ok: true, value: Buffer.from('abc') }, { ok: true, value: Buffer.from('abc') }), null,
    'equal bytes agree')
  t.match(compareOutcome({ ok: true, value: Buffer.from('abc') }, { ok: true, value: Buffer.from('ab') }),
    { what: 'bytes returned', expected: /^3 bytes/, actual: /^2 bytes/ }, 'a short read')
})

t.test('the shrinker reduces an injected fault to the faulty write', async t => {
  // The fault: every write of more than one byte into a directory whose name starts with
  // `faulty` silently drops its last byte.
  const faulty = `${TMPFS_PARENT}/snapfs-model-faulty-`
  const original = fs.writeSync
  function dropLastByte (...args: unknown[]): number {
    const [fd, buffer, offset, length, position] = args
    if (typeof fd === 'number' && Buffer.isBuffer(buffer) && typeof length === 'number' && length > 1 &&
        fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith(faulty)) {
      original(fd, buffer, offset as number, length - 1, position as number)
      return length
    }
    return Reflect.apply(original, fs, args) as number
  }
  fs.writeSync = dropLastByte as typeof fs.writeSync
  syncBuiltinESMExports()
  t.teardown(() => {
    fs.writeSync = original
    syncBuiltinESMExports()
  })

  const run = await runModel(scratch(t, 'ref'), scratch(t, 'faulty'), { seed: 1, steps: 300, fullEvery: FULL_EVERY })
  t.ok(run.mismatch, 'the fault is noticed')
  if (!run.mismatch) return

  const fresh = async (): Promise<Pair> => {
    const expected = scratch(t, 'ref')
    const actual = scratch(t, 'faulty')
    return {
      expected,
      actual,
      dispose: async () => {
        fs.rmSync(expected, { recursive: true, force: true })
        fs.rmSync(actual, { recursive: true, force: true })
      }
    }
  }
  const shrunk = await shrink(run.ops, run.mismatch.step, fresh, { maxReplays: 60, fullEvery: FULL_EVERY })
  t.comment(`shrunk in ${shrunk.replays} replays to:\n${formatOps(shrunk.ops)}`)
  t.ok(shrunk.mismatch, 'the shrunk list still fails')
  // What is left is the faulty write, after at most the mkdir of the directory it writes into.
  t.ok(shrunk.ops.length <= 2, `at most two operations are left (${shrunk.ops.length})`)
  t.match(shrunk.ops[shrunk.ops.length - 1], { kind: /^(fd)?write$/ }, 'the last is a write')
  if (shrunk.ops.length === 2) t.match(shrunk.ops[0], { kind: 'mkdir' }, 'after the mkdir it needs')
})

t.test('the shrinker reduces a snapshot that shares written bytes with the live tree to a snapshot and a write', async t => {
  // The fault: snapshots are copies, but every write into a file of the live tree also lands,
  // at the same offset, in the file of the same path in every snapshot (a copy-on-write that
  // forgot to copy). Writes through a descriptor reach fs.writeSync, which is patched here.
  const faulty = new Map<string, string>()
  const original = fs.writeSync
  function leak (...args: unknown[]): number {
    const [fd, buffer, offset, length, position] = args
    if (typeof fd === 'number' && Buffer.isBuffer(buffer) && typeof length === 'number' && typeof position === 'number') {
      const path = fs.readlinkSync(`/proc/self/fd/${fd}`)
      for (const [root, snapshots] of faulty) {
        if (!path.startsWith(`${root}/`)) continue
        for (const name of fs.readdirSync(snapshots)) {
          const copy = `${snapshots}/${name}/${path.slice(root.length + 1)}`
          if (!fs.statSync(copy, { throwIfNoEntry: false })?.isFile()) continue
          const cfd = fs.openSync(copy, 'r+')
          original(cfd, buffer, offset as number, length, position)
          fs.closeSync(cfd)
        }
      }
    }
    return Reflect.apply(original, fs, args) as number
  }
  fs.writeSync = leak as typeof fs.writeSync
  syncBuiltinESMExports()
  t.teardown(() => {
    fs.writeSync = original
    syncBuiltinESMExports()
  })
  const fresh = async (): Promise<Pair> => {
    const expected = scratch(t, 'ref')
    const actual = scratch(t, 'cow')
    const snapshots = scratch(t, 'cowsnaps')
    faulty.set(actual, snapshots)
    return {
      expected,
      actual,
      snapshots: copySnapshots(actual, snapshots),
      dispose: async () => {
        faulty.delete(actual)
        for (const dir of [expected, actual, snapshots]) fs.rmSync(dir, { recursive: true, force: true })
      }
    }
  }

  const first = await fresh()
  const run = await runModel(first.expected, first.actual, { seed: 1, steps: 300, fullEvery: FULL_EVERY, snapshots: first.snapshots })
  await first.dispose()
  t.match(run.mismatch, { what: /snapshot "/ }, 'the fault is noticed in a snapshot')
  if (!run.mismatch) return

  const shrunk = await shrink(run.ops, run.mismatch.step, fresh, { maxReplays: 60, fullEvery: FULL_EVERY })
  t.comment(`shrunk in ${shrunk.replays} replays to:\n${formatOps(shrunk.ops)}` +
    (shrunk.mismatch ? `\n${formatMismatch(shrunk.mismatch)}` : ''))
  t.ok(shrunk.mismatch, 'the shrunk list still fails')
  // What is left: what makes the file (a write or an open, after at most the mkdir of its
  // directory), the snapshot, and the write that leaks into it.
  const kinds = shrunk.ops.map(op => op.kind)
  t.ok(kinds.length <= 4, `at most four operations are left (${kinds.length})`)
  t.match(kinds.slice(-2), ['snapshot', /^(fd)?write$/], 'the last two are the snapshot and the write')
})

t.test('snapfs agrees with tmpfs on random operations', async t => {
  t.comment(`seed ${seed}, ${steps} operations (repeat with SNAPFS_MODEL_SEED=${seed} SNAPFS_MODEL_STEPS=${steps})`)
  t.equal(fs.statfsSync(TMPFS_PARENT).type, TMPFS_MAGIC, `the reference ${TMPFS_PARENT} is a tmpfs`)
  const mounted = await mountFresh(t)
  const started = Date.now()
  const { ops, mismatch } = await runModel(scratch(t, 'ref'), mounted.mnt, {
    seed, steps, fullEvery: FULL_EVERY, snapshots: mountSnapshots(mounted.mnt)
  })
  if (!mismatch) {
    t.pass(`${steps} operations agreed in ${Date.now() - started} ms`)
    return
  }
  t.comment(`seed ${seed}: ${formatMismatch(mismatch)}`)

  const fresh = async (): Promise<Pair> => {
    const m = await mountFresh(t)
    const expected = scratch(t, 'ref')
    return {
      expected,
      actual: m.mnt,
      snapshots: mountSnapshots(m.mnt),
      dispose: async () => {
        fs.rmSync(expected, { recursive: true, force: true })
        // A mount that will not go away now is detached by the teardown mountFresh registered.
        await m.umount().catch((e: unknown) => t.comment(`unmounting a replay's mount: ${String(e)}`))
      }
    }
  }
  const shrunk = await shrink(ops, mismatch.step, fresh, { maxReplays, fullEvery: FULL_EVERY })
  if (shrunk.mismatch) {
    t.comment(
      `seed ${seed}: shrunk from ${mismatch.step + 1} to ${shrunk.ops.length} operations in ${shrunk.replays} replays:\n` +
        `${formatOps(shrunk.ops)}\n${formatMismatch(shrunk.mismatch)}`
    )
  } else {
    const from = Math.max(0, shrunk.ops.length - TAIL_SHOWN)
    t.comment(
      `seed ${seed}: the failure did not happen again on a fresh mount; its last operations:\n` +
        formatOps(shrunk.ops.slice(from), from + 1)
    )
  }
  t.fail(`snapfs and tmpfs disagree after op ${mismatch.step + 1} (seed ${seed}): ${mismatch.what}`)
})
