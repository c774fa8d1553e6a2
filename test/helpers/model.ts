/**
 * The engine of the randomized model test. It proves that two directory trees behave alike
 * under the same sequence of file-system operations: a seeded generator draws operations on a
 * small namespace of paths, an executor runs each one against a directory and records its
 * outcome (a value, or an errno code), a comparator checks that the outcome and the touched
 * paths (or the whole tree) agree byte for byte, and a shrinker reduces a failing list of
 * operations to a short one by replaying subsets on fresh pairs of directories. Nothing here
 * knows which file system is under test: it runs against any two directories.
 *
 * Snapshots are optional: given how the side under test takes them (a Snapshotter), the
 * generator also draws snapshot creates and deletes and write attempts under a snapshot, the
 * reference keeps a full copy of its tree per snapshot, and the snapshots are compared with
 * their copies: the list of names after every operation that changes something; the paths an
 * operation on the live tree touched, in one snapshot, each in turn; a snapshot whole when
 * it is taken, just before it is deleted, one in turn every `fullEvery` operations, and every
 * one at the end.
 */
import * as fs from 'node:fs'
import { spawnSync } from 'node:child_process'

const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC, O_APPEND, O_EXCL } = fs.constants

/** Names every path is made of: few, so that operations collide often. */
const NAMES = ['a', 'b', 'c', 'd'] as const
/** Paths that `childPath` extends are at most this deep, which keeps the tree shallow. */
const MAX_PARENT_DEPTH = 3
/** Live snapshots at most: no snapshot is created (drawn or replayed) beyond this. */
export const MAX_SNAPSHOTS = 8
/** Writes and truncates keep files at most this large. */
const MAX_SIZE = 4 * 1024 * 1024
/** Descriptor slots that stay open across steps. */
export const SLOTS = 4

const FILE_MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o400, 0o640, 0o777, 0o000] as const
const DIR_MODES = [0o755, 0o700, 0o777, 0o750] as const
const OPEN_FLAGS = {
  r: O_RDONLY,
  'r+': O_RDWR,
  w: O_WRONLY | O_CREAT | O_TRUNC,
  'w+': O_RDWR | O_CREAT | O_TRUNC,
  a: O_WRONLY | O_CREAT | O_APPEND,
  'a+': O_RDWR | O_CREAT | O_APPEND,
  wx: O_WRONLY | O_CREAT | O_EXCL
} as const
export type OpenFlags = keyof typeof OPEN_FLAGS
const FLAG_NAMES = Object.keys(OPEN_FLAGS) as OpenFlags[]

/** How the bytes of a write are made: from a seeded generator, zeros, or one repeated byte. */
export type Fill = 'rand' | 'zero' | 'byte'

export type Op =
  | { kind: 'write'; path: string; off: number; len: number; fill: Fill; seed: number }
  | { kind: 'truncate'; path: string; size: number }
  | { kind: 'read'; path: string; off: number; len: number }
  | { kind: 'rename' | 'link'; from: string; to: string }
  | { kind: 'unlink' | 'rmdir' | 'readlink' | 'fsync' | 'stat'; path: string }
  | { kind: 'mkdir' | 'chmod'; path: string; mode: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'open'; slot: number; path: string; flags: OpenFlags }
  | { kind: 'fdwrite'; slot: number; off: number; len: number; fill: Fill; seed: number }
  | { kind: 'fdread'; slot: number; off: number; len: number }
  | { kind: 'fdtruncate'; slot: number; size: number }
  | { kind: 'fdsync' | 'fdstat' | 'close'; slot: number }
  | SnapshotOp

/**
 * The operations on snapshots. `snapwrite` attempts a change under the snapshots directory,
 * which must fail with EROFS: `at` is relative to that directory (the snapshot's root is its
 * name; '' is the directory itself), `source` the live path that `rename-in` moves.
 */
export type SnapshotOp =
  | { kind: 'snapshot' | 'delete-snapshot'; name: string }
  | { kind: 'snapwrite'; action: SnapWrite; at: string; source: string }

type FsOp = Exclude<Op, SnapshotOp>

function isSnapshotOp (op: Op): op is SnapshotOp {
  return op.kind === 'snapshot' || op.kind === 'delete-snapshot' || op.kind === 'snapwrite'
}

/** What each write attempt under a snapshot needs at `at` for its outcome to be EROFS (and not
 * ENOENT, EISDIR...): a file, anything but a symbolic link (which chmod and utimes would
 * follow), anything but a directory, a directory, anything, or a directory to create `x` in. */
const SNAP_WRITES = {
  write: 'file',
  truncate: 'file',
  chmod: 'nolink',
  utimes: 'nolink',
  unlink: 'nodir',
  rmdir: 'dir',
  rename: 'any',
  'rename-out': 'any',
  link: 'file',
  create: 'parent',
  mkdir: 'parent',
  symlink: 'parent',
  'rename-in': 'parent'
} as const
export type SnapWrite = keyof typeof SNAP_WRITES
const SNAP_WRITE_NAMES = Object.keys(SNAP_WRITES) as SnapWrite[]
/** The name write attempts under a snapshot create or rename to: never one of NAMES. */
const FRESH = 'x'

/** What an operation did: its value (bytes read, a count, a link target, a stat summary), or
 * the code of the error it raised. */
export type Outcome = { ok: true; value: string | Buffer } | { ok: false; code: string }

/** One difference between the two sides: what was compared, and what each side showed. */
export interface Diff {
  what: string
  expected: string
  actual: string
}

/** A difference found after an operation: `step` is the index of that operation in the list. */
export interface Mismatch extends Diff {
  step: number
  op: string
}

/** A directory under test together with the descriptors held open in it across steps. */
export interface Side {
  root: string
  slots: ({ fd: number; path: string } | null)[]
}

/** A fresh pair of directories for one replay (with how the actual one takes snapshots, when
 * it does), and how to get rid of it afterwards. */
export interface Pair {
  expected: string
  actual: string
  snapshots?: Snapshotter
  dispose(): Promise<void>
}

/**
 * How one side takes snapshots: `dir` lists them by name, each a directory that shows the tree
 * as it was when the snapshot was taken (a snapfs mount's `.snapshots`).
 */
export interface Snapshotter {
  readonly dir: string
  /** Whether every change under `dir` fails with EROFS: only then are write attempts drawn. */
  readonly readOnly: boolean
  create(name: string): Promise<void>
  remove(name: string): Promise<void>
}

/**
 * Snapshots of `root` as full copies in `dir` (`cp -a`, which keeps modes, hard links and
 * symbolic links): the reference's snapshots, and any plain directory's.
 */
export function copySnapshots (root: string, dir: string): Snapshotter {
  return {
    dir,
    readOnly: false,
    create: async name => {
      const cp = spawnSync('cp', ['-a', '--', root, `${dir}/${name}`], { encoding: 'utf8' })
      if (cp.status !== 0) throw new Error(`cp -a ${root} ${dir}/${name}: ${cp.stderr || `exit ${String(cp.status)}`}`)
    },
    remove: async name => fs.rmSync(`${dir}/${name}`, { recursive: true })
  }
}

/**
 * A small seeded generator of 32-bit numbers: an xorshift state whose output is scrambled by a
 * multiply, so that nearby seeds give unrelated streams.
 */
export class Rng {
  private state: number

  constructor (seed: number) {
    this.state = (seed ^ 0x6d2b79f5) >>> 0 || 0x1234567
    for (let i = 0; i < 8; i++) this.next()
  }

  next (): number {
    let x = this.state
    x = (x ^ (x << 13)) >>> 0
    x = (x ^ (x >>> 17)) >>> 0
    x = (x ^ (x << 5)) >>> 0
    this.state = x
    const y = Math.imul(x ^ (x >>> 16), 0x7feb352d) >>> 0
    return (y ^ (y >>> 15)) >>> 0
  }

  /** A number in [0, 1). */
  unit (): number {
    return this.next() / 0x100000000
  }

  /** An integer in [0, n). */
  below (n: number): number {
    return Math.floor(this.unit() * n)
  }

  chance (p: number): boolean {
    return this.unit() < p
  }

  pick<T> (items: readonly T[]): T {
    const item = items[this.below(items.length)]
    if (item === undefined) throw new Error('pick from an empty list')
    return item
  }

  weighted<T> (items: readonly (readonly [T, number])[]): T {
    let r = this.unit() * items.reduce((sum, [, w]) => sum + w, 0)
    for (const [item, w] of items) {
      r -= w
      if (r < 0) return item
    }
    return items[items.length - 1]![0]
  }
}

/** The bytes of a write, made again identically from the operation's fields on every side. */
export function makeData (fill: Fill, seed: number, len: number): Buffer {
  if (fill === 'zero') return Buffer.alloc(len)
  if (fill === 'byte') return Buffer.alloc(len, (seed % 255) + 1)
  const words = new Uint32Array(Math.ceil(len / 4))
  const rng = new Rng(seed)
  for (let i = 0; i < words.length; i++) words[i] = rng.next()
  return Buffer.from(words.buffer, 0, len)
}

/** One operation as a readable line, e.g. `write d/a off=70000 len=3000 data=rand:17`. */
export function formatOp (op: Op): string {
  switch (op.kind) {
    case 'write':
      return `write ${op.path} off=${op.off} len=${op.len} data=${op.fill}:${op.seed}`
    case 'truncate':
      return `truncate ${op.path} size=${op.size}`
    case 'read':
      return `read ${op.path} off=${op.off} len=${op.len}`
    case 'rename':
    case 'link':
      return `${op.kind} ${op.from} -> ${op.to}`
    case 'mkdir':
    case 'chmod':
      return `${op.kind} ${op.path} mode=${op.mode.toString(8).padStart(3, '0')}`
    case 'symlink':
      return `symlink ${op.path} -> ${op.target}`
    case 'open':
      return `open #${op.slot} ${op.path} flags=${op.flags}`
    case 'fdwrite':
      return `fdwrite #${op.slot} off=${op.off} len=${op.len} data=${op.fill}:${op.seed}`
    case 'fdread':
      return `fdread #${op.slot} off=${op.off} len=${op.len}`
    case 'fdtruncate':
      return `fdtruncate #${op.slot} size=${op.size}`
    case 'fdsync':
    case 'fdstat':
    case 'close':
      return `${op.kind} #${op.slot}`
    case 'snapshot':
    case 'delete-snapshot':
      return `${op.kind} ${JSON.stringify(op.name)}`
    case 'snapwrite':
      return op.action === 'rename-in'
        ? `snapwrite rename-in ${op.source} -> .snapshots/${child(op.at, FRESH)}`
        : `snapwrite ${op.action} ${full('.snapshots', op.at)}`
    default:
      return `${op.kind} ${op.path}`
  }
}

/** A numbered list of operations, one per line, numbered from `first`. */
export function formatOps (ops: readonly Op[], first = 1): string {
  return ops.map((op, i) => `${String(i + first).padStart(5)}. ${formatOp(op)}`).join('\n')
}

/** A mismatch as readable lines. */
export function formatMismatch (m: Mismatch): string {
  return [
    `mismatch after op ${m.step + 1}: ${m.op}`,
    `  compared: ${m.what}`,
    `  expected: ${m.expected}`,
    `  actual:   ${m.actual}`
  ].join('\n')
}

function full (root: string, rel: string): string {
  return rel === '' ? root : `${root}/${rel}`
}

function parentOf (rel: string): string {
  const i = rel.lastIndexOf('/')
  return i < 0 ? '' : rel.slice(0, i)
}

function child (parent: string, name: string): string {
  return parent === '' ? name : `${parent}/${name}`
}

type EntryType = 'file' | 'dir' | 'link' | 'other'

function typeOf (st: fs.Stats | fs.Dirent): EntryType {
  if (st.isFile()) return 'file'
  if (st.isDirectory()) return 'dir'
  if (st.isSymbolicLink()) return 'link'
  return 'other'
}

/** Every path below `root` (not following symbolic links), parents before children, sorted. */
export function listTree (root: string): { path: string; type: EntryType }[] {
  const out: { path: string; type: EntryType }[] = []
  const walk = (rel: string): void => {
    const names = fs.readdirSync(full(root, rel), { withFileTypes: true })
    names.sort((x, y) => (x.name < y.name ? -1 : x.name > y.name ? 1 : 0))
    for (const d of names) {
      const path = child(rel, d.name)
      const type = typeOf(d)
      out.push({ path, type })
      if (type === 'dir') walk(path)
    }
  }
  walk('')
  return out
}

/** What a stat shows that both sides must agree on (a directory's size is the file system's own
 * business, and times and inode numbers differ by nature). */
function summary (st: fs.Stats): string {
  const type = typeOf(st)
  const mode = (st.mode & 0o7777).toString(8).padStart(3, '0')
  return `${type} mode=${mode} nlink=${st.nlink}${type === 'dir' ? '' : ` size=${st.size}`}`
}

/**
 * The summary of a descriptor's fstat, without the link count. Through libfuse 2's path-based API
 * every name of a file is a separate kernel inode, and the kernel adjusts a descriptor's link
 * count itself on unlink and may serve it without asking the daemon; fuse-native also turns 0
 * into 1. Link counts are compared through names (stat), where they are fresh.
 */
function descriptorSummary (st: fs.Stats): string {
  return summary(st).replace(/ nlink=\d+/, '')
}

export function openSide (root: string): Side {
  return { root, slots: Array.from({ length: SLOTS }, () => null) }
}

/** Closes every descriptor a side still holds. A close that fails here (a daemon already gone)
 * comes after every comparison was made, so there is nothing left to report. */
export function closeSide (side: Side): void {
  for (const [i, slot] of side.slots.entries()) {
    side.slots[i] = null
    if (!slot) continue
    try {
      fs.closeSync(slot.fd)
    } catch {
      // See above.
    }
  }
}

function writeAll (fd: number, data: Buffer, off: number): number {
  let done = 0
  while (done < data.length) {
    const n = fs.writeSync(fd, data, done, data.length - done, off + done)
    if (n === 0) break
    done += n
  }
  return done
}

function readAll (fd: number, off: number, len: number): Buffer {
  const buf = Buffer.alloc(len)
  let done = 0
  while (done < len) {
    const n = fs.readSync(fd, buf, done, len - done, off + done)
    if (n === 0) break
    done += n
  }
  return buf.subarray(0, done)
}

function withFd<T> (path: string, flags: number, body: (fd: number) => T): T {
  const fd = fs.openSync(path, flags, 0o666)
  try {
    return body(fd)
  } finally {
    fs.closeSync(fd)
  }
}

function slotFd (side: Side, slot: number): number {
  const s = side.slots[slot]
  if (!s) throw Object.assign(new Error(`slot #${slot} is not open`), { code: 'NOFD' })
  return s.fd
}

function run (side: Side, op: FsOp): string | Buffer {
  const p = (rel: string): string => full(side.root, rel)
  switch (op.kind) {
    case 'write':
      return String(
        withFd(p(op.path), O_WRONLY | O_CREAT, fd =>
          writeAll(fd, makeData(op.fill, op.seed, op.len), op.off)
        )
      )
    case 'truncate':
      fs.truncateSync(p(op.path), op.size)
      return ''
    case 'read':
      return withFd(p(op.path), O_RDONLY, fd => readAll(fd, op.off, op.len))
    case 'rename':
      fs.renameSync(p(op.from), p(op.to))
      return ''
    case 'link':
      fs.linkSync(p(op.from), p(op.to))
      return ''
    case 'unlink':
      fs.unlinkSync(p(op.path))
      return ''
    case 'rmdir':
      fs.rmdirSync(p(op.path))
      return ''
    case 'mkdir':
      fs.mkdirSync(p(op.path), op.mode)
      return ''
    case 'chmod':
      fs.chmodSync(p(op.path), op.mode)
      return ''
    case 'symlink':
      fs.symlinkSync(op.target, p(op.path))
      return ''
    case 'readlink':
      return fs.readlinkSync(p(op.path))
    case 'fsync':
      withFd(p(op.path), O_RDONLY, fd => fs.fsyncSync(fd))
      return ''
    case 'stat':
      return summary(fs.statSync(p(op.path)))
    case 'open': {
      const old = side.slots[op.slot]
      side.slots[op.slot] = null
      if (old) fs.closeSync(old.fd)
      const fd = fs.openSync(p(op.path), OPEN_FLAGS[op.flags], 0o666)
      side.slots[op.slot] = { fd, path: op.path }
      return ''
    }
    case 'fdwrite':
      return String(writeAll(slotFd(side, op.slot), makeData(op.fill, op.seed, op.len), op.off))
    case 'fdread':
      return readAll(slotFd(side, op.slot), op.off, op.len)
    case 'fdtruncate':
      fs.ftruncateSync(slotFd(side, op.slot), op.size)
      return ''
    case 'fdsync':
      fs.fsyncSync(slotFd(side, op.slot))
      return ''
    case 'fdstat':
      return descriptorSummary(fs.fstatSync(slotFd(side, op.slot)))
    case 'close': {
      const fd = slotFd(side, op.slot)
      side.slots[op.slot] = null
      fs.closeSync(fd)
      return ''
    }
  }
}

function errorCode (e: unknown): string {
  if (e instanceof Error && typeof (e as NodeJS.ErrnoException).code === 'string') {
    return (e as NodeJS.ErrnoException).code as string
  }
  throw e
}

/** Runs one operation on one side and records what it did. */
export function execute (side: Side, op: FsOp): Outcome {
  return settle(() => run(side, op))
}

function settle (body: () => string | Buffer): Outcome {
  try {
    return { ok: true, value: body() }
  } catch (e) {
    return { ok: false, code: errorCode(e) }
  }
}

function firstDifference (e: Buffer, a: Buffer): number {
  const n = Math.min(e.length, a.length)
  for (let i = 0; i < n; i++) if (e[i] !== a[i]) return i
  return n
}

function showBytes (b: Buffer, at: number): string {
  const head = `${b.length} bytes`
  if (at >= b.length) return `${head}, ends at ${b.length}`
  return `${head}, from byte ${at}: ${b.subarray(at, at + 12).toString('hex').replace(/(..)/g, '$1 ').trim()}`
}

function diffBytes (what: string, e: Buffer, a: Buffer): Diff | null {
  if (e.equals(a)) return null
  const at = firstDifference(e, a)
  return { what, expected: showBytes(e, at), actual: showBytes(a, at) }
}

function showOutcome (o: Outcome): string {
  if (!o.ok) return `error ${o.code}`
  if (typeof o.value === 'string') return o.value === '' ? 'ok' : `ok ${JSON.stringify(o.value)}`
  return `ok, ${o.value.length} bytes`
}

/** Compares the outcomes of one operation on the two sides. */
export function compareOutcome (e: Outcome, a: Outcome): Diff | null {
  if (e.ok && a.ok && Buffer.isBuffer(e.value) && Buffer.isBuffer(a.value)) {
    return diffBytes('bytes returned', e.value, a.value)
  }
  const se = showOutcome(e)
  const sa = showOutcome(a)
  return se === sa ? null : { what: 'outcome', expected: se, actual: sa }
}

/** What one side shows at a path: its stat summary (or error), and its content, listing or
 * link target. */
function probe (root: string, rel: string): { head: string; body: Buffer | string } {
  const p = full(root, rel)
  let st: fs.Stats
  try {
    st = fs.lstatSync(p)
  } catch (e) {
    return { head: `error ${errorCode(e)}`, body: '' }
  }
  const head = rel === '' ? 'root' : summary(st)
  try {
    if (st.isFile()) return { head, body: fs.readFileSync(p) }
    if (st.isSymbolicLink()) return { head, body: `-> ${fs.readlinkSync(p)}` }
    if (st.isDirectory()) return { head, body: `[${fs.readdirSync(p).sort().join(' ')}]` }
    return { head, body: '' }
  } catch (e) {
    return { head, body: `error ${errorCode(e)}` }
  }
}

/** Compares one path on the two sides: the stat summary (type, mode, nlink, size), then the
 * file's bytes, the link's target or the directory's sorted listing. The root shows its
 * listing only: its own attributes belong to whatever holds the tree. */
export function comparePath (expectedRoot: string, actualRoot: string, rel: string): Diff | null {
  const e = probe(expectedRoot, rel)
  const a = probe(actualRoot, rel)
  const name = rel === '' ? '/' : rel
  if (e.head !== a.head) return { what: `stat of ${name}`, expected: e.head, actual: a.head }
  if (Buffer.isBuffer(e.body) && Buffer.isBuffer(a.body)) {
    return diffBytes(`content of ${name}`, e.body, a.body)
  }
  const be = Buffer.isBuffer(e.body) ? showBytes(e.body, 0) : e.body
  const ba = Buffer.isBuffer(a.body) ? showBytes(a.body, 0) : a.body
  return be === ba ? null : { what: `content of ${name}`, expected: be, actual: ba }
}

/** Compares the whole trees: every path of the expected side (and so, through the listings,
 * every path of the actual one), then which names are hard links of one another. */
export function compareTrees (expectedRoot: string, actualRoot: string): Diff | null {
  const entries = listTree(expectedRoot)
  for (const rel of ['', ...entries.map(x => x.path)]) {
    const d = comparePath(expectedRoot, actualRoot, rel)
    if (d) return d
  }
  const linked = entries.filter(x => x.type !== 'dir').map(x => x.path)
  const inode = (path: string): string => {
    try {
      return String(fs.lstatSync(path, { bigint: true }).ino)
    } catch (e) {
      return `error ${errorCode(e)}`
    }
  }
  const groups = (root: string): Map<string, string> => {
    const byIno = new Map<string, string[]>()
    for (const rel of linked) {
      const ino = inode(full(root, rel))
      byIno.set(ino, [...(byIno.get(ino) ?? []), rel])
    }
    const out = new Map<string, string>()
    for (const names of byIno.values()) for (const rel of names) out.set(rel, names.join(' '))
    return out
  }
  const ge = groups(expectedRoot)
  const ga = groups(actualRoot)
  for (const rel of linked) {
    if (ge.get(rel) !== ga.get(rel)) {
      return { what: `names sharing the inode of ${rel}`, expected: ge.get(rel) ?? '', actual: ga.get(rel) ?? '' }
    }
  }
  return null
}

/** The paths an operation names, read before it runs (a descriptor's is the path it was opened
 * with). */
function named (side: Side, op: FsOp): string[] {
  if ('path' in op) return [op.path]
  if ('from' in op) return [op.from, op.to]
  const s = side.slots[op.slot]
  return s ? [s.path] : []
}

/** Where `rel` leads once every symbolic link on the way is followed, when that is inside the
 * tree; null when it leads nowhere (a missing path or a dangling link has nothing more to
 * compare). */
function resolve (root: string, rel: string): string | null {
  try {
    const real = fs.realpathSync(full(root, rel))
    const top = fs.realpathSync(root)
    if (real === top) return ''
    return real.startsWith(`${top}/`) ? real.slice(top.length + 1) : null
  } catch {
    return null
  }
}

/** The paths an operation touched: those it names, where they lead now through symbolic links,
 * and their parent directories. */
function touched (root: string, names: string[]): string[] {
  const paths: string[] = []
  const add = (rel: string | null): void => {
    if (rel === null) return
    for (const x of [rel, parentOf(rel)]) if (!paths.includes(x)) paths.push(x)
  }
  for (const rel of names) add(rel)
  for (const rel of names) add(resolve(root, rel))
  return paths
}

function fdState (side: Side, slot: number): string {
  const s = side.slots[slot]
  if (!s) return 'closed'
  try {
    return descriptorSummary(fs.fstatSync(s.fd))
  } catch (e) {
    return `error ${errorCode(e)}`
  }
}

/** The snapshots of a run: the reference's copies, the snapshots of the side under test, and
 * the names that exist (oldest first) or existed. */
interface Snaps {
  ref: Snapshotter
  actual: Snapshotter
  live: string[]
  gone: string[]
}

/** What the generator may look at of the snapshots. */
export interface SnapView {
  /** Where the reference's copies are, one directory per live snapshot. */
  dir: string
  live: readonly string[]
  gone: readonly string[]
  readOnly: boolean
}

/** An operation result of both sides that did nothing: a snapshot operation whose snapshot
 * does not (or already does) exist in the list being replayed. */
const SKIPPED = { ok: false, diff: null } as const

/**
 * Runs the `i`-th operation on both sides and compares what it did; `ok` tells whether it
 * succeeded (and so may have changed something) on the expected side. After an operation that
 * changed the live tree (one that succeeded there, not a read), the list of snapshots and the
 * paths it touched in one of them (the `i`-th in turn) are compared too: reading every snapshot
 * after every operation would take several times as long as the operations themselves.
 */
async function step (expected: Side, actual: Side, op: Op, snaps: Snaps | null, i: number): Promise<{ ok: boolean; diff: Diff | null }> {
  if (isSnapshotOp(op)) return snaps ? await snapshotStep(expected, actual, op, snaps) : SKIPPED
  const names = named(expected, op)
  const oe = execute(expected, op)
  const oa = execute(actual, op)
  const paths = touched(expected.root, names)
  const diff = compareStep(expected, actual, op, paths, oe, oa) ??
    (snaps && oe.ok && !READS.has(op.kind) ? compareSnapshots(snaps, inTurn(snaps.live, i), paths) : null)
  return { ok: oe.ok, diff }
}

/** Compares the two outcomes of an operation, then the paths it touched, then the descriptor
 * it used. */
function compareStep (expected: Side, actual: Side, op: FsOp, paths: string[], oe: Outcome, oa: Outcome): Diff | null {
  const d = compareOutcome(oe, oa)
  if (d) return d
  for (const rel of paths) {
    const dp = comparePath(expected.root, actual.root, rel)
    if (dp) return dp
  }
  if ('slot' in op) {
    const se = fdState(expected, op.slot)
    const sa = fdState(actual, op.slot)
    if (se !== sa) return { what: `fstat of #${op.slot}`, expected: se, actual: sa }
  }
  return null
}

/** The `i`-th of `names` in turn, as a list of one (or none). */
function inTurn (names: readonly string[], i: number): string[] {
  return names.length > 0 ? [names[i % names.length]!] : []
}


/**
 * Compares the list of snapshot names, then, in each of the snapshots `names`, the paths
 * `rels` (relative to the snapshot's root), or, without `rels`, the whole snapshot.
 */
function compareSnapshots (s: Snaps, names: readonly string[], rels?: readonly string[]): Diff | null {
  const listing = comparePath(s.ref.dir, s.actual.dir, '')
  if (listing) return { ...listing, what: `the snapshots listed in ${s.actual.dir}` }
  for (const name of names) {
    const e = `${s.ref.dir}/${name}`
    const a = `${s.actual.dir}/${name}`
    let d: Diff | null = null
    if (!rels) d = compareTrees(e, a)
    for (const rel of rels ?? []) {
      d = comparePath(e, a, rel)
      if (d) break
    }
    if (d) return { ...d, what: `snapshot ${JSON.stringify(name)}: ${d.what}` }
  }
  return null
}

/** Runs a snapshot operation of the side under test and records what it did: nothing, or the
 * errno code or the message it failed with. */
async function settleAsync (body: () => Promise<void>): Promise<Outcome> {
  try {
    await body()
    return { ok: true, value: '' }
  } catch (e) {
    return { ok: false, code: e instanceof Error ? (e as NodeJS.ErrnoException).code ?? e.message : String(e) }
  }
}

function typeAt (path: string): EntryType | null {
  try {
    return typeOf(fs.lstatSync(path))
  } catch {
    return null
  }
}

/** Whether a write attempt under a snapshot has what it needs in the reference's copies (and,
 * for `rename-in`, in the live tree), so that EROFS is the one right outcome. */
function snapWriteApplies (op: Extract<Op, { kind: 'snapwrite' }>, copies: string, liveRoot: string): boolean {
  const type = typeAt(full(copies, op.at))
  switch (SNAP_WRITES[op.action]) {
    case 'parent':
      return type === 'dir' && (op.action !== 'rename-in' || typeAt(full(liveRoot, op.source)) !== null)
    case 'file':
      return op.at !== '' && type === 'file'
    case 'nolink':
      return op.at !== '' && type !== null && type !== 'link'
    case 'nodir':
      return op.at !== '' && type !== null && type !== 'dir'
    case 'dir':
      return op.at !== '' && type === 'dir'
    case 'any':
      return op.at !== '' && type !== null
  }
}

/** Attempts the change under the snapshots directory `dir` of the side whose live tree is
 * `liveRoot`. */
function runSnapWrite (op: Extract<Op, { kind: 'snapwrite' }>, dir: string, liveRoot: string): string {
  const p = full(dir, op.at)
  const sibling = `${full(dir, parentOf(op.at))}/${FRESH}`
  const inside = `${p}/${FRESH}`
  switch (op.action) {
    case 'write':
      return String(withFd(p, O_WRONLY, fd => writeAll(fd, Buffer.from('x'), 0)))
    case 'truncate':
      fs.truncateSync(p, 0)
      break
    case 'chmod':
      fs.chmodSync(p, 0o707)
      break
    case 'utimes':
      fs.utimesSync(p, 1, 1)
      break
    case 'unlink':
      fs.unlinkSync(p)
      break
    case 'rmdir':
      fs.rmdirSync(p)
      break
    case 'rename':
      fs.renameSync(p, sibling)
      break
    case 'rename-out':
      fs.renameSync(p, `${liveRoot}/${FRESH}`)
      break
    case 'link':
      fs.linkSync(p, sibling)
      break
    case 'create':
      fs.closeSync(fs.openSync(inside, O_WRONLY | O_CREAT | O_EXCL, 0o644))
      break
    case 'mkdir':
      fs.mkdirSync(inside, 0o755)
      break
    case 'symlink':
      fs.symlinkSync('a', inside)
      break
    case 'rename-in':
      fs.renameSync(full(liveRoot, op.source), inside)
      break
  }
  return ''
}

/**
 * Runs a snapshot operation. A create takes the reference's copy and the snapshot under test
 * and compares the new snapshot whole; a delete compares the snapshot whole a last time,
 * removes both and compares the names left (and that the name is gone); a write attempt must fail with EROFS on the side
 * under test (the reference is not touched) and leave both the snapshots and the live tree as
 * they were. A create of a name that exists (or beyond MAX_SNAPSHOTS), a delete of one that
 * does not, and a write attempt that lacks what it needs are skipped, so that any sublist of
 * operations replays on its own.
 */
async function snapshotStep (expected: Side, actual: Side, op: SnapshotOp, s: Snaps): Promise<{ ok: boolean; diff: Diff | null }> {
  const done: Outcome = { ok: true, value: '' }
  switch (op.kind) {
    case 'snapshot': {
      if (s.live.includes(op.name) || s.live.length >= MAX_SNAPSHOTS) return SKIPPED
      await s.ref.create(op.name)
      const oa = await settleAsync(() => s.actual.create(op.name))
      s.live.push(op.name)
      s.gone = s.gone.filter(n => n !== op.name)
      return { ok: true, diff: compareOutcome(done, oa) ?? compareSnapshots(s, [op.name]) }
    }
    case 'delete-snapshot': {
      if (!s.live.includes(op.name)) return SKIPPED
      const before = compareSnapshots(s, [op.name])
      if (before) return { ok: true, diff: { ...before, what: `before the delete: ${before.what}` } }
      await s.ref.remove(op.name)
      const oa = await settleAsync(() => s.actual.remove(op.name))
      s.live = s.live.filter(n => n !== op.name)
      s.gone.push(op.name)
      return { ok: true, diff: compareOutcome(done, oa) ?? compareSnapshots(s, []) ?? comparePath(s.ref.dir, s.actual.dir, op.name) }
    }
    case 'snapwrite': {
      if (!s.actual.readOnly || !snapWriteApplies(op, s.ref.dir, expected.root)) return SKIPPED
      const oa = settle(() => runSnapWrite(op, s.actual.dir, actual.root))
      const d = compareOutcome({ ok: false, code: 'EROFS' }, oa)
      if (d) return { ok: false, diff: d }
      for (const rel of [op.at, parentOf(op.at), child(op.at, FRESH), child(parentOf(op.at), FRESH)]) {
        const dp = comparePath(s.ref.dir, s.actual.dir, rel)
        if (dp) return { ok: false, diff: { ...dp, what: `under the snapshots: ${dp.what}` } }
      }
      for (const rel of new Set(['', op.source])) {
        const dp = comparePath(expected.root, actual.root, rel)
        if (dp) return { ok: false, diff: dp }
      }
      return { ok: false, diff: null }
    }
  }
}

function sizeOf (path: string): number {
  try {
    const st = fs.statSync(path)
    return st.isFile() ? st.size : 0
  } catch {
    return 0
  }
}

function pickLen (rng: Rng): number {
  const r = rng.unit()
  if (r < 0.35) return 1 + rng.below(4096)
  if (r < 0.6) return 4096 + rng.below(61440)
  if (r < 0.8) return 65536 + rng.below(139264)
  return rng.pick([1, 4095, 4096, 4097, 65535, 65536, 65537, 131072, 204800])
}

function pickOffset (rng: Rng, size: number, len: number): number {
  const r = rng.unit()
  let off: number
  if (r < 0.25) off = size
  else if (r < 0.45) off = rng.below(size + 1)
  else if (r < 0.55) off = 0
  else if (r < 0.72) off = Math.max(0, 65536 * (1 + rng.below(Math.ceil(size / 65536) + 1)) - rng.below(len + 1))
  else if (r < 0.88) off = size + 65536 + rng.below(1024 * 1024)
  else off = 4096 * rng.below(256)
  return off + len > MAX_SIZE ? rng.below(MAX_SIZE - len) : off
}

function pickSize (rng: Rng, size: number): number {
  const r = rng.unit()
  if (r < 0.2) return 0
  if (r < 0.5) return rng.below(size + 1)
  if (r < 0.8) return Math.min(MAX_SIZE, size + 1 + rng.below(300000))
  return rng.pick([1, 4095, 4096, 65535, 65536, 65537, 131072])
}

/** How the names of new snapshots begin (the rest is the number of the operation that takes
 * it): plain, with a space, outside ASCII, with a leading dot. */
const SNAPSHOT_PREFIXES = ['s', 's', 'snap ', 'ω', '.s'] as const

/**
 * Draws the next operation, the `i`-th. It looks at the expected side (the reference) to aim
 * most operations at paths that exist, at files to write and at descriptors that are open, and
 * leaves the rest to chance: missing paths, wrong types and invalid renames are part of the
 * test. With `snaps`, about one operation in 25 takes a snapshot while fewer than MAX_SNAPSHOTS
 * exist (one in five reuses the name of a deleted one), one in 60 deletes one, and, when
 * snapshots are read-only, one in 90 attempts a change under one.
 */
export function generateOp (rng: Rng, ref: Side, snaps?: SnapView, i = 0): Op {
  const entries = listTree(ref.root)
  const ofType = (type: EntryType): string[] => entries.filter(x => x.type === type).map(x => x.path)
  const files = ofType('file')
  const dirs = ofType('dir')
  const links = ofType('link')
  const parents = ['', ...dirs.filter(d => d.split('/').length < MAX_PARENT_DEPTH)]
  const randomPath = (): string => {
    const depth = rng.weighted([[1, 5], [2, 3], [3, 2]] as const)
    return Array.from({ length: depth }, () => rng.pick(NAMES)).join('/')
  }
  const childPath = (): string => child(rng.pick(parents), rng.pick(NAMES))
  const anyPath = (): string => {
    const r = rng.unit()
    if (r < 0.55 && entries.length > 0) return rng.pick(entries).path
    return r < 0.85 ? childPath() : randomPath()
  }
  const prefer = (list: string[], p: number): string =>
    list.length > 0 && rng.chance(p) ? rng.pick(list) : anyPath()
  const filePath = (): string => (links.length > 0 && rng.chance(0.1) ? rng.pick(links) : prefer(files, 0.75))
  const freshPath = (): string => (rng.chance(0.75) ? childPath() : anyPath())
  const data = (): { fill: Fill; seed: number } => ({
    fill: rng.weighted([['rand', 6], ['zero', 2], ['byte', 2]] as const),
    seed: rng.next()
  })

  const open: number[] = []
  const free: number[] = []
  for (const [i, s] of ref.slots.entries()) (s ? open : free).push(i)
  const openPaths = open.map(i => ref.slots[i]!.path)
  const slotSize = (slot: number): number => {
    const s = ref.slots[slot]
    return s ? fs.fstatSync(s.fd).size : 0
  }

  // libfuse 2's path-based API keeps a file that is unlinked while open under a hidden name in
  // its directory, and loses track of it when that directory is removed (the descriptor then
  // answers ENOENT without the daemon being asked). While such a file is open, no directory is
  // removed: neither by rmdir nor by renaming a directory over it. The inode-based native
  // transport lifts this.
  const unlinkedOpen = open.some(i => fs.fstatSync(ref.slots[i]!.fd).nlink === 0)
  // For the same reason the kernel caches the data and size of a file per name: a descriptor held
  // open on one name does not see writes made through another (its cached pages and its O_APPEND
  // position go stale). While a descriptor is open no hard link is made, and no descriptor is
  // opened on a file that has several names.
  const linked = (path: string): boolean => {
    try {
      return fs.statSync(full(ref.root, path)).nlink > 1
    } catch {
      return false
    }
  }

  type Kind = Op['kind']
  const table: [Kind, number][] = [
    ['write', 14], ['truncate', 6], ['read', 6], ['rename', 9], ['unlink', 6],
    ['mkdir', 7], ['chmod', 4], ['symlink', 4], ['readlink', 2], ['fsync', 3], ['stat', 2]
  ]
  if (!unlinkedOpen) table.push(['rmdir', 5])
  if (open.length === 0) table.push(['link', 5])
  if (free.length > 0) table.push(['open', 5])
  if (open.length > 0) {
    table.push(['fdwrite', 8], ['fdread', 5], ['fdtruncate', 3], ['fdsync', 2], ['fdstat', 2], ['close', 4])
  }
  if (snaps) {
    if (snaps.live.length < MAX_SNAPSHOTS) table.push(['snapshot', 4])
    if (snaps.live.length > 0) table.push(['delete-snapshot', 1.5])
    if (snaps.live.length > 0 && snaps.readOnly) table.push(['snapwrite', 1])
  }
  const kind = rng.weighted(table)
  switch (kind) {
    case 'write': {
      const path = filePath()
      const len = pickLen(rng)
      return { kind, path, off: pickOffset(rng, sizeOf(full(ref.root, path)), len), len, ...data() }
    }
    case 'truncate': {
      const path = filePath()
      return { kind, path, size: pickSize(rng, sizeOf(full(ref.root, path))) }
    }
    case 'read': {
      const path = filePath()
      return { kind, path, off: rng.below(sizeOf(full(ref.root, path)) + 8192), len: pickLen(rng) }
    }
    case 'rename': {
      const from = rng.chance(0.1) ? prefer(openPaths, 1) : prefer(entries.map(x => x.path), 0.8)
      if (dirs.includes(from) && rng.chance(0.15)) {
        return { kind, from, to: child(rng.chance(0.5) ? from : child(from, rng.pick(NAMES)), rng.pick(NAMES)) }
      }
      const to = rng.chance(0.5) ? anyPath() : freshPath()
      if (unlinkedOpen && dirs.includes(to)) return { kind: 'stat', path: to }
      return { kind, from, to }
    }
    case 'link':
      return { kind, from: rng.chance(0.15) ? anyPath() : filePath(), to: freshPath() }
    case 'unlink': {
      const r = rng.unit()
      const path =
        r < 0.2 ? prefer(openPaths, 1) : r < 0.7 ? prefer([...files, ...links], 1) : r < 0.85 ? prefer(dirs, 1) : anyPath()
      return { kind, path }
    }
    case 'mkdir':
      return { kind, path: freshPath(), mode: rng.pick(DIR_MODES) }
    case 'rmdir':
      return { kind, path: prefer(dirs, 0.7) }
    case 'chmod':
      return { kind, path: anyPath(), mode: rng.pick(dirs.length > 0 && rng.chance(0.3) ? DIR_MODES : FILE_MODES) }
    case 'symlink': {
      // Targets only point down from the link's own directory, so that no link, wherever a
      // rename takes it, can lead out of the tree.
      const target = rng.weighted([[rng.pick(NAMES), 4], [`${rng.pick(NAMES)}/${rng.pick(NAMES)}`, 2], ['.', 1], ['missing', 1]] as const)
      return { kind, path: freshPath(), target }
    }
    case 'readlink':
      return { kind, path: prefer(links, 0.6) }
    case 'fsync':
    case 'stat':
      return { kind, path: anyPath() }
    case 'open': {
      const path = rng.chance(0.8) ? filePath() : anyPath()
      if (linked(path)) return { kind: 'stat', path }
      return { kind, slot: rng.pick(free), path, flags: rng.pick(FLAG_NAMES) }
    }
    case 'fdwrite': {
      const slot = rng.pick(open)
      const len = pickLen(rng)
      return { kind, slot, off: pickOffset(rng, slotSize(slot), len), len, ...data() }
    }
    case 'fdread': {
      const slot = rng.pick(open)
      return { kind, slot, off: rng.below(slotSize(slot) + 8192), len: pickLen(rng) }
    }
    case 'fdtruncate': {
      const slot = rng.pick(open)
      return { kind, slot, size: pickSize(rng, slotSize(slot)) }
    }
    case 'fdsync':
    case 'fdstat':
    case 'close':
      return { kind, slot: rng.pick(open) }
    case 'snapshot': {
      const name = snaps!.gone.length > 0 && rng.chance(0.2) ? rng.pick(snaps!.gone) : `${rng.pick(SNAPSHOT_PREFIXES)}${i + 1}`
      return { kind, name }
    }
    case 'delete-snapshot':
      return { kind, name: rng.pick(snaps!.live) }
    case 'snapwrite':
      return snapWriteOp(rng, snaps!, anyPath)
  }
}

/** A write attempt under one of the live snapshots, at a path that suits it (when there is one). */
function snapWriteOp (rng: Rng, snaps: SnapView, anyPath: () => string): SnapshotOp {
  const action = rng.pick(SNAP_WRITE_NAMES)
  const name = rng.pick(snaps.live)
  const inside = [
    { path: name, type: 'dir' as EntryType },
    ...listTree(`${snaps.dir}/${name}`).map(x => ({ ...x, path: `${name}/${x.path}` }))
  ]
  const need = SNAP_WRITES[action]
  const fits = inside.filter(({ type }) =>
    need === 'file' ? type === 'file'
      : need === 'nolink' ? type !== 'link'
        : need === 'nodir' ? type !== 'dir'
          : need === 'dir' || need === 'parent' ? type === 'dir'
            : true)
  const at = need === 'parent' && rng.chance(0.15) ? '' : fits.length > 0 ? rng.pick(fits).path : name
  return { kind: 'snapwrite', action, at, source: action === 'rename-in' ? anyPath() : '' }
}

/** Lets the event loop run between steps: the daemon under test may be a child process whose
 * output pipes this process must keep draining. */
function yieldToLoop (): Promise<void> {
  return new Promise(resolve => setImmediate(resolve))
}

export interface RunOptions {
  /** Compare the whole trees after every this many operations, and at the end. */
  fullEvery: number
}

/** The operations run (up to the one that showed a mismatch), whether each succeeded on the
 * expected side, and the mismatch, if any. */
export interface RunResult {
  ops: Op[]
  okOnExpected: boolean[]
  mismatch: Mismatch | null
}

/**
 * Runs `count` operations, each given by `next`, on both sides, comparing after every
 * operation, and stops at the first mismatch. With `snapshots` (how the actual side takes
 * them), the reference's snapshots are copies in a directory next to `expectedRoot`, removed at
 * the end, and whenever the trees are compared whole, so is one snapshot in turn (every one at
 * the end).
 */
async function drive (
  expectedRoot: string,
  actualRoot: string,
  count: number,
  next: (expected: Side, i: number, snaps: SnapView | undefined) => Op,
  opts: RunOptions,
  snapshots: Snapshotter | undefined
): Promise<RunResult> {
  const expected = openSide(expectedRoot)
  const actual = openSide(actualRoot)
  const snaps: Snaps | null = snapshots
    ? { ref: copySnapshots(expectedRoot, fs.mkdtempSync(`${expectedRoot}.snapshots-`)), actual: snapshots, live: [], gone: [] }
    : null
  const view = (): SnapView | undefined =>
    snaps ? { dir: snaps.ref.dir, live: snaps.live, gone: snaps.gone, readOnly: snaps.actual.readOnly } : undefined
  const result: RunResult = { ops: [], okOnExpected: [], mismatch: null }
  const found = (d: Diff, i: number): RunResult => {
    result.mismatch = { ...d, step: i, op: i < 0 ? '(none)' : formatOp(result.ops[i]!) }
    return result
  }
  const whole = (names: (live: readonly string[]) => readonly string[]): Diff | null => {
    const dt = compareTrees(expectedRoot, actualRoot)
    if (dt) return dt
    return snaps ? compareSnapshots(snaps, names(snaps.live)) : null
  }
  try {
    for (let i = 0; i < count; i++) {
      const op = next(expected, i, view())
      result.ops.push(op)
      const { ok, diff } = await step(expected, actual, op, snaps, i)
      result.okOnExpected.push(ok)
      if (diff) return found(diff, i)
      if ((i + 1) % opts.fullEvery === 0) {
        const dt = whole(live => inTurn(live, (i + 1) / opts.fullEvery))
        if (dt) return found({ ...dt, what: `whole tree: ${dt.what}` }, i)
      }
      await yieldToLoop()
    }
    const dt = whole(live => live)
    return dt ? found({ ...dt, what: `whole tree at the end: ${dt.what}` }, count - 1) : result
  } finally {
    closeSide(expected)
    closeSide(actual)
    if (snaps) fs.rmSync(snaps.ref.dir, { recursive: true, force: true })
  }
}

/** Draws and runs `steps` random operations from `seed` on both directories; with `snapshots`,
 * snapshot operations too. */
export function runModel (
  expectedRoot: string,
  actualRoot: string,
  opts: RunOptions & { seed: number; steps: number; snapshots?: Snapshotter }
): Promise<RunResult> {
  const rng = new Rng(opts.seed)
  return drive(expectedRoot, actualRoot, opts.steps, (expected, i, snaps) => generateOp(rng, expected, snaps, i), opts, opts.snapshots)
}

/** Runs a fixed list of operations on both directories (snapshot operations are skipped
 * without `snapshots`). */
export function replay (ops: readonly Op[], expectedRoot: string, actualRoot: string, opts: RunOptions, snapshots?: Snapshotter): Promise<RunResult> {
  return drive(expectedRoot, actualRoot, ops.length, (_, i) => ops[i]!, opts, snapshots)
}

/** Operations that change nothing on a correct file system (but may on the one under test). */
const READS: ReadonlySet<Op['kind']> = new Set(['read', 'stat', 'readlink', 'fsync', 'fdread', 'fdstat', 'fdsync', 'snapwrite'])

export interface ShrinkResult {
  /** The shortest failing list found (the list given, cut after the failing operation, when the
   * failure did not happen again). */
  ops: Op[]
  /** The mismatch that list shows, or null when the failure did not happen again. */
  mismatch: Mismatch | null
  replays: number
}

/**
 * Reduces a failing list of operations. Each candidate list is replayed on a fresh pair from
 * `makeFreshPair`, and kept if some mismatch still shows, cut after the operation where it
 * shows. Two cheap guesses come first: the list without the operations that failed on the
 * expected side (they changed nothing there), then without the reads. Then, delta-debugging style, it drops
 * chunks of half the list, a quarter, and so on down to single operations. Each replay needs a
 * fresh pair, so at most `maxReplays` are run.
 */
export async function shrink (
  ops: readonly Op[],
  failedAt: number,
  makeFreshPair: () => Promise<Pair>,
  opts: RunOptions & { maxReplays: number }
): Promise<ShrinkResult> {
  let replays = 0
  const attempt = async (list: readonly Op[]): Promise<RunResult> => {
    replays++
    const pair = await makeFreshPair()
    try {
      return await replay(list, pair.expected, pair.actual, opts, pair.snapshots)
    } finally {
      await pair.dispose()
    }
  }
  let best = await attempt(ops.slice(0, failedAt + 1))
  if (!best.mismatch) return { ops: best.ops, mismatch: null, replays }
  const tryWithout = async (drop: (op: Op, i: number) => boolean): Promise<boolean> => {
    const candidate = best.ops.filter((op, i) => !drop(op, i))
    if (candidate.length === best.ops.length || replays >= opts.maxReplays) return false
    const r = await attempt(candidate)
    if (r.mismatch) best = r
    return r.mismatch !== null
  }
  // The guesses keep the operation that showed the mismatch.
  const { okOnExpected } = best
  const last = best.ops.length - 1
  await tryWithout((_, i) => i !== last && !okOnExpected[i])
  const lastNow = best.ops.length - 1
  await tryWithout((op, i) => i !== lastNow && READS.has(op.kind))
  let chunk = Math.ceil(best.ops.length / 2)
  while (chunk >= 1 && replays < opts.maxReplays) {
    let removed = false
    for (let i = 0; i < best.ops.length && replays < opts.maxReplays; ) {
      const from = i
      if (await tryWithout((_, j) => j >= from && j < from + chunk)) removed = true
      else i += chunk
    }
    chunk = removed ? Math.min(chunk, Math.ceil(best.ops.length / 2)) : Math.floor(chunk / 2)
  }
  return { ops: best.ops, mismatch: best.mismatch, replays }
}
