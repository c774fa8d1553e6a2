/**
 * `npm run bench`: measures snapfs on each FUSE transport (the project's own, native, and
 * fuse-native) against the storage-less daemon on the same transport (scripts/null-fs-native.ts,
 * scripts/null-fs.ts: the ceiling of each stack) and tmpfs, in one run on one machine, and
 * prints the medians as a table; then measures snapfs's snapshots (scripts/bench-snapshots.ts)
 * and prints a second table.
 *
 * Each run mounts every target fresh, runs the workloads in child processes
 * (scripts/bench-worker.ts, or tar) and unmounts it again, whatever happens. Needs root: it
 * mounts tmpfs and FUSE file systems and drops the kernel caches.
 */
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { cpus, release } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Command, InvalidArgumentError, Option } from 'commander'
import { CREATES_PER_STATE, snapshotSection, type SnapshotHost, type SnapshotResults, type SnapshotSettings } from './bench-snapshots.js'
import type { Job, JobResult } from './bench-worker.js'

/** snapfs and the storage-less daemon on each transport (native, and fuse-native: "-fn"), and tmpfs. */
const TARGETS = ['snapfs', 'snapfs-fn', 'null-native', 'null', 'tmpfs'] as const
type Target = typeof TARGETS[number]
const TARGET_TITLES: Record<Target, string> = {
  snapfs: 'snapfs', 'snapfs-fn': 'snapfs fuse-native', 'null-native': 'null-fs native', null: 'null-fs fuse-native', tmpfs: 'tmpfs'
}
/** The ratio columns, each shown when both its targets are measured: first / second. */
const RATIOS: Array<[Target, Target]> = [
  ['snapfs', 'snapfs-fn'], ['snapfs', 'null-native'], ['snapfs-fn', 'null'], ['null-native', 'null'], ['snapfs', 'tmpfs']
]
/** `--only` takes targets and this name of the snapshot section. */
const SNAPSHOTS = 'snapshots'
const SELECTABLE = [...TARGETS, SNAPSHOTS] as const
type Selectable = typeof SELECTABLE[number]

const HERE = dirname(fileURLToPath(import.meta.url))
const REPO = resolve(HERE, '..', '..')
const WORKER = join(HERE, 'bench-worker.js')
const NULL_FS = join(HERE, 'null-fs.js')
const NULL_FS_NATIVE = join(HERE, 'null-fs-native.js')
const SNAPFS_CLI = join(REPO, 'dist', 'src', 'cli', 'snapfs.js')
const DEFAULT_SCRATCH_PARENT = '/var/tmp'

const RANDOM_FILE_MIB = 256
// The untarred tree: 6 x 6 leaf directories of 100 files and a symlink each, 43 directories.
const TREE_FANOUT = 6
const TREE_FILES_PER_DIR = 100
const TREE_SEED = 20240601
const READY_TIMEOUT_MS = 30_000
const SNAPFS_EXIT_TIMEOUT_MS = 30_000
const NULL_EXIT_TIMEOUT_MS = 10_000
const WORKLOAD_TIMEOUT_MS = 10 * 60_000
const COMMAND_TIMEOUT_MS = 60_000

interface Settings {
  runs: number
  sizeMib: number
  files: number
  randomOps: number
  /** The targets of the workload table; empty for the snapshot section alone. */
  targets: Target[]
  /** The snapshot section's settings; undefined when it is not selected. */
  snapshots: SnapshotSettings | undefined
  json: string | undefined
  /** Where the scratch directory (mount points, stores, the tarball) is made. */
  scratchParent: string
}

type WorkloadKey = 'seqWrite' | 'seqRead' | 'randWrite' | 'randRead' | 'create' | 'stat' | 'delete' | 'untar'

interface Workload {
  key: WorkloadKey
  label: string
  unit: string
  /** True for rates; false for times, where smaller is better. */
  higherIsBetter: boolean
}

function workloads (s: Settings, treeFiles: number): Workload[] {
  const randomMib = Math.min(RANDOM_FILE_MIB, s.sizeMib)
  return [
    { key: 'seqWrite', label: `sequential write ${s.sizeMib} MiB + fsync`, unit: 'MB/s', higherIsBetter: true },
    { key: 'seqRead', label: `sequential read ${s.sizeMib} MiB, cold`, unit: 'MB/s', higherIsBetter: true },
    { key: 'randWrite', label: `random 4 KiB writes x${s.randomOps} in ${randomMib} MiB + fsync`, unit: 'IOPS', higherIsBetter: true },
    { key: 'randRead', label: `random 4 KiB reads x${s.randomOps}, cold`, unit: 'IOPS', higherIsBetter: true },
    { key: 'create', label: `create ${s.files} files of 1 KiB`, unit: 'files/s', higherIsBetter: true },
    { key: 'stat', label: `stat ${s.files} files, cold`, unit: 'stats/s', higherIsBetter: true },
    { key: 'delete', label: `delete ${s.files} files`, unit: 'files/s', higherIsBetter: true },
    { key: 'untar', label: `untar ${treeFiles} files in ${1 + TREE_FANOUT + TREE_FANOUT ** 2} dirs`, unit: 's', higherIsBetter: false }
  ]
}

type RunResults = Partial<Record<WorkloadKey, number>>

// ---- child processes ----------------------------------------------------------------------

let interrupted = false
/** Children doing measured work: killed on Ctrl-C so the clean-up can start at once. */
const workChildren = new Set<ChildProcess>()

function log (line: string): void {
  process.stderr.write(line + '\n')
}

function onSignal (signal: NodeJS.Signals): void {
  if (interrupted) {
    log(`bench: ${signal} again; still unmounting and removing what it made, please wait`)
    return
  }
  interrupted = true
  log(`bench: ${signal}; stopping, unmounting and cleaning up`)
  for (const child of workChildren) child.kill('SIGKILL')
}

function checkInterrupted (): void {
  if (interrupted) throw new Error('interrupted')
}

interface CommandResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs a command to its end; `work` marks measured work that Ctrl-C kills. */
function run (command: string, args: string[], work: boolean, timeoutMs = COMMAND_TIMEOUT_MS): Promise<CommandResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    if (work) workChildren.add(child)
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, timeoutMs)
    child.once('error', err => {
      clearTimeout(timer)
      workChildren.delete(child)
      reject(err)
    })
    child.once('close', (code, signal) => {
      clearTimeout(timer)
      workChildren.delete(child)
      resolvePromise({ code, signal, stdout, stderr })
    })
  })
}

/** The first lines of some output, indented, with a count of the rest. */
function excerpt (text: string, maxLines = 12): string {
  const lines = text.trim() === '' ? [] : text.trim().split('\n')
  const shown = lines.slice(0, maxLines).map(line => '\n    ' + line).join('')
  return lines.length > maxLines ? `${shown}\n    (${lines.length - maxLines} more lines)` : shown
}

function describe (command: string, args: string[], result: CommandResult): string {
  const how = result.signal !== null ? `killed by ${result.signal}` : `exit code ${String(result.code)}`
  return `${[command, ...args].join(' ')}: ${how}${excerpt(result.stderr)}`
}

/** Runs a command and fails unless it exits 0; returns its stdout. */
async function runOk (command: string, args: string[], work: boolean, timeoutMs?: number): Promise<string> {
  const result = await run(command, args, work, timeoutMs)
  if (result.code !== 0) throw new Error(describe(command, args, result))
  return result.stdout
}

/** Runs one bench-worker job. */
async function runJob (job: Job): Promise<JobResult> {
  checkInterrupted()
  const stdout = await runOk(process.execPath, [WORKER, JSON.stringify(job)], true, WORKLOAD_TIMEOUT_MS)
  checkInterrupted()
  return JSON.parse(stdout) as JobResult
}

function sleep (ms: number): Promise<void> {
  return new Promise(resolvePromise => setTimeout(resolvePromise, ms))
}

/** A long-running child (a FUSE daemon) in its own process group, so Ctrl-C reaches only us. */
class Daemon {
  readonly child: ChildProcess
  readonly exited: Promise<void>
  private stdoutText = ''
  private stderrTail = ''
  private exitStatus: string | undefined

  constructor (args: string[]) {
    this.child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    // Always drained: a full pipe would block the daemon.
    this.child.stdout?.on('data', (chunk: Buffer) => { this.stdoutText = (this.stdoutText + chunk.toString()).slice(-4096) })
    this.child.stderr?.on('data', (chunk: Buffer) => { this.stderrTail = (this.stderrTail + chunk.toString()).slice(-4096) })
    this.exited = new Promise(resolvePromise => {
      this.child.once('error', err => {
        this.exitStatus = err.message
        resolvePromise()
      })
      this.child.once('exit', (code, signal) => {
        this.exitStatus = signal !== null ? `killed by ${signal}` : `exit code ${String(code)}`
        resolvePromise()
      })
    })
  }

  get running (): boolean {
    return this.exitStatus === undefined
  }

  get stdout (): string {
    return this.stdoutText
  }

  describe (): string {
    return `${this.exitStatus ?? 'running'}${excerpt(this.stderrTail, 40)}`
  }

  /** Waits for the exit; true if it exited within `ms`. */
  async waitExit (ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<void>(resolvePromise => { timer = setTimeout(resolvePromise, ms) })
    await Promise.race([this.exited, timeout])
    clearTimeout(timer)
    return !this.running
  }

  async kill (): Promise<void> {
    if (!this.running) return
    this.child.kill('SIGKILL')
    await this.exited
  }
}

// ---- mounts -------------------------------------------------------------------------------

/** The file system type mounted at `dir`, from /proc/mounts, or undefined. */
async function mountType (dir: string): Promise<string | undefined> {
  const table = await readFile('/proc/mounts', 'utf8')
  for (const line of table.split('\n')) {
    const [, where, type] = line.split(' ')
    if (where !== undefined && where.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))) === dir) return type
  }
  return undefined
}

/** Waits until `ready()` holds; fails if the daemon exits, on Ctrl-C or after the timeout. */
async function waitReady (what: string, daemon: Daemon, ready: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS
  while (!(await ready())) {
    checkInterrupted()
    if (!daemon.running) throw new Error(`${what} exited before it was mounted: ${daemon.describe()}`)
    if (Date.now() > deadline) throw new Error(`${what} was not mounted after ${READY_TIMEOUT_MS / 1000} s`)
    await sleep(50)
  }
}

/** Lazily unmounts a FUSE mount if it is still there (after a daemon was killed, say). */
async function detachIfMounted (dir: string): Promise<void> {
  if (await mountType(dir) === undefined) return
  log(`bench: ${dir} still mounted; detaching it`)
  await run('fusermount', ['-uz', dir], false)
}

interface Mounted {
  dir: string
  /** Why the target's daemon is gone, if it died under the workloads. */
  death: () => string | undefined
  /** Unmounts, stops the daemon and removes what the target needed; never throws. */
  stop: () => Promise<void>
}

async function mountTmpfs (dir: string): Promise<Mounted> {
  await runOk('mount', ['-t', 'tmpfs', '-o', 'size=3g', 'none', dir], false)
  return {
    dir,
    death: () => undefined,
    stop: async () => {
      if ((await run('umount', [dir], false)).code !== 0) await run('umount', ['-l', dir], false)
    }
  }
}

/** Mounts a storage-less daemon (`script` takes the mount point, prints "ready"). */
async function mountNull (dir: string, script: string, title: string): Promise<Mounted> {
  const daemon = new Daemon([script, dir])
  const stop = async (): Promise<void> => {
    if (daemon.running) {
      daemon.child.kill('SIGTERM')
      if (!(await daemon.waitExit(NULL_EXIT_TIMEOUT_MS))) {
        log(`bench: ${title} did not exit ${NULL_EXIT_TIMEOUT_MS / 1000} s after SIGTERM; killing it`)
        await daemon.kill()
      }
    }
    await detachIfMounted(dir)
  }
  try {
    await waitReady(title, daemon, async () => daemon.stdout.includes('ready\n'))
  } catch (err) {
    await stop()
    throw err
  }
  return { dir, death: () => daemon.running ? undefined : daemon.describe(), stop }
}

/** Creates a snapfs store in a new directory; returns its block size. */
async function initSnapfs (store: string): Promise<number> {
  await mkdir(store)
  await runOk(process.execPath, [SNAPFS_CLI, 'init', store], false)
  const info = JSON.parse(await runOk(process.execPath, [SNAPFS_CLI, 'info', store, '--json'], false)) as { blockSize: number }
  return info.blockSize
}

/** Mounts an existing store; `stop` unmounts it and leaves the store. */
async function startSnapfs (dir: string, store: string, transport: 'native' | 'fuse-native' = 'native'): Promise<Mounted> {
  const daemon = new Daemon([SNAPFS_CLI, 'mount', store, dir, '--foreground', '--transport', transport])
  const stop = async (): Promise<void> => {
    if (daemon.running) {
      if (await mountType(dir) !== undefined) {
        const result = await run(process.execPath, [SNAPFS_CLI, 'umount', dir], false)
        if (result.code !== 0) log(`bench: ${describe('snapfs', ['umount', dir], result)}`)
      } else {
        daemon.child.kill('SIGTERM')
      }
    }
    if (!(await daemon.waitExit(SNAPFS_EXIT_TIMEOUT_MS))) {
      log(`bench: snapfs did not exit ${SNAPFS_EXIT_TIMEOUT_MS / 1000} s after umount; killing it`)
      await daemon.kill()
    }
    await detachIfMounted(dir)
  }
  try {
    await waitReady('snapfs', daemon, async () => await mountType(dir) === 'fuse.snapfs')
  } catch (err) {
    await stop()
    throw err
  }
  return { dir, death: () => daemon.running ? undefined : daemon.describe(), stop }
}

/** A fresh store, mounted; `stop` also removes the store. */
async function mountSnapfs (dir: string, store: string, transport: 'native' | 'fuse-native'): Promise<Mounted> {
  try {
    await initSnapfs(store)
    const mounted = await startSnapfs(dir, store, transport)
    return {
      ...mounted,
      stop: async () => {
        await mounted.stop()
        await rm(store, { recursive: true, force: true })
      }
    }
  } catch (err) {
    await rm(store, { recursive: true, force: true })
    throw err
  }
}

// ---- workloads ----------------------------------------------------------------------------

async function dropCaches (): Promise<void> {
  await runOk('sync', [], false)
  await writeFile('/proc/sys/vm/drop_caches', '3\n')
}

function rate (result: JobResult, perMb: boolean): number {
  return (perMb ? result.count / 1e6 : result.count) / result.seconds
}

async function timeUntar (tarball: string, dir: string): Promise<number> {
  checkInterrupted()
  // Read it once so tar finds it in the page cache, not on disk, on every target.
  await readFile(tarball)
  const start = process.hrtime.bigint()
  await runOk('tar', ['-xf', tarball, '-C', dir], true, WORKLOAD_TIMEOUT_MS)
  checkInterrupted()
  return Number(process.hrtime.bigint() - start) / 1e9
}

/** Every workload once on a freshly mounted target. */
async function runWorkloads (dir: string, s: Settings, runIndex: number, tarball: string, report: (key: WorkloadKey, value: number) => void): Promise<void> {
  const seqFile = join(dir, 'sequential.dat')
  const randomFile = join(dir, 'random.dat')
  const smallDir = join(dir, 'small')

  report('seqWrite', rate(await runJob({ kind: 'seq-write', file: seqFile, mib: s.sizeMib }), true))
  await dropCaches()
  const read = await runJob({ kind: 'seq-read', file: seqFile })
  if (read.count !== s.sizeMib * 1024 * 1024) throw new Error(`read ${read.count} bytes of ${seqFile}, wrote ${s.sizeMib} MiB`)
  report('seqRead', rate(read, true))

  await runJob({ kind: 'seq-write', file: randomFile, mib: Math.min(RANDOM_FILE_MIB, s.sizeMib) })
  report('randWrite', rate(await runJob({ kind: 'rand-write', file: randomFile, ops: s.randomOps, seed: 2 * runIndex }), false))
  await dropCaches()
  report('randRead', rate(await runJob({ kind: 'rand-read', file: randomFile, ops: s.randomOps, seed: 2 * runIndex + 1 }), false))

  report('create', rate(await runJob({ kind: 'create', dir: smallDir, files: s.files }), false))
  await dropCaches()
  report('stat', rate(await runJob({ kind: 'stat', dir: smallDir, files: s.files }), false))
  report('delete', rate(await runJob({ kind: 'delete', dir: smallDir, files: s.files }), false))

  report('untar', await timeUntar(tarball, dir))
}

/** Builds the tarball once, outside every mount; returns its number of regular files. */
async function buildTarball (scratch: string, tarball: string): Promise<number> {
  const tree = join(scratch, 'tree')
  const made = await runJob({ kind: 'make-tree', dir: tree, fanout: TREE_FANOUT, filesPerDir: TREE_FILES_PER_DIR, seed: TREE_SEED })
  await runOk('tar', ['-cf', tarball, '--sort=name', '--mtime=@1700000000', '--owner=0', '--group=0', '--numeric-owner', '-C', scratch, 'tree'], true)
  await rm(tree, { recursive: true, force: true })
  return made.count
}

// ---- results ------------------------------------------------------------------------------

function median (values: Array<number | undefined>): number | undefined {
  const sorted = values.filter((v): v is number => v !== undefined).sort((a, b) => a - b)
  if (sorted.length === 0) return undefined
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

function formatValue (value: number | undefined, unit: string): string {
  if (value === undefined) return '-'
  if (unit === 's' || unit === 'ratio') return value.toFixed(2)
  if (value >= 100) return Math.round(value).toLocaleString('en-US')
  return value.toFixed(1)
}

function formatRatio (a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || b === 0) return '-'
  const ratio = a / b
  if (ratio >= 100) return ratio.toFixed(0)
  if (ratio >= 10) return ratio.toFixed(1)
  return ratio >= 0.1 ? ratio.toFixed(2) : ratio.toPrecision(2)
}

function table (rows: string[][]): string {
  const widths = rows[0].map((_, col) => Math.max(...rows.map(row => row[col].length)))
  return rows.map(row => row.map((cell, col) => col === 0 ? cell.padEnd(widths[col]) : cell.padStart(widths[col])).join('  ')).join('\n')
}

function render (list: Workload[], medians: Map<WorkloadKey, Partial<Record<Target, number>>>, s: Settings): string {
  const ratios = RATIOS.filter(([a, b]) => s.targets.includes(a) && s.targets.includes(b))
  const header = ['workload', 'unit', ...s.targets.map(target => TARGET_TITLES[target]), ...ratios.map(([a, b]) => `${a}/${b}`)]
  const rows = list.map(w => {
    const m = medians.get(w.key) ?? {}
    return [
      w.label, w.unit,
      ...s.targets.map(target => formatValue(m[target], w.unit)),
      ...ratios.map(([a, b]) => formatRatio(m[a], m[b]))
    ]
  })
  return [
    `medians of ${s.runs} run${s.runs === 1 ? '' : 's'}; ${cpus().length} CPUs, Linux ${release()}, Node ${process.version}`,
    table([header, ...rows]),
    ...(ratios.length > 0 ? ['ratios a/b divide the value of a by that of b: above 1 is better for rates, worse for times (s)'] : [])
  ].join('\n')
}

function renderSnapshots (results: SnapshotResults): string {
  const header = ['snapshot workload', 'unit', 'median', 'min', 'max', 'target']
  const rows = results.rows.map(row => [
    row.label, row.unit,
    formatValue(median(row.samples), row.unit),
    formatValue(row.samples.length === 0 ? undefined : Math.min(...row.samples), row.unit),
    formatValue(row.samples.length === 0 ? undefined : Math.max(...row.samples), row.unit),
    row.target
  ])
  return [`snapshots on snapfs: medians; ${cpus().length} CPUs, Linux ${release()}, Node ${process.version}`, table([header, ...rows]), ...results.notes].join('\n')
}

// ---- main ---------------------------------------------------------------------------------

function positiveInteger (text: string): number {
  const value = Number(text)
  if (!Number.isInteger(value) || value < 1) throw new InvalidArgumentError('expected a positive integer')
  return value
}

function pair (text: string): [number, number] {
  const values = text.split(',').map(item => Number(item.trim()))
  if (values.length !== 2 || !values.every(value => Number.isInteger(value) && value >= 1) || values[0] >= values[1]) {
    throw new InvalidArgumentError('expected two positive integers, the smaller first, like 1024,8192')
  }
  return [values[0], values[1]]
}

function selection (text: string): Selectable[] {
  const names = text.split(',').map(name => name.trim()).filter(name => name !== '')
  for (const name of names) {
    if (!(SELECTABLE as readonly string[]).includes(name)) throw new InvalidArgumentError(`unknown target ${name} (one of ${SELECTABLE.join(', ')})`)
  }
  if (names.length === 0) throw new InvalidArgumentError('expected at least one target')
  return SELECTABLE.filter(item => names.includes(item))
}

function parseSettings (): Settings {
  const program = new Command()
    .name('bench')
    .description('Benchmark snapfs against the storage-less daemon on fuse-native and on the native transport and tmpfs, then its snapshots.')
    .option('--runs <n>', 'runs per target and of the snapshot measurements; the tables show medians (default 3)', positiveInteger)
    .option('--size-mib <n>', 'size of the sequential file in MiB (default 1024)', positiveInteger)
    .option('--files <n>', 'number of small files to create, stat and delete (default 10000)', positiveInteger)
    .option('--random-ops <n>', 'number of random 4 KiB writes and reads (default 20000)', positiveInteger)
    .option('--snapshot-mib <small,large>', 'snapshot creates on this much data in MiB; the small size is also the file read and overwritten (default 1024,8192)', pair)
    .option('--snapshot-files <few,many>', 'snapshot creates on this many small files (default 100,100000)', pair)
    .addOption(new Option('--overwrite-align <where>', 'the 10 % overwrite writes 64 KiB at random block-aligned offsets, or 4 KiB-aligned ones (each then touches two blocks)').choices(['block', 'page']).default('block'))
    .option('--quick', 'small and fast: 64 MiB, 1000 files, 5000 random ops, snapshots on 256,2048 MiB and 100,20000 files, 1 run')
    .option('--only <names>', `comma-separated targets among ${TARGETS.join(',')}, and ${SNAPSHOTS} for the snapshot section`, selection)
    .option('--json <file>', 'also write every run and the medians to this JSON file')
    .option('--scratch <dir>', `make the scratch directory (mount points, stores, the tarball) in this directory (default ${DEFAULT_SCRATCH_PARENT})`)
    .parse()
  const o = program.opts<{
    runs?: number
    sizeMib?: number
    files?: number
    randomOps?: number
    snapshotMib?: [number, number]
    snapshotFiles?: [number, number]
    overwriteAlign: 'block' | 'page'
    quick?: boolean
    only?: Selectable[]
    json?: string
    scratch?: string
  }>()
  const quick = o.quick === true
  const only: readonly Selectable[] = o.only ?? SELECTABLE
  const runs = o.runs ?? (quick ? 1 : 3)
  return {
    runs,
    sizeMib: o.sizeMib ?? (quick ? 64 : 1024),
    files: o.files ?? (quick ? 1000 : 10000),
    randomOps: o.randomOps ?? (quick ? 5000 : 20000),
    targets: TARGETS.filter(target => only.includes(target)),
    snapshots: only.includes(SNAPSHOTS)
      ? { runs, volumeMib: o.snapshotMib ?? (quick ? [256, 2048] : [1024, 8192]), volumeFiles: o.snapshotFiles ?? (quick ? [100, 20000] : [100, 100000]), overwriteAlign: o.overwriteAlign }
      : undefined,
    json: o.json,
    scratchParent: o.scratch ?? DEFAULT_SCRATCH_PARENT
  }
}

function checkPrerequisites (s: Settings): void {
  if (process.getuid?.() !== 0) throw new Error('run as root: the benchmark mounts file systems and drops caches')
  const snapfs = s.targets.includes('snapfs') || s.snapshots !== undefined
  const needs: Array<[string, boolean]> = [
    [WORKER, true], [NULL_FS, s.targets.includes('null')], [NULL_FS_NATIVE, s.targets.includes('null-native')], [SNAPFS_CLI, snapfs]
  ]
  for (const [file, needed] of needs) {
    if (needed && !existsSync(file)) throw new Error(`${file} is missing; build first (npm run build)`)
  }
}

async function mountTarget (target: Target, scratch: string, runIndex: number): Promise<Mounted> {
  const dir = join(scratch, `mnt-${target}`)
  switch (target) {
    case 'tmpfs': return await mountTmpfs(dir)
    case 'null': return await mountNull(dir, NULL_FS, TARGET_TITLES.null)
    case 'null-native': return await mountNull(dir, NULL_FS_NATIVE, TARGET_TITLES['null-native'])
    case 'snapfs': return await mountSnapfs(dir, join(scratch, `store-${runIndex}`), 'native')
    case 'snapfs-fn': return await mountSnapfs(dir, join(scratch, `store-${runIndex}`), 'fuse-native')
  }
}

interface Section {
  /** The printed table. */
  text: string
  /** Its part of the JSON output, and what it adds to the settings there. */
  json: Record<string, unknown>
  settings: Record<string, unknown>
  failures: number
}

/** Runs the workloads on every target `s.runs` times. */
async function workloadSection (s: Settings, scratch: string): Promise<Section> {
  for (const target of s.targets) await mkdir(join(scratch, `mnt-${target}`))
  const tarball = join(scratch, 'tree.tar')
  log('bench: building the tarball')
  const treeFiles = await buildTarball(scratch, tarball)
  const list = workloads(s, treeFiles)
  const runs = new Map<Target, RunResults[]>(s.targets.map(target => [target, []]))
  let failures = 0

  for (let runIndex = 1; runIndex <= s.runs; runIndex++) {
    for (const target of s.targets) {
      checkInterrupted()
      const prefix = `bench: run ${runIndex}/${s.runs}: ${TARGET_TITLES[target]}`
      const results: RunResults = {}
      runs.get(target)?.push(results)
      try {
        log(`${prefix}: mounting`)
        const mounted = await mountTarget(target, scratch, runIndex)
        try {
          await runWorkloads(mounted.dir, s, runIndex, tarball, (key, value) => {
            results[key] = value
            const w = list.find(item => item.key === key)
            log(`${prefix}: ${w?.label ?? key}: ${formatValue(value, w?.unit ?? '')} ${w?.unit ?? ''}`)
          })
        } catch (err) {
          const death = mounted.death()
          throw death === undefined ? err : new Error(`${err instanceof Error ? err.message : String(err)}\n  the daemon died: ${death}`)
        } finally {
          await mounted.stop()
        }
      } catch (err) {
        if (interrupted) throw err
        failures++
        log(`${prefix}: FAILED: ${err instanceof Error ? err.message : String(err)}`)
      }
    }
  }

  const medians = new Map<WorkloadKey, Partial<Record<Target, number>>>()
  for (const w of list) {
    const row: Partial<Record<Target, number>> = {}
    for (const target of s.targets) row[target] = median((runs.get(target) ?? []).map(r => r[w.key]))
    medians.set(w.key, row)
  }
  return {
    text: render(list, medians, s),
    settings: { untarFiles: treeFiles },
    json: {
      workloads: list.map(w => ({
        ...w,
        runs: Object.fromEntries(s.targets.map(target => [target, (runs.get(target) ?? []).map(r => r[w.key])])),
        medians: medians.get(w.key)
      }))
    },
    failures
  }
}

/** Runs the snapshot section on snapfs. */
async function snapshotsOnSnapfs (snapshots: SnapshotSettings, scratch: string): Promise<Section> {
  const host: SnapshotHost = {
    log,
    checkInterrupted,
    interrupted: () => interrupted,
    runJob,
    runOk,
    dropCaches,
    initStore: initSnapfs,
    mount: async (dir, store) => await startSnapfs(dir, store)
  }
  const results = await snapshotSection(host, snapshots, scratch)
  return {
    text: renderSnapshots(results),
    settings: { snapshots: { ...snapshots, createsPerState: CREATES_PER_STATE } },
    json: {
      snapshots: {
        blockSize: results.blockSize,
        rows: results.rows.map(row => ({ ...row, median: median(row.samples) })),
        reportedCreateMs: results.reportedCreateMs,
        deletes: results.deletes
      }
    },
    failures: results.failures
  }
}

/** Runs the selected sections, printing each table as it is done; returns how many runs failed. */
async function benchmark (s: Settings, scratch: string): Promise<number> {
  const settings: Record<string, unknown> = { runs: s.runs, sizeMib: s.sizeMib, files: s.files, randomOps: s.randomOps, targets: s.targets }
  const out: Record<string, unknown> = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, kernel: release(), node: process.version },
    settings
  }
  let failures = 0
  let printed = false
  const finish = (section: Section): void => {
    failures += section.failures
    Object.assign(settings, section.settings)
    Object.assign(out, section.json)
    process.stdout.write((printed ? '\n' : '') + section.text + '\n')
    printed = true
  }
  if (s.targets.length > 0) finish(await workloadSection(s, scratch))
  if (s.snapshots !== undefined) finish(await snapshotsOnSnapfs(s.snapshots, scratch))
  if (s.json !== undefined) {
    await writeFile(s.json, JSON.stringify(out, null, 2) + '\n')
    log(`bench: results written to ${s.json}`)
  }
  return failures
}

/** Removes the scratch directory, unless something is still mounted inside it. */
async function removeScratch (scratch: string): Promise<void> {
  const table = await readFile('/proc/mounts', 'utf8')
  if (table.split('\n').some(line => line.split(' ')[1]?.startsWith(scratch + '/') === true)) {
    log(`bench: something is still mounted under ${scratch}; leaving it in place`)
    return
  }
  await rm(scratch, { recursive: true, force: true })
}

async function main (): Promise<number> {
  const s = parseSettings()
  checkPrerequisites(s)
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  await mkdir(s.scratchParent, { recursive: true })
  const scratch = await mkdtemp(join(s.scratchParent, 'snapfs-bench-'))
  try {
    const failures = await benchmark(s, scratch)
    if (failures > 0) log(`bench: ${failures} run${failures === 1 ? '' : 's'} failed; their cells are missing`)
    return failures > 0 ? 1 : 0
  } finally {
    await removeScratch(scratch)
  }
}

main().then(code => { process.exitCode = code }, (err: unknown) => {
  log(`bench: ${interrupted ? 'interrupted' : err instanceof Error ? err.message : String(err)}`)
  process.exitCode = interrupted ? 130 : 1
})
