/**
 * The snapshots of the mounted volume, as the daemon runs them: creating one (flush, hold writes,
 * freeze in the commit that takes the last dirty data, make it durable), the views that browse
 * them, and deletes, which run in the background a batch per commit and resume after a restart.
 * The catalogue itself lives in the store (store/snapshots.ts); this keeps a copy in memory so
 * path lookups under `.snapshots/` never scan it.
 */
import { performance } from 'node:perf_hooks'
import createDebug from 'debug'
import { UserError } from '../errors.js'
import { checkQuota, checkSnapshotName, deleteStep, freezeSnapshot, markDeleting, setQuota, snapshotsOf, usedBytes } from '../store/snapshots.js'
import type { SnapshotRecord, VolumeRecord } from '../store/records.js'
import type { LiveVolume } from './volume.js'
import { SnapshotView } from './snapshot-view.js'
import { diffGenerations, type DiffEntry } from './diff.js'
import { TreeCount, TreeRestore, removeTreeStep, type RestoreResult } from './restore.js'
import { applyStep, beginRollback, scanStep, switchRollback } from '../store/rollback.js'
import { beginClone, cloneStep } from '../store/clone.js'
import { prefixRange, volumePrefix } from '../store/keys.js'
import { isDir } from './inode.js'
import { ROOT_INO } from '../store/records.js'

const debug = createDebug('snapfs:snapshots')

/** Dead-list entries one delete step frees: small enough that a step never stalls the mount. */
const DELETE_BATCH = 512
/** Views whose data pages are kept; older ones are dropped (they reload on use). */
const KEPT_VIEWS = 4
/**
 * Commits a create makes while writes go on before it holds them: each one takes what was dirty
 * when it began, so a fast writer cannot keep the create waiting, and what is left for the commit
 * that freezes (while writes wait) is small.
 */
const PRE_FLUSH_ROUNDS = 3
/** Below this much dirty data a create holds writes at once. */
const PRE_FLUSH_DONE_BYTES = 4 * 1024 * 1024
/** Records one clone step copies. */
const CLONE_BATCH = 1024
/** Names one restore step restores (then commits), or counts, or removes. */
const RESTORE_BATCH = 1000
const COUNT_BATCH = 5000
/** Changed records one rollback step lists, and sets back. */
const ROLLBACK_SCAN_BATCH = 8192
const ROLLBACK_APPLY_BATCH = 1024
/**
 * How long the kernel may keep a name it looked up (libfuse 2's default entry timeout, 1 s, with
 * a margin). A transport that cannot invalidate the kernel's entries (fuse-native: no `kernel`)
 * makes a snapshot created under the name of one deleted less than this ago wait out the rest: a
 * cached path under the old one whose file changed type would otherwise answer EIO.
 */
const KERNEL_ENTRY_MS = 1100
/** After a failed background step (a full disk), the next try waits this long. */
const RETRY_MS = 1000

/** The directory in the mount's root that shows the snapshots (fuse/namespace.ts). */
export const SNAPSHOT_DIR = '.snapshots'

/** Follows a path ("/a/b") from inode `start` with `step`; a missing part is a UserError. */
function walk (path: string, start: number, step: (dir: number, name: string) => number, what: string): number {
  let ino = start
  for (const part of path.split('/')) {
    if (part.length === 0) continue
    try {
      ino = step(ino, part)
    } catch {
      throw new UserError(`${what}: no such file or directory`)
    }
  }
  return ino
}

export type SnapshotState = 'creating' | 'ready' | 'deleting'

/** A snapshot as snapctl and the API describe it. Sizes in bytes. */
export interface SnapshotInfo {
  id: number
  name: string
  description: string
  created: number
  gen: number
  status: SnapshotState
  /** What deleting it would free. */
  used: number
  /** Data it references. */
  refer: number
  /** Data new since the previous snapshot. */
  written: number
  /** While deleting: dead-list entries handled and to handle. */
  progress?: { done: number, total: number }
}

export interface RollbackResult {
  name: string
  /** The snapshot of the state before, if one was taken. */
  safetySnapshot: string | null
  /** Records (inodes, entries, xattrs, block map entries) set back. */
  records: number
  /** Whether every record is set back; if not, the rest are being set back in the background. */
  done: boolean
  /** With a dry run: what would change. */
  changes: DiffEntry[]
  elapsedMs: number
}

/** A long operation the daemon is running in the background, with its progress. */
export interface JobInfo {
  kind: 'rollback' | 'delete' | 'clone' | 'restore'
  /** The snapshot, volume or path it works on. */
  target: string
  /** Units done and to do (records, dead-list entries, inodes); total 0 while unknown. */
  done: number
  total: number
  /** Estimated from the rate so far; null until there is one. */
  secondsLeft: number | null
}

export interface QuotaInfo {
  maxCount: number | null
  maxBytes: number | null
  count: number
  /** Bytes held by snapshots only (what deleting all of them would free). */
  bytes: number
}

/**
 * What the mount's transport does when the daemon changed the volume behind the kernel's back,
 * so the kernel drops what it caches (the native transport; fuse-native cannot).
 */
export interface KernelCache {
  /** Anything in the live volume may have changed (a rollback). */
  volumeChanged: () => void
  /** These names in a live directory changed, and these inodes' attributes (a restore). */
  entriesChanged: (dir: number, names: string[], inodes: number[]) => void
  /** These names in `.snapshots` appeared or went. */
  snapshotsChanged: (names: string[]) => void
}

export class Snapshots {
  /** Told of changes the kernel cannot see, if the transport can act on them. */
  kernel: KernelCache | null = null
  private readonly volume: LiveVolume
  private readonly viewCacheBytes: number
  private catalogue: SnapshotRecord[]
  private readonly creating = new Map<string, SnapshotInfo>()
  private readonly views = new Map<number, SnapshotView>()
  /** Who waits for a background job to reach a point ("delete:ID", "clone:ID", "rollback:switched", "rollback:done"). */
  private readonly finished = new Map<string, Array<(value: number) => void>>()
  /** Where each running job was when this daemon first saw it progress: for the time left. */
  private readonly rates = new Map<string, { at: number, done: number }>()
  /** Restores of a tree under way, by the path they restore to. */
  private readonly restores = new Map<string, { done: number, total: number }>()
  /** The markers (VolumeRecord.restoring) of the restores this daemon is running. */
  private readonly restoring = new Set<{ parent: number, name: string }>()
  /** When each recently deleted snapshot left `.snapshots`, by name. */
  private readonly hidden = new Map<string, number>()
  private worker: Promise<void> | null = null
  private stopped = false

  constructor (volume: LiveVolume, viewCacheBytes: number) {
    this.volume = volume
    this.viewCacheBytes = viewCacheBytes
    this.catalogue = snapshotsOf(volume.store, volume.record.id)
  }

  /** The snapshots that can be browsed, oldest first. */
  ready (): Array<{ name: string, id: number }> {
    return this.catalogue.filter(s => s.status === 'ready').map(({ name, id }) => ({ name, id }))
  }

  /** The view of a ready snapshot, or undefined when there is none of that name. */
  view (name: string): SnapshotView | undefined {
    const record = this.catalogue.find(s => s.name === name && s.status === 'ready')
    if (record === undefined) return undefined
    let view = this.views.get(record.gen)
    if (view === undefined) {
      view = new SnapshotView(this.volume.store, this.volume.record.id, record, this.viewCacheBytes, () => { this.volume.mapTouched = true })
      this.views.set(record.gen, view)
      for (const [gen, old] of this.views) {
        if (this.views.size <= KEPT_VIEWS) break
        this.views.delete(gen)
        old.dropPages()
      }
    }
    return view
  }

  /** Every snapshot, oldest first, accounted after committing what the volume holds in memory. */
  async list (): Promise<SnapshotInfo[]> {
    await this.volume.writeback.commit()
    const list = this.catalogue.map(record => this.info(record))
    return [...list, ...this.creating.values()]
  }

  async show (name: string): Promise<SnapshotInfo> {
    await this.volume.writeback.commit()
    const pending = this.creating.get(name)
    if (pending !== undefined) return pending
    const record = this.catalogue.find(s => s.name === name)
    if (record === undefined) throw new UserError(`no snapshot "${name}"`)
    return this.info(record)
  }

  /**
   * Creates a snapshot holding every write acknowledged before the call: dirty data is committed
   * while writes go on, then writes wait while the rest is committed and the block map frozen in
   * one transaction, which is flushed to disk before this returns.
   */
  async create (name: string, description: string): Promise<SnapshotInfo & { elapsedMs: number }> {
    const started = performance.now()
    checkSnapshotName(name)
    if (this.creating.has(name) || this.catalogue.some(s => s.name === name)) throw new UserError(`a snapshot named "${name}" already exists`)
    const volume = this.volume
    checkQuota(volume.record, this.catalogue)
    await this.rollbackFinished()
    const since = Date.now() - (this.hidden.get(name) ?? 0)
    if (this.kernel === null && since < KERNEL_ENTRY_MS) await new Promise(resolve => setTimeout(resolve, KERNEL_ENTRY_MS - since))
    this.hidden.delete(name)
    if (this.creating.has(name)) throw new UserError(`a snapshot named "${name}" already exists`)
    const now = Date.now()
    this.creating.set(name, { id: 0, name, description, created: now, gen: 0, status: 'creating', used: 0, refer: 0, written: 0 })
    try {
      for (let round = 0; round < PRE_FLUSH_ROUNDS; round++) {
        if (volume.cache.dirtyPages * volume.blockSize < PRE_FLUSH_DONE_BYTES) break
        await volume.writeback.commit()
      }
      const release = volume.holdWrites()
      let record: SnapshotRecord
      try {
        record = await volume.writeback.commitWith(() => freezeSnapshot(volume.store, volume.record, { name, description, now }), { allPages: true })
      } finally {
        release()
      }
      volume.store.flushed()
      this.catalogue = snapshotsOf(volume.store, volume.record.id)
      this.kernel?.snapshotsChanged([name])
      const elapsedMs = Math.round((performance.now() - started) * 10) / 10
      debug('created %s (gen %d) in %d ms', name, record.gen, elapsedMs)
      return { ...this.info(record), elapsedMs }
    } finally {
      this.creating.delete(name)
    }
  }

  /**
   * Starts deleting a snapshot: it disappears from `.snapshots` at once and its blocks are freed
   * in the background. With `wait`, resolves once it is gone, with the bytes freed.
   */
  async delete (name: string, wait: boolean): Promise<{ name: string, freed: number }> {
    const volume = this.volume
    if (volume.record.rollback?.name === name) throw new UserError(`snapshot ${name} is the target of the rollback in progress; delete it once that is done`)
    const record = await volume.writeback.commitWith(() => markDeleting(volume.store, volume.record, name), { allPages: false })
    volume.store.flushed()
    this.catalogue = snapshotsOf(volume.store, volume.record.id)
    const now = Date.now()
    for (const [hiddenName, at] of this.hidden) if (now - at >= KERNEL_ENTRY_MS) this.hidden.delete(hiddenName)
    this.hidden.set(name, now)
    const view = this.views.get(record.gen)
    if (view !== undefined) {
      view.invalidate()
      this.views.delete(record.gen)
    }
    this.kernel?.snapshotsChanged([name])
    const done = wait ? this.reached(`delete:${record.id}`) : null
    this.resume()
    return { name, freed: done === null ? 0 : await done }
  }

  /**
   * What changed from snapshot `from` to snapshot `to`, or to the live volume (after committing
   * what it holds in memory) when `to` is undefined.
   */
  async diff (from: string, to: string | undefined): Promise<DiffEntry[]> {
    const volume = this.volume
    if (to === undefined) await this.rollbackFinished()
    await volume.writeback.commit()
    const start = this.readyRecord(from)
    const end = to === undefined ? volume.record.gen : this.readyRecord(to).gen
    if (end <= start.gen) throw new UserError(`snapshot ${from} is not older than ${to ?? 'the live volume'}`)
    return diffGenerations(volume.store, volume.record.id, start.gen, end)
  }

  /**
   * Restores `from` (a path in the snapshot, from the mount's root) to `to` in the live volume
   * (default: the same path). An existing file or symlink there is replaced; an existing
   * directory is refused. A tree is restored in steps under a temporary name in the target's
   * directory, each step committed, and renamed into place once complete; its progress is in
   * `jobs`. Resolves once the restored tree is durable.
   */
  async restore (name: string, from: string, to: string | undefined): Promise<RestoreResult & { path: string }> {
    const volume = this.volume
    const record = this.readyRecord(name)
    const view = this.view(record.name) as SnapshotView
    const source = walk(from, ROOT_INO, (dir, part) => view.lookup(dir, part).ino, `${from} in snapshot ${name}`)
    const target = to ?? from
    const parts = target.split('/').filter(part => part.length > 0)
    const leaf = parts.pop()
    if (leaf === undefined) throw new UserError('cannot restore over the root of the volume; restore its contents one by one or use --to')
    if (parts[0] === SNAPSHOT_DIR || leaf === SNAPSHOT_DIR && parts.length === 0) throw new UserError(`cannot restore into ${SNAPSHOT_DIR}`)
    const parent = walk('/' + parts.join('/'), ROOT_INO, (dir, part) => volume.lookup(dir, part).ino, `the directory of ${target}`)
    const path = '/' + [...parts, leaf].join('/')
    if (this.restores.has(path)) throw new UserError(`${path} is being restored already`)
    const existing = volume.entries(parent).get(leaf)
    if (existing !== undefined && (isDir(existing.type) || isDir(view.inode(source).mode))) {
      throw new UserError(`${target} exists and is or replaces a directory; remove it first or restore with --to`)
    }
    const progress = { done: 0, total: 0 }
    this.restores.set(path, progress)
    let marker: { parent: number, name: string } | undefined
    try {
      const counter = new TreeCount(view, source)
      while (!counter.step(COUNT_BATCH)) await new Promise(resolve => setImmediate(resolve))
      progress.total = counter.count
      const temporary = `.snapfs-restore-${Date.now().toString(36)}-${this.restores.size}`
      marker = { parent, name: temporary }
      this.restoring.add(marker)
      volume.record.restoring = [...volume.record.restoring ?? [], marker]
      volume.recordChanged()
      await volume.writeback.commit()
      const job = new TreeRestore(volume, view, source, parent, temporary)
      while (!job.step(RESTORE_BATCH)) {
        progress.done = job.done
        await volume.writeback.commit()
      }
      volume.rename(parent, temporary, parent, leaf)
      this.kernel?.entriesChanged(parent, [temporary, leaf], existing === undefined ? [] : [existing.ino])
      job.restoreTimes()
      volume.record.restoring = volume.record.restoring.filter(m => m !== marker)
      if (volume.record.restoring.length === 0) delete volume.record.restoring
      volume.recordChanged()
      await volume.fsync()
      debug('restored %s from %s to %s: %d inodes', from, name, target, job.result.inodes)
      return { ...job.result, path }
    } finally {
      this.restores.delete(path)
      this.rates.delete(`restore:${path}`)
      if (marker !== undefined) this.restoring.delete(marker)
      this.resume()
    }
  }

  /**
   * Makes the live volume exactly what snapshot `name` holds, keeping every snapshot. A safety
   * snapshot of the state before is taken first unless `safety` is false. Refused while files are
   * open on the mount, unless forced: their descriptors then answer ESTALE. With `dryRun`, only
   * lists what would change (as `diff NAME`).
   *
   * The changed records are listed and then set back in the background (store/rollback.ts); the
   * mount keeps answering throughout. Resolves once the volume reads as the snapshot, or with
   * `wait` once every record is set back.
   */
  async rollback (name: string, options: { dryRun: boolean, safety: boolean, force: boolean, wait: boolean }): Promise<RollbackResult> {
    const volume = this.volume
    const record = this.readyRecord(name)
    if (options.dryRun) return { name, safetySnapshot: null, records: 0, done: false, changes: await this.diff(name, undefined), elapsedMs: 0 }
    const running = volume.record.rollback
    if (running !== undefined) throw new UserError(`a rollback to ${running.name} is in progress; wait for it to finish (snapctl jobs)`)
    if (this.restores.size > 0) throw new UserError('a restore is in progress; wait for it to finish (snapctl jobs)')
    const open = volume.openHandles()
    if (open > 0 && !options.force) {
      throw new UserError(`${open === 1 ? 'a file is' : `${open} files are`} open on the mount; close them, or use --force (their descriptors then fail with ESTALE)`)
    }
    const started = performance.now()
    let safetySnapshot: string | null = null
    if (options.safety) {
      safetySnapshot = `${name}.before-rollback.${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}`
      await this.create(safetySnapshot, `the volume before the rollback to ${name}`)
    }
    await volume.writeback.commitWith(() => beginRollback(volume.store, volume.record, record, Date.now()), { allPages: false })
    volume.store.flushed()
    const switched = this.reached('rollback:switched')
    const done = options.wait ? this.reached('rollback:done') : null
    this.resume()
    const listed = await switched
    const records = done === null ? listed : await done
    const elapsedMs = Math.round(performance.now() - started)
    debug('rolled back to %s: %d records in %d ms%s', name, records, elapsedMs, done === null ? ' (setting back in the background)' : '')
    return { name, safetySnapshot, records, done: done !== null || volume.record.rollback === undefined, changes: [], elapsedMs }
  }

  /** Resolves once no rollback is setting records back: what reads the whole volume at once waits for it. */
  private async rollbackFinished (): Promise<void> {
    if (this.volume.record.rollback === undefined) return
    const done = this.reached('rollback:done')
    this.resume()
    await done
  }

  /** Shows, or sets then shows, the volume's snapshot quotas. */
  async quota (change: { maxSnapshots?: number | null, maxSnapshotBytes?: number | null }): Promise<QuotaInfo> {
    const volume = this.volume
    await volume.writeback.commit()
    if (change.maxSnapshots !== undefined || change.maxSnapshotBytes !== undefined) {
      await volume.writeback.commitWith(() => setQuota(volume.store, volume.record, change), { allPages: false })
      volume.store.flushed()
    }
    const record = volume.record
    return {
      maxCount: record.maxSnapshots,
      maxBytes: record.maxSnapshotBytes,
      count: this.catalogue.filter(s => s.status === 'ready').length,
      bytes: record.snapshotBytes
    }
  }

  /**
   * Creates volume `volumeName` as a clone of snapshot `name`: its records are copied in the
   * background, sharing every block. With `wait`, resolves once the clone can be mounted.
   */
  async clone (name: string, volumeName: string, wait: boolean): Promise<{ volume: string, origin: string, records: number }> {
    const volume = this.volume
    const record = this.readyRecord(name)
    const clone = await volume.writeback.commitWith(() => beginClone(volume.store, volume.record, record, volumeName, Date.now()), { allPages: false })
    volume.store.flushed()
    const done = wait ? this.reached(`clone:${clone.id}`) : null
    this.resume()
    return { volume: volumeName, origin: name, records: done === null ? 0 : await done }
  }

  /** The long operations running in the background, with their progress. */
  jobs (): JobInfo[] {
    const jobs: JobInfo[] = []
    const rollback = this.volume.record.rollback
    if (rollback !== undefined) jobs.push(this.job('rollback', 'rollback', rollback.name, rollback.done, rollback.total))
    for (const s of this.catalogue) {
      if (s.status === 'deleting') jobs.push(this.job(`delete:${s.id}`, 'delete', s.name, s.done ?? 0, s.total ?? 0))
    }
    const clone = this.cloning()
    if (clone !== undefined) jobs.push(this.job(`clone:${clone.id}`, 'clone', clone.name, 0, 0))
    for (const [path, progress] of this.restores) jobs.push(this.job(`restore:${path}`, 'restore', path, progress.done, progress.total))
    return jobs
  }

  /** A job's progress, with the time left estimated from its rate since this daemon first reported it. */
  private job (key: string, kind: JobInfo['kind'], target: string, done: number, total: number): JobInfo {
    const now = Date.now()
    let since = this.rates.get(key)
    if (since === undefined || since.done > done) {
      since = { at: now, done }
      this.rates.set(key, since)
    }
    const secondsLeft = done > since.done && total > done
      ? Math.ceil((now - since.at) / 1000 * (total - done) / (done - since.done))
      : null
    return { kind, target, done, total, secondsLeft }
  }

  /** Starts the background worker if a rollback is running, a snapshot being deleted or a clone copied. */
  resume (): void {
    if (this.worker !== null || this.stopped) return
    if (this.volume.record.rollback === undefined && this.leftover() === undefined && !this.catalogue.some(s => s.status === 'deleting') && this.cloning() === undefined) return
    this.worker = this.work().finally(() => {
      this.worker = null
      this.resume()
    })
  }

  /** Stops the worker after its current step (shutdown); the work resumes at the next mount. */
  async stop (): Promise<void> {
    this.stopped = true
    await this.worker
  }

  /** A clone of one of this volume's snapshots that is still being copied. */
  private cloning (): VolumeRecord | undefined {
    for (const { value } of this.volume.store.volumes.getRange()) {
      if (value.cloning !== undefined && value.origin?.volume === this.volume.record.id) return value
    }
    return undefined
  }

  private async work (): Promise<void> {
    while (!this.stopped) {
      const rollback = this.volume.record.rollback !== undefined
      const leftover = rollback ? undefined : this.leftover()
      const target = rollback || leftover !== undefined ? undefined : this.catalogue.find(s => s.status === 'deleting')
      const clone = rollback || leftover !== undefined || target !== undefined ? undefined : this.cloning()
      if (!rollback && leftover === undefined && target === undefined && clone === undefined) return
      try {
        if (rollback) await this.rollbackSome()
        else if (leftover !== undefined) await this.removeLeftover(leftover)
        else if (target !== undefined) await this.deleteSome(target)
        else if (clone !== undefined) await this.cloneSome(clone)
      } catch (err) {
        debug('background work failed, retrying: %s', (err as Error).message)
        await new Promise(resolve => setTimeout(resolve, RETRY_MS))
      }
      await new Promise(resolve => setImmediate(resolve))
    }
  }

  /**
   * One step of the rollback in progress. The scan's last step turns it to the apply phase in a
   * commit that holds writes and takes every dirty page, then drops what the volume holds in
   * memory: from there on it reads as the snapshot.
   */
  private async rollbackSome (): Promise<void> {
    const volume = this.volume
    const state = volume.record.rollback
    if (state === undefined) return
    if (state.phase === 'scan') {
      if (!await volume.writeback.commitWith(() => scanStep(volume.store, volume.record, ROLLBACK_SCAN_BATCH), { allPages: false })) return
      const release = volume.holdWrites()
      try {
        await volume.writeback.commitWith(() => switchRollback(volume.store, volume.record), { allPages: true, blocking: true })
        volume.reload()
        this.kernel?.volumeChanged()
      } finally {
        release()
      }
      volume.store.flushed()
      debug('rollback to %s: the volume reads as the snapshot, %d records to set back', state.name, state.total)
      this.finish('rollback:switched', state.total)
      return
    }
    if (!await volume.writeback.commitWith(() => applyStep(volume.store, volume.record, ROLLBACK_APPLY_BATCH), { allPages: false })) return
    volume.rollbackDone()
    volume.store.flushed()
    debug('rollback to %s: every record set back', state.name)
    this.rates.delete('rollback')
    this.finish('rollback:switched', state.total)
    this.finish('rollback:done', state.total)
  }

  /** A tree whose restore stopped half-way (the daemon was killed, or the restore failed). */
  private leftover (): { parent: number, name: string } | undefined {
    return this.volume.record.restoring?.find(marker => !this.restoring.has(marker))
  }

  private async removeLeftover (marker: { parent: number, name: string }): Promise<void> {
    const volume = this.volume
    let gone: boolean
    try {
      gone = removeTreeStep(volume, marker.parent, marker.name, RESTORE_BATCH)
    } catch (err) {
      debug('the partial restore %s cannot be removed, leaving it: %s', marker.name, (err as Error).message)
      gone = true
    }
    if (gone) {
      const left = (volume.record.restoring ?? []).filter(m => m !== marker)
      if (left.length === 0) delete volume.record.restoring
      else volume.record.restoring = left
      volume.recordChanged()
      this.kernel?.entriesChanged(marker.parent, [marker.name], [])
      debug('removed the partial restore %s', marker.name)
    }
    await volume.writeback.commit()
  }

  private async deleteSome (target: SnapshotRecord): Promise<void> {
    const volume = this.volume
    const step = await volume.writeback.commitWith(() => deleteStep(volume.store, volume.record, target.gen, DELETE_BATCH), { allPages: false })
    this.catalogue = snapshotsOf(volume.store, volume.record.id)
    if (step === null || step.finished) {
      volume.store.flushed()
      const freed = step?.record.freed ?? 0
      debug('deleted %s, freed %d bytes', target.name, freed)
      this.rates.delete(`delete:${target.id}`)
      this.finish(`delete:${target.id}`, freed)
    }
  }

  private async cloneSome (clone: VolumeRecord): Promise<void> {
    const volume = this.volume
    const after = await volume.writeback.commitWith(() => cloneStep(volume.store, clone.id, CLONE_BATCH), { allPages: false })
    if (after.cloning === undefined) {
      volume.store.flushed()
      debug('cloned %s', clone.name)
      this.rates.delete(`clone:${clone.id}`)
      this.finish(`clone:${clone.id}`, volume.store.inodes.getKeysCount(prefixRange(volumePrefix(clone.id))))
    }
  }

  private finish (key: string, value: number): void {
    for (const resolve of this.finished.get(key) ?? []) resolve(value)
    this.finished.delete(key)
  }

  private readyRecord (name: string): SnapshotRecord {
    const record = this.catalogue.find(s => s.name === name)
    if (record === undefined) throw new UserError(`no snapshot "${name}"`)
    if (record.status !== 'ready') throw new UserError(`snapshot ${name} is being deleted`)
    return record
  }

  /** Resolves once a background job reaches `point` (see `finished`), with what it reports. */
  private async reached (point: string): Promise<number> {
    return await new Promise(resolve => {
      const waiting = this.finished.get(point) ?? []
      waiting.push(resolve)
      this.finished.set(point, waiting)
    })
  }

  private info (record: SnapshotRecord): SnapshotInfo {
    const info: SnapshotInfo = {
      id: record.id,
      name: record.name,
      description: record.description,
      created: record.created,
      gen: record.gen,
      status: record.status,
      used: record.status === 'ready' ? usedBytes(this.volume.store, this.volume.record, record, this.catalogue) : 0,
      refer: record.refer,
      written: record.written
    }
    if (record.status === 'deleting') info.progress = { done: record.done ?? 0, total: record.total ?? 0 }
    return info
  }
}
