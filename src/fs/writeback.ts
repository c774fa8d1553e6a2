/**
 * Write-back: when and how the live volume's changes reach the store. One commit at a time; a
 * commit takes the whole change set and every dirty page at the moment its transaction starts and
 * applies them in that one LMDB transaction (commit.ts), so each committed state of the store is a
 * state the file system really had.
 *
 * Triggers: fsync and flush/close (they wait), the dirty-age timer, the page cache filling up,
 * unmount and snapshot creation. `commit()` resolves once a commit that started after the call is
 * visible in the store file (`committed`); durability is the caller's `store.flushed()`. A small
 * commit is flushed at once only when an fsync waits for it (`commit(true)`), so that the
 * `flushed()` after it has nothing left to do; for the others LMDB leaves the meta page unsynced
 * (Store.commitSync).
 * `commitWith` runs a step of its own (freezing or deleting a snapshot) in a commit's transaction,
 * after the changes, so the step sees the store exactly as the volume is at that instant.
 */
import createDebug from 'debug'
import { FsError, UserError } from '../errors.js'
import { applyChanges } from './commit.js'
import type { LiveVolume } from './volume.js'
import { ChangeSet } from './changes.js'
import type { Page } from '../cache/pagecache.js'
import type { VolumeRecord } from '../store/records.js'

const debug = createDebug('snapfs:writeback')

/**
 * Commits with at most this many dirty pages and changed inodes run as a synchronous
 * transaction: for a close or an fsync after a small change, the hand-offs to and from LMDB's
 * writer thread cost more than the commit. Larger ones run on the writer thread, so that its
 * disk sync does not hold up the requests that arrive meanwhile.
 */
const SYNC_COMMIT_PAGES = 16
const SYNC_COMMIT_INODES = 64

/**
 * Data one commit carries at most, in bytes: it bounds the memory LMDB's write transaction
 * allocates for its dirty pages, and so the daemon's memory beyond the page cache.
 */
const COMMIT_BYTES = 16 * 1024 * 1024

/** After a commit of this many pages the store's map is released at once, not at the next tick. */
const RELEASE_MAP_PAGES = 64

export class Writeback {
  private readonly volume: LiveVolume
  private readonly dirtyAgeMs: number
  private running: Promise<void> | null = null
  private queued: Promise<void> | null = null
  /** An fsync waits for the next commit: make it durable if it is a synchronous one. */
  private durableWanted = false
  private seq = 0
  private timer: NodeJS.Timeout | null = null

  /** Pages one commit carries at most. */
  private readonly commitPages: number

  /**
   * Set when a commit failed for want of room on the store's disk, cleared when one carrying
   * pages succeeds. Meanwhile a removal is committed at once (`freed`).
   */
  private shortOfRoom = false

  constructor (volume: LiveVolume, dirtyAgeMs: number) {
    this.volume = volume
    this.dirtyAgeMs = dirtyAgeMs
    this.commitPages = Math.max(1, Math.floor(COMMIT_BYTES / volume.blockSize))
  }

  /** Starts the dirty-age timer. */
  startTimer (): void {
    const period = Math.max(50, Math.floor(this.dirtyAgeMs / 4))
    this.timer = setInterval(() => this.onTimer(), period)
    this.timer.unref()
  }

  stopTimer (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  /**
   * Called after each write: starts write-back once a commit's worth of pages (or half the
   * cache) is dirty, so commits overlap with the writes that follow instead of waiting for
   * the cache to fill.
   */
  afterWrite (): void {
    const cache = this.volume.cache
    const threshold = Math.min(cache.maxPages / 2, this.commitPages)
    if (this.running === null && cache.dirtyPages >= threshold) this.start()
  }

  /** Starts a commit without waiting for it; a failure leaves the changes for the next commit. */
  start (): void {
    this.commit().catch(() => {})
  }

  /**
   * Resolves once everything changed before this call is committed; rejects if a commit failed.
   * Each commit carries every metadata change and up to COMMIT_BYTES of the oldest dirty pages,
   * so this may take several. `durable` (an fsync, which calls `store.flushed()` next): the
   * next commit is flushed at once if it is a small synchronous one.
   */
  async commit (durable = false): Promise<void> {
    if (durable) this.durableWanted = true
    const mark = this.volume.cache.dirtyMark()
    await this.commitOnce()
    while (this.volume.cache.dirtyBefore(mark)) await this.commitOnce()
  }

  /**
   * Called when an inode is deleted (its last link and handle gone). On a full disk the change set
   * is committed right after the operation under way, without pages: LMDB reuses the pages a
   * transaction frees only in later ones, so a removal committed together with the writes after
   * it would leave them no room.
   */
  freed (): void {
    if (this.shortOfRoom) queueMicrotask(() => { this.commitChanges().catch(() => {}) })
  }

  /** Commits the change set and no pages, after the commit under way; then lets later commits use what it freed. */
  private async commitChanges (): Promise<void> {
    while (this.running !== null) await this.running.catch(() => {})
    if (this.volume.changes.empty) return
    this.running = this.run(0).finally(() => { this.running = null })
    await this.running
    this.volume.store.advance()
  }

  /** Resolves once one commit that started after this call is visible (writers under pressure). */
  step (): Promise<void> {
    return this.commitOnce()
  }

  /**
   * Commits every pending change and, with `allPages`, every dirty page (else a commit's worth),
   * then runs `step` in the same transaction; resolves with its result once committed. Waits for
   * the commit under way; later commits wait for this one. With `blocking`, the transaction is
   * synchronous: no file operation runs between taking the changes and the commit, nor between
   * the commit and the caller's next step (a rollback reloads the volume there).
   */
  async commitWith<T> (step: () => T, options: { allPages: boolean, blocking?: boolean }): Promise<T> {
    while (this.running !== null) await this.running.catch(() => {})
    let result: T | undefined
    const pages = options.allPages ? Infinity : this.commitPages
    this.running = this.run(pages, () => { result = step() }, options.blocking === true).finally(() => { this.running = null })
    await this.running
    return result as T
  }

  private commitOnce (): Promise<void> {
    if (this.running === null) {
      if (this.volume.clean) return Promise.resolve()
      this.running = this.run(this.commitPages).finally(() => { this.running = null })
      return this.running
    }
    if (this.queued === null) {
      const after = this.running.catch(() => {})
      this.queued = after.then(async () => {
        this.queued = null
        return await this.commitOnce()
      })
    }
    return this.queued
  }

  private onTimer (): void {
    if (this.volume.mapTouched) {
      this.volume.mapTouched = false
      this.volume.store.releaseMap()
    }
    const now = Date.now()
    const { changes, cache } = this.volume
    const metaAge = changes.empty ? 0 : now - changes.since
    if (metaAge >= this.dirtyAgeMs || cache.oldestDirtyAge(now) >= this.dirtyAgeMs) this.start()
  }

  private async run (pageLimit: number, step?: () => void, blocking = false): Promise<void> {
    const seq = ++this.seq
    const volume = this.volume
    let taken: { changes: ChangeSet, pages: Page[] } | null = null
    let counters: Partial<VolumeRecord> = {}
    const started = Date.now()
    const blocks = { next: volume.store.nextBlock, ceiling: volume.store.blockCeiling }
    const sectors = new Map<number, number>()
    const apply = (): void => {
      const { gen, lastSnapGen, used, written, snapshotBytes, maxSnapshots, maxSnapshotBytes } = volume.record
      counters = { gen, lastSnapGen, used, written, snapshotBytes, maxSnapshots, maxSnapshotBytes }
      const changes = volume.changes
      volume.changes = new ChangeSet()
      const pages = volume.cache.takeDirty(seq, pageLimit)
      taken = { changes, pages }
      volume.truncationsInFlight.set(seq, changes.truncations)
      applyChanges(volume, changes, pages, sectors)
      if (step !== undefined) step()
    }
    const durable = this.durableWanted
    this.durableWanted = false
    try {
      const small = step === undefined && volume.cache.dirtyPages <= SYNC_COMMIT_PAGES &&
        volume.changes.inodes.size + volume.changes.removed.size <= SYNC_COMMIT_INODES
      if (small || blocking) volume.store.commitSync(apply, durable || blocking)
      else {
        volume.store.unflushed = true
        // A child transaction, because it is rolled back when `apply` throws; lmdb-js commits
        // what a plain asynchronous transaction wrote before the throw.
        await volume.store.root.childTransaction(apply)
      }
    } catch (err) {
      // The block ids this commit handed out, the reservation it would have saved, the sector
      // counts and the volume counters it changed are void: the store is as it was.
      Object.assign(volume.record, counters)
      volume.store.nextBlock = blocks.next
      volume.store.blockCeiling = blocks.ceiling
      for (const [ino, delta] of sectors) {
        const inode = volume.loaded(ino)
        if (inode !== undefined) inode.blocks -= delta
      }
      // A step may refuse (a taken snapshot name): its error goes to the caller as it is.
      const error = err instanceof UserError ? err : volume.store.commitFailure(err)
      if (error instanceof FsError && error.code === 'ENOSPC') this.shortOfRoom = true
      this.failed(seq, taken, error)
      throw error
    }
    volume.truncationsInFlight.delete(seq)
    if (taken === null) return
    const { changes, pages } = taken as { changes: ChangeSet, pages: Page[] }
    volume.cache.unpin(pages, seq)
    if (pages.length > 0) this.shortOfRoom = false
    volume.sharesCommitted(changes.shares)
    if (pages.length > 0) volume.mapTouched = true
    if (pages.length >= RELEASE_MAP_PAGES) volume.store.releaseMap()
    for (const ino of changes.removed) volume.forget(ino)
    debug('commit %d: %d pages, %d inodes, %d removed in %d ms', seq, pages.length, changes.inodes.size, changes.removed.size, Date.now() - started)
  }

  private failed (seq: number, taken: { changes: ChangeSet, pages: Page[] } | null, err: Error): void {
    const volume = this.volume
    volume.truncationsInFlight.delete(seq)
    debug('commit %d failed: %s', seq, err.message)
    if (taken === null) return
    const { changes, pages } = taken as { changes: ChangeSet, pages: Page[] }
    volume.changes.mergeOlder(changes)
    volume.cache.restore(pages, seq, Date.now())
  }
}
