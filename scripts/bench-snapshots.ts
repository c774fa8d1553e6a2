/**
 * The snapshot section of `npm run bench`, on snapfs only: how long a snapshot takes to create
 * with nothing dirty on a small and a large volume, how much a snapshot costs in store space
 * after a partial overwrite, how fast a snapshot reads compared with the live file, how long a
 * rollback of many new files takes and how long the mount stops answering meanwhile, and how long
 * deleting a snapshot takes for the blocks it owns.
 *
 * scripts/bench.ts supplies the mounts and runs the file work in bench-worker.js; the snapshots
 * are made through the package API, timed here around each call.
 */
import { mkdir, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import type { Job, JobResult } from './bench-worker.js'

/** The package API, loaded when the section runs so the other sections never load snapfs. */
type Api = typeof import('../src/index.js')

/** Snapshots created per volume state; the table shows the median. */
export const CREATES_PER_STATE = 7
/** The partial overwrite: this share of the file, in writes of this size at page-aligned offsets. */
const OVERWRITE_FRACTION = 0.1
const OVERWRITE_CHUNK = 64 * 1024
/** The data volume is written in this many files, and grown to the large size in as many more. */
const VOLUME_FILES = 4
const MIB = 1024 * 1024
const MOUNT_DIR = 'mnt-snapshots'
/** The lookup probe during a rollback starts this long before it, and runs this long in all. */
const PROBE_LEAD_MS = 300
const PROBE_MS = 20_000

export interface SnapshotSettings {
  /** Rounds of the read, overwrite and delete measurements, each on a fresh store. */
  runs: number
  /** The small and the large data volume in MiB; the small one is also the read and overwrite file. */
  volumeMib: [number, number]
  /** The few and the many small files. */
  volumeFiles: [number, number]
  /** Where the overwrite's writes start: on block boundaries, or on any 4 KiB page. */
  overwriteAlign: 'block' | 'page'
}

/** What the section needs from scripts/bench.ts. */
export interface SnapshotHost {
  log: (line: string) => void
  /** Throws once Ctrl-C was pressed. */
  checkInterrupted: () => void
  interrupted: () => boolean
  runJob: (job: Job) => Promise<JobResult>
  runOk: (command: string, args: string[], work: boolean) => Promise<string>
  dropCaches: () => Promise<void>
  /** Creates a store; returns its block size. */
  initStore: (store: string) => Promise<number>
  /** Mounts an existing store; `stop` unmounts it and leaves the store in place. */
  mount: (dir: string, store: string) => Promise<{ dir: string, death: () => string | undefined, stop: () => Promise<void> }>
}

type DeleteKey = 'deleteNone' | 'deleteChanged' | 'deleteFile'
export type SnapshotKey =
  | 'createSmall' | 'createLarge' | 'createFew' | 'createMany'
  | 'changed' | 'touched' | 'written' | 'growth' | 'growthPerChanged' | 'growthPerTouched'
  | 'readLive' | 'readSnapshot' | 'readRatio'
  | 'rollbackSwitch' | 'rollbackDone' | 'rollbackStall'
  | DeleteKey

export interface SnapshotRow {
  key: SnapshotKey
  label: string
  unit: string
  /** The goal for the median, as printed; empty when the row only explains another. */
  target: string
  /** Every measurement: one per create for the create rows, one per run for the others. */
  samples: number[]
}

/** One delete: its time and what it freed. */
interface DeleteSample {
  ms: number
  freed: number
  used: number
}

/** Everything measured, for the JSON output. */
export interface SnapshotResults {
  blockSize: number
  rows: SnapshotRow[]
  /** The snapshot API's own `elapsedMs` for each create, next to the `create*` rows' samples. */
  reportedCreateMs: Partial<Record<SnapshotKey, number[]>>
  deletes: Partial<Record<DeleteKey, DeleteSample[]>>
  /** How it was measured, for under the table. */
  notes: string[]
  failures: number
}

function msSince (start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e6
}

/** The sizes of `count` files that add up to `mib` MiB. */
function fileSizes (mib: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => Math.floor(mib / count) + (i < mib % count ? 1 : 0)).filter(size => size > 0)
}

/** The allocated size of the store's data file (what `du` counts). */
async function storeBytes (store: string): Promise<number> {
  return (await stat(join(store, 'data.mdb'))).blocks * 512
}

class Section {
  readonly rows = new Map<SnapshotKey, SnapshotRow>()
  readonly reportedCreateMs: Partial<Record<SnapshotKey, number[]>> = {}
  readonly deletes: Partial<Record<DeleteKey, DeleteSample[]>> = {}
  blockSize = 0
  failures = 0
  private storeCount = 0

  constructor (private readonly api: Api, private readonly host: SnapshotHost, private readonly s: SnapshotSettings, private readonly scratch: string) {
    const [small, large] = s.volumeMib
    const [few, many] = s.volumeFiles
    const add = (key: SnapshotKey, label: string, unit: string, target = ''): void => {
      this.rows.set(key, { key, label, unit, target, samples: [] })
    }
    add('createSmall', `create, ${small} MiB in ${fileSizes(small, VOLUME_FILES).length} files`, 'ms', '< 50')
    add('createLarge', `create, ${large} MiB in ${fileSizes(small, VOLUME_FILES).length + fileSizes(large - small, VOLUME_FILES).length} files`, 'ms', '< 50')
    add('createFew', `create, ${few} files of 1 KiB`, 'ms', '< 50')
    add('createMany', `create, ${many} files of 1 KiB`, 'ms', '< 50')
    add('changed', `overwrite ${OVERWRITE_FRACTION * 100} % of ${small} MiB: bytes changed`, 'MiB')
    add('touched', '  blocks those writes touch, in full', 'MiB')
    add('written', '  written of the next snapshot', 'MiB')
    add('growth', '  store growth (data.mdb allocated)', 'MiB')
    add('growthPerChanged', '  store growth / bytes changed', 'ratio', '<= 1.2')
    add('growthPerTouched', '  store growth / blocks touched', 'ratio')
    add('readLive', `read ${small} MiB sequentially, live, cold`, 'MB/s')
    add('readSnapshot', `read ${small} MiB sequentially, via .snapshots, cold`, 'MB/s')
    add('readRatio', '  via .snapshots / live', 'ratio', '>= 0.8')
    add('rollbackSwitch', `rollback of ${many} new files: until the volume reads as the snapshot`, 'ms')
    add('rollbackDone', '  until every record is set back', 'ms')
    add('rollbackStall', '  slowest lookup on the mount meanwhile', 'ms')
    add('deleteNone', this.deleteLabel('deleteNone'), 'ms')
    add('deleteChanged', this.deleteLabel('deleteChanged'), 'ms')
    add('deleteFile', this.deleteLabel('deleteFile'), 'ms')
  }

  /** The alignment of the overwrite's writes, in bytes. */
  private overwriteAlign (): number {
    return this.s.overwriteAlign === 'block' ? this.blockSize : 4096
  }

  /** The delete rows name the blocks the deleted snapshots freed, once they are known. */
  private deleteLabel (key: DeleteKey): string {
    const what = { deleteNone: 'empty volume', deleteChanged: 'overwritten', deleteFile: 'whole file' }[key]
    const blocks = (this.deletes[key] ?? []).map(d => Math.round(d.freed / this.blockSize))
    const owning = blocks.length === 0
      ? 'N'
      : [...new Set([Math.min(...blocks), Math.max(...blocks)])].map(n => n.toLocaleString('en-US')).join('-')
    return `delete, owning ${owning} blocks (${what})`
  }

  private record (key: SnapshotKey, value: number): void {
    const row = this.rows.get(key)
    if (row === undefined) throw new Error(`no row ${key}`)
    row.samples.push(value)
    this.host.log(`bench: snapshots: ${row.label.trim()}: ${Number.isInteger(value) ? value : value.toFixed(3)} ${row.unit}`)
  }

  /** Runs `phase` on a fresh store, mounted; counts a failure and goes on, unless interrupted. */
  private async onFreshStore (what: string, phase: (dir: string, store: string, remount: () => Promise<void>) => Promise<void>): Promise<void> {
    this.host.checkInterrupted()
    const store = join(this.scratch, `snapshot-store-${++this.storeCount}`)
    const dir = join(this.scratch, MOUNT_DIR)
    let mounted: Awaited<ReturnType<SnapshotHost['mount']>> | undefined
    try {
      this.host.log(`bench: snapshots: ${what}: mounting a fresh store`)
      this.blockSize = await this.host.initStore(store)
      mounted = await this.host.mount(dir, store)
      const remount = async (): Promise<void> => {
        const old = mounted
        mounted = undefined
        await old?.stop()
        mounted = await this.host.mount(dir, store)
      }
      try {
        await phase(dir, store, remount)
      } catch (err) {
        const death = mounted?.death()
        throw death === undefined ? err : new Error(`${err instanceof Error ? err.message : String(err)}\n  the daemon died: ${death}`)
      }
    } catch (err) {
      if (this.host.interrupted()) throw err
      this.failures++
      this.host.log(`bench: snapshots: ${what}: FAILED: ${err instanceof Error ? err.message : String(err)}`)
    } finally {
      await mounted?.stop()
      await rm(store, { recursive: true, force: true })
    }
  }

  /** `CREATES_PER_STATE` snapshots in a row with nothing written in between; then deletes them. */
  private async creates (key: SnapshotKey, dir: string): Promise<void> {
    await this.host.runOk('sync', [], false)
    const names: string[] = []
    const reported: number[] = []
    for (let i = 1; i <= CREATES_PER_STATE; i++) {
      this.host.checkInterrupted()
      const name = `${key}-${i}`
      const start = process.hrtime.bigint()
      const info = await this.api.createSnapshot(dir, name)
      this.record(key, msSince(start))
      reported.push(info.elapsedMs)
      names.push(name)
    }
    this.reportedCreateMs[key] = reported
    for (const name of names) await this.api.deleteSnapshot(dir, name, { wait: true })
  }

  async createTimes (): Promise<void> {
    const [small, large] = this.s.volumeMib
    await this.onFreshStore(`${small} vs ${large} MiB of data`, async dir => {
      const write = async (prefix: string, sizes: number[]): Promise<void> => {
        for (const [i, mib] of sizes.entries()) await this.host.runJob({ kind: 'seq-write', file: join(dir, `${prefix}${i}.dat`), mib })
      }
      await write('first', fileSizes(small, VOLUME_FILES))
      await this.creates('createSmall', dir)
      await write('more', fileSizes(large - small, VOLUME_FILES))
      await this.creates('createLarge', dir)
    })
    const [few, many] = this.s.volumeFiles
    await this.onFreshStore(`${few} vs ${many} files`, async dir => {
      await this.host.runJob({ kind: 'create', dir: join(dir, 'few'), files: few })
      await this.creates('createFew', dir)
      await this.host.runJob({ kind: 'create', dir: join(dir, 'many'), files: many - few })
      await this.creates('createMany', dir)
    })
  }

  /**
   * A rollback that undoes `many` new files, while another process looks names up on the mount:
   * how long until the volume reads as the snapshot, until every record is set back, and the
   * slowest lookup meanwhile (the rollback's steps must not stop the mount).
   */
  async rollbackTimes (): Promise<void> {
    const [, many] = this.s.volumeFiles
    await this.onFreshStore(`rollback of ${many} files`, async dir => {
      await mkdir(join(dir, 'kept'))
      await this.api.createSnapshot(dir, 'empty')
      await this.host.runJob({ kind: 'create', dir: join(dir, 'many'), files: many })
      await this.host.runOk('sync', [], false)
      const probing = this.host.runJob({ kind: 'probe', dir: join(dir, 'kept'), ms: PROBE_MS })
      await new Promise(resolve => setTimeout(resolve, PROBE_LEAD_MS))
      const start = process.hrtime.bigint()
      await this.api.rollbackToSnapshot(dir, 'empty', { safetySnapshot: false, wait: false })
      this.record('rollbackSwitch', msSince(start))
      while ((await this.api.listJobs(dir)).length > 0) await new Promise(resolve => setTimeout(resolve, 10))
      this.record('rollbackDone', msSince(start))
      const probe = await probing
      if (probe.longest === undefined) throw new Error('the probe job reported no slowest lookup')
      this.record('rollbackStall', probe.longest * 1000)
    })
  }

  /** A timed delete (waiting until the blocks are freed), with what it held and freed. */
  private async timedDelete (key: DeleteKey, dir: string, name: string): Promise<void> {
    const { used } = await this.api.showSnapshot(dir, name)
    const start = process.hrtime.bigint()
    const { freed } = await this.api.deleteSnapshot(dir, name, { wait: true })
    const ms = msSince(start)
    this.deletes[key] = [...this.deletes[key] ?? [], { ms, freed, used }]
    const row = this.rows.get(key)
    if (row !== undefined) row.label = this.deleteLabel(key)
    this.record(key, ms)
  }

  /**
   * One run: write the file and snapshot it; read it live and via the snapshot, each from a fresh
   * mount with the kernel caches dropped; overwrite part of it and snapshot again; delete the
   * file, snapshot the empty volume, and delete the three snapshots, timing each delete.
   */
  async round (runIndex: number): Promise<void> {
    const [mib] = this.s.volumeMib
    await this.onFreshStore(`run ${runIndex}/${this.s.runs}`, async (dir, store, remount) => {
      const name = 'data.dat'
      await this.host.runJob({ kind: 'seq-write', file: join(dir, name), mib })
      await this.api.createSnapshot(dir, 'base')

      const paths = { readLive: join(dir, name), readSnapshot: join(dir, '.snapshots', 'base', name) }
      const order = runIndex % 2 === 1 ? (['readLive', 'readSnapshot'] as const) : (['readSnapshot', 'readLive'] as const)
      const rates = { readLive: 0, readSnapshot: 0 }
      for (const key of order) {
        await remount()
        await this.host.dropCaches()
        const read = await this.host.runJob({ kind: 'seq-read', file: paths[key] })
        if (read.count !== mib * MIB) throw new Error(`read ${read.count} bytes of ${paths[key]}, wrote ${mib} MiB`)
        rates[key] = read.count / 1e6 / read.seconds
      }
      this.record('readLive', rates.readLive)
      this.record('readSnapshot', rates.readSnapshot)
      this.record('readRatio', rates.readSnapshot / rates.readLive)

      const before = await storeBytes(store)
      const changed = await this.host.runJob({ kind: 'overwrite', file: paths.readLive, fraction: OVERWRITE_FRACTION, chunk: OVERWRITE_CHUNK, align: this.overwriteAlign(), blockSize: this.blockSize, seed: runIndex })
      await this.api.createSnapshot(dir, 'after')
      const growth = await storeBytes(store) - before
      if (changed.blocks === undefined) throw new Error('the overwrite job did not count its blocks')
      const touched = changed.blocks * this.blockSize
      this.record('changed', changed.count / MIB)
      this.record('touched', touched / MIB)
      this.record('written', (await this.api.showSnapshot(dir, 'after')).written / MIB)
      this.record('growth', growth / MIB)
      this.record('growthPerChanged', growth / changed.count)
      this.record('growthPerTouched', growth / touched)

      await rm(paths.readLive)
      await this.api.createSnapshot(dir, 'empty')
      await this.timedDelete('deleteChanged', dir, 'base')
      await this.timedDelete('deleteFile', dir, 'after')
      await this.timedDelete('deleteNone', dir, 'empty')
    })
  }
}

/** Runs the whole section; a failed part leaves its rows short and counts in `failures`. */
export async function snapshotSection (host: SnapshotHost, s: SnapshotSettings, scratch: string): Promise<SnapshotResults> {
  const section = new Section(await import('../src/index.js'), host, s, scratch)
  await mkdir(join(scratch, MOUNT_DIR))
  await section.createTimes()
  await section.rollbackTimes()
  for (let runIndex = 1; runIndex <= s.runs; runIndex++) await section.round(runIndex)
  return {
    blockSize: section.blockSize,
    rows: [...section.rows.values()],
    reportedCreateMs: section.reportedCreateMs,
    deletes: section.deletes,
    notes: [
      `creates: ${CREATES_PER_STATE} in a row after fsync and sync, nothing written in between; the rest: ${s.runs} run${s.runs === 1 ? '' : 's'}, each on a fresh store;`,
      `block size ${section.blockSize / 1024} KiB; times are taken around the package API calls, deletes waiting until the blocks are freed;`,
      `the overwrite is ${OVERWRITE_CHUNK / 1024} KiB writes of new data at random, non-overlapping ${s.overwriteAlign === 'block' ? `block-aligned (${section.blockSize / 1024} KiB)` : '4 KiB-aligned'} offsets, then fsync;`,
      'each read is from a fresh mount (umount, mount) with the kernel caches dropped, live and snapshot in alternating order'
    ],
    failures: section.failures
  }
}
